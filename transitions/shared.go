package transitions

import (
	"context"
	"slices"
	"sync"
	"time"
)

// SharedConfig takes the shared (Redis) statistics off the click path.
// Zero values keep the store as it is: every Observe and Lookup a round
// trip.
type SharedConfig struct {
	// FlushInterval, when positive, makes Observe buffer transitions in
	// process and send them at most this often (the first Observe after
	// the interval sends what is buffered, in one pipeline); other
	// replicas see them that much later. 0 sends each Observe at once.
	FlushInterval time.Duration
	// MaxBuffered bounds the buffered transitions: past it, Observe sends
	// at once. Default 65,536.
	MaxBuffered int
	// CacheTTL, when positive, answers Lookup from an in-process copy of
	// a page's statistics up to this old. 0 reads Redis every time.
	CacheTTL time.Duration
	// CachePages bounds the cached pages. Default 65,536.
	CachePages int
}

// shared wraps a Store with the write buffer and read cache of
// SharedConfig. Safe for concurrent use.
type shared struct {
	Store
	cfg SharedConfig
	now func() time.Time

	mu      sync.Mutex
	buf     []Transition // guarded by mu
	flushed time.Time    // guarded by mu
	sending sync.Mutex   // one flush at a time

	cmu   sync.Mutex
	cache map[string]cached // guarded by cmu
}

type cached struct {
	d  Dist
	at time.Time // when it was read
}

// Share wraps s.Store (the Redis statistics) with cfg's buffer and cache.
// With a zero cfg it returns s unchanged.
func Share(s *Stats, cfg SharedConfig) *Stats {
	if cfg.FlushInterval <= 0 && cfg.CacheTTL <= 0 {
		return s
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = 1 << 16
	}
	if cfg.CachePages <= 0 {
		cfg.CachePages = 1 << 16
	}
	w := &shared{Store: s.Store, cfg: cfg, now: time.Now, cache: make(map[string]cached)}
	return &Stats{Store: w, Blend: s.Blend, m: s.m}
}

// Observe buffers ts and sends the buffer once FlushInterval has passed
// since the last send (or the buffer is full). An error of that send comes
// back here; its transitions are dropped, as a failed write-through would.
func (w *shared) Observe(ctx context.Context, ts []Transition) error {
	if w.cfg.FlushInterval <= 0 {
		return w.Store.Observe(ctx, ts)
	}
	now := w.now()
	w.mu.Lock()
	w.buf = append(w.buf, ts...)
	due := now.Sub(w.flushed) >= w.cfg.FlushInterval || len(w.buf) >= w.cfg.MaxBuffered
	w.mu.Unlock()
	if !due || !w.sending.TryLock() {
		return nil // another goroutine is sending
	}
	defer w.sending.Unlock()
	return w.Flush(ctx)
}

// Flush sends the buffered transitions now.
func (w *shared) Flush(ctx context.Context) error {
	w.mu.Lock()
	batch := w.buf
	w.buf = nil
	w.flushed = w.now()
	w.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	return w.Store.Observe(ctx, batch)
}

// Lookup answers from the cache what is fresh there and reads the rest in
// one call to the store.
func (w *shared) Lookup(ctx context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	if w.cfg.CacheTTL <= 0 {
		return w.Store.Lookup(ctx, from, at, dst)
	}
	dst = grow(dst, len(from))
	now := w.now()
	var miss []string
	var missAt []int
	w.cmu.Lock()
	for i, p := range from {
		if c, ok := w.cache[p]; ok && now.Sub(c.at) < w.cfg.CacheTTL {
			dst[i].N = c.d.N
			dst[i].Next = append(dst[i].Next[:0], c.d.Next...)
			continue
		}
		miss = append(miss, p)
		missAt = append(missAt, i)
	}
	w.cmu.Unlock()
	if len(miss) == 0 {
		return dst, nil
	}
	got, err := w.Store.Lookup(ctx, miss, at, nil)
	if err != nil {
		return dst, err
	}
	w.cmu.Lock()
	defer w.cmu.Unlock()
	if len(w.cache)+len(miss) > w.cfg.CachePages {
		clear(w.cache) // start afresh: a cache, not a store
	}
	for j, i := range missAt {
		dst[i].N = got[j].N
		dst[i].Next = append(dst[i].Next[:0], got[j].Next...)
		w.cache[miss[j]] = cached{d: Dist{N: got[j].N, Next: slices.Clone(got[j].Next)}, at: now}
	}
	return dst, nil
}
