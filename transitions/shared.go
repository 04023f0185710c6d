package transitions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// SharedConfig takes the shared (Redis) statistics off the click path.
// Zero values keep the store as it is: every Observe and Lookup a round
// trip.
type SharedConfig struct {
	// FlushInterval, when positive, makes Observe buffer transitions in
	// process and send them at most this often, in one pipeline; other
	// replicas see them that much later. While Stats.Run runs, it sends
	// them on its own goroutine; without it, the first Observe after the
	// interval does. 0 sends each Observe at once.
	FlushInterval time.Duration
	// MaxBuffered bounds the buffered transitions. Without Run, past it
	// Observe sends at once; with Run, past half of it Run is woken, and
	// past it Observe drops its transitions and says so (Run cannot keep
	// up: the store is down or slow). Default 65,536.
	MaxBuffered int
	// CacheTTL, when positive, answers Lookup from an in-process copy of
	// a page's statistics up to this old. While Stats.Run runs, a copy up
	// to twice as old is still served and Run reads the page again in the
	// background; older ones, and pages not cached, are read by Lookup.
	// 0 reads Redis every time.
	CacheTTL time.Duration
	// CachePages bounds the cached pages. Default 65,536.
	CachePages int
	// Log gets the failures of Run's sends and reads (at most one line per
	// 10 s). Default slog.Default().
	Log *slog.Logger
}

// errBufferFull is Observe's error when the buffer is past MaxBuffered
// while Run sends it.
var errBufferFull = errors.New("online statistics buffer full: transitions dropped")

// shared wraps a Store with the write buffer and read cache of
// SharedConfig. Safe for concurrent use.
type shared struct {
	Store
	cfg SharedConfig
	m   *metrics
	now func() time.Time

	// running says Run serves the buffer and the refreshes; wake asks it
	// to send now (capacity 1).
	running atomic.Bool
	wake    chan struct{}
	errAt   time.Time // last logged failure; Run's goroutine only

	mu      sync.Mutex
	buf     []Transition // guarded by mu
	flushed time.Time    // guarded by mu
	sending sync.Mutex   // one send at a time

	cmu     sync.Mutex
	cache   map[string]cached // guarded by cmu
	refresh []string          // pages for Run to read again; guarded by cmu

	// tags are the latest Transition.ToIndex sent per next page, put on
	// the next pages read back (Next.Index), which spares the engine a
	// vocabulary lookup per next page.
	tmu  sync.Mutex
	tags map[string]int64 // guarded by tmu
}

type cached struct {
	d      Dist
	at     time.Time // when it was read
	queued bool      // in refresh
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
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	w := &shared{
		Store: s.Store, cfg: cfg, m: s.m, now: time.Now, wake: make(chan struct{}, 1),
		cache: make(map[string]cached), tags: make(map[string]int64),
	}
	return &Stats{Store: w, Blend: s.Blend, m: s.m}
}

// Run does the background work of statistics shared through Share: it
// sends the buffered transitions every flush interval and reads again the
// cached pages going stale, off the clicks' path, until ctx ends; then it
// sends what is left (for up to 5 s). Without Run the clicks do that work
// themselves. For statistics not shared, Run waits for ctx. It returns
// nil.
func (s *Stats) Run(ctx context.Context) error {
	w, ok := s.Store.(*shared)
	if !ok {
		<-ctx.Done()
		return nil
	}
	return w.run(ctx)
}

func (w *shared) run(ctx context.Context) error {
	tick := w.cfg.FlushInterval
	if t := w.cfg.CacheTTL / 4; t > 0 && (tick <= 0 || t < tick) {
		tick = t
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	w.running.Store(true)
	var refreshed time.Time
	for {
		select {
		case <-ctx.Done():
			// From here Observe buffers and sends by itself again, as
			// without Run: what it buffers after this last send goes
			// with its next send.
			w.running.Store(false)
			last, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			w.report(w.send(last), "send")
			return nil
		case <-t.C:
		case <-w.wake:
		}
		w.report(w.send(ctx), "send")
		w.report(w.reread(ctx), "read")
		if r, ok := w.Store.(sharedRefresher); ok {
			if now := w.now(); now.Sub(refreshed) >= refreshEvery {
				refreshed = now
				w.report(r.refreshShared(ctx, now), "refresh")
			}
		}
	}
}

// refreshEvery is how often Run refreshes the figures of the shared
// statistics (sharedRefresher).
const refreshEvery = time.Second

// sharedRefresher is a Store whose figures follow what all replicas wrote
// (the Redis store): Run refreshes them every refreshEvery, so that an
// idle replica reports what the busy ones do.
type sharedRefresher interface {
	refreshShared(ctx context.Context, now time.Time) error
}

// report logs err of Run's work, at most once per 10 s.
func (w *shared) report(err error, what string) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	if now := time.Now(); now.Sub(w.errAt) >= 10*time.Second {
		w.errAt = now
		w.cfg.Log.Warn("online statistics: background "+what+" failed", "err", err)
	}
}

