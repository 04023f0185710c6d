package transitions_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/cputime"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/transitions"
)

// nasaTransitions are the transitions of NASA July 1995 sessions as the
// service sees them: 1,024 users at a time, a millisecond apart.
func nasaTransitions(b *testing.B, n int) []transitions.Transition {
	b.Helper()
	clicks, err := embedded.NASAClicks(1024, 2*n, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		b.Fatal(err)
	}
	last := map[string]string{}
	var ts []transitions.Transition
	for _, c := range clicks {
		if from, ok := last[c.User]; ok && len(ts) < n {
			ts = append(ts, transitions.Transition{From: from, To: c.Page, At: c.At})
		}
		last[c.User] = c.Page
	}
	return ts
}

// BenchmarkRedisObserve is the cost of the shared statistics in
// redis-server: NASA transitions sent in batches (as --online-flush-interval
// sends them: 1,024 is 100 ms at 10,000 clicks/s), and the source pages of
// a batch read back in one call (a cache miss for each). It reports
// redis-server's CPU time (INFO cpu) and this process's per transition and
// per page read.
func BenchmarkRedisObserve(b *testing.B) {
	ctx := context.Background()
	srv := redistest.Start(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	ts := nasaTransitions(b, 200_000)
	for _, batch := range []int{64, 1024, 8192} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			if err := c.FlushAll(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			s, err := transitions.NewRedis(transitions.Config{}, c, nil)
			if err != nil {
				b.Fatal(err)
			}
			var from []string
			var dst []transitions.Dist
			var observeCPU, lookupCPU, observeRedis, lookupRedis time.Duration
			observed, looked := 0, 0
			for i := 0; b.Loop(); i++ {
				lo := i * batch % (len(ts) - batch)
				part := ts[lo : lo+batch]
				cpu, rcpu := cputime.Used(), redistest.CPUTime(b, c)
				if err := s.Observe(ctx, part); err != nil {
					b.Fatal(err)
				}
				cpu2, rcpu2 := cputime.Used(), redistest.CPUTime(b, c)
				from = from[:0]
				for _, t := range part {
					from = append(from, t.From)
				}
				if dst, err = s.Lookup(ctx, from, part[len(part)-1].At, dst); err != nil {
					b.Fatal(err)
				}
				cpu3, rcpu3 := cputime.Used(), redistest.CPUTime(b, c)
				observeCPU += cpu2 - cpu
				observeRedis += rcpu2 - rcpu
				lookupCPU += cpu3 - cpu2
				lookupRedis += rcpu3 - rcpu2
				observed += len(part)
				looked += len(from)
			}
			b.ReportMetric(float64(observeRedis.Nanoseconds())/float64(observed), "redis-cpu-ns/observed")
			b.ReportMetric(float64(observeCPU.Nanoseconds())/float64(observed), "cpu-ns/observed")
			b.ReportMetric(float64(lookupRedis.Nanoseconds())/float64(looked), "redis-cpu-ns/looked-up")
			b.ReportMetric(float64(lookupCPU.Nanoseconds())/float64(looked), "cpu-ns/looked-up")
		})
	}
}
