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
