package model

import (
	"context"
	"testing"
	"time"
)

func TestMarkovGraph(t *testing.T) {
	const v = 5
	trans := make([]float32, v*v)
	for i := range v {
		for j := range v {
			trans[i*v+j] = float32(i*10 + j)
		}
	}
	m, err := ParseModel(markovGraph(v, trans).encode())
	if err != nil {
		t.Fatalf("ParseModel: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := m.Run(ctx, map[string]Tensor{"page_ids": {Shape: []int{2, 3}, Int64: []int64{0, 2, 3, 1, 1, 4}}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := out["probs"]
	want := []float32{30, 31, 32, 33, 34, 40, 41, 42, 43, 44}
	if len(got.Shape) != 2 || got.Shape[0] != 2 || got.Shape[1] != v {
		t.Fatalf("shape %v, want [2 %d]", got.Shape, v)
	}
	for i := range want {
		if got.Float32[i] != want[i] {
			t.Fatalf("probs %v, want %v", got.Float32, want)
		}
	}
	if _, err := m.Run(ctx, map[string]Tensor{"page_ids": {Shape: []int{1, 1}, Int64: []int64{7}}}); err == nil {
		t.Fatalf("Run with index 7 of %d: no error", v)
	}
}