// Observe buffers ts. Without Run it sends the buffer once FlushInterval
// has passed since the last send (or the buffer is full), and an error of
// that send comes back here; its transitions are dropped, as a failed
// write-through would.
func (w *shared) Observe(ctx context.Context, ts []Transition) error {
	if w.cfg.FlushInterval <= 0 {
		w.tag(ts)
		return w.Store.Observe(ctx, ts)
	}
	if len(ts) == 0 {
		return nil
	}
	now := w.now()
	w.mu.Lock()
	if w.running.Load() {
		n := len(w.buf)
		if n >= w.cfg.MaxBuffered {
			w.mu.Unlock()
			w.m.dropped.WithLabelValues("buffer_full").Add(float64(len(ts)))
			return fmt.Errorf("%d transitions: %w", len(ts), errBufferFull)
		}
		w.buf = append(w.buf, ts...)
		w.mu.Unlock()
		if n+len(ts) >= w.cfg.MaxBuffered/2 {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
		return nil
	}
	w.buf = append(w.buf, ts...)
	due := now.Sub(w.flushed) >= w.cfg.FlushInterval || len(w.buf) >= w.cfg.MaxBuffered
	w.mu.Unlock()
	if !due {
		return nil
	}
	return w.send(ctx)
}

// send sends the buffered transitions, unless another goroutine is.
func (w *shared) send(ctx context.Context) error {
	if !w.sending.TryLock() {
		return nil
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
	w.tag(batch)
	if err := w.Store.Observe(ctx, batch); err != nil {
		// Not sent again: part of it may have been added.
		w.m.dropped.WithLabelValues("send_failed").Add(float64(len(batch)))
		return err
	}
	return nil
}

// tag records the next pages' indexes of ts, when the cache will use them.
func (w *shared) tag(ts []Transition) {
	if w.cfg.CacheTTL <= 0 {
		return
	}
	w.tmu.Lock()
	defer w.tmu.Unlock()
	if len(w.tags)+len(ts) > 4*w.cfg.CachePages {
		clear(w.tags)
	}
	for i := range ts {
		if ts[i].ToIndex != 0 {
			w.tags[ts[i].To] = ts[i].ToIndex
		}
	}
}

// Lookup answers from the cache what is fresh there (or, while Run runs,
// stale by less than a second TTL, then queued for Run to read again) and
// reads the rest in one call to the store.
func (w *shared) Lookup(ctx context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	if w.cfg.CacheTTL <= 0 {
		return w.Store.Lookup(ctx, from, at, dst)
	}
	dst = grow(dst, len(from))
	now := w.now()
	background := w.running.Load()
	var miss []string
	var missAt []int
	w.cmu.Lock()
	for i, p := range from {
		c, ok := w.cache[p]
		age := now.Sub(c.at)
		if ok && (age < w.cfg.CacheTTL || background && age < 2*w.cfg.CacheTTL) {
			dst[i].N = c.d.N
			dst[i].Next = append(dst[i].Next[:0], c.d.Next...)
			if age >= w.cfg.CacheTTL && !c.queued {
				c.queued = true
				w.cache[p] = c
				w.refresh = append(w.refresh, p)
			}
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
	w.keep(miss, got, now)
	for j, i := range missAt {
		dst[i].N = got[j].N
		dst[i].Next = append(dst[i].Next[:0], got[j].Next...)
	}
	return dst, nil
}

// keep tags the next pages of got (the statistics of pages read at now)
// and caches them.
func (w *shared) keep(pages []string, got []Dist, now time.Time) {
	w.tmu.Lock()
	for j := range got {
		for k := range got[j].Next {
			if x, ok := w.tags[got[j].Next[k].Page]; ok {
				got[j].Next[k].Index = x
			}
		}
	}
	w.tmu.Unlock()
	w.cmu.Lock()
	defer w.cmu.Unlock()
	if len(w.cache)+len(pages) > w.cfg.CachePages {
		clear(w.cache) // start afresh: a cache, not a store
		w.refresh = nil
	}
	for j, p := range pages {
		w.cache[p] = cached{d: Dist{N: got[j].N, Next: slices.Clone(got[j].Next)}, at: now}
	}
}

// reread reads again the pages Lookup queued.
func (w *shared) reread(ctx context.Context) error {
	w.cmu.Lock()
	pages := w.refresh
	w.refresh = nil
	w.cmu.Unlock()
	if len(pages) == 0 {
		return nil
	}
	// In parts of rereadPages, each its own round trip, so that Redis
	// serves the clicks' commands in between.
	for len(pages) > 0 {
		part := pages[:min(rereadPages, len(pages))]
		pages = pages[len(part):]
		if err := w.rereadPart(ctx, part); err != nil {
			w.unqueue(pages)
			return err
		}
	}
	return nil
}

// rereadPages bounds the pages read again in one round trip.
const rereadPages = 64

// rereadPart reads pages again and caches them; on failure they may be
// queued again.
func (w *shared) rereadPart(ctx context.Context, pages []string) error {
	now := w.now()
	got, err := w.Store.Lookup(ctx, pages, now, nil)
	if err != nil {
		w.unqueue(pages)
		return err
	}
	w.keep(pages, got, now)
	return nil
}

// unqueue lets the next Lookup of pages queue them again.
func (w *shared) unqueue(pages []string) {
	w.cmu.Lock()
	defer w.cmu.Unlock()
	for _, p := range pages {
		if c, ok := w.cache[p]; ok {
			c.queued = false // queued again by the next Lookup
			w.cache[p] = c
		}
	}
}
