package model

import (
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
