package training

import (
	"math"
	"math/rand/v2"
	"sort"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// negSampler draws negative pages for the sampled softmax from the page
// frequencies (plus one) raised to an exponent (0.75 by default; 0 draws
// uniformly, 1 by popularity).
type negSampler struct {
	cdf  []float64 // cumulative, over indices 1..V-1 (index i at cdf[i])
	logq []float64 // log probability of each index under the sampler
}

func newNegSampler(seqs [][]int64, v int) *negSampler {
	return newNegSamplerExp(seqs, v, defaultSampleExponent)
}

func newNegSamplerExp(seqs [][]int64, v int, exponent float64) *negSampler {
	counts := make([]float64, v)
	for _, s := range seqs {
		for _, id := range s {
			counts[id]++
		}
	}
	w := make([]float64, v)
	var sum float64
	for i := 1; i < v; i++ {
		w[i] = math.Pow(counts[i]+1, exponent)
		sum += w[i]
	}
	s := &negSampler{cdf: make([]float64, v), logq: make([]float64, v)}
	var acc float64
	for i := 1; i < v; i++ {
		acc += w[i] / sum
		s.cdf[i] = acc
		s.logq[i] = math.Log(w[i] / sum)
	}
	return s
}

// draw returns the candidate set of a batch: the batch's pages (its
// targets among them) and k sampled pages, without duplicates, sorted.
func (s *negSampler) draw(rng *rand.Rand, k int, b gruBatch) []int64 {
	seen := make(map[int64]bool, k+len(b.ids))
	var out []int64
	for _, id := range b.ids {
		if id != 0 && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	for range k {
		i := int64(sort.SearchFloat64s(s.cdf, rng.Float64()))
		if i < 1 {
			i = 1
		}
		if i >= int64(len(s.cdf)) {
			i = int64(len(s.cdf) - 1)
		}
		if !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// sampledHead is the output layer of one batch's sampled softmax: the
// candidate pages, the logQ correction of each and their output weights,
// shared read-only by the goroutines that split the batch.
type sampledHead struct {
	cand []int64
	corr []float32
	col  []int32   // candidate index of each page, -1 for none
	wc   []float32 // [len(cand), H]
}

// newSampledHead gathers the candidates cand (the pages of batch b and k
// pages drawn by s). A page is a candidate for sure when it is in the
// batch, else with probability 1-(1-q)^k; its logit is lowered by the log
// of that inclusion probability.
func (p *gruParams) newSampledHead(b gruBatch, s *negSampler, k int, cand []int64) *sampledHead {
	H, C := p.H, len(cand)
	inBatch := make(map[int64]bool, len(b.ids))
	for _, id := range b.ids {
		inBatch[id] = true
	}
	h := &sampledHead{cand: cand, corr: make([]float32, C), col: make([]int32, p.V), wc: make([]float32, C*H)}
	for i := range h.col {
		h.col[i] = -1
	}
	for c, id := range cand {
		if !inBatch[id] {
			h.corr[c] = float32(math.Log(-math.Expm1(float64(k) * math.Log1p(-math.Exp(s.logq[id])))))
		}
		h.col[id] = int32(c)
		copy(h.wc[c*H:(c+1)*H], p.Wo[int(id)*H:int(id+1)*H])
	}
	return h
}

// lossAndGradSampled is lossAndGrad with the softmax restricted to the
// candidate pages cand (the batch's pages and k pages drawn by s), each
// logit corrected by the log of its inclusion probability.
func (p *gruParams) lossAndGradSampled(b gruBatch, grad *gruParams, w *gruWork, s *negSampler, k int, cand []int64) (float64, int) {
	return p.lossAndGradHead(b, grad, w, p.newSampledHead(b, s, k, cand))
}

// lossAndGradHead is lossAndGradSampled over a prepared head; b may be a
// share of the rows of the batch the head was made for.
func (p *gruParams) lossAndGradHead(b gruBatch, grad *gruParams, w *gruWork, head *sampledHead) (float64, int) {
	p.forward(b, w)
	N, H, C := len(w.pos), p.H, len(head.cand)
	if N == 0 {
		return 0, 0
	}
	w.logits = grow(w.logits, N*C)
	for i := 0; i < N; i++ {
		row := w.logits[i*C : (i+1)*C]
		for c, id := range head.cand {
			row[c] = p.Bo[id]
		}
	}
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, general(N, H, w.hout), general(C, H, head.wc), 1, general(N, C, w.logits))
	var loss float64
	inv := float32(1 / float64(N))
	w.dwc = grow(w.dwc, C*H)
	w.q = grow(w.q, C)
	for i := 0; i < N; i++ {
		row := w.logits[i*C : (i+1)*C]
		tc := int(head.col[w.tgt[i]])
		for c := range row {
			row[c] -= head.corr[c]
		}
		softmaxTrain(row)
		loss += w.kd.subtractTarget(row, tc, historyAt(b, w.pos[i]), w.tgt[i], head.cand, head.col, w.q, w.exactLoss)
		for c := range row {
			row[c] *= inv
			grad.Bo[head.cand[c]] += row[c]
		}
	}
	blas32.Gemm(blas.Trans, blas.NoTrans, 1, general(N, C, w.logits), general(N, H, w.hout), 0, general(C, H, w.dwc))
	for c, id := range head.cand {
		g := grad.Wo[int(id)*H : int(id+1)*H]
		for j, v := range w.dwc[c*H : (c+1)*H] {
			g[j] += v
		}
	}
	dhout := grow(w.dx, N*H)
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, general(N, C, w.logits), general(C, H, head.wc), 0, general(N, H, dhout))
	p.backward(b, grad, w, dhout)
	return loss / float64(N), N
}
