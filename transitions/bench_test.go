package transitions

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/redistest"
)

// fill observes pages source pages with next next pages each, page names
// like the NASA replay's ("/page/12345").
func fill(ctx context.Context, tb testing.TB, s *Stats, pages, next int) {
	tb.Helper()
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ts := make([]Transition, 0, next)
	for p := range pages {
		ts = ts[:0]
		for n := range next {
			ts = append(ts, Transition{From: fmt.Sprintf("/page/%d", p), To: fmt.Sprintf("/page/%d", (p*7+n*13)%100_000), At: t0.Add(time.Duration(p) * time.Millisecond)})
		}
		if err := s.Observe(ctx, ts); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkMemoryPerPage reports the heap held per source page in process,
// with 8 and with 32 (the default max) next pages each.
func BenchmarkMemoryPerPage(b *testing.B) {
	ctx := context.Background()
	for _, next := range []int{8, 32} {
		b.Run(fmt.Sprintf("next=%d", next), func(b *testing.B) {
			const pages = 20_000
			var perPage float64
			for range b.N {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				s, err := NewMemory(Config{MaxPages: pages}, nil)
				if err != nil {
					b.Fatal(err)
				}
				fill(ctx, b, s, pages, next)
				runtime.GC()
				runtime.ReadMemStats(&after)
				perPage = float64(after.HeapAlloc-before.HeapAlloc) / pages
				runtime.KeepAlive(s)
			}
			b.ReportMetric(perPage, "B/page")
		})
	}
}

// BenchmarkRedisMemoryPerPage reports redis-server's MEMORY USAGE of a
// source page's hash with 8 and 32 next pages.
func BenchmarkRedisMemoryPerPage(b *testing.B) {
	ctx := context.Background()
	srv := redistest.Start(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	for _, next := range []int{8, 32} {
		b.Run(fmt.Sprintf("next=%d", next), func(b *testing.B) {
			var usage int64
			for i := range b.N {
				s, err := NewRedis(Config{KeyPrefix: fmt.Sprintf("b%d-%d:", next, i)}, c, nil)
				if err != nil {
					b.Fatal(err)
				}
				fill(ctx, b, s, 100, next)
				usage = 0
				for p := range 100 {
					usage += c.MemoryUsage(ctx, fmt.Sprintf("b%d-%d:c:/page/%d", next, i, p)).Val()
				}
			}
			b.ReportMetric(float64(usage)/100, "B/page")
		})
	}
}

// BenchmarkObserveLookup is the per-click cost in process: one transition
// observed and one page looked up, over 10,000 source pages.
func BenchmarkObserveLookup(b *testing.B) {
	ctx := context.Background()
	s, err := NewMemory(Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	fill(ctx, b, s, 10_000, 8)
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	ts := make([]Transition, 1)
	from := make([]string, 1)
	pages := make([]string, 10_000)
	for i := range pages {
		pages[i] = fmt.Sprintf("/page/%d", i)
	}
	var dst []Dist
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ts[0] = Transition{From: pages[i%10_000], To: pages[(i*31)%10_000], At: t0.Add(time.Duration(i) * time.Millisecond)}
		if err := s.Observe(ctx, ts); err != nil {
			b.Fatal(err)
		}
		from[0] = pages[(i*31)%10_000]
		if dst, err = s.Lookup(ctx, from, ts[0].At, dst); err != nil {
			b.Fatal(err)
		}
	}
}
