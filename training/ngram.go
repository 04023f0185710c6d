package training

// ngramMaxOrder is the longest n-gram counted: a context of up to
// ngramMaxOrder-1 pages and the next page.
const ngramMaxOrder = 5

// ctxKey is a context: the last n pages of a history, oldest first.
type ctxKey struct {
	n   uint8
	ids [ngramMaxOrder - 1]int32
}

func contextOf(history []int64, n int) (ctxKey, bool) {
	if n > len(history) || n < 1 || n > ngramMaxOrder-1 {
		return ctxKey{}, false
	}
	k := ctxKey{n: uint8(n)}
	for i, id := range history[len(history)-n:] {
		k.ids[i] = int32(id)
	}
	return k, true
}

// sparseRow is the pages seen after one context and how often.
type sparseRow struct {
	total float64
	ids   []int32
	count []float32
}

// ngramCounts holds the next-page counts of every context of 1 to
// ngramMaxOrder-1 pages in the training sequences, and the page counts.
type ngramCounts struct {
	vocab   int
	unigram []float64
	rows    map[ctxKey]*sparseRow
}

func countNgrams(seqs [][]int64, vocabSize int) *ngramCounts {
	type ctxNext struct {
		ctx  ctxKey
		next int32
	}
	flat := make(map[ctxNext]float32)
	c := &ngramCounts{vocab: vocabSize, unigram: make([]float64, vocabSize), rows: make(map[ctxKey]*sparseRow)}
	for _, s := range seqs {
		for t, p := range s {
			c.unigram[p]++
			for n := 1; n <= min(t, ngramMaxOrder-1); n++ {
				k, _ := contextOf(s[:t], n)
				flat[ctxNext{k, int32(p)}]++
			}
		}
	}
	for k, v := range flat {
		r := c.rows[k.ctx]
		if r == nil {
			r = &sparseRow{}
			c.rows[k.ctx] = r
		}
		r.total += float64(v)
		r.ids = append(r.ids, k.next)
		r.count = append(r.count, v)
	}
	return c
}

// row returns the counts after the last n pages of history, or nil.
func (c *ngramCounts) row(history []int64, n int) *sparseRow {
	k, ok := contextOf(history, n)
	if !ok {
		return nil
	}
	return c.rows[k]
}

// unigramProbs writes the add-one smoothed page distribution (padding 0).
func (c *ngramCounts) unigramProbs(dst []float32) {
	var n float64
	for _, v := range c.unigram[1:] {
		n += v
	}
	den := n + float64(c.vocab-1)
	dst[0] = 0
	for j := 1; j < c.vocab; j++ {
		dst[j] = float32((c.unigram[j] + 1) / den)
	}
}

// NGram is an interpolated n-gram model with absolute discounting: with a
// context h of n pages seen c(h) times, followed by T(h) distinct pages,
//
//	P(w | h) = max(c(h, w) - d, 0) / c(h) + d T(h) / c(h) P(w | h')
//
// where h' drops the oldest page of h; a context never seen backs off to
// P(w | h'), and the empty context is the add-one smoothed popularity.
type NGram struct {
	counts   *ngramCounts
	order    int
	discount float64
}

// Predict writes the next-page distribution after history into dst.
func (m *NGram) Predict(history []int64, dst []float32) []float32 {
	dst = grow(dst, m.counts.vocab)
	m.counts.unigramProbs(dst)
	for n := 1; n < m.order; n++ {
		r := m.counts.row(history, n)
		if r == nil || r.total == 0 {
			break // a longer context containing this one was not seen either
		}
		d := min(m.discount, 1)
		back := float32(d * float64(len(r.ids)) / r.total)
		for j := range dst {
			dst[j] *= back
		}
		for i, id := range r.ids {
			dst[id] += float32(max(float64(r.count[i])-d, 0) / r.total)
		}
	}
	return dst
}

// Markov2 is a second-order Markov model with backoff: after a pair of
// pages seen at least MinCount times it scores the pages that followed
// the pair (the first-order model breaking ties with weight markov2Tie);
// otherwise it is the first-order model.
type Markov2 struct {
	counts   *ngramCounts
	first    *Markov
	minCount float64
}

// markov2Tie is the weight of the first-order model inside a second-order
// row: enough to order pages the pair's counts leave tied.
const markov2Tie = 1e-3

// Predict writes the next-page distribution after history into dst.
func (m *Markov2) Predict(history []int64, dst []float32) []float32 {
	dst = m.first.Predict(history, dst)
	r := m.counts.row(history, 2)
	if r == nil || r.total < max(m.minCount, 1) {
		return dst
	}
	for j := range dst {
		dst[j] *= markov2Tie
	}
	for i, id := range r.ids {
		dst[id] += float32((1 - markov2Tie) * float64(r.count[i]) / r.total)
	}
	return dst
}
