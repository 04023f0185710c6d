//go:build !amd64

package model

func gemvAsm(m, n int, a []float32, lda int, x, y []float32) bool { return false }

func expAsm(dst, src []float32, scale, shift float32) (float32, bool) { return 0, false }

func gemv4Asm(m, n int, a []float32, lda int, x []float32, ldx int, y []float32, ldy int) bool {
	return false
}

func maxAsm(x []float32) (float32, bool) { return 0, false }

func scaleAsm(x []float32, s float32) bool { return false }

func gemmPacked4Asm(p *packedT, a, x []float32, ldx int, out []float32, ldo int) bool {
	return false
}

func addAsm(dst, src []float32) bool { return false }

func ratioAsm(x []float32, a, b float32) bool { return false }

func dotI8Asm(a []int8, n, h int, x []int16, out []int32) bool { return false }

func logitsI8Asm(a []int8, n, h int, x []int16, scale, bias []float32, inv, off float32, out []float32) (int, float32) {
	return 0, 0
}

func estAsm(n int, dots, lam, spread, logMass []float32, xx, ua, ub float32, est, unc []float32) (int, float32) {
	return 0, 0
}

func sumSqMulAsm(a, b []float32) (int, float32) { return 0, 0 }

func clusterDotsAsm(n, hp int, means []int16, dirs []int8, x []int16, mscale, dscale []float32, inv float32, mdots, ddots []float32) int {
	return 0
}

func keysAboveAsm(dst []uint64, est []float32, lo, hi float32) (int, int) { return 0, 0 }
