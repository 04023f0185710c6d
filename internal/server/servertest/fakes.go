// Package servertest holds in-memory stand-ins for the engine interfaces of
// internal/hint and throwaway TLS certificates, for tests of the gRPC layer,
// prefetchctl and the load generator. They are fakes: nothing here predicts.
package servertest

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prefetchd/prefetchd/internal/hint"
)

// Predictor answers every query with Result and Err, or by calling Fn when
// it is set. It records queries unless Quiet is set (the load generator sets
// it so that memory stays flat). Set the fields before use.
type Predictor struct {
	Result hint.Result
	Err    error
	Fn     func(ctx context.Context, q hint.Query) (hint.Result, error)
	Quiet  bool

	mu      sync.Mutex
	queries []hint.Query
}

// Predict implements hint.Predictor.
func (p *Predictor) Predict(ctx context.Context, q hint.Query) (hint.Result, error) {
	if !p.Quiet {
		p.mu.Lock()
		p.queries = append(p.queries, q)
		p.mu.Unlock()
	}
	if p.Fn != nil {
		return p.Fn(ctx, q)
	}
	return p.Result, p.Err
}

// Queries returns the queries received so far.
func (p *Predictor) Queries() []hint.Query {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]hint.Query(nil), p.queries...)
}

// Watcher hands out one buffered channel per subscription and announces
// each new subscription on Subs.
type Watcher struct {
	// Subs receives every new subscription (buffered; 16).
	Subs chan *Sub
}

// Sub is one subscription made through Watcher.
type Sub struct {
	Users []string
	// Updates is the subscriber's channel; the test sends on it.
	Updates chan hint.Update
	// Cancelled is closed when the subscriber cancels.
	Cancelled chan struct{}
	once      sync.Once
}

// NewWatcher returns a Watcher.
func NewWatcher() *Watcher { return &Watcher{Subs: make(chan *Sub, 16)} }

// Subscribe implements hint.Watcher.
func (w *Watcher) Subscribe(users []string, buffer int) (<-chan hint.Update, func()) {
	s := &Sub{Users: users, Updates: make(chan hint.Update, buffer), Cancelled: make(chan struct{})}
	w.Subs <- s
	return s.Updates, func() { s.once.Do(func() { close(s.Cancelled) }) }
}

// Ingester records the events it accepts. Events for which Reject returns
// true get hint.ErrInvalid; when Err is set every event gets it.
type Ingester struct {
	Reject    func(event []byte) bool
	Duplicate func(event []byte) bool // answered with hint.ErrDuplicate
	Err       error
	// Hold, when set, makes every call wait until it is closed.
	Hold chan struct{}

	mu      sync.Mutex
	events  [][]byte
	largest int
}

// IngestJSON implements hint.Ingester.
func (in *Ingester) IngestJSON(_ context.Context, event []byte) error {
	if in.Hold != nil {
		<-in.Hold
	}
	if in.Err != nil {
		return in.Err
	}
	if in.Reject != nil && in.Reject(event) {
		return hint.ErrInvalid
	}
	if in.Duplicate != nil && in.Duplicate(event) {
		return hint.ErrDuplicate
	}
	in.mu.Lock()
	in.events = append(in.events, event)
	in.mu.Unlock()
	return nil
}

// IngestJSONMany implements hint.BatchIngester with IngestJSON on each event,
// stopping at the first error that is neither a rejection nor a duplicate;
// it remembers the largest run it was handed.
func (in *Ingester) IngestJSONMany(ctx context.Context, events [][]byte, errs []error) int {
	in.mu.Lock()
	in.largest = max(in.largest, len(events))
	in.mu.Unlock()
	for i, ev := range events {
		errs[i] = in.IngestJSON(ctx, ev)
		if errs[i] != nil && !errors.Is(errs[i], hint.ErrInvalid) && !errors.Is(errs[i], hint.ErrDuplicate) {
			return i
		}
	}
	return len(events)
}

// LargestRun is the most events IngestJSONMany was handed at once.
func (in *Ingester) LargestRun() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.largest
}

// Events returns the accepted events.
func (in *Ingester) Events() [][]byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([][]byte(nil), in.events...)
}

// Models is a tiny model repository: versions named "v1", "v2", ... that
// are loadable, versions listed as refused that fail validation, one active
// version and a history for rollback.
type Models struct {
	mu      sync.Mutex
	order   []string
	refused map[string]bool
	active  string
	history []string
	changes int
}

// NewModels returns a repository with the given versions in order (the
// refused ones in refused too) and active as the active version.
func NewModels(active string, versions []string, refused ...string) *Models {
	m := &Models{order: versions, refused: map[string]bool{}, active: active}
	for _, v := range refused {
		m.refused[v] = true
	}
	return m
}

// LoadedAt returns the load time Models reports for every loadable version.
func LoadedAt() time.Time { return time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC) }

// Status implements hint.Models.
func (m *Models) Status(context.Context) (hint.ModelStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := hint.ModelStatus{Active: m.active}
	for _, v := range m.order {
		vs := hint.VersionStatus{Name: "markov", Version: v, Active: v == m.active}
		if m.refused[v] {
			vs.Refused = "golden case 0 off by 0.3"
		} else {
			vs.Loaded = true
			vs.LoadedAt = LoadedAt()
			vs.Requests, vs.Issued, vs.Used, vs.Precision = 10, 8, 6, 0.75
		}
		st.Versions = append(st.Versions, vs)
	}
	return st, nil
}

// Activate implements hint.Models.
func (m *Models) Activate(_ context.Context, version string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	known := false
	for _, v := range m.order {
		known = known || v == version
	}
	switch {
	case !known:
		return hint.ErrUnknownVersion
	case m.refused[version]:
		return hint.ErrRefused
	}
	m.history = append(m.history, m.active)
	m.active = version
	m.changes++
	return nil
}

// Rollback implements hint.Models.
func (m *Models) Rollback(context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.history) == 0 {
		return "", hint.ErrNoRollback
	}
	m.active = m.history[len(m.history)-1]
	m.history = m.history[:len(m.history)-1]
	m.changes++
	return m.active, nil
}

// State returns the active version and the number of successful changes.
func (m *Models) State() (active string, changes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.active, m.changes
}
