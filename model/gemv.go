package model

import (
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// gemv computes y = A·x for the m×n row-major matrix A with leading
// dimension lda: the hot loop of every step. It uses an AVX2/FMA kernel when
// the CPU has one and gonum's Sgemv otherwise.
func gemv(m, n int, a []float32, lda int, x, y []float32) {
	if m == 0 {
		return
	}
	// Bounds are checked here once so the kernel can run unchecked.
	_ = a[(m-1)*lda+n-1]
	_ = x[n-1]
	_ = y[m-1]
	if gemvAsm(m, n, a, lda, x, y) {
		return
	}
	gemvGo(m, n, a, lda, x, y)
}

// gemvGo is gemv with gonum's Sgemv, for CPUs without AVX2 and FMA.
func gemvGo(m, n int, a []float32, lda int, x, y []float32) {
	gonum.Implementation{}.Sgemv(blas.NoTrans, m, n, 1, a, lda, x, 1, 0, y, 1)
}

// packedT is a constant weight matrix A (m rows of k) also stored in
// column panels, for products with several vectors at once (the batched
// step): for each block of 16 rows of A (then one block of 8), its k columns
// one after the other, 16 (8) values each, so the kernel reads the panel
// front to back. The last m%8 rows are not packed.
type packedT struct {
	src  *float32 // &A[0]: a run uses the packed copy only for this matrix
	m, k int
	t    []float32
}

// packT packs A (m rows of k, row-major), or returns nil when A is too
// small to gain from it.
func packT(a []float32, m, k int) *packedT {
	if m < 8 || k == 0 || len(a) < m*k {
		return nil
	}
	m8 := m &^ 7
	p := &packedT{src: &a[0], m: m, k: k, t: make([]float32, 0, m8*k)}
	for j0 := 0; j0 < m8; {
		w := 16
		if m8-j0 < 16 {
			w = 8
		}
		for c := range k {
			for jj := range w {
				p.t = append(p.t, a[(j0+jj)*k+c])
			}
		}
		j0 += w
	}
	return p
}

// of returns p when it packs a (m rows of k), else nil.
func (p *packedT) of(a []float32, m, k int) *packedT {
	if p == nil || len(a) == 0 || &a[0] != p.src || p.m != m || p.k != k {
		return nil
	}
	return p
}

// gemvRowsPacked is gemvRows for A = p's matrix (m rows of n, contiguous;
// p may be nil): blocks of four vectors go through p's panels, each weight
// loaded once per block; the rest, or everything when p does not pack a,
// through gemvRows.
func gemvRowsPacked(rows, m, n int, p *packedT, a []float32, x []float32, ldx int, out []float32, ldo int) {
	r := 0
	if p = p.of(a, m, n); p != nil && rows >= 4 {
		_ = x[(rows-1)*ldx+n-1]
		_ = out[(rows-1)*ldo+m-1]
		for ; r+4 <= rows; r += 4 {
			if !gemmPacked4Asm(p, a, x[r*ldx:], ldx, out[r*ldo:], ldo) {
				break
			}
		}
	}
	if r < rows {
		gemvRows(rows-r, m, n, a, n, x[r*ldx:], ldx, out[r*ldo:], ldo)
	}
}

// gemvRows computes out[r*ldo : r*ldo+m] = A·x[r*ldx : r*ldx+n] for r < rows:
// one matrix applied to many vectors. Blocks of four vectors share one pass
// over A, which matters once A no longer fits in cache.
func gemvRows(rows, m, n int, a []float32, lda int, x []float32, ldx int, out []float32, ldo int) {
	if m == 0 || rows == 0 {
		return
	}
	_ = a[(m-1)*lda+n-1]
	_ = x[(rows-1)*ldx+n-1]
	_ = out[(rows-1)*ldo+m-1]
	r := 0
	for ; r+4 <= rows; r += 4 {
		if !gemv4Asm(m, n, a, lda, x[r*ldx:], ldx, out[r*ldo:], ldo) {
			break
		}
	}
	for ; r < rows; r++ {
		gemv(m, n, a, lda, x[r*ldx:r*ldx+n], out[r*ldo:r*ldo+m])
	}
}

// dotI8 sets out[i] to the int32 dot product of row i of a (n rows of h
// int8, h a multiple of 16) with x (h int16): the quantized pass of the
// clustered scorer. The caller keeps h·127·max|x| within int32.
func dotI8(a []int8, n, h int, x []int16, out []int32) {
	if n == 0 {
		return
	}
	_ = a[n*h-1]
	_ = x[h-1]
	_ = out[n-1]
	if !dotI8Asm(a, n, h, x, out) {
		dotI8Go(a, n, h, x, out)
	}
}

// dotI8Go is dotI8 in Go, for CPUs without AVX2.
func dotI8Go(a []int8, n, h int, x []int16, out []int32) {
	for i := range n {
		var s int32
		for j, v := range a[i*h : (i+1)*h] {
			s += int32(v) * int32(x[j])
		}
		out[i] = s
	}
}

// logitsI8 sets out[i] = float32(dot(row i of a, x))·(scale[i]·inv) +
// bias[i] + off for the n rows of a (n rows of h int8, h a multiple of 16, as
// dotI8) and returns the largest out[i] (n > 0). acc is scratch of n
// int32: the kernel's rows four at a time need none, the remainder does.
func logitsI8(a []int8, n, h int, x []int16, scale, bias []float32, inv, off float32, out []float32, acc []int32) float32 {
	_ = a[n*h-1]
	_ = x[h-1]
	_ = scale[n-1]
	_ = bias[n-1]
	_ = out[n-1]
	done, mx := logitsI8Asm(a, n, h, x, scale, bias, inv, off, out)
	if done == 0 {
		mx = float32(math.Inf(-1))
	}
	if rest := n - done; rest > 0 {
		dotI8(a[done*h:n*h], rest, h, x, acc[:rest])
		for j, s := range acc[:rest] {
			l := float32(s)*(scale[done+j]*inv) + bias[done+j] + off
			out[done+j] = l
			mx = max(mx, l)
		}
	}
	return mx
}

// clusterDots sets, for the n clusters of a clustered scorer, mdots[c] to
// the product of its mean row (hp int16 from means, scale mscale[c]) with x
// (hp int16, scale inv) and ddots[c] to that of its main direction (hp int8
// from dirs, scale dscale[c]): step 1 of topK reads every cluster's two
// rows in one pass. hp is a multiple of 16, x within ±xTop(hp) and the
// means within ±meanTop(hp) (quantizeRowTo keeps them so).
func clusterDots(n, hp int, means []int16, dirs []int8, x []int16, mscale, dscale []float32, inv float32, mdots, ddots []float32) {
	if n == 0 {
		return
	}
	_ = means[n*hp-1]
	_ = dirs[n*hp-1]
	_ = x[hp-1]
	_ = mscale[n-1]
	_ = dscale[n-1]
	_ = mdots[n-1]
	_ = ddots[n-1]
	done := clusterDotsAsm(n, hp, means, dirs, x, mscale, dscale, inv, mdots, ddots)
	clusterDotsGo(done, n, hp, means, dirs, x, mscale, dscale, inv, mdots, ddots)
}

// clusterDotsGo is clusterDots in Go for clusters from to n: the
// remainder past the kernel's blocks of four, and everything on CPUs
// without AVX2.
func clusterDotsGo(from, n, hp int, means []int16, dirs []int8, x []int16, mscale, dscale []float32, inv float32, mdots, ddots []float32) {
	for c := from; c < n; c++ {
		var m int64
		var d int32
		mr, dr := means[c*hp:(c+1)*hp], dirs[c*hp:(c+1)*hp]
		for j, v := range x[:hp] {
			m += int64(mr[j]) * int64(v)
			d += int32(dr[j]) * int32(v)
		}
		mdots[c] = float32(m) * mscale[c] * inv
		ddots[c] = float32(d) * dscale[c] * inv
	}
}

// xTop is the largest magnitude of a hidden vector quantized to int16 for
// rows of hp values: an int8 row's product, hp·127·xTop, stays within
// int32.
func xTop(hp int) int { return min(math.MaxInt16, math.MaxInt32/(hp*127)) }

// meanTop is the largest magnitude of a cluster's mean row quantized to
// int16 for rows of hp values: each int32 lane of clusterDots sums hp/8
// products of a mean value and an xTop one. At hp 128 it is 4,096, so a
// mean is kept to 2^-13 of its largest value; the rows' deviations are
// taken from the mean as rounded, so their logits do not see the rounding.
func meanTop(hp int) int { return min(math.MaxInt16, math.MaxInt32/(max(hp/8, 1)*xTop(hp))) }

// quantizeRow rounds row into dst with one scale, its largest magnitude
// to the largest value of T (127 or 32767, so that -128 or -32768 never
// occurs), and returns the scale (0 for a zero row).
func quantizeRow[T int8 | int16](dst []T, row []float32) float32 {
	top := math.MaxInt8
	if _, wide := any(dst).([]int16); wide {
		top = math.MaxInt16
	}
	return quantizeRowTo(dst, row, top)
}

// quantizeRowTo is quantizeRow with the largest magnitude top (at most the
// largest value of T).
func quantizeRowTo[T int8 | int16](dst []T, row []float32, top int) float32 {
	var amax float32
	for _, x := range row {
		amax = max(amax, float32(math.Abs(float64(x))))
	}
	if amax == 0 {
		clear(dst)
		return 0
	}
	inv := float32(top) / amax
	for d, x := range row {
		dst[d] = T(math.Round(float64(x * inv)))
	}
	return amax / float32(top)
}
