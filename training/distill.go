package training

import "math"

// distiller mixes an n-gram teacher into the GRU's training target
// (knowledge distillation): the target of a position is
// (1 - weight) x the observed next page + weight x the teacher's
// next-page distribution after the same history, restricted to the
// softmax's candidate pages and renormalized. The teacher is fitted on the
// GRU's own training sessions; it is read-only and shared by the workers.
type distiller struct {
	weight float32
	m      *NGram
	uni    []float32 // the teacher's empty-context distribution
	den    float64   // its denominator: page views plus pages
}

func newDistiller(seqs [][]int64, vocabSize, order int, discount, weight float64) *distiller {
	d := &distiller{weight: float32(weight), m: &NGram{counts: countNgrams(seqs, vocabSize), order: order, discount: discount},
		uni: make([]float32, vocabSize)}
	d.m.counts.unigramProbs(d.uni)
	d.den = float64(vocabSize - 1)
	for _, u := range d.m.counts.unigram[1:] {
		d.den += u
	}
	return d
}

// soft writes into q (one entry per candidate) the teacher's distribution
// after history over the candidates, normalized to sum 1. cand lists the
// candidate pages and col maps a page to its candidate index (-1: none);
// nil cand and col mean every page, in index order. It computes
// NGram.Predict's interpolation on the candidates only: the empty-context
// probability times every context's backoff weight, plus each context's
// discounted counts times the backoff weights of the longer contexts.
//
// When next is a page (not 0), history followed by next is an occurrence
// the teacher was fitted on, and soft leaves it out (one fewer count of
// each context of history and of its pairs with next, and of next's page
// count): the teacher then gives the distribution it would give on
// sessions it has not seen, not one that already knows the target.
func (d *distiller) soft(history []int64, next int64, cand []int64, col []int32, q []float32) {
	type ctx struct {
		r        *sparseRow
		total    float64
		distinct int
		next     int // index of next in r.ids, -1 when absent
	}
	var rows [ngramMaxOrder]ctx
	n := 0
	for n+1 < d.m.order {
		r := d.m.counts.row(history, n+1)
		if r == nil {
			break
		}
		c := ctx{r: r, total: r.total, distinct: len(r.ids), next: -1}
		if next > 0 {
			c.total--
			for i, id := range r.ids {
				if int64(id) == next {
					c.next = i
					if r.count[i] <= 1 {
						c.distinct--
					}
				}
			}
		}
		if c.total <= 0 {
			break // a longer context containing this one was not seen either
		}
		rows[n] = c
		n++
	}
	disc := min(d.m.discount, 1)
	back := make([]float32, n+1) // back[k]: product of the backoff weights of contexts longer than k
	back[n] = 1
	for k := n - 1; k >= 0; k-- {
		back[k] = back[k+1] * float32(disc*float64(rows[k].distinct)/rows[k].total)
	}
	scale := back[0]
	if next > 0 {
		scale *= float32(d.den / (d.den - 1)) // one page view fewer
	}
	if cand == nil {
		for c := range q {
			q[c] = d.uni[c] * scale
		}
	} else {
		for c, id := range cand {
			q[c] = d.uni[id] * scale
		}
	}
	if next > 0 {
		c := int(next)
		if col != nil {
			c = int(col[next])
		}
		if u := d.m.counts.unigram[next]; c >= 0 && u > 0 {
			q[c] *= float32(u / (u + 1)) // add-one smoothing: u views instead of u+1
		}
	}
	for k := range n {
		x := rows[k]
		for i, id := range x.r.ids {
			c := int(id)
			if col != nil {
				c = int(col[id])
			}
			count := float64(x.r.count[i])
			if i == x.next {
				count--
			}
			if c >= 0 {
				q[c] += back[k+1] * float32(max(count-disc, 0)/x.total)
			}
		}
	}
	var sum float32
	for _, v := range q {
		sum += v
	}
	if sum > 0 {
		inv := 1 / sum
		for c := range q {
			q[c] *= inv
		}
	}
}

// subtractTarget turns the softmax row p of one position into p - y, the
// gradient of the cross-entropy with the target y, where tc is the column
// of the observed next page next, and returns the position's loss: the
// cross-entropy with the observed page, or with y when exact is set (which
// costs a logarithm per candidate). A nil distiller's target is the
// observed page alone.
func (d *distiller) subtractTarget(row []float32, tc int, history []int64, next int64, cand []int64, col []int32, q []float32, exact bool) float64 {
	loss := -math.Log(math.Max(float64(row[tc]), 1e-30))
	if d == nil || d.weight == 0 {
		row[tc]--
		return loss
	}
	q = q[:len(row)]
	d.soft(history, next, cand, col, q)
	if exact {
		loss *= float64(1 - d.weight)
		for c, v := range q {
			loss -= float64(d.weight*v) * math.Log(math.Max(float64(row[c]), 1e-30))
		}
	}
	row[tc] -= 1 - d.weight
	for c, v := range q {
		row[c] -= d.weight * v
	}
	return loss
}

// historyAt returns the pages of batch b up to and including the input at
// the state row (t*B + i) of the forward pass, without the left padding.
func historyAt(b gruBatch, row int) []int64 {
	t, i := row/b.B, row%b.B
	h := b.ids[i*b.S : i*b.S+t+1]
	for len(h) > 0 && h[0] == 0 {
		h = h[1:]
	}
	return h
}
