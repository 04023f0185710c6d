package model

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"
)

// TestVerifyIndex checks the load-time probes of the clustered scorer: an
// output layer it scores within its bounds keeps it (topicOutput, the
// layer its error model was tuned on), one it does not (wide random rows
// and a popularity bias, whose distributions are far peakier) scores
// exactly, says why, and gives the exact hints.
func TestVerifyIndex(t *testing.T) {
	const vocab, hidden = 20_000, 32
	ctx := context.Background()
	topicW, topicB := topicOutput(vocab, hidden, 3)
	randW, randB := lcgWeights(vocab*hidden, 11, 6), make([]float32, vocab)
	for i := range randB {
		randB[i] = float32(-math.Log(float64(i + 1)))
	}
	for _, tc := range []struct {
		name   string
		w, b   []float32
		approx bool
	}{
		{"topics", topicW, topicB, true},
		{"wide rows, popularity bias", randW, randB, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq, step := gruGraphsOut(vocab, 8, hidden, tc.w, tc.b)
			b := graphsBundle(t, vocab, seq, step)
			sc := b.Scoring()
			if sc.Approximate != tc.approx || (sc.Exact != "") == tc.approx {
				t.Fatalf("Scoring = %+v, want approximate %t (and a reason when exact)", sc, tc.approx)
			}
			if !tc.approx && !strings.Contains(sc.Exact, "missed the exact hints") {
				t.Errorf("Scoring.Exact = %q, want the probes' result", sc.Exact)
			}
			if tc.approx {
				return
			}
			// Exact scoring: StepTopK gives Step's selection.
			var state []float32
			for _, id := range []int64{5, 900, 17_000} {
				before := slices.Clone(state)
				got, next, err := b.StepTopK(ctx, id, before, 5, 0.01, nil)
				if err != nil {
					t.Fatal(err)
				}
				probs, exact, err := b.Step(ctx, id, state, nil)
				if err != nil {
					t.Fatal(err)
				}
				if want := SelectTopK(probs, 5, 0.01, nil); !slices.Equal(got, want) {
					t.Fatalf("StepTopK after %d = %v, want Step's %v", id, got, want)
				}
				state = exact
				_ = next
			}
		})
	}
}
