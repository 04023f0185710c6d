package engine

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/redis/go-redis/v9"
)

// TestPredictWarmIsInRedis runs Predict over a real Warmer on a real
// redis-server: a hint is warm only while its key is in the Redis serving
// now, whatever this process wrote or remembers. Two engines sharing the
// Redis (two replicas) answer alike; a flush makes both answer cold until
// the page is warmed again; with Redis down Predict answers cold without
// failing.
func TestPredictWarmIsInRedis(t *testing.T) {
	srv := redistest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	newReplica := func() *Engine {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
		t.Cleanup(func() { _ = rdb.Close() })
		w, err := prefetch.NewWarmer(prefetch.Config{CheckInterval: 50 * time.Millisecond}, rdb, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(runCtx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		ms := &models{}
		ms.set("v1", 1, &chainModel{vocab: vocab(t, "/a", "/b", "/c", "/d", "/e")})
		hist, err := features.NewHistories(features.HistoryConfig{MaxLen: 5}, nil)
		if err != nil {
			t.Fatal(err)
		}
		canon, err := features.NewCanonicalizer(features.CanonicalizerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		policy, err := prefetch.NewPolicy(prefetch.PolicyConfig{K: 1, Threshold: 0.5})
		if err != nil {
			t.Fatal(err)
		}
		eval, err := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		w.SetObserver(eval)
		e, err := New(Config{}, Deps{Models: ms, Histories: hist, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e1, e2 := newReplica(), newReplica()
	q := hint.Query{Pages: []string{"/a"}, Threshold: -1} // the chain model predicts /b
	warm := func(e *Engine) []bool {
		t.Helper()
		res, err := e.Predict(ctx, q)
		if err != nil {
			t.Fatalf("Predict: %v", err)
		}
		var out []bool
		for _, h := range res.Hints {
			if h.Page != "/b" {
				t.Fatalf("hints %+v, want /b", res.Hints)
			}
			out = append(out, h.Warm)
		}
		return out
	}
	both := func(want bool) bool {
		return slices.Equal(warm(e1), []bool{want}) && slices.Equal(warm(e2), []bool{want})
	}
	poll := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("%s: %v", what, ctx.Err())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	if !both(false) {
		t.Fatalf("before any click: warm %v and %v, want false", warm(e1), warm(e2))
	}
	// A click on /a on replica 1 warms /b: both replicas see it.
	ev, meta := click("u", "/a", 0, time.Now())
	if err := e1.HandleEvent(ctx, ev, meta); err != nil {
		t.Fatal(err)
	}
	poll("both replicas see /b warm", func() bool { return both(true) })

	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer admin.Close()
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if !both(false) {
		t.Errorf("after FLUSHALL: warm %v and %v, want false", warm(e1), warm(e2))
	}
	// The next prediction on replica 1 warms /b again, once it has noticed.
	offset := int64(0)
	poll("/b warmed again", func() bool {
		offset++
		ev, meta := click("u", "/a", offset, time.Now())
		if err := e1.HandleEvent(ctx, ev, meta); err != nil {
			t.Fatal(err)
		}
		return both(true)
	})

	srv.Stop()
	if got := warm(e1); !slices.Equal(got, []bool{false}) {
		t.Errorf("Redis down: warm %v, want false", got)
	}
}
