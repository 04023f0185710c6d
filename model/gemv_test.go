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
