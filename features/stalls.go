package features

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

var nan = math.NaN()

// stalls remembers, per ingest loop (a worker, the dead-letter writer),
// the transient failure it is retrying, for Ready and the paused gauge.
type stalls struct {
	mu    sync.Mutex
	slots []stall // guarded by mu
}

type stall struct {
	err   error
	since time.Time
}

func newStalls(n int) *stalls { return &stalls{slots: make([]stall, n)} }

func (s *stalls) set(slot int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot < 0 || slot >= len(s.slots) {
		return
	}
	since := s.slots[slot].since
	if s.slots[slot].err == nil {
		since = time.Now()
	}
	s.slots[slot] = stall{err: err, since: since}
}

func (s *stalls) clear(slot int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slot >= 0 && slot < len(s.slots) {
		s.slots[slot] = stall{}
	}
}

// count is the number of paused loops.
func (s *stalls) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.slots {
		if st.err != nil {
			n++
		}
	}
	return n
}

// err describes the oldest pause, or is nil.
func (s *stalls) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var oldest stall
	n := 0
	for _, st := range s.slots {
		if st.err == nil {
			continue
		}
		n++
		if oldest.err == nil || st.since.Before(oldest.since) {
			oldest = st
		}
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("ingest paused for %s (%d of %d loops), retrying: %w",
		time.Since(oldest.since).Round(time.Millisecond), n, len(s.slots), oldest.err)
}

// fetchGrace is how long fetches must keep failing before Ready reports
// them: a rebalance or a broker restart fails a few fetches on its way.
const fetchGrace = 10 * time.Second

// fetchFailures remembers a run of failed fetches (a group the consumer
// cannot join, a broker refusing it): Ready reports the run once it has
// lasted fetchGrace, while failures keep coming (the latest within gap, as
// the fetch loop backs off); a fetch that succeeds ends it. An idle topic
// fetches nothing, so the run also ends when failures stop coming.
type fetchFailures struct {
	failing atomic.Bool // a run is under way: ok takes the lock
	mu      sync.Mutex
	first   time.Time // guarded by mu
	last    time.Time // guarded by mu
	lastErr error     // guarded by mu
	n       int       // guarded by mu
}

// fail records a failed fetch at now; gap is the longest pause between two
// failures of one run.
func (f *fetchFailures) fail(now time.Time, err error, gap time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lastErr == nil || now.Sub(f.last) > gap {
		f.first, f.n = now, 0
	}
	f.last, f.lastErr = now, err
	f.n++
	f.failing.Store(true)
}

// ok records a fetch that succeeded.
func (f *fetchFailures) ok() {
	if !f.failing.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastErr = nil
	f.failing.Store(false)
}

// err describes the run of failures under way at now, or is nil.
func (f *fetchFailures) err(now time.Time, gap time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lastErr == nil || now.Sub(f.last) > gap || now.Sub(f.first) < fetchGrace {
		return nil
	}
	return fmt.Errorf("fetches from kafka failing for %s (%d failures): %w", now.Sub(f.first).Round(time.Second), f.n, f.lastErr)
}
