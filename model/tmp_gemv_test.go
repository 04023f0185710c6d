package model

import "testing"

func BenchmarkTmpGemv(b *testing.B) {
	for _, sz := range [][2]int{{200, 32}, {96, 32}, {96, 16}, {1000, 64}} {
		m, n := sz[0], sz[1]
		a := lcgWeights(m*n, 1, 0.3)
		x := lcgWeights(n, 2, 1)
		y := make([]float32, m)
		b.Run("", func(b *testing.B) {
			for b.Loop() {
				gemv(m, n, a, n, x, y)
			}
		})
	}
}
