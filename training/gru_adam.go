package training

import "math"

// adam is the Adam optimizer over every parameter tensor, lazy on the rows
// of Emb, Wo, Bo and Skip (when there is one): a row is brought up to date when a batch reads it
// (refresh, before the forward pass) and updated when the batch's gradient
// reaches it. Bringing it up to date applies the steps it skipped, in
// which dense Adam, its gradient being zero, moved it by its decaying
// moments. With m and v the row's moments after its last update and r =
// b1/sqrt(b2), the j-th skipped step moves an element by
//
//	step_j b1^j m / (b2^(j/2) sqrt(v) + eps_j) = step_j r^j m / (sqrt(v) + eps_j b2^(-j/2))
//
// (step_j and eps_j being that step's bias-corrected step size and
// epsilon). Without the epsilon term this is m/sqrt(v) times sum_j step_j
// r^j, a sum shared by every row skipped since the same step; the epsilon
// term is taken as its mean over the skipped steps weighted by step_j r^j,
// which leaves only a second-order error in the spread of eps_j b2^(-j/2)
// (a few percent of eps = 1e-8 where r^j matters), so that the weights
// are those of dense Adam up to float32 rounding
// (TestSparseStepsMatchDense). m and v decay by b1^k and b2^k over k
// skipped steps. sync brings every row up to date.
type adam struct {
	lr, b1, b2, eps float64
	t               int
	m, v            [][]float32 // nil for the output weights when tied to the embeddings
	// last[k][r] is the step after which row r of tensor k was last
	// updated; nil for the tensors updated in full at every step.
	last [][]int32
	// steps[s-1] is the bias-corrected step size of step s.
	steps []float64
	// pow1[k], pow2[k] are b1^k, b2^k; catch[k] is the sum over the last
	// k steps of step_j r^j (j counted back from the step after the row's
	// last update), for k up to catchUpSteps.
	// catchEps[k] is the same sum of step_j r^j eps_j b2^(-j/2): over
	// catch[k], the mean epsilon term of the skipped steps.
	pow1, pow2, catch, catchEps []float64
	// prepared is the step catch and catchEps are filled for (refresh and
	// update both need them for the same step); -1 before the first.
	prepared int
}

// catchUpSteps bounds the sum of a row's skipped steps: beyond it, r^k is
// below 1e-22 of the first term.
const catchUpSteps = 512

// newAdam makes the optimizer of p's tensors; tied means that p.Wo is
// p.Emb, updated once as the embeddings.
func newAdam(p *gruParams, lr float64, tied bool) *adam {
	a := &adam{lr: lr, b1: 0.9, b2: 0.999, eps: 1e-8, pow1: []float64{1}, pow2: []float64{1}, prepared: -1}
	for k, t := range p.tensors() {
		var m, v []float32
		var last []int32
		if k != tensorWo || !tied {
			m, v = make([]float32, len(t)), make([]float32, len(t))
		}
		if k == tensorEmb || k == tensorWo || k == tensorBo || k == tensorSkip {
			last = make([]int32, p.V)
		}
		a.m, a.v, a.last = append(a.m, m), append(a.v, v), append(a.last, last)
	}
	return a
}

// Indices in gruParams.tensors of the tensors with a row per page.
const (
	tensorEmb = 0
	tensorWo  = 5
	tensorBo  = 6
	// tensorSkip, the last-page skip term, is there only with one.
	tensorSkip = 7
)

// update takes one Adam step with gradient g, on the rows g may reach.
func (a *adam) update(p *gruParams, g *sparseGrad) {
	a.prepare(a.t) // catch-up of the steps before this one
	a.t++
	c1 := 1 - math.Pow(a.b1, float64(a.t))
	c2 := 1 - math.Pow(a.b2, float64(a.t))
	a.steps = append(a.steps, a.lr*math.Sqrt(c2)/c1)
	a.pow1 = append(a.pow1, a.pow1[len(a.pow1)-1]*a.b1)
	a.pow2 = append(a.pow2, a.pow2[len(a.pow2)-1]*a.b2)
	step := float32(a.steps[a.t-1])
	b1, b2, eps := float32(a.b1), float32(a.b2), float32(a.eps*math.Sqrt(c2))
	ws := p.tensors()
	for k, pt := range g.parts() {
		w, m, v, last := ws[k], a.m[k], a.v[k], a.last[k]
		if m == nil {
			continue
		}
		gt := pt.t
		pt.spans(func(r, lo, hi int) {
			if last != nil {
				a.catchUp(w[lo:hi], m[lo:hi], v[lo:hi], int(last[r]), a.t-1)
				last[r] = int32(a.t)
			}
			for i := lo; i < hi; i++ {
				m[i] = b1*m[i] + (1-b1)*gt[i]
				v[i] = b2*v[i] + (1-b2)*gt[i]*gt[i]
				w[i] -= step * m[i] / (float32(math.Sqrt(float64(v[i]))) + eps)
			}
		})
	}
	clear(p.Emb[:p.D]) // padding row
}

