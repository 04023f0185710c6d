package model

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"testing/fstest"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// gruBundle builds a GRU bundle (sequence and step forms) in memory.
func gruBundle(t testing.TB, vocab, emb, hidden int) *Bundle {
	t.Helper()
	seq, step := gruGraphs(vocab, emb, hidden)
	return graphsBundle(t, vocab, seq, step)
}

// graphsBundle loads a bundle of the two forms from memory.
func graphsBundle(t testing.TB, vocab int, seq, step tGraph) *Bundle {
	t.Helper()
	b, err := LoadBundleFS(graphsFS(vocab, seq, step), "b")
	if err != nil {
		t.Fatalf("LoadBundleFS: %v", err)
	}
	return b
}

// graphsFS is the bundle folder "b" of the two graphs and a vocabulary of
// vocab entries.
func graphsFS(vocab int, seq, step tGraph) fstest.MapFS {
	var v strings.Builder
	v.WriteString("<pad>\n<unk>\n")
	for i := 2; i < vocab; i++ {
		fmt.Fprintf(&v, "/p/%d\n", i)
	}
	fsys := fstest.MapFS{
		"b/model.onnx": {Data: seq.encode()},
		"b/step.onnx":  {Data: step.encode()},
		"b/vocab.txt":  {Data: []byte(v.String())},
	}
	return fsys
}

func history(n, vocab int) []int64 {
	h := make([]int64, n)
	for i := range h {
		h[i] = int64(2 + (i*37)%(vocab-2))
	}
	return h
}

// BenchmarkGRU measures the runtime on GRU models and, in the same run, two
// baselines for one step at the same size: the bare gonum Sgemv products a
// step needs (the arithmetic floor with this BLAS) and a naive Go loop.
func BenchmarkGRU(b *testing.B) {
	ctx := context.Background()
	for _, sz := range []struct{ vocab, emb, hidden int }{{200, 16, 32}, {1000, 32, 64}, {20000, 32, 128}} {
		bun := gruBundle(b, sz.vocab, sz.emb, sz.hidden)
		name := fmt.Sprintf("v%d_e%d_h%d", sz.vocab, sz.emb, sz.hidden)
		b.Run(name+"/step", func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b, cpuTime())
			var state, probs []float32
			var err error
			for i := 0; b.Loop(); i++ {
				if probs, state, err = bun.Step(ctx, int64(2+i%(sz.vocab-2)), state, probs); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/step_many16", func(b *testing.B) {
			// 16 users advanced in one StepMany call; per-row figures.
			b.ReportAllocs()
			const rows = 16
			start := cpuTime()
			ids := make([]int64, rows)
			states, probs := make([][]float32, rows), make([][]float32, rows)
			n := 0
			for i := 0; b.Loop(); i++ {
				for r := range ids {
					ids[r] = int64(2 + (i*rows+r)%(sz.vocab-2))
				}
				if err := bun.StepMany(ctx, ids, states, probs); err != nil {
					b.Fatal(err)
				}
				n++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*rows), "ns/row")
			b.ReportMetric(float64(cpuTime()-start)/float64(n*rows), "cpu-ns/row")
		})
		b.Run(name+"/seq_len20", func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b, cpuTime())
			h := history(20, sz.vocab)
			var probs []float32
			var err error
			for b.Loop() {
				if probs, err = bun.PredictOne(ctx, h, probs); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/batch32_len20", func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b, cpuTime())
			hs := make([][]int64, 32)
			for i := range hs {
				hs[i] = history(20, sz.vocab)
				hs[i][0] = int64(2 + i)
			}
			for b.Loop() {
				if _, err := bun.Predict(ctx, hs); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/baseline_sgemv_step", func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b, cpuTime())
			V, E, H := sz.vocab, sz.emb, sz.hidden
			W := lcgWeights(3*H*E, 1, 0.3)
			R := lcgWeights(3*H*H, 2, 0.3)
			O := lcgWeights(V*H, 3, 0.3)
			x, h := lcgWeights(E, 4, 1), lcgWeights(H, 5, 1)
			g1, g2, out := make([]float32, 3*H), make([]float32, 3*H), make([]float32, V)
			impl := gonum.Implementation{}
			for b.Loop() {
				impl.Sgemv(blas.NoTrans, 3*H, E, 1, W, E, x, 1, 0, g1, 1)
				impl.Sgemv(blas.NoTrans, 3*H, H, 1, R, H, h, 1, 0, g2, 1)
				impl.Sgemv(blas.NoTrans, V, H, 1, O, H, h, 1, 0, out, 1)
			}
		})
		b.Run(name+"/baseline_naive_step", func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b, cpuTime())
			V, E, H := sz.vocab, sz.emb, sz.hidden
			W := lcgWeights(3*H*E, 1, 0.3)
			R := lcgWeights(3*H*H, 2, 0.3)
			O := lcgWeights(V*H, 3, 0.3)
			x, h := lcgWeights(E, 4, 1), lcgWeights(H, 5, 1)
			g, out := make([]float32, 6*H), make([]float32, V)
			for b.Loop() {
				naiveStep(W, R, O, x, h, g, out, E, H, V)
			}
		})
	}
}

// reportCPU reports the process CPU time per operation since start.
func reportCPU(b *testing.B, start int64) {
	if b.N > 0 {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

// naiveStep is a straightforward GRU step plus output layer and softmax,
// the loop a developer would write by hand.
func naiveStep(W, R, O, x, h, g, out []float32, E, H, V int) {
	for r := 0; r < 3*H; r++ {
		var s, t float32
		for c := 0; c < E; c++ {
			s += W[r*E+c] * x[c]
		}
		for c := 0; c < H; c++ {
			t += R[r*H+c] * h[c]
		}
		g[r], g[3*H+r] = s, t
	}
	for j := 0; j < H; j++ {
		z := 1 / (1 + float32(math.Exp(float64(-(g[j] + g[3*H+j])))))
		r := 1 / (1 + float32(math.Exp(float64(-(g[H+j] + g[4*H+j])))))
		n := float32(math.Tanh(float64(g[2*H+j] + r*g[5*H+j])))
		h[j] = (1-z)*n + z*h[j]
	}
	var sum float64
	for r := 0; r < V; r++ {
		var s float32
		for c := 0; c < H; c++ {
			s += O[r*H+c] * h[c]
		}
		out[r] = float32(math.Exp(float64(s)))
		sum += float64(out[r])
	}
	for r := range out {
		out[r] = float32(float64(out[r]) / sum)
	}
}
