package prefetch

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// countObserver counts written prefetches and closes done when the count
// reaches target.
type countObserver struct {
	mu     sync.Mutex
	n      int64
	target int64
	done   chan struct{}
}

func (c *countObserver) ObservePrefetchBytes(string, string, string, time.Time, time.Duration, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.n == c.target {
		close(c.done)
	}
}

func (c *countObserver) ForgetPrefetches() {}

// expect arms the observer for n more writes and returns the channel closed
// when they are seen.
func (c *countObserver) expect(n int64) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.target = c.n + n
	c.done = make(chan struct{})
	return c.done
}

func (c *countObserver) count() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// BenchmarkWarmThroughput measures pipelined writes per second to one real
// redis-server, the Warmer (Warm -> queue -> workers -> pipelined SET EX NX,
// hint records) beside bare go-redis pipelines of the same SET commands with
// the same pipeline size and number of goroutines, in the same run. It
// reports both rates and their ratio.
func BenchmarkWarmThroughput(b *testing.B) {
	const (
		batch    = 20000
		workers  = DefaultWorkers
		pipeSize = DefaultPipelineSize
		perReq   = 3
	)
	srv := redistest.Start(b)
	// Generous timeouts: the benchmark measures throughput, not timeouts.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	value, err := json.Marshal(HintRecord{Page: "/page/12345", Probability: 0.61, ModelVersion: "v1", ExpiresAt: time.Now()})
	if err != nil {
		b.Fatal(err)
	}

	bare := func(prefix string) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		per := batch / workers
		for g := range workers {
			wg.Go(func() {
				for lo := g * per; lo < (g+1)*per; lo += pipeSize {
					pipe := rdb.Pipeline()
					for i := lo; i < min(lo+pipeSize, (g+1)*per); i++ {
						pipe.SetNX(ctx, prefix+strconv.Itoa(i), value, DefaultTTL)
					}
					if _, err := pipe.Exec(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}

	// One Warmer for the whole run, as in the service.
	w, err := NewWarmer(Config{QueueSize: batch, Workers: workers, PipelineSize: pipeSize, MaxTracked: batch, WriteTimeout: 10 * time.Second}, rdb, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	obs := &countObserver{}
	w.SetObserver(obs)
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	defer func() {
		if err := w.Close(ctx); err != nil {
			b.Error(err)
		}
		if err := <-errc; err != nil {
			b.Error(err)
		}
	}()
	pages := make([]string, batch)
	warmer := func(prefix string) time.Duration {
		for i := range pages {
			pages[i] = prefix + strconv.Itoa(i)
		}
		done := obs.expect(batch)
		start := time.Now()
		req := Request{UserID: "u", ModelVersion: "v1", Pages: make([]Page, 0, perReq)}
		for i := 0; i < batch; i += perReq {
			req.Pages = req.Pages[:0]
			for j := i; j < min(i+perReq, batch); j++ {
				req.Pages = append(req.Pages, Page{Key: pages[j], Probability: 0.61})
			}
			w.Warm(ctx, req)
		}
		select {
		case <-done:
		case <-time.After(time.Minute):
			b.Fatalf("warmer wrote %d pages, want %d", obs.count(), batch)
		}
		return time.Since(start)
	}

	b.ReportAllocs()
	var bareTotal, warmTotal time.Duration
	ratios := make([]float64, 0, b.N)
	// unlink deletes the keys of an iteration. Not FLUSHDB: the Warmer would
	// take it for a lost cache and forget what it is writing.
	unlink := func(prefix string) {
		pipe := rdb.Pipeline()
		for i := range batch {
			pipe.Unlink(ctx, "bare:"+prefix+":"+strconv.Itoa(i), w.Key("u", "/warm/"+prefix+"/"+strconv.Itoa(i)))
			if pipe.Len() == 1000 || i == batch-1 {
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if i > 0 {
			unlink(strconv.Itoa(i - 1))
		}
		prefix := strconv.Itoa(i)
		b.StartTimer()
		// Alternate the order so that neither side always runs first.
		var bd, wd time.Duration
		if i%2 == 0 {
			bd = bare("bare:" + prefix + ":")
			wd = warmer("/warm/" + prefix + "/")
		} else {
			wd = warmer("/warm/" + prefix + "/")
			bd = bare("bare:" + prefix + ":")
		}
		bareTotal += bd
		warmTotal += wd
		ratios = append(ratios, bd.Seconds()/wd.Seconds())
	}
	bareRate := float64(batch*b.N) / bareTotal.Seconds()
	warmRate := float64(batch*b.N) / warmTotal.Seconds()
	slices.Sort(ratios)
	b.ReportMetric(bareRate, "bare_writes/s")
	b.ReportMetric(warmRate, "warmer_writes/s")
	b.ReportMetric(warmRate/bareRate, "ratio")
	b.ReportMetric(ratios[len(ratios)/2], "median_ratio")
}

// BenchmarkPresent measures the presence check behind a hint answer's warm
// flags (one pipeline of 3 EXISTS to a real redis-server) beside a bare PING
// round trip on the same client, alternating which runs first.
func BenchmarkPresent(b *testing.B) {
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w, err := NewWarmer(Config{}, rdb, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = w.Close(ctx) }()
	pages := []string{"/page/1", "/page/2", "/page/3"}
	if err := rdb.Set(ctx, w.Key("u", pages[1]), "v", time.Hour).Err(); err != nil {
		b.Fatal(err)
	}
	dst := make([]bool, 0, len(pages))
	b.ReportAllocs()
	var present, ping time.Duration
	for i := 0; i < b.N; i++ {
		order := [2]bool{i%2 == 0, i%2 != 0}
		for _, first := range order {
			start := time.Now()
			if first {
				dst = w.Present(ctx, "u", pages, dst)
				present += time.Since(start)
			} else {
				if err := rdb.Ping(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				ping += time.Since(start)
			}
		}
		if !dst[1] || dst[0] {
			b.Fatalf("Present = %v, want only /page/2", dst)
		}
	}
	b.ReportMetric(float64(present.Nanoseconds())/float64(b.N), "present_ns")
	b.ReportMetric(float64(ping.Nanoseconds())/float64(b.N), "ping_ns")
}
