package prefetch_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

func ExamplePolicy_Select() {
	policy, err := prefetch.NewPolicy(prefetch.PolicyConfig{}) // k 3, threshold 0.5
	if err != nil {
		fmt.Println(err)
		return
	}
	// Probabilities by vocabulary index: 0 is padding, 1 the unknown page.
	probs := []float32{0, 0.05, 0.1, 0.55, 0.2, 0.1}
	dst := make([]prefetch.Candidate, 0, policy.K())
	dst = policy.Select(probs, 2, 0, -1, dst) // the user is on page 2
	fmt.Println(dst)
	dst = policy.Select(probs, 2, 0, 0.15, dst) // per-request threshold
	fmt.Println(dst)
	// Output:
	// [{3 0.55}]
	// [{3 0.55} {4 0.2}]
}

func ExampleEvaluator() {
	ev, err := prefetch.NewEvaluator(prefetch.EvaluatorConfig{KeyTemplate: "page:{page}"}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	t0 := time.Date(1995, 7, 1, 0, 0, 0, 0, time.UTC)
	ev.SetModelVersion("v1")
	ev.ObservePrefetchBytes("alice", "/news", "v1", t0, 5*time.Minute, 1200)
	ev.ObservePrefetchBytes("alice", "/sports", "v1", t0, 5*time.Minute, 800)
	ev.ObserveClick("bob", "/news", t0.Add(time.Minute)) // shared key: warm for bob too
	ev.ObserveClick("alice", "/weather", t0.Add(2*time.Minute))
	ev.Advance(t0.Add(10 * time.Minute)) // /sports expires unused
	for _, s := range ev.Stats() {
		fmt.Printf("%s issued %d used %d precision %.2f coverage %.2f wasted %d bytes\n",
			s.ModelVersion, s.Issued, s.Used, s.Precision, s.Coverage, s.WastedBytes)
	}
	// Output:
	// v1 issued 2 used 1 precision 0.50 coverage 0.50 wasted 800 bytes
}

// ExampleWarmer wires a Warmer to Redis and an Evaluator; it needs a Redis
// server, so it is compiled but not run.
func ExampleWarmer() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
	defer rdb.Close()
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ev, err := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, reg)
	if err != nil {
		logger.Error("evaluator", "err", err)
		return
	}
	w, err := prefetch.NewWarmer(prefetch.Config{Mode: prefetch.ModeHint, TTL: 5 * time.Minute}, rdb, logger, reg)
	if err != nil {
		logger.Error("warmer", "err", err)
		return
	}
	w.SetObserver(ev)
	go func() { _ = w.Run(ctx) }()

	// On each click: evaluate it, predict, select, warm.
	ev.ObserveClick("alice", "/news", time.Now())
	w.Warm(ctx, prefetch.Request{
		UserID:       "alice",
		Pages:        []prefetch.Page{{Key: "/sports", Probability: 0.7}},
		ModelVersion: "v1",
		At:           time.Now(),
	})

	closeCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = w.Close(closeCtx) // flushes the queue
}
