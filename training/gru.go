package training

import (
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/prefetchd/prefetchd/model"
)

// CellGRU is the manifest cell of a GRU bundle.
const CellGRU = "gru"

// GRU is a next-page model: Embedding (row 0, padding, stays zero) -> one
// GRU layer with ONNX semantics (gates z, r, h; linear_before_reset = 1;
// zero initial state) -> Linear on the last state -> softmax. Padding
// positions are processed like any input, exactly as the exported graph
// does. A GRU is safe for concurrent prediction once trained.
type GRU struct {
	p gruParams
}

// gruParams holds the weights in the layouts of the ONNX graph.
type gruParams struct {
	V, D, H int
	Emb     []float32 // [V, D]
	Wx      []float32 // [3H, D], gates z, r, h
	Rh      []float32 // [3H, H]
	BW      []float32 // [3H]
	BR      []float32 // [3H]
	Wo      []float32 // [V, H]
	Bo      []float32 // [V]
	// Skip is the last-page skip term [V, H], nil without one: the output
	// layer reads h + Skip[last page] instead of h (row 0 stays zero).
	Skip []float32
}

func newGRUParams(v, d, h int) gruParams {
	return gruParams{
		V: v, D: d, H: h,
		Emb: make([]float32, v*d), Wx: make([]float32, 3*h*d), Rh: make([]float32, 3*h*h),
		BW: make([]float32, 3*h), BR: make([]float32, 3*h), Wo: make([]float32, v*h), Bo: make([]float32, v),
	}
}

// tensors lists the parameter slices in a fixed order.
func (p *gruParams) tensors() [][]float32 {
	t := [][]float32{p.Emb, p.Wx, p.Rh, p.BW, p.BR, p.Wo, p.Bo}
	if p.Skip != nil {
		t = append(t, p.Skip)
	}
	return t
}

// zeros returns parameters of p's sizes and form, all zero.
func (p *gruParams) zeros() gruParams {
	q := newGRUParams(p.V, p.D, p.H)
	if p.Skip != nil {
		q.Skip = make([]float32, p.V*p.H)
	}
	return q
}

func (p *gruParams) clone() gruParams {
	q := p.zeros()
	for i, t := range q.tensors() {
		copy(t, p.tensors()[i])
	}
	return q
}

// init draws weights like PyTorch: uniform(-1/sqrt(H), 1/sqrt(H)) for the
// recurrent and output layers, N(0, 0.1) for embeddings, zero padding row.
func (p *gruParams) init(rng *rand.Rand) {
	k := 1 / math.Sqrt(float64(p.H))
	for _, t := range [][]float32{p.Wx, p.Rh, p.BW, p.BR, p.Wo, p.Bo} {
		for i := range t {
			t[i] = float32((2*rng.Float64() - 1) * k)
		}
	}
	for i := p.D; i < len(p.Emb); i++ {
		p.Emb[i] = float32(0.1 * rng.NormFloat64())
	}
	clear(p.Emb[:p.D])
}

func general(rows, cols int, data []float32) blas32.General {
	return blas32.General{Rows: rows, Cols: cols, Stride: cols, Data: data[:rows*cols]}
}

func vec(data []float32) blas32.Vector { return blas32.Vector{N: len(data), Inc: 1, Data: data} }

func sigmoid(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }

func tanh32(x float32) float32 { return float32(math.Tanh(float64(x))) }

// gruScratch is per-goroutine memory for inference.
type gruScratch struct {
	gx, gh, h, hn, q []float32
}

func (g *GRU) scratch() *gruScratch {
	h := g.p.H
	return &gruScratch{gx: make([]float32, 3*h), gh: make([]float32, 3*h), h: make([]float32, h), hn: make([]float32, h),
		q: make([]float32, h)}
}

