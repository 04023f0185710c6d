package training

// The last-page skip term lets the output layer see the page just clicked
// directly, beside the recurrent state: logits = Wo (h + Skip[last]) + bo.
// Skip[last] is a per-page vector in the state's space, so the term is a
// learned bigram of rank at most H sharing the output layer's weights; it
// leaves the recurrence to model what the last page alone does not say.

// addSkip adds Skip[the page read at each predicting position] to the
// collected states w.hout (a no-op without a skip term).
func (p *gruParams) addSkip(b gruBatch, w *gruWork) {
	if p.Skip == nil {
		return
	}
	H := p.H
	for k, row := range w.pos {
		id := int(skipPage(b, row))
		sk := p.Skip[id*H : (id+1)*H]
		h := w.hout[k*H : (k+1)*H]
		for j, v := range sk {
			h[j] += v
		}
	}
}

// skipGrad adds the skip term's gradient, dhout of each predicting
// position, to the row of the page read there.
func (p *gruParams) skipGrad(b gruBatch, grad *gruParams, w *gruWork, dhout []float32) {
	if p.Skip == nil {
		return
	}
	H := p.H
	for k, row := range w.pos {
		id := int(skipPage(b, row))
		g := grad.Skip[id*H : (id+1)*H]
		for j, v := range dhout[k*H : (k+1)*H] {
			g[j] += v
		}
	}
}

// skipPage is the page read at position row (t*B + i) of batch b.
func skipPage(b gruBatch, row int) int64 {
	t, i := row/b.B, row%b.B
	return b.ids[i*b.S+t]
}
