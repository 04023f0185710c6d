package model

import (
	"fmt"
	"math"
	"reflect"
	"testing"
)

func ft(shape []int, v ...float32) *tens { return &tens{dt: dtFloat, shape: shape, f: v} }
func it(shape []int, v ...int64) *tens   { return &tens{dt: dtInt, shape: shape, i: v} }
func seqF(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i)
	}
	return v
}

func TestKernels(t *testing.T) {
	tests := []struct {
		name string
		k    kernel
		in   []*tens
		want *tens
	}{
		{"transpose 2d", transposeK{}, []*tens{ft([]int{2, 3}, seqF(6)...)}, ft([]int{3, 2}, 0, 3, 1, 4, 2, 5)},
		{"transpose 201", transposeK{perm: []int64{2, 0, 1}, hasPerm: true}, []*tens{ft([]int{2, 2, 2}, seqF(8)...)}, ft([]int{2, 2, 2}, 0, 2, 4, 6, 1, 3, 5, 7)},
		{"transpose rows", transposeK{perm: []int64{1, 0, 2}, hasPerm: true}, []*tens{ft([]int{2, 3, 2}, seqF(12)...)}, ft([]int{3, 2, 2}, 0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11)},
		{"transpose int", transposeK{perm: []int64{1, 0}, hasPerm: true}, []*tens{it([]int{1, 3}, 1, 2, 3)}, it([]int{3, 1}, 1, 2, 3)},
		{"gather axis1 negative", gatherK{axis: 1}, []*tens{ft([]int{2, 3}, seqF(6)...), it([]int{}, -1)}, ft([]int{2}, 2, 5)},
		{"gather rows", gatherK{}, []*tens{ft([]int{3, 2}, seqF(6)...), it([]int{2, 2}, 2, 0, 1, 1)}, ft([]int{2, 2, 2}, 4, 5, 0, 1, 2, 3, 2, 3)},
		{"slice steps", sliceK{}, []*tens{ft([]int{2, 5}, seqF(10)...), it([]int{1}, -1), it([]int{1}, -100), it([]int{1}, 1), it([]int{1}, -2)}, ft([]int{2, 3}, 4, 2, 0, 9, 7, 5)},
		{"slice axis0 clamp", sliceK{}, []*tens{ft([]int{3, 2}, seqF(6)...), it([]int{1}, 1), it([]int{1}, 1<<40)}, ft([]int{2, 2}, 2, 3, 4, 5)},
		{"slice legacy", sliceK{legacy: true, starts: []int64{0}, ends: []int64{1}, axes: []int64{1}}, []*tens{ft([]int{2, 2}, seqF(4)...)}, ft([]int{2, 1}, 0, 2)},
		{"squeeze input", squeezeK{}, []*tens{ft([]int{1, 2, 1}, 1, 2), it([]int{1}, 0)}, ft([]int{2, 1}, 1, 2)},
		{"squeeze all", squeezeK{}, []*tens{ft([]int{1, 2, 1}, 1, 2)}, ft([]int{2}, 1, 2)},
		{"unsqueeze attr", squeezeK{unsqueeze: true, axes: []int64{0, -1}, hasAxes: true}, []*tens{ft([]int{2}, 1, 2)}, ft([]int{1, 2, 1}, 1, 2)},
		{"concat axis1", concatK{axis: 1}, []*tens{it([]int{2, 1}, 1, 2), it([]int{2, 2}, 3, 4, 5, 6)}, it([]int{2, 3}, 1, 3, 4, 2, 5, 6)},
		{"gemm transA alpha beta", &gemmK{alpha: 2, beta: 0.5, transA: true}, []*tens{ft([]int{2, 1}, 1, 2), ft([]int{2, 2}, 1, 2, 3, 4), ft([]int{}, 10)}, ft([]int{1, 2}, 19, 25)},
		{"gemm transB rows bias", &gemmK{alpha: 1, beta: 1, transB: true}, []*tens{ft([]int{2, 2}, 1, 0, 0, 1), ft([]int{3, 2}, seqF(6)...), ft([]int{3}, 1, 1, 1)}, ft([]int{2, 3}, 1, 3, 5, 2, 4, 6)},
		{"gemm no bias", &gemmK{alpha: 1, beta: 1}, []*tens{ft([]int{1, 2}, 1, 1), ft([]int{2, 2}, 1, 2, 3, 4)}, ft([]int{1, 2}, 4, 6)},
		{"matmul broadcast", matmulK{}, []*tens{ft([]int{2, 1, 2}, 1, 0, 0, 1), ft([]int{2, 2}, 1, 2, 3, 4)}, ft([]int{2, 1, 2}, 1, 2, 3, 4)},
		{"matmul vector", matmulK{}, []*tens{ft([]int{2}, 1, 1), ft([]int{2, 3}, seqF(6)...)}, ft([]int{3}, 3, 5, 7)},
		{"add broadcast", binaryK{op: 'A'}, []*tens{ft([]int{2, 1}, 10, 20), ft([]int{3}, 1, 2, 3)}, ft([]int{2, 3}, 11, 12, 13, 21, 22, 23)},
		{"div int", binaryK{op: 'D'}, []*tens{it([]int{2}, 7, 9), it([]int{}, 2)}, it([]int{2}, 3, 4)},
		{"reshape zero and infer", reshapeK{}, []*tens{ft([]int{2, 3}, seqF(6)...), it([]int{2}, 0, -1)}, ft([]int{2, 3}, seqF(6)...)},
		{"flatten", flattenK{axis: 1}, []*tens{ft([]int{2, 1, 2}, seqF(4)...)}, ft([]int{2, 2}, seqF(4)...)},
		{"shape start end", shapeK{start: 1, end: -1}, []*tens{ft([]int{2, 3, 4}, seqF(24)...)}, it([]int{1}, 3)},
		{"constant of shape", constOfShapeK{v: tens{dt: dtInt, i: []int64{7}}}, []*tens{it([]int{2}, 1, 2)}, it([]int{1, 2}, 7, 7)},
		{"cast", castK{to: dtInt}, []*tens{ft([]int{2}, 1.9, -2.5)}, it([]int{2}, 1, -2)},
		{"softmax legacy 2d", softmaxK{axis: 0, coerce: true}, []*tens{ft([]int{2, 1}, 0, 0)}, ft([]int{2, 1}, 0.5, 0.5)},
		{"softmax middle axis", softmaxK{axis: 0}, []*tens{ft([]int{2, 2}, 0, 1, 0, 1)}, ft([]int{2, 2}, 0.5, 0.5, 0.5, 0.5)},
		{"log softmax", softmaxK{axis: -1, log: true}, []*tens{ft([]int{2}, 1, 1)}, ft([]int{2}, -float32(math.Ln2), -float32(math.Ln2))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := &tens{}
			var sc []float32
			if err := tt.k.run(tt.in, []*tens{out}, &sc); err != nil {
				t.Fatalf("run: %v", err)
			}
			if out.dt != tt.want.dt || !reflect.DeepEqual(out.shape, tt.want.shape) || !reflect.DeepEqual(out.i, tt.want.i) && len(tt.want.i) > 0 {
				t.Fatalf("got %v %v %v, want %v %v %v", out.dt, out.shape, out.i, tt.want.dt, tt.want.shape, tt.want.i)
			}
			if d := maxDiff(out.f, tt.want.f); len(tt.want.f) > 0 && d > 1e-6 {
				t.Fatalf("got %v, want %v", out.f, tt.want.f)
			}
		})
	}
}

