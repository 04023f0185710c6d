package training

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// TestEvaluateParallelMatchesSerial: every baseline and the GRU, their
// test sessions shared out between goroutines, get exactly the figures of
// one goroutine scoring every session in turn.
func TestEvaluateParallelMatchesSerial(t *testing.T) {
	const v = 120
	rng := rand.New(rand.NewPCG(21, 22))
	walk := func(n int) [][]int64 { // sessions that mostly step to the next page of a cycle of 30
		out := make([][]int64, n)
		for i := range out {
			s := []int64{2 + rng.Int64N(v-2)}
			for range 1 + rng.IntN(12) {
				next := 2 + (s[len(s)-1]-2+1)%30 + 30*rng.Int64N(3)
				if rng.IntN(4) == 0 {
					next = 1 + rng.Int64N(v-1)
				}
				s = append(s, next)
			}
			out[i] = s
		}
		return out
	}
	train, test := walk(600), walk(300)
	models := map[string]Predictor{ModelGRU: &GRU{p: tinyGRU(t, v, 6, 8)}}
	var mkAlpha float64
	for _, spec := range baselineSpecs(v, 0.05, &mkAlpha) {
		build, err := spec.prepare(train)
		if err != nil {
			t.Fatalf("prepare %s: %v", spec.name, err)
		}
		set := Params{}
		for _, p := range spec.params {
			set[p.name] = p.values[0]
		}
		if models[spec.name], err = build(set); err != nil {
			t.Fatalf("build %s: %v", spec.name, err)
		}
		if spec.name == ModelMarkov {
			mkAlpha = 0.05
		}
	}
	cfg := EvalConfig{MaxSeqLen: 5, Threshold: 0.05}
	for name, m := range models {
		serial, err := evaluate(t.Context(), name, m, test, cfg, 1)
		if err != nil {
			t.Fatalf("%s on one goroutine: %v", name, err)
		}
		if serial.Transitions == 0 || serial.RecallAt20 == 0 {
			t.Fatalf("%s: nothing scored: %+v", name, serial)
		}
		for _, workers := range []int{2, 3, 4} {
			t.Run(fmt.Sprintf("%s/workers=%d", name, workers), func(t *testing.T) {
				got, err := evaluate(t.Context(), name, m, test, cfg, workers)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, serial) {
					t.Errorf("on %d goroutines: %+v\non one: %+v", workers, got, serial)
				}
			})
		}
	}
}
