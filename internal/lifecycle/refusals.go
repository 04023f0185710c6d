package lifecycle

import (
	"maps"
	"path/filepath"
	"time"
)

// RefusedFile is the file, in the model's folder of the repository
// (<Repo>/<Name>/), where the Manager keeps the versions it refused (failed
// validation, automatic rollback) with the reason and the fingerprint of the
// folder it refused, so that after a restart Status and
// prefetchd_model_unserved_folders still say why they are not served, and
// a version refused by the automatic rollback is not offered again. A
// folder rewritten since (another fingerprint) is judged afresh.
const RefusedFile = ".refused.json"

// refusal is one version's entry in RefusedFile.
type refusal struct {
	Reason string    `json:"reason"`
	FP     string    `json:"fingerprint"`
	At     time.Time `json:"at"`
}

// loadRefusalsLocked marks refused the versions on disk that RefusedFile
// lists with their current fingerprint. An unreadable file is logged and
// ignored (versions are validated again). The caller holds mu.
func (m *Manager) loadRefusalsLocked() {
	var rs map[string]refusal
	found, err := m.readState(RefusedFile, &rs)
	if err != nil {
		m.log.Warn("refused model versions file unreadable; refused versions will be validated again", "file", filepath.Join(m.dir, RefusedFile), "err", err)
		return
	}
	if !found {
		return
	}
	m.savedRefusals = rs
	for name, r := range rs {
		if v := m.versions[name]; v != nil && v.disk != nil && v.disk.fp == r.FP && v.refused == "" {
			v.refused, v.refusedFP = r.Reason, r.FP
		}
	}
}

// saveRefusals writes RefusedFile when the refused versions changed. A
// repository the service may not write only loses the record: logged.
func (m *Manager) saveRefusals() {
	m.mu.Lock()
	rs := make(map[string]refusal)
	for name, v := range m.versions {
		if v.refused != "" && v.refusedFP != "" {
			at := m.now().UTC()
			if old, ok := m.savedRefusals[name]; ok && old.FP == v.refusedFP && old.Reason == v.refused {
				at = old.At
			}
			rs[name] = refusal{Reason: v.refused, FP: v.refusedFP, At: at}
		}
	}
	same := maps.Equal(rs, m.savedRefusals) || (len(rs) == 0 && m.savedRefusals == nil)
	if !same {
		m.savedRefusals = rs
	}
	m.mu.Unlock()
	if same {
		return
	}
	var err error
	if len(rs) == 0 {
		err = m.writeState(RefusedFile, nil)
	} else {
		err = m.writeState(RefusedFile, rs)
	}
	if err != nil {
		m.log.Warn("refused model versions not saved: a restart will validate them again", "file", filepath.Join(m.dir, RefusedFile), "err", err)
	}
}
