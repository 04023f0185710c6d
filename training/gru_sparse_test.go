package training

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestSparseStepsMatchDense trains two copies of a GRU side by side on the
// same batches: one with the trainer's sparse bookkeeping (the workers'
// gradients summed, tied, clipped and applied by lazy Adam on the rows a
// batch reaches only), the other with dense gradients over every row and
// dense Adam, as the trainer did before. The gradients must be equal at
// every step, and the weights equal once the lazy rows are brought up to
// date, at an epoch's end (where the step size also decays) and at the
// end; the rows skipped by some batches must have moved while skipped, so
// that a lazy Adam without its catch-up would fail.
func TestSparseStepsMatchDense(t *testing.T) {
	cases := []struct {
		name    string
		sampled bool
		tied    bool
		workers int
		clip    float64
		skip    bool // with the last-page skip term
	}{
		{name: "sampled", sampled: true, workers: 1, clip: 5},
		{name: "sampled/workers3", sampled: true, workers: 3, clip: 5},
		{name: "sampled/clipped", sampled: true, workers: 2, clip: 0.05},
		{name: "sampled/tied", sampled: true, tied: true, workers: 2, clip: 5},
		{name: "full", workers: 2, clip: 5},
		{name: "full/tied/clipped", tied: true, workers: 3, clip: 0.05},
		{name: "sampled/skip", sampled: true, workers: 2, clip: 5, skip: true},
		{name: "full/skip/clipped", workers: 2, clip: 0.05, skip: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testSparseSteps(t, tc.sampled, tc.tied, tc.skip, tc.workers, tc.clip)
		})
	}
}

func testSparseSteps(t *testing.T, sampled, tied, skip bool, workers int, clip float64) {
	const v, d, h, steps, epochEnd = 60, 4, 4, 60, 25
	rng := rand.New(rand.NewPCG(11, 12))
	p := tinyGRU(t, v, d, h)
	if skip {
		p.Skip = make([]float32, v*h)
		for i := h; i < len(p.Skip); i++ { // row 0, the padding, stays zero
			p.Skip[i] = float32(rng.NormFloat64() * 0.1)
		}
	}
	ref := p.clone()
	if tied {
		copy(p.Wo, p.Emb)
		p.Wo = p.Emb
		copy(ref.Wo, ref.Emb)
		ref.Wo = ref.Emb
	}
	opt := newAdam(&p, 0.01, tied)
	refOpt := newDenseAdam(&ref, 0.01)
	ws := newGradWorkers(&p, workers, rng, 0, 0)
	sampler := newNegSampler(randomRows(rng, 50, 2, 5, v), v)
	clipped, moved := 0, 0.0
	for step := 1; step <= steps; step++ {
		batch := packBatch(randomRows(rng, 3, 2, 4, v))
		var head, refHead *sampledHead
		refGrad := ref.zeros()
		var cand []int64
		if sampled {
			cand = sampler.draw(rng, 4, batch)
		}
		opt.refresh(&p, batch, cand)
		if sampled {
			head, refHead = p.newSampledHead(batch, sampler, 4, cand), ref.newSampledHead(batch, sampler, 4, cand)
			ref.lossAndGradHead(batch, &refGrad, &gruWork{}, refHead)
		} else {
			ref.lossAndGrad(batch, &refGrad, &gruWork{})
		}
		if _, n := p.batchGrad(batch, ws, head); n == 0 {
			t.Fatalf("step %d: no positions", step)
		}
		g := &ws[0].grad
		if tied {
			g.tie()
			for j, x := range refGrad.Wo {
				refGrad.Emb[j] += x
			}
			clear(refGrad.Wo)
		}
		g.clip(clip)
		if denseClip(&refGrad, clip) {
			clipped++
		}
		assertParamsNear(t, fmt.Sprintf("step %d: gradient", step), g.tensors(), refGrad.tensors(), 1e-5)
		opt.update(&p, g)
		refOpt.update(&ref, &refGrad)
		if step == epochEnd || step == steps {
			before := p.clone()
			opt.sync(&p)
			for k, w := range p.tensors() {
				for i, x := range w {
					moved = max(moved, math.Abs(float64(x-before.tensors()[k][i])))
				}
			}
			assertParamsNear(t, fmt.Sprintf("step %d: weights", step), p.tensors(), ref.tensors(), 1e-5)
			opt.lr *= 0.5
			refOpt.lr *= 0.5
		}
	}
	if (sampled || !tied) && moved < 1e-3 { // else every row is read at every step
		t.Errorf("the catch-up of skipped rows moved no weight by more than %g: the test does not reach it", moved)
	}
	if clip < 1 && clipped == 0 {
		t.Errorf("clip norm %g never reached", clip)
	}
}

// assertParamsNear fails unless every value of got is within tol of want.
func assertParamsNear(t *testing.T, what string, got, want [][]float32, tol float64) {
	t.Helper()
	for k := range want {
		for i := range want[k] {
			if diff := math.Abs(float64(got[k][i] - want[k][i])); diff > tol*max(1, math.Abs(float64(want[k][i]))) {
				t.Fatalf("%s: tensor %d [%d] sparse %v, dense %v", what, k, i, got[k][i], want[k][i])
			}
		}
	}
}

// denseClip is the gradient clipping over every value; it reports whether
// it scaled the gradient.
func denseClip(g *gruParams, maxNorm float64) bool {
	var ss float64
	for _, t := range g.tensors() {
		for _, v := range t {
			ss += float64(v) * float64(v)
		}
	}
	norm := math.Sqrt(ss)
	if norm <= maxNorm {
		return false
	}
	s := float32(maxNorm / norm)
	for _, t := range g.tensors() {
		for i := range t {
			t[i] *= s
		}
	}
	return true
}

// denseAdam is Adam over every value at every step.
type denseAdam struct {
	lr   float64
	t    int
	m, v [][]float32
}

func newDenseAdam(p *gruParams, lr float64) *denseAdam {
	a := &denseAdam{lr: lr}
	for _, t := range p.tensors() {
		a.m = append(a.m, make([]float32, len(t)))
		a.v = append(a.v, make([]float32, len(t)))
	}
	return a
}

func (a *denseAdam) update(p, g *gruParams) {
	const b1, b2, eps = 0.9, 0.999, 1e-8
	a.t++
	c1, c2 := 1-math.Pow(b1, float64(a.t)), 1-math.Pow(b2, float64(a.t))
	step, e := float32(a.lr*math.Sqrt(c2)/c1), float32(eps*math.Sqrt(c2))
	gs := g.tensors()
	for k, w := range p.tensors() {
		for i := range w {
			gi := gs[k][i]
			a.m[k][i] = b1*a.m[k][i] + (1-b1)*gi
			a.v[k][i] = b2*a.v[k][i] + (1-b2)*gi*gi
			w[i] -= step * a.m[k][i] / (float32(math.Sqrt(float64(a.v[k][i]))) + e)
		}
	}
	clear(p.Emb[:p.D])
}
