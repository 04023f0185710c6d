//go:build !race

package model

import (
	"context"
	"testing"
)

// TestHotPathAllocs checks that PredictOne and Step do not allocate in
// steady state. (The race detector makes sync.Pool drop items on purpose,
// so this test only builds without it.)
func TestHotPathAllocs(t *testing.T) {
	b := gruBundle(t, 300, 16, 32)
	ctx := context.Background()
	h := history(20, 300)
	dst := make([]float32, 300)
	state := make([]float32, b.StateSize())
	tests := []struct {
		name string
		f    func()
	}{
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
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f()
			if n := testing.AllocsPerRun(100, tt.f); n != 0 {
				t.Errorf("%s: %v allocations per call, want 0", tt.name, n)
			}
		})
	}
}
