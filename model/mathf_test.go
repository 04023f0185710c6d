package model

import (
	"math"
	"testing"
)

func TestMathf(t *testing.T) {
	for x := float32(-87); x <= 88; x += 0.0137 {
		want := math.Exp(float64(x))
		if got := float64(expf(x)); math.Abs(got-want) > 3e-7*want {
			t.Fatalf("expf(%v) = %v, want %v", x, got, want)
		}
	}
	for x := float32(-12); x <= 12; x += 0.00731 {
		if got, want := float64(tanhf(x)), math.Tanh(float64(x)); math.Abs(got-want) > 3e-7 {
			t.Fatalf("tanhf(%v) = %v, want %v", x, got, want)
		}
		if got, want := float64(sigmoidf(x)), 1/(1+math.Exp(-float64(x))); math.Abs(got-want) > 3e-7 {
			t.Fatalf("sigmoidf(%v) = %v, want %v", x, got, want)
		}
	}
	if v := expf(float32(math.NaN())); v == v {
		t.Errorf("expf(NaN) = %v, want NaN", v)
	}
	if v := expf(-1000); v > 1e-37 {
		t.Errorf("expf(-1000) = %v, want ~0", v)
	}
	row := []float32{1, 2, 3, -1e30}
	softmaxRow(row, row)
	if s := row[0] + row[1] + row[2] + row[3]; math.Abs(float64(s)-1) > 1e-6 || row[3] > 1e-30 {
		t.Errorf("softmax %v", row)
	}
}

func TestSoftmaxRow(t *testing.T) {
	for _, n := range []int{1, 7, 8, 9, 100, 1003} {
		row := lcgWeights(n, uint64(n), 30)
		row[0] = -200 // far below the others: exp underflows
		got := make([]float32, n)
		softmaxRow(got, row)
		var mx float64 = -1e30
		for _, v := range row {
			mx = math.Max(mx, float64(v))
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v) - mx)
		}
		for i, v := range row {
			want := math.Exp(float64(v)-mx) / sum
			if math.Abs(float64(got[i])-want) > 1e-6*math.Max(want, 1e-3) {
				t.Fatalf("n=%d: softmax[%d] = %v, want %v", n, i, got[i], want)
			}
		}
	}
}

func TestVecActivations(t *testing.T) {
	for _, n := range []int{1, 8, 13, 64, 100} {
		src := lcgWeights(n, uint64(n), 12)
		src[0] = 200
		if n > 1 {
			src[1] = -200
		}
		s, th := make([]float32, n), make([]float32, n)
		sigmoidVec(s, src)
		tanhVec(th, src)
		for i, x := range src {
			if want := 1 / (1 + math.Exp(-float64(x))); math.Abs(float64(s[i])-want) > 3e-7 {
				t.Fatalf("sigmoid(%v) = %v, want %v", x, s[i], want)
			}
			if want := math.Tanh(float64(x)); math.Abs(float64(th[i])-want) > 3e-7 {
				t.Fatalf("tanh(%v) = %v, want %v", x, th[i], want)
			}
		}
	}
}
