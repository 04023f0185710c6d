package training

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestNegSamplerExponent: the sampled softmax draws page i with
// probability (count_i + 1)^exponent / sum, for the exponent given (0
// uniform, 1 by popularity), and its logQ correction uses that probability.
func TestNegSamplerExponent(t *testing.T) {
	// Page 2 seen 7 times, page 3 once, pages 1 (unknown) and 4 never (the +1
	// keeps them drawable).
	seqs := [][]int64{{2, 2, 2, 3}, {2, 2, 2, 2}}
	const v = 5
	for _, tc := range []struct {
		name     string
		exponent float64
		want     [v]float64
	}{
		{"uniform", 0, [v]float64{0, 1. / 4, 1. / 4, 1. / 4, 1. / 4}},
		{"popularity", 1, [v]float64{0, 1. / 12, 8. / 12, 2. / 12, 1. / 12}},
		{"square root", 0.5, [v]float64{0, 1 / (2 + 3*math.Sqrt2), 2 * math.Sqrt2 / (2 + 3*math.Sqrt2), math.Sqrt2 / (2 + 3*math.Sqrt2), 1 / (2 + 3*math.Sqrt2)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newNegSamplerExp(seqs, v, tc.exponent)
			rng := rand.New(rand.NewPCG(1, 2))
			const draws = 200000
			var got [v]float64
			b := gruBatch{B: 1, S: 1, ids: []int64{0}}
			for range draws {
				for _, id := range s.draw(rng, 1, b) {
					got[id]++
				}
			}
			for i := 1; i < v; i++ {
				if q := math.Exp(s.logq[i]); math.Abs(q-tc.want[i]) > 1e-9 {
					t.Errorf("page %d: sampler probability %.6f, want %.6f", i, q, tc.want[i])
				}
				if f := got[i] / draws; math.Abs(f-tc.want[i]) > 0.01 {
					t.Errorf("page %d drawn with frequency %.4f, want %.4f", i, f, tc.want[i])
				}
			}
		})
	}
	for _, e := range []float64{-0.1, 2.5, math.NaN()} {
		if err := (GRUConfig{SampleExponent: &e}).Validate(); err == nil {
			t.Errorf("sampling exponent %v validated", e)
		}
	}
}
