package model

import (
	"fmt"
	"math"
	"testing"
)

func TestGemv(t *testing.T) {
	for _, sz := range []struct{ m, n, lda int }{{1, 1, 1}, {3, 5, 5}, {4, 8, 8}, {7, 17, 20}, {9, 64, 64}, {1000, 64, 64}, {5, 3, 3}, {192, 32, 32}} {
		t.Run(fmt.Sprintf("%dx%d", sz.m, sz.n), func(t *testing.T) {
			a := lcgWeights(sz.m*sz.lda, 1, 1)
			x := lcgWeights(sz.n, 2, 1)
			y := make([]float32, sz.m+1)
			y[sz.m] = 42
			gemv(sz.m, sz.n, a, sz.lda, x, y)
			yGo := make([]float32, sz.m)
			gemvGo(sz.m, sz.n, a, sz.lda, x, yGo)
			for i := range sz.m {
				if d := math.Abs(float64(y[i] - yGo[i])); d > 1e-4 {
					t.Fatalf("row %d: kernel %v, gonum %v", i, y[i], yGo[i])
				}
				var want float64
				for j := range sz.n {
					want += float64(a[i*sz.lda+j]) * float64(x[j])
				}
				if math.Abs(float64(y[i])-want) > 1e-4 {
					t.Fatalf("row %d: %v, want %v", i, y[i], want)
				}
			}
			if y[sz.m] != 42 {
				t.Fatalf("wrote past m rows")
			}
		})
	}
}

func TestGemvRows(t *testing.T) {
	for _, sz := range []struct{ rows, m, n int }{{1, 3, 5}, {4, 8, 8}, {5, 7, 17}, {9, 64, 64}, {32, 100, 33}} {
		t.Run(fmt.Sprintf("%d×%dx%d", sz.rows, sz.m, sz.n), func(t *testing.T) {
			a := lcgWeights(sz.m*sz.n, 1, 1)
			x := lcgWeights(sz.rows*sz.n, 2, 1)
			// Output rows are strided, with a gap that must stay untouched.
			ldo := sz.m + 3
			out := make([]float32, sz.rows*ldo)
			for i := range out {
				out[i] = 42
			}
			gemvRows(sz.rows, sz.m, sz.n, a, sz.n, x, sz.n, out, ldo)
			for r := range sz.rows {
				want := make([]float32, sz.m)
				gemvGo(sz.m, sz.n, a, sz.n, x[r*sz.n:(r+1)*sz.n], want)
				if d := maxDiff(out[r*ldo:r*ldo+sz.m], want); d > 1e-4 {
					t.Fatalf("row %d differs by %g", r, d)
				}
				for _, v := range out[r*ldo+sz.m : (r+1)*ldo] {
					if v != 42 {
						t.Fatalf("row %d: wrote into the gap between rows", r)
					}
				}
			}
		})
	}
}

// TestMaxScaleAsm checks the vector maximum, sum and scaling against plain loops
// for every length around the 8-wide blocks, the maximum in each position.
func TestMaxScaleAsm(t *testing.T) {
	for n := 1; n <= 41; n++ {
		x := lcgWeights(n, uint64(n), 3)
		for at := range n {
			y := append([]float32(nil), x...)
			y[at] = 100 + float32(at)
			mx, ok := maxAsm(y)
			if !ok {
				continue // no AVX2, or shorter than a vector: callers loop
			}
			if mx != y[at] {
				t.Fatalf("n=%d max at %d: got %g, want %g", n, at, mx, y[at])
			}
		}
		z := lcgWeights(n, uint64(n)+100, 3)
		sum := append([]float32(nil), x...)
		if addAsm(sum, z) {
			for i := range sum {
				if sum[i] != x[i]+z[i] {
					t.Fatalf("n=%d: sum[%d] = %g, want %g", n, i, sum[i], x[i]+z[i])
				}
			}
		}
		y := append([]float32(nil), x...)
		if scaleAsm(y, 0.5) {
			for i := range y {
				if y[i] != x[i]*0.5 {
					t.Fatalf("n=%d: scaled[%d] = %g, want %g", n, i, y[i], x[i]*0.5)
				}
			}
		}
	}
}