func TestKernelErrors(t *testing.T) {
	tests := []struct {
		name string
		k    kernel
		in   []*tens
	}{
		{"gather out of range", gatherK{}, []*tens{ft([]int{2}, 1, 2), it([]int{1}, 2)}},
		{"gemm inner mismatch", &gemmK{alpha: 1}, []*tens{ft([]int{1, 2}, 1, 2), ft([]int{3, 1}, 1, 2, 3)}},
		{"squeeze non-one", squeezeK{}, []*tens{ft([]int{2}, 1, 2), it([]int{1}, 0)}},
		{"concat rank", concatK{axis: 0}, []*tens{ft([]int{1}, 1), ft([]int{1, 1}, 1)}},
		{"reshape bad", reshapeK{}, []*tens{ft([]int{3}, 1, 2, 3), it([]int{1}, 2)}},
		{"constant of shape huge", constOfShapeK{v: tens{dt: dtFloat, f: []float32{0}}}, []*tens{it([]int{3}, 1<<20, 1<<20, 1<<20)}},
		{"slice step zero", sliceK{}, []*tens{ft([]int{2}, 1, 2), it([]int{1}, 0), it([]int{1}, 2), it([]int{1}, 0), it([]int{1}, 0)}},
		{"int divide by zero", binaryK{op: 'D'}, []*tens{it([]int{1}, 1), it([]int{1}, 0)}},
		{"transpose bad perm", transposeK{perm: []int64{0, 0}, hasPerm: true}, []*tens{ft([]int{1, 1}, 1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sc []float32
			if err := tt.k.run(tt.in, []*tens{{}}, &sc); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// TestTransposeGeneral compares every rank-3 permutation with a direct
// index computation.
func TestTransposeGeneral(t *testing.T) {
	x := ft([]int{2, 3, 4}, seqF(24)...)
	for _, p := range [][]int64{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}} {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			out := &tens{}
			if err := (transposeK{perm: p, hasPerm: true}).run([]*tens{x}, []*tens{out}, nil); err != nil {
				t.Fatal(err)
			}
			var idx [3]int
			for a := 0; a < out.shape[0]; a++ {
				for b := 0; b < out.shape[1]; b++ {
					for c := 0; c < out.shape[2]; c++ {
						idx[p[0]], idx[p[1]], idx[p[2]] = a, b, c
						want := x.f[idx[0]*12+idx[1]*4+idx[2]]
						if got := out.f[(a*out.shape[1]+b)*out.shape[2]+c]; got != want {
							t.Fatalf("out[%d,%d,%d] = %v, want %v", a, b, c, got, want)
						}
					}
				}
			}
		})
	}
}
