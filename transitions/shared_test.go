package transitions

import (
	"context"
	"sync"
	"testing"
	"time"
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
