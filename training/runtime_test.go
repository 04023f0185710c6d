package training

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/model"
)

// synthSessions returns sessions over pages /p2../p9 with a second-order
// pattern, so that both models have something to learn.
func synthSessions(n int, seed uint64) []Session {
	rng := rand.New(rand.NewPCG(seed, 1))
	var out []Session
	for range n {
		var s Session
		a := 2 + rng.IntN(4)
		for range 2 + rng.IntN(6) {
			s.Pages = append(s.Pages, "/p"+string(rune('0'+a)))
			a = 2 + (a*3+rng.IntN(2))%8
		}
		out = append(out, s)
	}
	return out
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		m = max(m, math.Abs(float64(a[i]-b[i])))
	}
	return m
}

// TestRuntimeReproducesTrainers writes Markov and GRU bundles, loads them
// with the service's runtime (which also runs the manifest's golden cases)
// and compares its probabilities with the trainers' own forward passes.
func TestRuntimeReproducesTrainers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sessions := synthSessions(300, 5)
	v, err := BuildVocab(sessions, VocabConfig{})
	if err != nil {
		t.Fatal(err)
	}
	seqs := Encode(v, sessions)
	mk, err := TrainMarkov(seqs, v.Len(), MarkovConfig{})
	if err != nil {
		t.Fatal(err)
	}
	gru, _, err := TrainGRU(ctx, nil, seqs, v.Len(), GRUConfig{Embedding: 6, Hidden: 10, Epochs: 2, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	skip, _, err := TrainGRU(ctx, nil, seqs, v.Len(), GRUConfig{Embedding: 6, Hidden: 10, Epochs: 2, Seed: 3, Skip: new(true)})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := GRUBundle(skip, v, ManifestConfig{Name: "s", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	mb, err := MarkovBundle(mk, v, ManifestConfig{Name: "m", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	gb, err := GRUBundle(gru, v, ManifestConfig{Name: "g", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	// A GRU of the default size with random weights and a larger
	// vocabulary whose pages keep the synthetic sessions' indices.
	big := &GRU{p: newGRUParams(1000, 48, 128)}
	big.p.init(rand.New(rand.NewPCG(9, 9)))
	pagesBig := make([]string, 1000)
	for i := range pagesBig {
		pagesBig[i] = v.Page(int64(i))
		if i >= v.Len() {
			pagesBig[i] = fmt.Sprintf("/extra/%d", i)
		}
	}
	vbig, err := model.NewVocab(pagesBig)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := GRUBundle(big, vbig, ManifestConfig{Name: "big", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	// Short histories: the golden cases must be cut as the runtime cuts
	// histories, or the bundle fails its own golden cases at load.
	short, err := GRUBundle(gru, v, ManifestConfig{Name: "short", Version: "1", MaxSeqLen: 3})
	if err != nil {
		t.Fatal(err)
	}
	one, err := MarkovBundle(mk, v, ManifestConfig{Name: "one", Version: "1", MaxSeqLen: 1})
	if err != nil {
		t.Fatal(err)
	}
	histories := [][]int64{{}, {1}, {2}, {3, 4}, {5, 2, 7, 3, 1, 6}, {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3}}
	tests := []struct {
		name   string
		bundle *Bundle
		p      Predictor
		g      *GRU
	}{{"markov1", mb, mk, nil}, {"gru", gb, gru, gru}, {"gru with last-page skip", sb, skip, skip}, {"gru vocab 1000 hidden 128", bb, big, big},
		{"gru max-seq-len 3", short, gru, gru}, {"markov1 max-seq-len 1", one, mk, nil}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), tc.name)
			if err := WriteBundle(dir, tc.bundle); err != nil {
				t.Fatal(err)
			}
			rb, err := model.LoadBundle(dir)
			if err != nil {
				t.Fatalf("model.LoadBundle: %v", err)
			}
			if rb.Manifest().Cell != tc.bundle.Manifest.Cell || len(rb.Manifest().Golden) == 0 {
				t.Fatalf("runtime manifest %+v, want cell %s with golden cases", rb.Manifest(), tc.bundle.Manifest.Cell)
			}
			for _, h := range histories {
				got, err := rb.PredictOne(ctx, h, nil)
				if err != nil {
					t.Fatalf("PredictOne(%v): %v", h, err)
				}
				row := h
				if n := tc.bundle.Manifest.MaxSeqLen; len(row) > n {
					row = row[len(row)-n:]
				}
				if len(row) == 0 {
					row = []int64{model.PadIndex} // the runtime's empty history
				}
				want := tc.p.Predict(row, nil)
				if d := maxAbsDiff(got, want); d > 1e-5 {
					t.Errorf("history %v: runtime differs from trainer by %g (> 1e-5)", h, d)
				}
			}
			batch, err := rb.Predict(ctx, histories[2:5])
			if err != nil {
				t.Fatalf("Predict: %v", err)
			}
			for i, h := range histories[2:5] {
				if n := tc.bundle.Manifest.MaxSeqLen; len(h) > n {
					h = h[len(h)-n:]
				}
				if d := maxAbsDiff(batch[i], tc.p.Predict(h, nil)); d > 1e-5 {
					t.Errorf("batched history %v: runtime differs by %g", h, d)
				}
			}
			if tc.g == nil {
				return
			}
			if !rb.HasStep() {
				t.Fatal("gru bundle has no step form")
			}
			var state, probs []float32
			h := histories[4]
			for _, id := range h {
				probs, state, err = rb.Step(ctx, id, state, probs)
				if err != nil {
					t.Fatalf("Step: %v", err)
				}
			}
			if d := maxAbsDiff(probs, tc.g.Predict(h, nil)); d > 1e-5 {
				t.Errorf("step form after %v differs from the trainer by %g", h, d)
			}
			_, wantState := tc.g.stepAll(h)
			if d := maxAbsDiff(state, wantState); d > 1e-5 {
				t.Errorf("state_out differs from the trainer's state by %g", d)
			}
		})
	}
}

// stepAll runs the trainer's step path over h from the zero state.
func (g *GRU) stepAll(h []int64) (probs, state []float32) {
	for _, id := range h {
		probs, state = g.Step(id, state)
	}
	return probs, state
}
