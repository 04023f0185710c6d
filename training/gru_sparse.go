package training

import "math"

// A batch's gradient reaches few rows of the [V, ...] tensors (Emb: the
// batch's input pages; Wo and Bo: the sampled softmax's candidates), so the
// per-batch bookkeeping (clearing, summing the workers' shares, clipping,
// Adam) visits only the rows that may be non-zero: its cost follows the
// batch, not the vocabulary.

// rowSet is the set of rows of a [V, width] gradient that may be non-zero:
// a list without duplicates, or every row.
type rowSet struct {
	all   bool
	rows  []int32
	mark  []uint32 // mark[r] == stamp: r is in rows
	stamp uint32
}

func newRowSet(v int) rowSet { return rowSet{mark: make([]uint32, v), stamp: 1} }

// reset empties the set.
func (s *rowSet) reset() {
	s.all = false
	s.rows = s.rows[:0]
	if s.stamp++; s.stamp == 0 {
		clear(s.mark)
		s.stamp = 1
	}
}

// add puts row r in the set.
func (s *rowSet) add(r int64) {
	if !s.all && s.mark[r] != s.stamp {
		s.mark[r] = s.stamp
		s.rows = append(s.rows, int32(r))
	}
}

// union adds the rows of o.
func (s *rowSet) union(o *rowSet) {
	if o.all {
		s.all = true
		return
	}
	for _, r := range o.rows {
		s.add(int64(r))
	}
}

// gradPart is one tensor of a gradient with the rows that may be non-zero:
// rows nil means the whole tensor (the recurrent layer's weights and
// biases, which every batch reaches).
type gradPart struct {
	t     []float32
	width int
	rows  *rowSet
}

// spans calls fn with the bounds of each stretch of t that may be non-zero:
// the whole tensor when rows is nil, else row by row.
func (g gradPart) spans(fn func(row, lo, hi int)) {
	switch {
	case g.rows == nil:
		fn(-1, 0, len(g.t))
	case g.rows.all:
		for r := 0; r*g.width < len(g.t); r++ {
			fn(r, r*g.width, (r+1)*g.width)
		}
	default:
		for _, r := range g.rows.rows {
			fn(int(r), int(r)*g.width, (int(r)+1)*g.width)
		}
	}
}

// sparseGrad is a gradient in the layout of gruParams with the rows of
// Emb (and of the last-page skip term, Skip, read for the same pages), and
// of Wo and Bo, that may be non-zero; every other value is zero.
type sparseGrad struct {
	gruParams
	emb, out rowSet
}

// newSparseGrad is a zero gradient of p's sizes and form.
func newSparseGrad(p *gruParams) sparseGrad {
	return sparseGrad{gruParams: p.zeros(), emb: newRowSet(p.V), out: newRowSet(p.V)}
}

// parts lists the tensors in the order of gruParams.tensors.
func (g *sparseGrad) parts() []gradPart {
	pts := []gradPart{
		{g.Emb, g.D, &g.emb}, {t: g.Wx}, {t: g.Rh}, {t: g.BW}, {t: g.BR},
		{g.Wo, g.H, &g.out}, {g.Bo, 1, &g.out},
	}
	if g.Skip != nil {
		pts = append(pts, gradPart{g.Skip, g.H, &g.emb})
	}
	return pts
}

// zero clears the gradient and empties its row sets.
func (g *sparseGrad) zero() {
	for _, pt := range g.parts() {
		pt.spans(func(_, lo, hi int) { clear(pt.t[lo:hi]) })
	}
	g.emb.reset()
	g.out.reset()
}

// touch records the rows batch b and head reach: b's input pages in Emb,
// and head's candidates (every page when head is nil, the full softmax) in
// Wo and Bo.
func (g *sparseGrad) touch(b gruBatch, head *sampledHead) {
	for _, id := range b.ids {
		if id != 0 {
			g.emb.add(id)
		}
	}
	if head == nil {
		g.out.all = true
		return
	}
	for _, id := range head.cand {
		g.out.add(id)
	}
}

// scale multiplies the gradient by s.
func (g *sparseGrad) scale(s float32) {
	for _, pt := range g.parts() {
		pt.spans(func(_, lo, hi int) {
			for i := range pt.t[lo:hi] {
				pt.t[lo+i] *= s
			}
		})
	}
}

// addScaled adds s times o to g, and o's rows to g's.
func (g *sparseGrad) addScaled(o *sparseGrad, s float32) {
	dst := g.parts()
	for k, pt := range o.parts() {
		d := dst[k].t
		pt.spans(func(_, lo, hi int) {
			for i, v := range pt.t[lo:hi] {
				d[lo+i] += s * v
			}
		})
	}
	g.emb.union(&o.emb)
	g.out.union(&o.out)
}

// tie adds the output layer's gradient into the embeddings' (the two
// share one matrix) and clears it; Bo keeps its own.
func (g *sparseGrad) tie() {
	D := g.D
	gradPart{g.Wo, g.H, &g.out}.spans(func(r, lo, hi int) {
		e := g.Emb[r*D : (r+1)*D]
		for i, v := range g.Wo[lo:hi] {
			e[i] += v
		}
		clear(g.Wo[lo:hi])
	})
	g.emb.union(&g.out)
}

// clip scales the gradient so that its global L2 norm is at most maxNorm.
// The rows outside the sets are zero, so the norm is that of the whole
// gradient.
func (g *sparseGrad) clip(maxNorm float64) {
	var ss float64
	for _, pt := range g.parts() {
		pt.spans(func(_, lo, hi int) {
			for _, v := range pt.t[lo:hi] {
				ss += float64(v) * float64(v)
			}
		})
	}
	if norm := math.Sqrt(ss); norm > maxNorm {
		g.scale(float32(maxNorm / norm))
	}
}
