package model

import "math"

// expf is a branch-free float32 exponential with a relative error below
// 2e-7; it is several times faster than math.Exp and does not allocate.
// Inputs are clamped to [-87.3, 88.7]: results below 1.2e-38 come out as
// about 1e-38 instead of 0 and large inputs saturate near MaxFloat32.
// NaN propagates.
func expf(x float32) float32 {
	const (
		log2e = 1.44269504088896341
		ln2hi = 0.693359375
		ln2lo = -2.12194440e-4
		magic = 12582912.0 // 1.5 * 2^23: adding it rounds to an integer
	)
	x = min(max(x, -87.3), 88.7)
	// x = n*ln2 + r with |r| <= ln2/2.
	t := x*log2e + magic
	n := int32(math.Float32bits(t) - math.Float32bits(magic))
	fn := t - magic
	r := x - fn*ln2hi - fn*ln2lo
	// Polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf coefficients).
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	y := p*r*r + r + 1
	return y * math.Float32frombits(uint32(n+127)<<23)
}

func sigmoidf(x float32) float32 {
	if x >= 0 {
		return 1 / (1 + expf(-x))
	}
	e := expf(x)
	return e / (1 + e)
}

func tanhf(x float32) float32 {
	a := x
	if a < 0 {
		a = -a
	}
	if a < 0.0625 {
		// Taylor series keeps relative accuracy near zero.
		x2 := x * x
		return x * (1 - x2*(1.0/3-x2*(2.0/15-x2*17.0/315)))
	}
	if a > 9.1 {
		if x > 0 {
			return 1
		}
		return -1
	}
	e := expf(2 * a)
	t := 1 - 2/(e+1)
	if x < 0 {
		return -t
	}
	return t
}

func reluf(x float32) float32 {
	if x > 0 {
		return x
	}
	return 0
}

// softmaxRow computes a numerically stable softmax of row into dst (which
// may be row itself). As in ONNX, a row holding NaN or +Inf, or only -Inf,
// comes out NaN: the vector kernels clamp their inputs, and would turn a
// diverged model's NaN scores into a plausible uniform distribution that
// validation (finite probabilities summing to 1) could not tell.
func softmaxRow(dst, row []float32) {
	if len(row) == 0 {
		return
	}
	mx, ok := maxAsm(row)
	if !ok {
		mx = row[0]
		for _, v := range row[1:] {
			if v > mx {
				mx = v
			}
		}
	}
	dst = dst[:len(row)]
	if mx > math.MaxFloat32 || mx < -math.MaxFloat32 || mx != mx || hasNaN(row) {
		nan := float32(math.NaN())
		for i := range dst {
			dst[i] = nan
		}
		return
	}
	sum, ok := expAsm(dst, row, 1, mx)
	if !ok {
		for i, v := range row {
			e := expf(v - mx)
			dst[i] = e
			sum += e
		}
	}
	inv := 1 / sum
	if !scaleAsm(dst, inv) {
		for i := range dst {
			dst[i] *= inv
		}
	}
}

// logSoftmaxRow computes a numerically stable log-softmax of row into dst.
func logSoftmaxRow(dst, row []float32) {
	if len(row) == 0 {
		return
	}
	mx := row[0]
	for _, v := range row[1:] {
		if v > mx {
			mx = v
		}
	}
	var sum float64
	for _, v := range row {
		sum += float64(expf(v - mx))
	}
	l := mx + float32(math.Log(sum))
	dst = dst[:len(row)]
	for i, v := range row {
		dst[i] = v - l
	}
}

// sigmoidVec sets dst[i] = sigmoid(src[i]); dst may be src.
func sigmoidVec(dst, src []float32) {
	if _, ok := expAsm(dst, src, -1, 0); ok {
		ratioAsm(dst[:len(src)], 1, 0)
		return
	}
	for i, v := range src {
		dst[i] = sigmoidf(v)
	}
}

// tanhVec sets dst[i] = tanh(src[i]); dst may be src.
func tanhVec(dst, src []float32) {
	if _, ok := expAsm(dst, src, -2, 0); ok {
		ratioAsm(dst[:len(src)], 1, -1)
		return
	}
	for i, v := range src {
		dst[i] = tanhf(v)
	}
}

// hasNaN reports whether x holds a NaN.
func hasNaN(x []float32) bool {
	for _, v := range x {
		if v != v {
			return true
		}
	}
	return false
}
