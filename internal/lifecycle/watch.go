package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Run loads the newest valid version (if Sync has not already) and then
// keeps the live model up to date until ctx ends: it rescans the repository
// after file-system events (fsnotify, debounced by Config.Debounce) and every
// Config.PollInterval as a fallback, and performs automatic rollbacks. A
// repository that does not exist yet or holds no valid version is logged and
// watched until one appears. Run returns nil when ctx ends; it starts no
// goroutine that outlives it.
func (m *Manager) Run(ctx context.Context) error {
	if m.static {
		<-ctx.Done()
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		m.log.Warn("file-system events unavailable, polling only", "err", err, "interval", m.cfg.PollInterval)
		w = nil
	} else {
		defer w.Close()
	}
	var events chan fsnotify.Event
	var errs chan error
	if w != nil {
		events, errs = w.Events, w.Errors
		m.watch(w)
	}
	poll := time.NewTicker(m.cfg.PollInterval)
	defer poll.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	m.sync(ctx)
	for {
		// A bare export still settling is complete once its quiet period
		// ends; rescan then rather than at the next poll.
		if d := m.retryIn(); d > 0 {
			debounce.Reset(d + m.cfg.Debounce)
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if m.relevant(ev.Name) {
				debounce.Reset(m.cfg.Debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			m.log.Warn("file-system watcher error", "err", err)
		case <-debounce.C:
			if w != nil {
				m.watch(w)
			}
			m.sync(ctx)
		case <-poll.C:
			if w != nil {
				m.watch(w)
			}
			m.sync(ctx)
		case <-m.rollback:
			m.autoRollback(ctx)
		}
	}
}

// Waiting says why no version serves yet: nil once one does; before that the
// last scan's error (which names the folders not served and why), or an
// error saying the repository has not been scanned yet.
func (m *Manager) Waiting() error {
	if m.current.Load() != nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastErr == "" {
		return fmt.Errorf("model repository %s not scanned yet", m.dir)
	}
	return errors.New(m.lastErr)
}

// sync runs Sync and logs its error once until it changes.
func (m *Manager) sync(ctx context.Context) {
	err := m.Sync(ctx)
	if ctx.Err() != nil {
		return
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	m.mu.Lock()
	repeat := msg == m.lastErr
	m.lastErr = msg
	m.mu.Unlock()
	if err != nil && !repeat {
		m.log.Warn("model repository has no servable version", "dir", m.dir, "err", err)
	}
}

// watch adds the repository, the model folder and every version folder to
// the watcher; adding a watched path again is harmless, and paths that do
// not exist yet are picked up by a later call.
func (m *Manager) watch(w *fsnotify.Watcher) {
	_ = w.Add(m.cfg.Repo)
	if err := w.Add(m.dir); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Debug("cannot watch model folder", "dir", m.dir, "err", err)
		}
		return
	}
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() && !ignoredName(e.Name()) {
			_ = w.Add(filepath.Join(m.dir, e.Name()))
		}
	}
}

// relevant reports whether an event path concerns the model folder: the
// folder itself, a version folder or a file in one. Events in temporary
// folders are not.
func (m *Manager) relevant(path string) bool {
	if path == m.dir {
		return true
	}
	rel, err := filepath.Rel(m.dir, path)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return false
	}
	first, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
	return !ignoredName(first)
}
