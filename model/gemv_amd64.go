package model

import "golang.org/x/sys/cpu"

//go:noescape
func gemvAVX2(m, n int, a *float32, lda int, x *float32, y *float32)

// gemvAsm computes y = A·x for the m×n row-major A (leading dimension lda)
// and reports whether it could (CPU support).
func gemvAsm(m, n int, a []float32, lda int, x, y []float32) bool {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return false
	}
	n8 := n &^ 7
	if n8 > 0 {
		gemvAVX2(m, n8, &a[0], lda, &x[0], &y[0])
	} else {
		clear(y[:m])
	}
	if n8 < n {
		for i := range m {
			row := a[i*lda+n8 : i*lda+n]
			s := y[i]
			for j, v := range row {
				s += v * x[n8+j]
			}
			y[i] = s
		}
	}
	return true
}

//go:noescape
func expAffineAVX2(dst, src *float32, n int, scale, shift float32) float32

// expAsm sets dst[i] = exp(src[i]*scale - shift) and returns their sum, and
// reports whether it could (CPU support).
func expAsm(dst, src []float32, scale, shift float32) (float32, bool) {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return 0, false
	}
	n := len(src)
	dst = dst[:n]
	n8 := n &^ 7
	var sum float32
	if n8 > 0 {
		sum = expAffineAVX2(&dst[0], &src[0], n8, scale, shift)
	}
	for i := n8; i < n; i++ {
		dst[i] = expf(src[i]*scale - shift)
		sum += dst[i]
	}
	return sum, true
}

//go:noescape
func gemv4AVX2(m, n int, a *float32, lda int, x *float32, ldx int, y *float32, ldy int)

// gemv4Asm computes, for the four vectors x[b*ldx:b*ldx+n], the products
// A·x into y[b*ldy : b*ldy+m], reading A once; it reports whether it could
// (CPU support).
func gemv4Asm(m, n int, a []float32, lda int, x []float32, ldx int, y []float32, ldy int) bool {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return false
	}
	n8 := n &^ 7
	if n8 > 0 {
		gemv4AVX2(m, n8, &a[0], lda, &x[0], ldx, &y[0], ldy)
	} else {
		for b := range 4 {
			clear(y[b*ldy : b*ldy+m])
		}
	}
	if n8 < n {
		for i := range m {
			row := a[i*lda+n8 : i*lda+n]
			for b := range 4 {
				s := y[b*ldy+i]
				xb := x[b*ldx+n8:]
				for j, v := range row {
					s += v * xb[j]
				}
				y[b*ldy+i] = s
			}
		}
	}
	return true
}

//go:noescape
func maxAVX2(x *float32, n int) float32

//go:noescape
func scaleAVX2(x *float32, n int, s float32)

// maxAsm returns the largest of x (not empty) and reports whether it could
// (CPU support).
func maxAsm(x []float32) (float32, bool) {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA || len(x) < 8 {
		return 0, false
	}
	n8 := len(x) &^ 7
	mx := maxAVX2(&x[0], n8)
	for _, v := range x[n8:] {
		mx = max(mx, v)
	}
	return mx, true
}

// scaleAsm multiplies x by s and reports whether it could (CPU support).
func scaleAsm(x []float32, s float32) bool {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return false
	}
	n8 := len(x) &^ 7
	if n8 > 0 {
		scaleAVX2(&x[0], n8, s)
	}
	for i := n8; i < len(x); i++ {
		x[i] *= s
	}
	return true
}

//go:noescape
func gemmPackedAVX2(k, m int, x *float32, ldx int, wt *float32, out *float32, ldo int)

// gemmPacked4Asm computes, for the four vectors x[b*ldx : b*ldx+k], the
// products with p's matrix into out[b*ldo : b*ldo+m], and reports whether
// it could (CPU support). a is the matrix itself (m rows of k), for the
// last m%8 outputs.
func gemmPacked4Asm(p *packedT, a, x []float32, ldx int, out []float32, ldo int) bool {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return false
	}
	k, m := p.k, p.m
	m8 := m &^ 7
	if m8 > 0 {
		gemmPackedAVX2(k, m, &x[0], ldx, &p.t[0], &out[0], ldo)
	}
	for b := range 4 {
		xb := x[b*ldx : b*ldx+k]
		for j := m8; j < m; j++ {
			var s float32
			for c, v := range a[j*k : (j+1)*k] {
				s += v * xb[c]
			}
			out[b*ldo+j] = s
		}
	}
	return true
}

//go:noescape
func addAVX2(dst, src *float32, n int)

//go:noescape
func ratioAVX2(x *float32, n int, a, b float32)

// addAsm adds src to dst (same length) and reports whether it could (CPU
// support).
func addAsm(dst, src []float32) bool {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return false
	}
	src = src[:len(dst)]
	n8 := len(dst) &^ 7
	if n8 > 0 {
		addAVX2(&dst[0], &src[0], n8)
	}
	for i := n8; i < len(dst); i++ {
		dst[i] += src[i]
	}
	return true
}

// ratioAsm sets x[i] = (a + b*x[i]) / (1 + x[i]) and reports whether it
// could (CPU support).
func ratioAsm(x []float32, a, b float32) bool {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return false
	}
	n8 := len(x) &^ 7
	if n8 > 0 {
		ratioAVX2(&x[0], n8, a, b)
	}
	for i := n8; i < len(x); i++ {
		x[i] = (a + b*x[i]) / (1 + x[i])
	}
	return true
}

