package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/transitions"
)

type nopWarmer struct{}

func (nopWarmer) Warm(context.Context, prefetch.Request) int { return 0 }

func (nopWarmer) Present(_ context.Context, _ string, pages []string, dst []bool) []bool {
	return absent(pages, dst)
}

// absent reports every page absent from the cache.
func absent(pages []string, dst []bool) []bool {
	return append(dst[:0], make([]bool, len(pages))...)
}

// benchEngine is an engine on the bundled Markov model with real histories,
// policy and evaluator; only the Redis writer is left out.
func benchEngine(b *testing.B) (*Engine, *model.Bundle) {
	b.Helper()
	fsys, dir := embedded.Model()
	bundle, err := model.LoadBundleFS(fsys, dir)
	if err != nil {
		b.Fatal(err)
	}
	return benchEngineWith(b, bundle, nil), bundle
}

// benchEngineWith is benchEngine on bundle with online statistics (nil:
// none).
func benchEngineWith(b *testing.B, bundle *model.Bundle, stats *transitions.Stats) *Engine {
	b.Helper()
	mgr, err := lifecycle.Static(context.Background(), bundle, lifecycle.Config{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	hist, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{Threshold: 0.3})
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	e, err := New(Config{}, Deps{Models: mgr, Histories: hist, Canon: canon, Policy: policy, Warmer: nopWarmer{}, Evaluator: eval, Transitions: stats}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// BenchmarkHandleEvent is the per-click cost of the engine (canonicalize,
// history, model, policy, evaluation) beside the bare model call on the same
// history length, measured in the same run.
func BenchmarkHandleEvent(b *testing.B) {
	e, bundle := benchEngine(b)
	ctx := context.Background()
	pages := make([]string, 64)
	for i := range pages {
		pages[i] = "/page/" + strconv.Itoa(2+i)
	}
	users := make([]string, 1024)
	for i := range users {
		users[i] = "user-" + strconv.Itoa(i)
	}
	// Offsets go on from run to run (-count > 1 reuses the engine): a
	// repeated one would be a duplicate.
	var offset int64
	b.Run("engine", func(b *testing.B) {
		b.ReportAllocs()
		at := time.Now()
		for i := 0; b.Loop(); i++ {
			ev := features.Event{UserID: users[i%len(users)], Page: pages[(i*7)%len(pages)], TS: at}
			offset++
			if err := e.HandleEvent(ctx, ev, features.Meta{Partition: 0, Offset: offset}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-model-only", func(b *testing.B) {
		b.ReportAllocs()
		hist := make([]int64, 20)
		for i := range hist {
			hist[i] = int64(2 + i)
		}
		var dst []float32
		for b.Loop() {
			var err error
			if dst, err = bundle.PredictOne(ctx, hist, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPredict is the engine side of a Predict call from a stored history.
func BenchmarkPredict(b *testing.B) {
	e, _ := benchEngine(b)
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		ev := features.Event{UserID: "u", Page: "/page/" + strconv.Itoa(2+i), TS: time.Now()}
		if err := e.HandleEvent(ctx, ev, features.Meta{Offset: int64(i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.Predict(ctx, hint.Query{UserID: "u", Threshold: -1}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStepClicks is the engine's per-click cost with a GRU step-form
// model (the PyTorch fixture) for 256 users, on the in-memory store and on a
// RedisStore on a real redis-server: one HandleEvent per click (as with
// --ingest-batch 1, or a gRPC stream of single events) beside HandleEvents
// runs of 64 clicks (one StepMany per wave and, with Redis, one pipelined
// round trip for the wave's appends and one for its saves), measured in the
// same run.
func BenchmarkStepClicks(b *testing.B) {
	bundle, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
	if err != nil {
		b.Fatal(err)
	}
	stores := storeBackends(b)
	ctx := context.Background()
	v := bundle.Vocab()
	for _, st := range stores {
		for _, mode := range []string{"one-by-one", "runs-of-64"} {
			b.Run(st.name+"/"+mode, func(b *testing.B) {
				src := &models{live: &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: v, Tag: 1}}
				canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
				policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{Threshold: 0.3})
				eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
				// A key prefix per run: with -count > 1 the runs share the
				// server, and the same offsets would be duplicates.
				prefix := fmt.Sprintf("%s-%d:", mode, time.Now().UnixNano())
				e, err := New(Config{}, Deps{Models: src, Histories: st.mk(prefix), Canon: canon, Policy: policy, Warmer: nopWarmer{}, Evaluator: eval}, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				const run = 64
				evs := make([]features.Event, run)
				metas := make([]features.Meta, run)
				errs := make([]error, run)
				at := time.Now()
				b.ReportAllocs()
				clicks := 0
				for i := 0; b.Loop(); i++ {
					for j := range evs {
						k := i*run + j
						evs[j] = features.Event{UserID: "user-" + strconv.Itoa(k%256), Page: v.Page(int64(2 + (k*7)%(v.Len()-2))), TS: at}
						metas[j] = features.Meta{Partition: 0, Offset: int64(k)}
					}
					if mode == "one-by-one" {
						for j := range evs {
							if err := e.HandleEvent(ctx, evs[j], metas[j]); err != nil {
								b.Fatal(err)
							}
						}
					} else if n := e.HandleEvents(ctx, evs, metas, errs); n != run || errors.Join(errs...) != nil {
						b.Fatalf("HandleEvents = %d, %v", n, errs)
					}
					clicks += run
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(clicks), "ns/click")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
