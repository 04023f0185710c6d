package training

import "math"

// expNeg is a fast float32 e^x for x <= 0, relative error below 2e-5,
// used by the training softmax only (inference uses math.Exp so that the
// exported graph and the trainer agree to 1e-5).
func expNeg(x float32) float32 {
	if x < -87 {
		return 0
	}
	t := x * 1.4426950408889634 // log2(e)
	n := int32(t)
	if float32(n) > t {
		n-- // floor for negative t
	}
	f := t - float32(n) // [0, 1)
	p := 1 + f*(0.6931472+f*(0.2402265+f*(0.05550411+f*(0.009618129+f*(0.001333355+f*0.0001540353)))))
	return math.Float32frombits(uint32(n+127)<<23) * p
}

// softmaxTrain is softmax with expNeg.
func softmaxTrain(x []float32) {
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	var sum float32
	for i, v := range x {
		e := expNeg(v - m)
		x[i] = e
		sum += e
	}
	inv := 1 / sum
	for i := range x {
		x[i] *= inv
	}
}
