package model

import (
	"context"
	"testing"
	"time"

	gtensor "gorgonia.org/tensor"
)

func TestRunDense(t *testing.T) {
	const v = 3
	m, err := ParseModel(markovGraph(v, []float32{0, 1, 2, 3, 4, 5, 6, 7, 8}).encode())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in := gtensor.New(gtensor.WithShape(2, 2), gtensor.WithBacking([]int64{0, 2, 1, 1}))
	out, err := m.RunDense(ctx, map[string]*gtensor.Dense{"page_ids": in})
	if err != nil {
		t.Fatal(err)
	}
	got := out["probs"]
	if got == nil || !got.Shape().Eq(gtensor.Shape{2, v}) {
		t.Fatalf("probs %v, want shape [2 %d]", got, v)
	}
	if d := maxDiff(got.Data().([]float32), []float32{6, 7, 8, 3, 4, 5}); d != 0 {
		t.Fatalf("probs %v", got.Data())
	}
	bad := gtensor.New(gtensor.WithShape(1, 1), gtensor.WithBacking([]float64{1}))
	if _, err := m.RunDense(ctx, map[string]*gtensor.Dense{"page_ids": bad}); err == nil {
		t.Fatal("float64 input: no error")
	}
}
