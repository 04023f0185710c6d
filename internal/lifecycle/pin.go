package lifecycle

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// PinFile is the file, in the model's folder of the repository
// (<Repo>/<Name>/), where the Manager records a version chosen by an
// operator (Activate, Rollback) or by the automatic rollback, so that a
// restart serves that version again rather than the newest one. A version
// published after the choice still wins; its swap removes the file.
const PinFile = ".active.json"

// pin is the content of PinFile.
type pin struct {
	Version string    `json:"version"`
	Cause   string    `json:"cause"`
	At      time.Time `json:"at"`
}

// loadPin reads dir's pin; nil when there is none or it is unreadable
// (logged: the newest version serves then, as without a pin).
func (m *Manager) loadPin() *pin {
	data, err := os.ReadFile(filepath.Join(m.dir, PinFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var p pin
	if err == nil {
		err = json.Unmarshal(data, &p)
	}
	if err == nil && p.Version == "" {
		err = errors.New("no version")
	}
	if err != nil {
		m.log.Warn("model pin unreadable; serving the newest version", "file", filepath.Join(m.dir, PinFile), "err", err)
		return nil
	}
	return &p
}

// savePin records version as chosen (atomically: a temporary file renamed).
// A repository the service may not write (read-only) only loses the pin:
// logged, not an error.
func (m *Manager) savePin(version, cause string, at time.Time) {
	p := &pin{Version: version, Cause: cause, At: at.UTC()}
	m.pin = p
	data, err := json.Marshal(p)
	if err == nil {
		err = writeAtomic(filepath.Join(m.dir, PinFile), data)
	}
	if err != nil {
		m.log.Warn("model pin not saved: a restart will serve the newest version", "version", version, "err", err)
	}
}

// clearPin removes the pin: a newer version was published.
func (m *Manager) clearPin() {
	m.pin = nil
	if err := os.Remove(filepath.Join(m.dir, PinFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.log.Warn("model pin not removed", "err", err)
	}
}

// pinFirst orders the start's candidates (newest first): those created
// after the pin was written, then the pinned version, then the rest.
func pinFirst(cands []*candidate, p *pin) []*candidate {
	if p == nil {
		return cands
	}
	var newer, rest []*candidate
	var pinned *candidate
	for _, c := range cands {
		switch {
		case c.version == p.Version:
			pinned = c
		case c.created.After(p.At):
			newer = append(newer, c)
		default:
			rest = append(rest, c)
		}
	}
	if pinned == nil {
		return cands
	}
	return append(append(newer, pinned), rest...)
}

// writeAtomic writes data to path through a temporary file in the same
// folder, synced and renamed.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
