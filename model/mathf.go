package model

import "math"

// expf is a float32 exponential with a relative error below 2e-7 over the
// range that matters for softmax and gates; it is several times faster than
// math.Exp and does not allocate.
func expf(x float32) float32 {
	switch {
	case x != x:
		return x
	case x > 88.72:
		return float32(math.Inf(1))
	case x < -103.9:
		return 0
	}
	// x = n*ln2 + r with |r| <= ln2/2.
	const (
		log2e = 1.44269504088896341
		ln2hi = 0.693359375
		ln2lo = -2.12194440e-4
	)
	fn := float32(math.Floor(float64(x*log2e + 0.5)))
	n := int32(fn)
	r := x - fn*ln2hi - fn*ln2lo
	// Polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf coefficients).
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	y := p*r*r + r + 1
	// Scale by 2^n in two halves so that subnormal results stay exact enough.
	if n < -125 {
		return y * math.Float32frombits(uint32(n+126+127)<<23) * math.Float32frombits(uint32(-126+127)<<23)
	}
	if n > 127 {
		return y * math.Float32frombits(uint32(n-1+127)<<23) * 2
	}
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
// may be row itself).
func softmaxRow(dst, row []float32) {
	if len(row) == 0 {
		return
	}
	mx := row[0]
	for _, v := range row[1:] {
		if v > mx {
			mx = v
		}
	}
	var sum float32
	dst = dst[:len(row)]
	for i, v := range row {
		e := expf(v - mx)
		dst[i] = e
		sum += e
	}
	inv := 1 / sum
	for i := range dst {
		dst[i] *= inv
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
