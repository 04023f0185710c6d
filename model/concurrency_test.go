package model

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestConcurrentUse runs one bundle from 8 goroutines at once (Predict,
// PredictOne and Step) and checks every result against a serial run.
func TestConcurrentUse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := LoadBundle("testdata/gru-probs-opset13")
	if err != nil {
		t.Fatal(err)
	}
	hs := [][]int64{{5}, {7, 9, 11}, {3, 3, 3, 3, 3, 3}, {150, 2, 60, 1, 4}, {}}
	want, err := b.Predict(ctx, hs)
	if err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 8, 40
	concurrently(t, workers, rounds, func(w int, errs chan<- string) {
		var dst, state, probs []float32
		for r := range rounds {
			i := (w + r) % len(hs)
			var err error
			switch r % 3 {
			case 0:
				var got [][]float32
				if got, err = b.Predict(ctx, hs); err == nil {
					for j := range got {
						if d := maxDiff(got[j], want[j]); d > 1e-6 {
							errs <- "Predict differs"
						}
					}
				}
			case 1:
				if dst, err = b.PredictOne(ctx, hs[i], dst); err == nil && maxDiff(dst, want[i]) > 1e-6 {
					errs <- "PredictOne differs"
				}
			case 2:
				state = state[:0]
				for _, id := range hs[i] {
					if probs, state, err = b.Step(ctx, id, state, probs); err != nil {
						break
					}
				}
				if err == nil && len(hs[i]) > 0 && maxDiff(probs, want[i]) > 1e-5 {
					errs <- "Step differs"
				}
			}
			if err != nil {
				errs <- err.Error()
			}
		}
	})
}

// concurrently runs f on workers goroutines, each sending what went wrong
// (at most rounds messages) to errs, and reports the messages.
func concurrently(t *testing.T, workers, rounds int, f func(w int, errs chan<- string)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan string, workers*rounds)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(w, errs)
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestConcurrentTopK runs StepTopK and PredictTopK on one clustered bundle
// from 8 goroutines at once and checks every result against a serial run.
func TestConcurrentTopK(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := topicBundle(t, 20_000, 16)
	if !b.Scoring().Approximate {
		t.Fatalf("Scoring() = %+v, want a clustered scorer", b.Scoring())
	}
	hs := [][]int64{{5}, {7, 9, 11}, {300, 3, 3, 3}, {15000, 2, 60, 1, 4}}
	serial := func(h []int64) (step, seq []Hint) {
		var state []float32
		var err error
		for _, id := range h {
			if step, state, err = b.StepTopK(ctx, id, state, 5, 0.001, nil); err != nil {
				t.Fatal(err)
			}
		}
		if seq, err = b.PredictTopK(ctx, h, 5, 0.001, nil); err != nil {
			t.Fatal(err)
		}
		return step, seq
	}
	wantStep, wantSeq := make([][]Hint, len(hs)), make([][]Hint, len(hs))
	for i, h := range hs {
		wantStep[i], wantSeq[i] = serial(h)
	}
	const workers, rounds = 8, 30
	concurrently(t, workers, 2*rounds, func(w int, errs chan<- string) {
		var hints []Hint
		var state []float32
		for r := range rounds {
			i := (w + r) % len(hs)
			var err error
			state = state[:0]
			for _, id := range hs[i] {
				if hints, state, err = b.StepTopK(ctx, id, state, 5, 0.001, hints); err != nil {
					errs <- err.Error()
					return
				}
			}
			if !agreement(hints, wantStep[i], 0) {
				errs <- "StepTopK differs"
			}
			if hints, err = b.PredictTopK(ctx, hs[i], 5, 0.001, hints); err != nil {
				errs <- err.Error()
				return
			}
			if !agreement(hints, wantSeq[i], 0) {
				errs <- "PredictTopK differs"
			}
		}
	})
}