// step advances state h (len H) by one input index into hn.
func (p *gruParams) step(id int64, h, hn []float32, s *gruScratch) {
	H, D := p.H, p.D
	if id < 0 || id >= int64(p.V) {
		id = model.UnknownIndex
	}
	x := p.Emb[int(id)*D : int(id+1)*D]
	copy(s.gx, p.BW)
	blas32.Gemv(blas.NoTrans, 1, general(3*H, D, p.Wx), vec(x), 1, vec(s.gx))
	copy(s.gh, p.BR)
	blas32.Gemv(blas.NoTrans, 1, general(3*H, H, p.Rh), vec(h), 1, vec(s.gh))
	for j := 0; j < H; j++ {
		z := sigmoid(s.gx[j] + s.gh[j])
		r := sigmoid(s.gx[H+j] + s.gh[H+j])
		n := tanh32(s.gx[2*H+j] + r*s.gh[2*H+j])
		hn[j] = (1-z)*n + z*h[j]
	}
}

// output writes softmax(Wo h + bo) into dst.
func (p *gruParams) output(h, dst []float32) {
	copy(dst, p.Bo)
	blas32.Gemv(blas.NoTrans, 1, general(p.V, p.H, p.Wo), vec(h), 1, vec(dst))
	softmax(dst)
}

// outputAfter is output for state h reached on page last: with a skip
// term the output layer reads h + Skip[last] (built in s.q).
func (p *gruParams) outputAfter(h []float32, last int64, dst []float32, s *gruScratch) {
	if p.Skip == nil {
		p.output(h, dst)
		return
	}
	if last < 0 || last >= int64(p.V) {
		last = model.UnknownIndex
	}
	sk := p.Skip[int(last)*p.H : int(last+1)*p.H]
	for j, v := range h {
		s.q[j] = v + sk[j]
	}
	p.output(s.q, dst)
}

// softmax normalizes x in place, accumulating in float64.
func softmax(x []float32) {
	m := x[0]
	for _, v := range x[1:] {
		m = max(m, v)
	}
	var sum float64
	for i, v := range x {
		e := math.Exp(float64(v - m))
		x[i] = float32(e)
		sum += e
	}
	inv := 1 / sum
	for i := range x {
		x[i] = float32(float64(x[i]) * inv)
	}
}

// VocabSize is the number of indices the model scores.
func (g *GRU) VocabSize() int { return g.p.V }

// Hidden is the size of the recurrent state.
func (g *GRU) Hidden() int { return g.p.H }

// Predict runs the model over one row of page indices (padding included)
// from a zero state and writes the next-page probabilities into dst.
func (g *GRU) Predict(pageIDs []int64, dst []float32) []float32 {
	s := g.scratch()
	last := int64(model.PadIndex)
	for _, id := range pageIDs {
		g.p.step(id, s.h, s.hn, s)
		s.h, s.hn = s.hn, s.h
		last = id
	}
	if cap(dst) < g.p.V {
		dst = make([]float32, g.p.V)
	}
	dst = dst[:g.p.V]
	g.p.outputAfter(s.h, last, dst, s)
	return dst
}

// Step advances state (len Hidden; nil means zero) by one page and returns
// the probabilities after it and the new state, as step.onnx does.
func (g *GRU) Step(pageID int64, state []float32) (probs, next []float32) {
	s := g.scratch()
	if state != nil {
		copy(s.h, state)
	}
	g.p.step(pageID, s.h, s.hn, s)
	probs = make([]float32, g.p.V)
	g.p.outputAfter(s.hn, pageID, probs, s)
	return probs, s.hn
}

// PredictSession scores every prefix of seq with a running state; beyond
// maxLen pages it restarts from zero on the last maxLen pages, as the
// service's sequence form sees them.
func (g *GRU) PredictSession(seq []int64, maxLen int, fn func(t int, probs []float32)) {
	s := g.scratch()
	probs := make([]float32, g.p.V)
	h, hn := make([]float32, g.p.H), make([]float32, g.p.H)
	for t := 1; t < len(seq); t++ {
		if t <= maxLen {
			g.p.step(seq[t-1], h, hn, s)
			h, hn = hn, h
		} else {
			clear(h)
			for _, id := range seq[t-maxLen : t] {
				g.p.step(id, h, hn, s)
				h, hn = hn, h
			}
		}
		g.p.outputAfter(h, seq[t-1], probs, s)
		fn(t, probs)
	}
}

func (g *GRU) String() string {
	skip := ""
	if g.p.Skip != nil {
		skip = ", last-page skip"
	}
	return fmt.Sprintf("gru(vocab %d, embedding %d, hidden %d%s)", g.p.V, g.p.D, g.p.H, skip)
}
