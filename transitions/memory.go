package transitions

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
)

// NewMemory returns statistics held in this process. reg may be nil.
func NewMemory(cfg Config, reg prometheus.Registerer) (*Stats, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &memory{cfg: cfg, d: newDecay(cfg.HalfLife), m: m, retention: cfg.Retention().Seconds()}
	if s.pages, err = simplelru.NewLRU(cfg.MaxPages, func(string, *source) { m.evicted.Inc() }); err != nil {
		return nil, fmt.Errorf("transitions pages: %w", err)
	}
	if s.fresh, err = simplelru.NewLRU[string, float64](cfg.MaxPages, nil); err != nil {
		return nil, fmt.Errorf("transitions online-only pages: %w", err)
	}
	return &Stats{Store: s, Blend: Blend{k: cfg.Evidence}, m: m}, nil
}

// memory is the in-process Store.
type memory struct {
	cfg       Config
	d         decay
	m         *metrics
	retention float64 // seconds

	mu sync.Mutex
	// pages are the source pages, least recently updated evicted first.
	pages *simplelru.LRU[string, *source] // guarded by mu
	// fresh are the pages outside the vocabulary, with the time (unix
	// seconds) they were last seen.
	fresh *simplelru.LRU[string, float64] // guarded by mu
}

// source is one source page's counts, stored with forward decay from base.
type source struct {
	base  float64 // unix seconds
	total float64
	next  []Next
}

// Observe adds the transitions. It never fails.
func (s *memory) Observe(_ context.Context, ts []Transition) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var newest float64
	for i := range ts {
		t := &ts[i]
		at := unix(t.At)
		newest = max(newest, at)
		src, ok := s.pages.Get(t.From)
		if !ok {
			src = &source{base: at, next: make([]Next, 0, min(4, s.cfg.MaxNext))}
			s.pages.Add(t.From, src)
		}
		s.add(src, t.To, at)
		if t.FromUnknown {
			s.fresh.Add(t.From, at)
		}
		if t.ToUnknown {
			s.fresh.Add(t.To, at)
		}
	}
	s.m.observed.Add(float64(len(ts)))
	// Forget online-only pages past the retention, oldest first.
	for {
		_, seen, ok := s.fresh.GetOldest()
		if !ok || newest-seen <= s.retention {
			break
		}
		s.fresh.RemoveOldest()
	}
	s.m.onlineOnly.Set(float64(s.fresh.Len()))
	return nil
}

// add counts one transition from src to page at time at.
func (s *memory) add(src *source, page string, at float64) {
	if s.d.lambda*(at-src.base) > rebase {
		f := 1 / s.d.weight(src.base, at)
		src.total *= f
		for i := range src.next {
			src.next[i].Count *= f
		}
		src.base = at
	}
	w := s.d.weight(src.base, at)
	src.total += w
	low := -1
	for i := range src.next {
		if src.next[i].Page == page {
			src.next[i].Count += w
			return
		}
		if low < 0 || src.next[i].Count < src.next[low].Count {
			low = i
		}
	}
	if len(src.next) < s.cfg.MaxNext {
		src.next = append(src.next, Next{Page: page, Count: w})
		return
	}
	src.next[low] = Next{Page: page, Count: w}
}

// Lookup reads the statistics of each page. It never fails.
func (s *memory) Lookup(_ context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	dst = grow(dst, len(from))
	now := unix(at)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range from {
		src, ok := s.pages.Peek(p)
		if !ok {
			continue
		}
		f := 1 / s.d.weight(src.base, max(now, src.base))
		d := &dst[i]
		d.N = src.total * f
		for _, n := range src.next {
			d.Next = append(d.Next, Next{Page: n.Page, Count: n.Count * f})
		}
		sortNext(d.Next)
	}
	return dst, nil
}
