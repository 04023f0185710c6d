package lifecycle

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
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
	// Known are the versions on disk when the choice was made: none of them
	// is preferred to the pinned one after a restart, whatever its created
	// time (a manifest dated ahead by a skewed clock must not undo a
	// rollback). Pins written without it compare created times with At.
	Known []string `json:"known,omitempty"`
}

// loadPin reads dir's pin; nil when there is none or it is unreadable
// (logged: the newest version serves then, as without a pin).
func (m *Manager) loadPin() *pin {
	var p pin
	found, err := m.readState(PinFile, &p)
	if found && err == nil && p.Version == "" {
		err = errors.New("no version")
	}
	if err != nil {
		m.log.Warn("model pin unreadable; serving the newest version", "file", filepath.Join(m.dir, PinFile), "err", err)
		return nil
	}
	if !found {
		return nil
	}
	return &p
}

// savePin records version as chosen (atomically: a temporary file renamed).
// A repository the service may not write (read-only) only loses the pin:
// logged, not an error.
func (m *Manager) savePin(version, cause string, at time.Time) {
	p := &pin{Version: version, Cause: cause, At: at.UTC()}
	m.mu.Lock()
	for name, v := range m.versions {
		if v.disk != nil {
			p.Known = append(p.Known, name)
		}
	}
	m.mu.Unlock()
	slices.Sort(p.Known)
	m.pin = p
	if err := m.writeState(PinFile, p); err != nil {
		m.log.Warn("model pin not saved: a restart will serve the newest version", "version", version, "err", err)
	}
}

// clearPin removes the pin: a newer version was published.
func (m *Manager) clearPin() {
	m.pin = nil
	if err := m.writeState(PinFile, nil); err != nil {
		m.log.Warn("model pin not removed", "err", err)
	}
}

// readState decodes the JSON file name of the model's folder (PinFile,
// RefusedFile, ProbationFile) into v; found is false when there is none.
func (m *Manager) readState(name string, v any) (found bool, err error) {
	data, err := os.ReadFile(filepath.Join(m.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		err = json.Unmarshal(data, v)
	}
	return true, err
}

// writeState writes v as the JSON file name of the model's folder
// (atomically), or removes the file when v is nil.
func (m *Manager) writeState(name string, v any) error {
	path := filepath.Join(m.dir, name)
	if v == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeAtomic(path, data)
}

// pinFirst orders the start's candidates (newest first): those published
// after the pin was written, then the pinned version, then the rest. A
// version was published after the pin when it was not on disk then (Known)
// and is newer than the pinned version, as a running service would have
// swapped to it; with a pin that lists nothing, when it was created after
// the pin.
func pinFirst(cands []*candidate, p *pin) []*candidate {
	if p == nil {
		return cands
	}
	var pinned *candidate
	for _, c := range cands {
		if c.version == p.Version {
			pinned = c
		}
	}
	if pinned == nil {
		return cands
	}
	var newer, rest []*candidate
	for _, c := range cands {
		switch {
		case c == pinned:
		case p.Known != nil && !slices.Contains(p.Known, c.version) && c.newer(pinned),
			p.Known == nil && c.created.After(p.At):
			newer = append(newer, c)
		default:
			rest = append(rest, c)
		}
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
