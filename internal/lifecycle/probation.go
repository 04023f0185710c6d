package lifecycle

import (
	"path/filepath"
	"slices"
	"time"
)

// ProbationFile is the file, in the model's folder of the repository
// (<Repo>/<Name>/), where the Manager keeps the version on probation (the
// automatic rollback watching it) with its predecessor and the baseline
// precision, so that a restart while a new version is judged goes on
// judging it instead of serving it unwatched for good.
const ProbationFile = ".probation.json"

// probationRecord is the content of ProbationFile.
type probationRecord struct {
	Version     string    `json:"version"`
	Predecessor string    `json:"predecessor"`
	Baseline    float64   `json:"baseline"`
	Since       time.Time `json:"since"`
}

// saveProbation records p (nil: none). A repository the service may not
// write only loses the record: logged.
func (m *Manager) saveProbation(p *probation) {
	if m.static {
		return
	}
	var err error
	if p == nil {
		err = m.writeState(ProbationFile, nil)
	} else {
		err = m.writeState(ProbationFile, probationRecord{Version: p.version, Predecessor: p.predecessor, Baseline: p.baseline, Since: m.now().UTC()})
	}
	if err != nil {
		m.log.Warn("model probation not saved: a restart would end it", "err", err)
	}
}

// resumeProbation returns the probation ProbationFile records for live (the
// first version this process serves), with a new window, or nil; a record
// for another version is removed. Logged either way when there was one.
func (m *Manager) resumeProbation(live *Live) *probation {
	if m.static {
		return nil
	}
	var r probationRecord
	found, err := m.readState(ProbationFile, &r)
	if !found {
		return nil
	}
	if err != nil || r.Version == "" {
		m.log.Warn("model probation file unreadable; the version serving is not on probation", "file", filepath.Join(m.dir, ProbationFile), "err", err)
		return nil
	}
	if r.Version != live.Version {
		m.saveProbation(nil) // of a version no longer served
		return nil
	}
	// The predecessor is what a rollback returns to: first in the history,
	// as it was before the restart.
	m.mu.Lock()
	if !slices.Contains(m.history, r.Predecessor) {
		m.history = slices.Insert(m.history, max(len(m.history)-1, 0), r.Predecessor)
	}
	m.mu.Unlock()
	m.log.Info("model version still on probation after the restart", "version", r.Version, "predecessor", r.Predecessor, "baseline", r.Baseline, "since", r.Since)
	return &probation{version: r.Version, predecessor: r.Predecessor, baseline: r.Baseline, win: newWindow(m.cfg.AutoRollback.Window)}
}