//go:noescape
func dotI8AVX2(a *int8, n, h int, x *int16, out *int32)

// dotI8Asm sets out[i] to the int32 dot product of row i of a (n rows of
// h int8, h a multiple of 16) with x, and reports whether it could (CPU
// support).
func dotI8Asm(a []int8, n, h int, x []int16, out []int32) bool {
	if !cpu.X86.HasAVX2 {
		return false
	}
	dotI8AVX2(&a[0], n, h, &x[0], &out[0])
	return true
}

//go:noescape
func logitsI8AVX2(a *int8, n, h int, x *int16, scale, bias *float32, inv, off float32, out *float32) float32

// logitsI8Asm sets out[i] = dot(row i of a, x)·scale[i]·inv + bias[i] + off for
// the first n rounded down to a multiple of 4 rows (a as in dotI8), and
// returns how many it set and their largest value; 0 rows when the CPU has
// no AVX2 and FMA.
func logitsI8Asm(a []int8, n, h int, x []int16, scale, bias []float32, inv, off float32, out []float32) (int, float32) {
	n4 := n &^ 3
	if n4 == 0 || !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return 0, 0
	}
	if hasVNNI() {
		return n4, logitsI8VNNI(&a[0], n4, h, &x[0], &scale[0], &bias[0], inv, off, &out[0])
	}
	return n4, logitsI8AVX2(&a[0], n4, h, &x[0], &scale[0], &bias[0], inv, off, &out[0])
}

//go:noescape
func estAVX2(n, half int, dots, lam, spread, logMass *float32, xx, ua, ub float32, est, unc *float32) float32

// estAsm is the vector part of clusterIndex.estimate: it sets the first
// n rounded down to a multiple of 8 of the n clusters and returns how many
// and the largest estimate among them; 0 when the CPU has no AVX2 and FMA.
func estAsm(n int, dots, lam, spread, logMass []float32, xx, ua, ub float32, est, unc []float32) (int, float32) {
	n8 := n &^ 7
	if n8 == 0 || !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return 0, 0
	}
	_ = dots[2*n-1]
	return n8, estAVX2(n8, n, &dots[0], &lam[0], &spread[0], &logMass[0], xx, ua, ub, &est[0], &unc[0])
}

//go:noescape
func sumSqMulAVX2(a, b *float32, n int) float32

// sumSqMulAsm returns how many of the first values of a and b (same
// length) it summed, a multiple of 8, and the sum of (a[i]·b[i])² over
// them; 0 when the CPU has no AVX2 and FMA.
func sumSqMulAsm(a, b []float32) (int, float32) {
	n8 := len(a) &^ 7
	if n8 == 0 || !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return 0, 0
	}
	_ = b[n8-1]
	return n8, sumSqMulAVX2(&a[0], &b[0], n8)
}

//go:noescape
func logitsI8VNNI(a *int8, n, h int, x *int16, scale, bias *float32, inv, off float32, out *float32) float32

// hasVNNI reports whether the CPU has the VNNI instructions (on 256-bit
// registers) that the int8 and int16 kernels use in place of two AVX2
// instructions each.
func hasVNNI() bool {
	return cpu.X86.HasAVX512VNNI && cpu.X86.HasAVX512VL && cpu.X86.HasAVX2 && cpu.X86.HasFMA
}

//go:noescape
func clusterDotsAVX2(n, hp int, means *int16, dirs *int8, x *int16, mscale, dscale *float32, inv float32, mdots, ddots *float32)

//go:noescape
func clusterDotsVNNI(n, hp int, means *int16, dirs *int8, x *int16, mscale, dscale *float32, inv float32, mdots, ddots *float32)

// clusterDotsAsm is clusterDots for the first n rounded down to a multiple
// of 4 clusters; it returns how many it did, 0 when the CPU has no AVX2.
func clusterDotsAsm(n, hp int, means []int16, dirs []int8, x []int16, mscale, dscale []float32, inv float32, mdots, ddots []float32) int {
	n4 := n &^ 3
	if n4 == 0 || !cpu.X86.HasAVX2 || !cpu.X86.HasFMA {
		return 0
	}
	if hasVNNI() {
		clusterDotsVNNI(n4, hp, &means[0], &dirs[0], &x[0], &mscale[0], &dscale[0], inv, &mdots[0], &ddots[0])
	} else {
		clusterDotsAVX2(n4, hp, &means[0], &dirs[0], &x[0], &mscale[0], &dscale[0], inv, &mdots[0], &ddots[0])
	}
	return n4
}

//go:noescape
func keysAboveAVX2(dst *uint64, est *float32, n int, lo, hi float32) int

// keysAboveAsm is appendAbove for the first len(est) rounded down to a
// multiple of 8 clusters, writing into dst (room for them all); it
// returns how many clusters it looked at and how many keys it wrote, 0
// and 0 when the CPU has no AVX2.
func keysAboveAsm(dst []uint64, est []float32, lo, hi float32) (int, int) {
	n8 := len(est) &^ 7
	if n8 == 0 || !cpu.X86.HasAVX2 {
		return 0, 0
	}
	_ = dst[n8-1]
	return n8, keysAboveAVX2(&dst[0], &est[0], n8, lo, hi)
}
