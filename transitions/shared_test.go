package transitions

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/prefetchd/prefetchd/internal/redistest"
)

// countingStore is a Store that counts the calls reaching it.
type countingStore struct {
	Store
	mu               sync.Mutex
	observes, looks  int
	observed, looked int
}

func (c *countingStore) Observe(ctx context.Context, ts []Transition) error {
	c.mu.Lock()
	c.observes++
	c.observed += len(ts)
	c.mu.Unlock()
	return c.Store.Observe(ctx, ts)
}

func (c *countingStore) Lookup(ctx context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	c.mu.Lock()
	c.looks++
	c.looked += len(from)
	c.mu.Unlock()
	return c.Store.Lookup(ctx, from, at, dst)
}

// TestShare: with a flush interval, transitions reach the store in batches,
// at most one send per interval, and all of them; with a cache TTL, a
// page's statistics are read once per TTL; a zero config changes nothing.
func TestShare(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base, err := NewMemory(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner := &countingStore{Store: base.Store}
	base.Store = inner
	if Share(base, SharedConfig{}) != base {
		t.Fatal("a zero SharedConfig wrapped the store")
	}
	st := Share(base, SharedConfig{FlushInterval: time.Minute, CacheTTL: time.Minute})
	w := st.Store.(*shared)
	clock := time.Unix(1_000_000, 0)
	w.now = func() time.Time { return clock }
	at := clock
	tr := []Transition{{From: "/a", To: "/b", At: at}}

	// The first Observe sends (nothing sent yet); the next ones within the
	// interval are buffered.
	for range 10 {
		if err := st.Observe(ctx, tr); err != nil {
			t.Fatal(err)
		}
	}
	if inner.observes != 1 || inner.observed != 1 {
		t.Fatalf("store got %d calls with %d transitions within the interval, want 1 with 1", inner.observes, inner.observed)
	}
	clock = clock.Add(time.Minute)
	if err := st.Observe(ctx, tr); err != nil {
		t.Fatal(err)
	}
	if inner.observes != 2 || inner.observed != 11 {
		t.Fatalf("after the interval: %d calls, %d transitions; want 2 and 11 (nothing lost)", inner.observes, inner.observed)
	}

	// Reads: one store read per page per TTL, the same answer.
	d, err := st.Lookup(ctx, []string{"/a"}, at, nil)
	if err != nil || d[0].N < 10.9 || len(d[0].Next) != 1 || d[0].Next[0].Page != "/b" {
		t.Fatalf("lookup %+v (%v), want /a → /b with 11 transitions", d, err)
	}
	for range 5 {
		d2, _ := st.Lookup(ctx, []string{"/a", "/a"}, at, nil)
		if d2[1].N != d[0].N || d2[1].Next[0] != d[0].Next[0] {
			t.Fatalf("cached lookup %+v, want %+v", d2[1], d[0])
		}
	}
	if inner.looks != 1 {
		t.Fatalf("%d store reads within the TTL, want 1", inner.looks)
	}
	clock = clock.Add(time.Minute)
	if _, err := st.Lookup(ctx, []string{"/a"}, at, nil); err != nil || inner.looks != 2 {
		t.Fatalf("after the TTL: %d store reads (%v), want 2", inner.looks, err)
	}
}

// gatedStore is a Store whose calls wait while its gate is shut, and which
// drops the next pages' indexes it returns (as the Redis store has none).
type gatedStore struct {
	countingStore
	gate chan struct{} // a token per call that may pass; nil: open
}

func (g *gatedStore) pass(ctx context.Context) error {
	if g.gate == nil {
		return nil
	}
	select {
	case <-g.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gatedStore) Observe(ctx context.Context, ts []Transition) error {
	if err := g.pass(ctx); err != nil {
		return err
	}
	return g.countingStore.Observe(ctx, ts)
}

func (g *gatedStore) Lookup(ctx context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	if err := g.pass(ctx); err != nil {
		return dst, err
	}
	dst, err := g.countingStore.Lookup(ctx, from, at, dst)
	for i := range dst {
		for j := range dst[i].Next {
			dst[i].Next[j].Index = 0
		}
	}
	return dst, err
}

func (c *countingStore) counts() (observes, observed, looks int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.observes, c.observed, c.looks
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestShareRun: while Run runs, Observe and a stale Lookup never wait for
// the store, even a stuck one; a full buffer refuses transitions and says
// so, and every accepted one reaches the store, the last ones when Run
// stops; stale pages are read again in the background, pages stale past a
// second TTL are read by Lookup; next pages read back carry the indexes
// they were observed with.
func TestShareRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	base, err := NewMemory(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	inner := &gatedStore{countingStore: countingStore{Store: base.Store}, gate: gate}
	base.Store = inner
	const maxBuf = 64
	st := Share(base, SharedConfig{FlushInterval: 5 * time.Millisecond, MaxBuffered: maxBuf, CacheTTL: time.Minute})
	w := st.Store.(*shared)
	var clock atomic.Int64
	clock.Store(time.Unix(1_000_000, 0).UnixNano())
	w.now = func() time.Time { return time.Unix(0, clock.Load()) }
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = st.Run(runCtx) }()
	eventually(t, "Run did not start", w.running.Load)

	// The store is stuck: Observe still returns at once, until the buffer
	// is full.
	accepted, refused := 0, 0
	start := time.Now()
	for i := range 3 * maxBuf {
		err := st.Observe(ctx, []Transition{{From: "/a", To: "/b", At: w.now(), ToIndex: 7}})
		switch {
		case err == nil:
			accepted++
		case errors.Is(err, errBufferFull):
			refused++
		default:
			t.Fatalf("observe %d: %v", i, err)
		}
		if i == 0 {
			time.Sleep(30 * time.Millisecond) // Run takes the first one and blocks in the store
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("observes took %v with the store stuck", d)
	}
	if accepted < maxBuf || refused == 0 {
		t.Fatalf("accepted %d, refused %d of %d with a buffer of %d: want the buffer filled, then refusals", accepted, refused, 3*maxBuf, maxBuf)
	}
	if got := testutil.ToFloat64(st.m.dropped.WithLabelValues("buffer_full")); got != float64(refused) {
		t.Fatalf("dropped{buffer_full} %v, want the %d refused", got, refused)
	}
	close(gate) // the store works again
	eventually(t, "accepted transitions did not all reach the store", func() bool {
		_, n, _ := inner.counts()
		return n == accepted
	})

	// A Lookup reads the store once and tags the next page with its index.
	d := lookup(ctx, t, st, "/a", w.now())
	if len(d.Next) != 1 || d.Next[0].Page != "/b" || d.Next[0].Index != 7 || math.Abs(d.N-float64(accepted)) > 1e-6 {
		t.Fatalf("lookup %+v, want /a → /b, index 7, %d transitions", d, accepted)
	}
	_, _, looks := inner.counts()
	if looks != 1 {
		t.Fatalf("%d store reads, want 1", looks)
	}
	// Stale within a second TTL: served from the cache, read again by Run.
	clock.Add(int64(90 * time.Second))
	if d2 := lookup(ctx, t, st, "/a", w.now()); d2.N != d.N {
		t.Fatalf("stale lookup %+v, want the cached %+v", d2, d)
	}
	eventually(t, "Run did not read the stale page again", func() bool {
		_, _, l := inner.counts()
		return l == 2
	})
	// Past two TTLs: Lookup reads itself.
	clock.Add(int64(3 * time.Minute))
	_ = lookup(ctx, t, st, "/a", w.now())
	if _, _, l := inner.counts(); l != 3 {
		t.Fatalf("%d store reads after two TTLs, want 3", l)
	}

	// What is buffered when Run stops is sent.
	if err := st.Observe(ctx, []Transition{{From: "/b", To: "/c", At: w.now()}}); err != nil {
		t.Fatal(err)
	}
	stop()
	<-done
	if _, n, _ := inner.counts(); n != accepted+1 {
		t.Fatalf("store got %d transitions after Run stopped, want %d", n, accepted+1)
	}
}

// TestShareRunRedis: the same path against a real redis-server: transitions
// observed while Run runs reach Redis without the clicks waiting, and read
// back carry their indexes.
func TestShareRunRedis(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := redistest.Start(t)
	n := 0
	st := Share(onRedis(t, srv.Addr(), &n, Config{}, nil), SharedConfig{FlushInterval: 5 * time.Millisecond, CacheTTL: 20 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = st.Run(runCtx) }()
	defer func() { stop(); <-done }()
	eventually(t, "Run did not start", st.Store.(*shared).running.Load)
	now := time.Now()
	for i := range 30 {
		to, idx := "/b", int64(11)
		if i%3 == 0 {
			to, idx = "/c", 12
		}
		if err := st.Observe(ctx, []Transition{{From: "/a", To: to, At: now, ToIndex: idx}}); err != nil {
			t.Fatal(err)
		}
	}
	var d Dist
	eventually(t, "the transitions did not reach Redis", func() bool {
		d = lookup(ctx, t, st, "/a", now)
		return math.Abs(d.N-30) < 0.01
	})
	want := map[string]int64{"/b": 11, "/c": 12}
	if len(d.Next) != 2 {
		t.Fatalf("next pages %+v, want /b and /c", d.Next)
	}
	for _, nx := range d.Next {
		if nx.Index != want[nx.Page] {
			t.Errorf("next page %s has index %d, want %d", nx.Page, nx.Index, want[nx.Page])
		}
	}
}

// TestRereadInParts: Run reads stale pages again in round trips of at most
// rereadPages pages, every queued page once, so that one read never holds
// Redis for all of them; a failed part leaves its pages and the rest to be
// queued again.
func TestRereadInParts(t *testing.T) {
	ctx := context.Background()
	base, err := NewMemory(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner := &countingStore{Store: base.Store}
	base.Store = inner
	st := Share(base, SharedConfig{CacheTTL: time.Minute})
	w := st.Store.(*shared)
	clock := time.Unix(1_000_000, 0)
	w.now = func() time.Time { return clock }
	w.running.Store(true) // stale pages are queued for reread, as under Run
	const pages = 2*rereadPages + 7
	var from []string
	for i := range pages {
		from = append(from, "/p/"+string(rune('a'+i%26))+time.Duration(i).String())
	}
	if _, err := st.Lookup(ctx, from, clock, nil); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Minute + time.Second) // stale, still served
	if _, err := st.Lookup(ctx, from, clock, nil); err != nil {
		t.Fatal(err)
	}
	if len(w.refresh) != pages {
		t.Fatalf("%d pages queued, want %d", len(w.refresh), pages)
	}
	_, _, before := inner.counts()
	looked := inner.looked
	if err := w.reread(ctx); err != nil {
		t.Fatal(err)
	}
	_, _, after := inner.counts()
	if got, want := after-before, (pages+rereadPages-1)/rereadPages; got != want {
		t.Errorf("%d pages read again in %d round trips, want %d", pages, got, want)
	}
	if inner.looked-looked != pages {
		t.Errorf("%d pages read again, want %d", inner.looked-looked, pages)
	}
	for _, p := range from {
		if c := w.cache[p]; !c.at.Equal(clock) || c.queued {
			t.Fatalf("page %s cached at %v (queued %v), want read again at %v", p, c.at, c.queued, clock)
		}
	}

	// A failing store: the pages are unqueued, so that the next stale
	// Lookup queues them again.
	g := &gatedStore{countingStore: countingStore{Store: base.Store}, gate: make(chan struct{})}
	w.Store = g
	clock = clock.Add(time.Minute + time.Second)
	if _, err := st.Lookup(ctx, from, clock, nil); err != nil {
		t.Fatal(err)
	}
	failed, cancel := context.WithCancel(ctx)
	cancel()
	if err := w.reread(failed); err == nil {
		t.Fatal("reread with a failing store returned nil")
	}
	for _, p := range from {
		if w.cache[p].queued {
			t.Fatalf("page %s still marked queued after a failed reread", p)
		}
	}
}

// failOnceStore fails its first Observe.
type failOnceStore struct {
	Store
	failed atomic.Bool
}

func (f *failOnceStore) Observe(ctx context.Context, ts []Transition) error {
	if f.failed.CompareAndSwap(false, true) {
		return errors.New("store down")
	}
	return f.Store.Observe(ctx, ts)
}

// TestShareCountsFailedSends: the transitions of a send that failed are
// counted as dropped (send_failed); the next send goes through.
func TestShareCountsFailedSends(t *testing.T) {
	ctx := context.Background()
	base, err := NewMemory(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	base.Store = &failOnceStore{Store: base.Store}
	st := Share(base, SharedConfig{FlushInterval: time.Hour})
	w := st.Store.(*shared)
	at := time.Unix(1_000_000, 0)
	two := []Transition{{From: "/a", To: "/b", At: at}, {From: "/a", To: "/c", At: at}}
	// Without Run, the first Observe sends at once (nothing sent yet).
	if err := st.Observe(ctx, two); err == nil {
		t.Fatal("Observe with the store down: no error")
	}
	if got := testutil.ToFloat64(st.m.dropped.WithLabelValues("send_failed")); got != 2 {
		t.Fatalf("dropped{send_failed} %v, want 2", got)
	}
	for range 3 {
		if err := st.Observe(ctx, two); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush with the store back: %v", err)
	}
	if got := testutil.ToFloat64(st.m.dropped.WithLabelValues("send_failed")); got != 2 {
		t.Fatalf("dropped{send_failed} %v after a good send, want 2 still", got)
	}
	if d := lookup(ctx, t, st, "/a", at); math.Abs(d.N-6) > 1e-9 {
		t.Fatalf("evidence %v, want the 6 transitions sent after the failure", d.N)
	}
}
