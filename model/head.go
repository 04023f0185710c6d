package model

import (
	"slices"
	"sync"
)

// head is the output layer of one form of a bundle, split off its plan so
// that the clustered scorer can replace it: a Gemm with constant weights
// that turns the hidden vector into logits, and the row Softmax after it
// when the graph outputs probabilities.
type head struct {
	trunk  *plan     // the form's plan without the head's steps
	pool   sync.Pool // execs of trunk
	hidden int       // slot of the Gemm's input: [rows, H]
	w      []float32 // [V, H] row-major, alpha applied
	ownW   bool      // w is a copy, not the graph's constant
	bias   []float32 // [V] with beta applied, nil when there is none
	h      int
}

// findHead looks for the output layer of p whose scores land in slot out:
// Gemm(A, B, C) with transA 0, B constant (V×H with transB, H×V without),
// C absent or constant (V values or one), followed by a Softmax along the
// last axis when logits is false. It returns nil when the graph has another
// shape, or when a step outside the head reads the head's values.
func findHead(p *plan, out, vocab int, logits bool) *head {
	producer := func(slot int) int {
		for i := range p.steps {
			for _, o := range p.steps[i].out {
				if o == slot {
					return i
				}
			}
		}
		return -1
	}
	si := producer(out)
	if si < 0 {
		return nil
	}
	drop := map[int]bool{si: true}
	gi := si
	if !logits {
		sm, ok := p.steps[si].k.(softmaxK)
		if !ok || sm.log || (sm.axis != -1 && sm.axis != 1) || len(p.steps[si].in) != 1 {
			return nil
		}
		if gi = producer(p.steps[si].in[0]); gi < 0 {
			return nil
		}
		drop[gi] = true
	}
	st := &p.steps[gi]
	g, ok := st.k.(*gemmK)
	if !ok || g.transA || len(st.in) < 2 || st.in[0] < 0 || st.in[1] < 0 {
		return nil
	}
	B := p.consts[st.in[1]]
	if B == nil || B.dt != dtFloat || B.rank() != 2 {
		return nil
	}
	v, h := B.shape[0], B.shape[1]
	if !g.transB {
		v, h = h, v
	}
	if v != vocab || h == 0 {
		return nil
	}
	hd := &head{hidden: st.in[0], h: h, w: B.f[:v*h]}
	if !g.transB || g.alpha != 1 {
		// Rows laid out [V, H] with alpha applied: a copy of B.
		hd.w, hd.ownW = make([]float32, v*h), true
		for r := range v {
			for c := range h {
				x := B.f[r*h+c]
				if !g.transB {
					x = B.f[c*v+r]
				}
				hd.w[r*h+c] = g.alpha * x
			}
		}
	}
	if len(st.in) > 2 && st.in[2] >= 0 && g.beta != 0 {
		C := p.consts[st.in[2]]
		if C == nil || C.dt != dtFloat || (C.size() != v && C.size() != 1) || (C.rank() == 2 && C.shape[0] != 1) {
			return nil
		}
		hd.bias = make([]float32, v)
		for i := range hd.bias {
			hd.bias[i] = g.beta * C.f[min(i, len(C.f)-1)]
		}
	}
	// Nothing but the head may read the values it computes.
	for i := range p.steps {
		if drop[i] {
			continue
		}
		for _, in := range p.steps[i].in {
			for d := range drop {
				for _, o := range p.steps[d].out {
					if in == o {
						return nil
					}
				}
			}
		}
	}
	t := *p
	t.steps = nil
	for i, s := range p.steps {
		if !drop[i] {
			t.steps = append(t.steps, s)
		}
	}
	hd.trunk = &t
	hd.pool.New = func() any { return t.newExec() }
	return hd
}

// sameWeights reports whether two heads have the same weights and bias.
func (h *head) sameWeights(o *head) bool {
	return h.h == o.h && slices.Equal(h.w, o.w) && slices.Equal(h.bias, o.bias)
}