// TestGemvRowsPacked checks the panel-packed path for several vectors
// against gemvGo, for sizes with and without 16- and 8-row panels and a
// remainder, and that a matrix other than the packed one is not taken for it.
func TestGemvRowsPacked(t *testing.T) {
	for _, sz := range []struct{ rows, m, n int }{{4, 8, 1}, {4, 16, 16}, {5, 24, 7}, {8, 96, 32}, {9, 200, 32}, {13, 37, 5}, {3, 40, 8}} {
		t.Run(fmt.Sprintf("%d×%dx%d", sz.rows, sz.m, sz.n), func(t *testing.T) {
			a := lcgWeights(sz.m*sz.n, 3, 1)
			p := packT(a, sz.m, sz.n)
			if p == nil {
				t.Fatal("not packed")
			}
			x := lcgWeights(sz.rows*sz.n, 4, 1)
			ldo := sz.m + 5
			out := make([]float32, sz.rows*ldo)
			for i := range out {
				out[i] = 42
			}
			gemvRowsPacked(sz.rows, sz.m, sz.n, p, a, x, sz.n, out, ldo)
			for r := range sz.rows {
				want := make([]float32, sz.m)
				gemvGo(sz.m, sz.n, a, sz.n, x[r*sz.n:(r+1)*sz.n], want)
				if d := maxDiff(out[r*ldo:r*ldo+sz.m], want); d > 1e-4 {
					t.Fatalf("row %d differs by %g", r, d)
				}
				for _, v := range out[r*ldo+sz.m : (r+1)*ldo] {
					if v != 42 {
						t.Fatalf("row %d: wrote into the gap between rows", r)
					}
				}
			}
			// Another matrix of the same size must not use p's panels.
			b := lcgWeights(sz.m*sz.n, 9, 1)
			gemvRowsPacked(sz.rows, sz.m, sz.n, p, b, x, sz.n, out, ldo)
			want := make([]float32, sz.m)
			gemvGo(sz.m, sz.n, b, sz.n, x[:sz.n], want)
			if d := maxDiff(out[:sz.m], want); d > 1e-4 {
				t.Fatalf("other matrix: differs by %g", d)
			}
		})
	}
}

// TestDotI8 checks the int8 row products against a plain loop, at the
// extremes of int8 and int16.
func TestDotI8(t *testing.T) {
	for _, tt := range []struct{ n, h int }{{1, 16}, {3, 32}, {4, 16}, {8, 48}, {17, 128}, {5, 512}} {
		t.Run(fmt.Sprintf("%dx%d", tt.n, tt.h), func(t *testing.T) {
			a := make([]int8, tt.n*tt.h)
			x := make([]int16, tt.h)
			w := lcgWeights(len(a)+len(x), uint64(tt.n*tt.h), 1)
			for i := range a {
				a[i] = int8(w[i] * 127)
			}
			a[0] = -128
			for i := range x {
				x[i] = int16(w[len(a)+i] * 32767)
			}
			x[0] = 32767
			got := make([]int32, tt.n)
			dotI8(a, tt.n, tt.h, x, got)
			for i := range tt.n {
				var want int32
				for j := range tt.h {
					want += int32(a[i*tt.h+j]) * int32(x[j])
				}
				if got[i] != want {
					t.Errorf("row %d: %d, want %d", i, got[i], want)
				}
			}
		})
	}
}

// TestLogitsI8 checks the fused int8 logits (product, scale, bias, offset,
// largest value) against a plain loop in float64, for row counts with and
// without a remainder past the kernel's blocks of four.
func TestLogitsI8(t *testing.T) {
	for _, tt := range []struct{ n, h int }{{1, 16}, {3, 32}, {4, 16}, {7, 48}, {8, 128}, {130, 128}} {
		t.Run(fmt.Sprintf("%dx%d", tt.n, tt.h), func(t *testing.T) {
			a := make([]int8, tt.n*tt.h)
			x := make([]int16, tt.h)
			w := lcgWeights(len(a)+len(x)+2*tt.n, uint64(tt.n+tt.h), 1)
			for i := range a {
				a[i] = int8(w[i] * 127)
			}
			a[0] = -128
			for i := range x {
				x[i] = int16(w[len(a)+i] * 32767)
			}
			scale := w[len(a)+len(x) : len(a)+len(x)+tt.n]
			bias := w[len(a)+len(x)+tt.n:]
			const inv, off = 1.0 / 4096, -0.75
			out := make([]float32, tt.n+1)
			out[tt.n] = 42
			mx := logitsI8(a, tt.n, tt.h, x, scale, bias, inv, off, out, make([]int32, tt.n))
			wantMax := math.Inf(-1)
			for i := range tt.n {
				var dot int64
				for j := range tt.h {
					dot += int64(a[i*tt.h+j]) * int64(x[j])
				}
				want := float64(dot)*float64(scale[i])*inv + float64(bias[i]) + off
				wantMax = max(wantMax, want)
				if d := math.Abs(float64(out[i]) - want); d > 1e-5*(1+math.Abs(want)) {
					t.Errorf("row %d: %v, want %v", i, out[i], want)
				}
			}
			if d := math.Abs(float64(mx) - wantMax); d > 1e-5*(1+math.Abs(wantMax)) {
				t.Errorf("largest %v, want %v", mx, wantMax)
			}
			if out[tt.n] != 42 {
				t.Errorf("wrote past n rows")
			}
		})
	}
}

