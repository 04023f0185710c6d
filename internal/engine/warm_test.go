package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
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

// TestRequestCarriesClick checks that every prefetch request names the
// click's page and record timestamp, one click at a time and in runs (waves).
func TestRequestCarriesClick(t *testing.T) {
	base := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	evs := []features.Event{
		{UserID: "a", Page: "/page/2", TS: base},
		{UserID: "b", Page: "/page/3", TS: base.Add(time.Second)},
		{UserID: "a", Page: "/page/4", TS: base.Add(2 * time.Second)},
	}
	metas := make([]features.Meta, len(evs))
	for i := range metas {
		metas[i] = features.Meta{Offset: int64(i), Time: base.Add(time.Duration(i)*time.Second + 5*time.Millisecond)}
	}
	for _, tc := range []struct {
		name string
		run  func(ctx context.Context, e *Engine) error
	}{
		{"HandleEvent", func(ctx context.Context, e *Engine) error {
			for i := range evs {
				if err := e.HandleEvent(ctx, evs[i], metas[i]); err != nil {
					return err
				}
			}
			return nil
		}},
		{"HandleEvents", func(ctx context.Context, e *Engine) error {
			errs := make([]error, len(evs))
			e.HandleEvents(ctx, evs, metas, errs)
			return errors.Join(errs...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			hist, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
			e, w, _, _ := gruEngine(t, hist)
			if err := tc.run(ctx, e); err != nil {
				t.Fatal(err)
			}
			if len(w.reqs) != len(evs) {
				t.Fatalf("%d requests, want %d", len(w.reqs), len(evs))
			}
			for _, r := range w.reqs {
				i := slices.IndexFunc(evs, func(ev features.Event) bool { return ev.TS.Equal(r.At) })
				if i < 0 {
					t.Fatalf("request at %v matches no click", r.At)
				}
				if r.UserID != evs[i].UserID || r.Page != evs[i].Page || !r.Recorded.Equal(metas[i].Time) {
					t.Errorf("request %s %s recorded %v; want %s %s recorded %v",
						r.UserID, r.Page, r.Recorded, evs[i].UserID, evs[i].Page, metas[i].Time)
				}
			}
		})
	}
}

// recEval records the times the engine gives the Evaluator.
type recEval struct {
	mu  sync.Mutex
	ats map[string]time.Time // by user
}

func (r *recEval) ObserveClick(user, _ string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ats[user] = at
}

// TestEvaluatorSeesClickTime: the Evaluator judges a click at its
// prefetch.JudgeTime (its record time, else its ts), not at its raw ts, so
// a client clock that is off cannot move a click to the other side of a
// page's landing.
func TestEvaluatorSeesClickTime(t *testing.T) {
	rec := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	evs := []features.Event{
		{UserID: "ahead", Page: "/page/2", TS: rec.Add(time.Hour)},
		{UserID: "slightly-ahead", Page: "/page/2", TS: rec.Add(10 * time.Second)},
		{UserID: "far-behind", Page: "/page/2", TS: rec.Add(-2 * time.Hour)},
		{UserID: "slightly-behind", Page: "/page/2", TS: rec.Add(-3 * time.Second)},
		{UserID: "no-record-time", Page: "/page/2", TS: rec.Add(-20 * time.Millisecond)},
		{UserID: "grpc-right", Page: "/page/2", TS: rec.Add(-5 * time.Second)},
		{UserID: "grpc-ahead", Page: "/page/2", TS: rec.Add(time.Hour)},
	}
	want := map[string]time.Time{"ahead": rec, "slightly-ahead": rec, "far-behind": rec, "slightly-behind": rec,
		"no-record-time": rec.Add(-20 * time.Millisecond),
		// gRPC Ingest: taken in at rec, judged at ts unless it is after
		// that or more than a minute before.
		"grpc-right": rec.Add(-5 * time.Second), "grpc-ahead": rec}
	metas := make([]features.Meta, len(evs))
	for i := range metas {
		metas[i] = features.Meta{Offset: int64(i), Time: rec}
	}
	metas[4].Time = time.Time{}
	metas[5] = features.Meta{Partition: -1, Offset: -1, Time: rec, Receipt: true}
	metas[6] = features.Meta{Partition: -1, Offset: -1, Time: rec, Receipt: true}
	bundle, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
	if err != nil {
		t.Fatal(err)
	}
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			hist, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
			canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
			policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 1e-9})
			ev := &recEval{ats: map[string]time.Time{}}
			src := &models{live: &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Tag: 1}}
			e, err := New(Config{}, Deps{Models: src, Histories: hist, Canon: canon, Policy: policy, Warmer: &allWarmer{}, Evaluator: ev}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if batch {
				errs := make([]error, len(evs))
				e.HandleEvents(ctx, evs, metas, errs)
				if err := errors.Join(errs...); err != nil {
					t.Fatal(err)
				}
			} else {
				for i := range evs {
					if err := e.HandleEvent(ctx, evs[i], metas[i]); err != nil {
						t.Fatal(err)
					}
				}
			}
			for user, w := range want {
				if got := ev.ats[user]; !got.Equal(w) {
					t.Errorf("%s: evaluator saw %v, want %v", user, got, w)
				}
			}
		})
	}
}
