package transitions

import (
	"context"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
)

// Sharding of the in-process store: source pages are spread by a hash of
// their name over up to maxShards shards of at least minShardPages pages,
// each with its lock and its own least-recently-updated order, so that
// workers handling clicks from different pages do not wait for each other.
const (
	maxShards     = 64
	minShardPages = 1024
)

// trimEvery is how far the clicks' time moves before the online-only pages
// past the retention are forgotten when no new one arrives.
const trimEvery = time.Second

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
	s := &memory{cfg: cfg, d: newDecay(cfg.HalfLife), m: m, retention: cfg.Retention().Seconds(), seed: maphash.MakeSeed()}
	s.shards = make([]shard, min(maxShards, max(1, cfg.MaxPages/minShardPages)))
	for i := range s.shards {
		if s.shards[i].pages, err = simplelru.NewLRU(cfg.MaxPages/len(s.shards), func(string, *source) { m.evicted.Inc() }); err != nil {
			return nil, fmt.Errorf("transitions pages: %w", err)
		}
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
	seed      maphash.Seed

	// shards hold the source pages: MaxPages / len(shards) each.
	shards []shard

	fmu sync.Mutex
	// fresh are the pages outside the vocabulary, with the time (unix
	// seconds) they were last seen.
	fresh *simplelru.LRU[string, float64] // guarded by fmu
	// trimmed is the clicks' time (unix nanoseconds) when fresh was last
	// trimmed to the retention.
	trimmed atomic.Int64
}

// shard is a part of the source pages.
type shard struct {
	mu sync.Mutex
	// pages are the source pages, least recently updated evicted first.
	pages *simplelru.LRU[string, *source] // guarded by mu
}

// shard returns the shard of source page page.
func (s *memory) shard(page string) *shard {
	if len(s.shards) == 1 {
		return &s.shards[0]
	}
	return &s.shards[maphash.String(s.seed, page)%uint64(len(s.shards))]
}

// source is one source page's counts, stored with forward decay from base.
type source struct {
	base  float64 // unix seconds
	total float64
	// next are the kept next pages in the order of sortNext: decay scales
	// every count alike, so only an addition moves a page, and a lookup
	// copies them as they are.
	next []Next
}

// Observe adds the transitions. It never fails.
func (s *memory) Observe(_ context.Context, ts []Transition) error {
	var newest int64
	fresh := false
	for i := range ts {
		t := &ts[i]
		at := unix(t.At)
		newest = max(newest, t.At.UnixNano())
		fresh = fresh || t.FromUnknown || t.ToUnknown
		sh := s.shard(t.From)
		sh.mu.Lock()
		src, ok := sh.pages.Get(t.From)
		if !ok {
			src = &source{base: at, next: make([]Next, 0, min(4, s.cfg.MaxNext))}
			// Pages kept are copies: those of a click are slices of its
			// decoded message, which must not live as long as the entry.
			sh.pages.Add(strings.Clone(t.From), src)
		}
		s.add(src, t, at)
		sh.mu.Unlock()
	}
	s.m.observed.Add(float64(len(ts)))
	if fresh || newest-s.trimmed.Load() >= int64(trimEvery) {
		s.observeFresh(ts, newest)
	}
	return nil
}

// seenFresh records that the online-only page was seen at, keeping a copy
// of a page it did not hold (callers hold fmu).
func (s *memory) seenFresh(page string, at float64) {
	if s.fresh.Contains(page) {
		s.fresh.Add(page, at) // the map keeps its key
		return
	}
	s.fresh.Add(strings.Clone(page), at)
}

// observeFresh remembers the pages of ts outside the vocabulary and
// forgets those past the retention as of newest (unix nanoseconds).
func (s *memory) observeFresh(ts []Transition, newest int64) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	for i := range ts {
		t := &ts[i]
		if t.FromUnknown {
			s.seenFresh(t.From, unix(t.At))
		}
		if t.ToUnknown {
			s.seenFresh(t.To, unix(t.At))
		}
	}
	// Forget online-only pages past the retention, oldest first.
	for {
		_, seen, ok := s.fresh.GetOldest()
		if !ok || float64(newest)/1e9-seen <= s.retention {
			break
		}
		s.fresh.RemoveOldest()
	}
	if newest > s.trimmed.Load() {
		s.trimmed.Store(newest)
	}
	s.m.onlineOnly.Set(float64(s.fresh.Len()))
}

// add counts one transition t out of src, at time at, keeping src.next in
// order.
func (s *memory) add(src *source, t *Transition, at float64) {
	if s.d.lambda*(at-src.base) > rebase {
		f := 1 / s.d.weight(src.base, at)
		src.total *= f
		for i := range src.next {
			src.next[i].Count *= f
		}
		src.base = at
		sortNext(src.next) // rounding may have made counts equal
	}
	w := s.d.weight(src.base, at)
	src.total += w
	h := PageHash(t.To)
	for i := range src.next {
		if n := &src.next[i]; n.Is(t.To, h) {
			n.Count += w
			n.Index = t.ToIndex
			up(src.next, i)
			return
		}
	}
	// A newcomer takes the place of the smallest count, the last.
	if len(src.next) == s.cfg.MaxNext {
		src.next = src.next[:len(src.next)-1]
	}
	src.next = append(src.next, Next{Page: strings.Clone(t.To), Count: w, Index: t.ToIndex, hash: h})
	up(src.next, len(src.next)-1)
}

// Lookup reads the statistics of each page. It never fails.
func (s *memory) Lookup(_ context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	dst = grow(dst, len(from))
	now := unix(at)
	for i, p := range from {
		sh := s.shard(p)
		sh.mu.Lock()
		if src, ok := sh.pages.Peek(p); ok {
			f := 1 / s.d.weight(src.base, max(now, src.base))
			d := &dst[i]
			d.N = src.total * f
			d.Next = append(d.Next, src.next...)
			for j := range d.Next {
				d.Next[j].Count *= f
			}
		}
		sh.mu.Unlock()
	}
	return dst, nil
}

// len is the number of source pages kept.
func (s *memory) len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.pages.Len()
		sh.mu.Unlock()
	}
	return n
}
