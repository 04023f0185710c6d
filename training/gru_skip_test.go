package training

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// skipGRU is a tiny GRU with a random last-page skip term.
func skipGRU(t *testing.T, v, d, h int) gruParams {
	t.Helper()
	p := tinyGRU(t, v, d, h)
	p.Skip = make([]float32, v*h)
	rng := rand.New(rand.NewPCG(7, 8))
	for i := h; i < len(p.Skip); i++ {
		p.Skip[i] = float32(rng.NormFloat64())
	}
	return p
}

// TestGRUSkipPredictMatchesTraining: with the skip term, Predict, Step and
// PredictSession give the probabilities of the training forward pass
// (which adds Skip[last page] to the state), and they differ from those of
// the same weights without the term.
func TestGRUSkipPredictMatchesTraining(t *testing.T) {
	p := skipGRU(t, 9, 4, 5)
	g := &GRU{p: p}
	seq := []int64{3, 8, 2, 1, 6, 4}
	w := &gruWork{}
	p.forward(packBatch([][]int64{seq}), w)
	if len(w.pos) != len(seq)-1 {
		t.Fatalf("forward collected %d positions, want %d", len(w.pos), len(seq)-1)
	}
	plain := &GRU{p: p}
	plain.p.Skip = nil
	want := make([]float32, p.V)
	var state []float32
	var stepProbs []float32
	for k := range w.pos {
		prefix := seq[:k+1]
		p.output(w.hout[k*p.H:(k+1)*p.H], want)
		if got := g.Predict(prefix, nil); !closeTo(got, want, 1e-6) {
			t.Errorf("Predict(%v) = %v, training forward gives %v", prefix, got, want)
		}
		if d := maxAbsDiff(plain.Predict(prefix, nil), want); d < 1e-3 {
			t.Errorf("Predict(%v) without the skip term differs by only %g", prefix, d)
		}
		stepProbs, state = g.Step(seq[k], state)
		if !closeTo(stepProbs, want, 1e-6) {
			t.Errorf("Step after %v = %v, training forward gives %v", prefix, stepProbs, want)
		}
	}
	n := 0
	g.PredictSession(seq, 3, func(i int, probs []float32) {
		n++
		hist := seq[max(0, i-3):i]
		if want := g.Predict(hist, nil); !closeTo(probs, want, 1e-6) {
			t.Errorf("PredictSession at %d = %v, Predict(%v) gives %v", i, probs, hist, want)
		}
	})
	if n != len(seq)-1 {
		t.Errorf("PredictSession scored %d positions, want %d", n, len(seq)-1)
	}
	// An empty history reads the padding row, which stays zero.
	if got, want := g.Predict(nil, nil), plain.Predict(nil, nil); !closeTo(got, want, 1e-7) {
		t.Errorf("empty history: %v with the skip term, %v without", got, want)
	}
}

// TestTrainGRUSkipSetting: unset takes the default, true and false are
// kept, and the trained model has the term exactly when asked.
func TestTrainGRUSkipSetting(t *testing.T) {
	seqs := [][]int64{{2, 3, 4, 5}, {3, 4, 2}, {5, 4, 3, 2}, {2, 5, 3}}
	for _, tc := range []struct {
		name string
		skip *bool
		want bool
	}{{"unset", nil, defaultSkip}, {"true", new(true), true}, {"false", new(false), false}} {
		t.Run(tc.name, func(t *testing.T) {
			g, stats, err := TrainGRU(t.Context(), nil, seqs, 6, GRUConfig{Embedding: 3, Hidden: 4, Epochs: 1, Skip: tc.skip})
			if err != nil {
				t.Fatal(err)
			}
			if stats.Skip != tc.want || (g.p.Skip != nil) != tc.want {
				t.Errorf("stats.Skip %v, model has the term: %v; want %v", stats.Skip, g.p.Skip != nil, tc.want)
			}
			if tc.want && !slices.ContainsFunc(g.p.Skip[g.p.H:], func(v float32) bool { return v != 0 }) {
				t.Error("the skip term was not trained: all zero")
			}
		})
	}
}