// clusterDotsRef is clusterDots in float64 on the rows as stored.
func clusterDotsRef(n, hp int, means []int16, dirs []int8, x []int16, mscale, dscale []float32, inv float32) (m, d []float64) {
	for c := range n {
		var sm, sd float64
		for j := range hp {
			sm += float64(means[c*hp+j]) * float64(x[j])
			sd += float64(dirs[c*hp+j]) * float64(x[j])
		}
		m = append(m, sm*float64(mscale[c])*float64(inv))
		d = append(d, sd*float64(dscale[c])*float64(inv))
	}
	return m, d
}

// clusterDotsCase is rows for clusterDots at the extremes of their range:
// means within ±meanTop(hp) with the first products all at the largest
// magnitude and sign (the case that passes int32 if summed there), dirs at
// ±127, x at ±xTop(hp).
func clusterDotsCase(n, hp int) (means []int16, dirs []int8, x []int16, mscale, dscale []float32) {
	w := lcgWeights(2*n*hp+hp+2*n, uint64(n*hp), 1)
	means = make([]int16, n*hp)
	dirs = make([]int8, n*hp)
	x = make([]int16, hp)
	mt, xt := meanTop(hp), xTop(hp)
	for i := range means {
		means[i] = int16(w[i] * float32(mt))
		dirs[i] = int8(w[n*hp+i] * 127)
	}
	for j := range x {
		x[j] = int16(w[2*n*hp+j] * float32(xt))
	}
	for j := range x {
		x[j] = int16(xt)
		means[j] = int16(mt) // cluster 0: every product at the top
		dirs[j] = 127
	}
	return means, dirs, x, w[2*n*hp+hp : 2*n*hp+hp+n], w[2*n*hp+hp+n:]
}

// TestClusterDots checks the products of the clustered scorer's step 1
// (every cluster's int16 mean row and int8 direction with the int16 hidden
// vector, in one pass) against float64, for cluster counts with and
// without a remainder past the kernel's blocks of four, at the extremes of
// the range.
func TestClusterDots(t *testing.T) {
	for _, tt := range []struct{ n, hp int }{{1, 16}, {4, 16}, {5, 32}, {8, 128}, {13, 128}, {6, 256}} {
		t.Run(fmt.Sprintf("%dx%d", tt.n, tt.hp), func(t *testing.T) {
			means, dirs, x, mscale, dscale := clusterDotsCase(tt.n, tt.hp)
			const inv = 1.0 / 3000
			mdots := make([]float32, tt.n+1)
			ddots := make([]float32, tt.n+1)
			mdots[tt.n], ddots[tt.n] = 42, 42
			clusterDots(tt.n, tt.hp, means, dirs, x, mscale, dscale, inv, mdots, ddots)
			wantM, wantD := clusterDotsRef(tt.n, tt.hp, means, dirs, x, mscale, dscale, inv)
			for c := range tt.n {
				if d := math.Abs(float64(mdots[c]) - wantM[c]); d > 1e-5*(1+math.Abs(wantM[c])) {
					t.Errorf("cluster %d: mean product %v, want %v", c, mdots[c], wantM[c])
				}
				if d := math.Abs(float64(ddots[c]) - wantD[c]); d > 1e-5*(1+math.Abs(wantD[c])) {
					t.Errorf("cluster %d: direction product %v, want %v", c, ddots[c], wantD[c])
				}
			}
			if mdots[tt.n] != 42 || ddots[tt.n] != 42 {
				t.Errorf("wrote past n clusters")
			}
		})
	}
}

// TestSumSqMul checks the sum of squared products (the variance of the
// clustered scorer's rest) against float64, for lengths with and without
// a remainder past the kernel's blocks of eight.
func TestSumSqMul(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 13, 64, 1095} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			w := lcgWeights(2*n+1, uint64(n), 1)
			a, b := w[:n], w[n:2*n+1] // b one longer: only len(a) counts
			var want float64
			for i := range a {
				p := float64(a[i]) * float64(b[i])
				want += p * p
			}
			if got := sumSqMul(a, b); math.Abs(float64(got)-want) > 1e-5*(1+want) {
				t.Errorf("sumSqMul = %v, want %v", got, want)
			}
		})
	}
}