// refresh brings up to date the rows batch b reads before its forward
// pass: the embeddings of its pages and the output rows of the candidates
// cand (with nil, every output row, which every step updates already).
// The gradient is then that of dense Adam's weights.
func (a *adam) refresh(p *gruParams, b gruBatch, cand []int64) {
	a.prepare(a.t)
	fresh := func(k int, id int64) {
		w, last := p.tensors()[k], a.last[k]
		if a.m[k] == nil || int(last[id]) == a.t {
			return
		}
		width := len(w) / p.V
		lo, hi := int(id)*width, int(id+1)*width
		a.catchUp(w[lo:hi], a.m[k][lo:hi], a.v[k][lo:hi], int(last[id]), a.t)
		last[id] = int32(a.t)
	}
	for _, id := range b.ids {
		fresh(tensorEmb, id)
		if p.Skip != nil {
			fresh(tensorSkip, id)
		}
	}
	for _, id := range cand {
		fresh(tensorWo, id)
		fresh(tensorBo, id)
		if a.m[tensorWo] == nil {
			fresh(tensorEmb, id) // the output weights are the embeddings
		}
	}
}

// sync brings every row up to the last step, as dense Adam would have it.
func (a *adam) sync(p *gruParams) {
	a.prepare(a.t)
	for k, w := range p.tensors() {
		last := a.last[k]
		if last == nil || a.m[k] == nil {
			continue
		}
		width := len(w) / p.V
		for r := range last {
			lo, hi := r*width, (r+1)*width
			a.catchUp(w[lo:hi], a.m[k][lo:hi], a.v[k][lo:hi], int(last[r]), a.t)
			last[r] = int32(a.t)
		}
	}
	clear(p.Emb[:p.D])
}

// prepare fills catch for rows brought up to step t: catch[k] is the sum
// of step_j r^j over steps t-k+1..t, j = 1..k.
func (a *adam) prepare(t int) {
	if a.prepared == t {
		return
	}
	a.prepared = t
	r := a.b1 / math.Sqrt(a.b2)
	n := min(t, catchUpSteps)
	a.catch, a.catchEps = append(a.catch[:0], 0), append(a.catchEps[:0], 0)
	for k := 1; k <= n; k++ {
		s := t - k + 1 // the step j = 1 of a row last updated k steps before t
		eps := a.eps * math.Sqrt(1-a.pow2[s])
		a.catch = append(a.catch, r*(a.steps[s-1]+a.catch[k-1]))
		a.catchEps = append(a.catchEps, r/math.Sqrt(a.b2)*(a.steps[s-1]*eps+a.catchEps[k-1]))
	}
}

// catchUp applies to a row (weights w, moments m and v) last updated at
// step from the steps from+1..to, whose gradient was zero; a.catch must
// be prepared for to.
func (a *adam) catchUp(w, m, v []float32, from, to int) {
	k := to - from
	if k <= 0 {
		return
	}
	j := min(k, len(a.catch)-1)
	sum := a.catch[j]
	eps := a.catchEps[j] / sum
	d1, d2 := a.pow1[k], a.pow2[k]
	for i, mi := range m {
		if mi == 0 {
			v[i] = float32(float64(v[i]) * d2)
			continue
		}
		vi := float64(v[i])
		w[i] -= float32(sum * float64(mi) / (math.Sqrt(vi) + eps))
		m[i] = float32(float64(mi) * d1)
		v[i] = float32(vi * d2)
	}
}
