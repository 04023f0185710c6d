package engine

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
)

// TestStepFormMatchesSequenceForm feeds clicks through a PyTorch-exported GRU
// with a step form: the engine advances each user's recurrent state one click
// at a time, and its scores must equal the sequence form on the whole history,
// also right after a model swap, when the state is rebuilt from the history.
func TestStepFormMatchesSequenceForm(t *testing.T) {
	bundle, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
	if err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	if !bundle.HasStep() {
		t.Fatal("fixture has no step form")
	}
	src := &models{}
	setLive := func(epoch uint32) {
		src.mu.Lock()
		src.live = &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Epoch: epoch}
		src.mu.Unlock()
	}
	setLive(1)
	hist, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 1e-9})
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	w := &probWarmer{}
	e, err := New(Config{}, Deps{Models: src, Histories: hist, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	v := bundle.Vocab()
	clicks := []int64{17, 42, 5, 99, 17, 3}
	var seq []int64
	for i, c := range clicks {
		if i == 3 {
			setLive(2) // a swap: the stored state is stale and must be rebuilt
		}
		seq = append(seq, c)
		ev := features.Event{UserID: "u", Page: v.Page(c), TS: time.Now()}
		if err := e.HandleEvent(ctx, ev, features.Meta{Offset: int64(i)}); err != nil {
			t.Fatalf("click %d: %v", i, err)
		}
		want, err := bundle.PredictOne(ctx, seq, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := w.last
		if len(got) == 0 {
			t.Fatalf("click %d: nothing warmed", i)
		}
		for _, p := range got {
			idx := v.Index(p.Key)
			if d := math.Abs(float64(p.Probability - want[idx])); d > 1e-5 {
				t.Fatalf("click %d page %s: step-form probability %v, sequence form %v", i, p.Key, p.Probability, want[idx])
			}
		}
	}
}

type probWarmer struct{ last []prefetch.Page }

func (w *probWarmer) Warm(_ context.Context, r prefetch.Request) int {
	w.last = append(w.last[:0], r.Pages...)
	return len(r.Pages)
}
