//go:build !race

package model

import (
	"context"
	"testing"
)

// TestHotPathAllocs checks that PredictOne, Step, StepTopK and PredictTopK
// (exact and clustered) do not allocate in
// steady state. (The race detector makes sync.Pool drop items on purpose,
// so this test only builds without it.)
func TestHotPathAllocs(t *testing.T) {
	b := gruBundle(t, 300, 16, 32)
	ctx := context.Background()
	h := history(20, 300)
	dst := make([]float32, 300)
	state := make([]float32, b.StateSize())
	type allocCase struct {
		name string
		f    func()
	}
	tests := []allocCase{
		{"PredictOne", func() {
			if _, err := b.PredictOne(ctx, h, dst); err != nil {
				t.Fatal(err)
			}
		}},
		{"Step", func() {
			if _, _, err := b.Step(ctx, 7, state, dst); err != nil {
				t.Fatal(err)
			}
		}},
	}
	big := topicBundle(t, 20_000, 32)
	if !big.Scoring().Approximate {
		t.Fatalf("Scoring() = %+v, want a clustered scorer", big.Scoring())
	}
	bigState := make([]float32, big.StateSize())
	hints := make([]Hint, 0, 5)
	for _, bb := range []struct {
		name  string
		b     *Bundle
		state []float32
	}{{"exact", b, state}, {"clustered", big, bigState}} {
		tests = append(tests,
			allocCase{"StepTopK " + bb.name, func() {
				if _, _, err := bb.b.StepTopK(ctx, 7, bb.state, 5, 0.01, hints); err != nil {
					t.Fatal(err)
				}
			}},
			allocCase{"PredictTopK " + bb.name, func() {
				if _, err := bb.b.PredictTopK(ctx, h, 5, 0.01, hints); err != nil {
					t.Fatal(err)
				}
			}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f()
			if n := testing.AllocsPerRun(100, tt.f); n != 0 {
				t.Errorf("%s: %v allocations per call, want 0", tt.name, n)
			}
		})
	}
}
