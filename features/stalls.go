package features

import (
	"fmt"
	"math"
	"sync"
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
