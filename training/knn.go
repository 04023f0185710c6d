package training

import (
	"math"
	"slices"
	"sync"

	"github.com/prefetchd/prefetchd/model"
)

// knnIndex holds the training sessions for the session-kNN models, the
// session number standing for its time (later sessions have larger
// numbers).
type knnIndex struct {
	vocab    int
	sessions [][]int64
	distinct []int     // distinct pages of each session
	postings [][]int32 // page -> sessions containing it, ascending
	pop      *Popularity
	idf      []float64 // log(sessions / views) per page
	scratch  sync.Pool
}

// knnScratch is per-prediction memory.
type knnScratch struct {
	items   []int64
	weights []float64
	steps   []int32 // clicks back from the last page (1: the last page)
	heads   []int
	nbs     []neighbour
	seen    []int32 // stamp per page
	stamp   int32
	itemW   []float64
	tmp     []float64
	touched []int64
}

type neighbour struct {
	id   int32
	sim  float64
	step int32 // clicks back to the most recent history page it holds
}

func newKNNIndex(seqs [][]int64, vocabSize int, pop *Popularity) *knnIndex {
	x := &knnIndex{vocab: vocabSize, sessions: seqs, distinct: make([]int, len(seqs)),
		postings: make([][]int32, vocabSize), pop: pop}
	views := make([]int, vocabSize)
	last := make([]int32, vocabSize)
	for i := range last {
		last[i] = -1
	}
	for s, seq := range seqs {
		for _, p := range seq {
			views[p]++
			if last[p] != int32(s) {
				last[p] = int32(s)
				x.distinct[s]++
				if p != model.UnknownIndex {
					x.postings[p] = append(x.postings[p], int32(s))
				}
			}
		}
	}
	x.idf = make([]float64, vocabSize)
	for p, n := range views {
		if n > 0 {
			x.idf[p] = math.Log(float64(len(seqs)) / float64(n))
		}
	}
	x.scratch.New = func() any {
		return &knnScratch{seen: make([]int32, vocabSize), itemW: make([]float64, vocabSize), tmp: make([]float64, vocabSize)}
	}
	return x
}

// currentItems sets sc.items and sc.weights to the distinct known pages of
// history, each weighted by w(position, length) of its last occurrence
// (positions 1..length, the last page at length).
func (x *knnIndex) currentItems(history []int64, sc *knnScratch, w func(pos, length int) float64) {
	sc.items, sc.weights, sc.steps = sc.items[:0], sc.weights[:0], sc.steps[:0]
	sc.stamp++
	for i := len(history) - 1; i >= 0; i-- {
		p := history[i]
		if p <= model.UnknownIndex || p >= int64(x.vocab) || sc.seen[p] == sc.stamp {
			continue
		}
		sc.seen[p] = sc.stamp
		sc.items = append(sc.items, p)
		sc.weights = append(sc.weights, w(i+1, len(history)))
		sc.steps = append(sc.steps, int32(len(history)-i))
	}
}

// neighbours sets sc.nbs to the latest sample sessions that share a page
// with sc.items, each with the sum of the weights of the shared pages.
func (x *knnIndex) neighbours(sc *knnScratch, sample int) {
	sc.nbs = sc.nbs[:0]
	sc.heads = sc.heads[:0]
	for _, p := range sc.items {
		sc.heads = append(sc.heads, len(x.postings[p])-1)
	}
	for len(sc.nbs) < sample {
		top := int32(-1)
		for i, h := range sc.heads {
			if h >= 0 {
				top = max(top, x.postings[sc.items[i]][h])
			}
		}
		if top < 0 {
			return
		}
		var sim float64
		step := int32(math.MaxInt32)
		for i, h := range sc.heads {
			if h >= 0 && x.postings[sc.items[i]][h] == top {
				sim += sc.weights[i]
				step = min(step, sc.steps[i])
				sc.heads[i]--
			}
		}
		sc.nbs = append(sc.nbs, neighbour{top, sim, step})
	}
}

// forget clears the scores of the pages of history.
func (x *knnIndex) forget(history []int64, sc *knnScratch) {
	for _, p := range history {
		if p >= 0 && p < int64(x.vocab) {
			sc.itemW[p] = 0
		}
	}
}

// keepTop keeps the k most similar neighbours (ties: the later session).
func keepTop(nbs []neighbour, k int) []neighbour {
	slices.SortFunc(nbs, func(a, b neighbour) int {
		switch {
		case a.sim > b.sim:
			return -1
		case a.sim < b.sim:
			return 1
		}
		return int(b.id - a.id)
	})
	return nbs[:min(k, len(nbs))]
}

// finish turns the page scores in sc.itemW into dst, normalized, falling
// back to popularity when no page scored. With skipCurrent the last page of
// history scores 0: every neighbour contains it, so it would otherwise lead
// every list.
func (x *knnIndex) finish(history []int64, sc *knnScratch, skipCurrent bool, dst []float32) []float32 {
	dst = grow(dst, x.vocab)
	if n := len(history); skipCurrent && n > 0 && history[n-1] >= 0 && history[n-1] < int64(x.vocab) {
		sc.itemW[history[n-1]] = 0
	}
	for j, v := range sc.itemW {
		dst[j] = float32(v)
	}
	clear(sc.itemW)
	if !normalize(dst) {
		return x.pop.Predict(history, dst)
	}
	return dst
}

// VSKNN is vector session kNN (Ludewig and Jannach 2018): the pages of the
// current history weighted by position (Weighting: SRLinear-like decay
// codes below), the Sample latest training sessions sharing a page as
// candidates, similarity = sum of the weights of the shared pages, and a
// page's score = sum of the similarities of the K nearest sessions that
// contain it. With skipCurrent the current page is never predicted.
type VSKNN struct {
	x           *knnIndex
	k, sample   int
	weighting   int
	skipCurrent bool
	// scoreWeighting (KNNScoreSame, the zero value, for none) scales a
	// neighbour's votes by how far back its most recent shared page is in
	// the history (1: the last page).
	scoreWeighting int
	// idf adds idf × log(sessions / views of the page) of each vote to
	// it, favouring rare pages; 0 for none.
	idf float64
	// noRemind never proposes a page of the history.
	noRemind bool
}

// Position weightings of the current session for VSKNN: with position p
// (1-based) in a history of length L.
const (
	KNNLinear    = 0 // p / L
	KNNSame      = 1 // 1
	KNNDiv       = 2 // 1 / (L - p + 1)
	KNNQuadratic = 3 // (p / L)²
)

// Weightings of a VSKNN neighbour's votes by the clicks back from the last
// page to the most recent page of the history it holds (d = 1 for the last
// page).
const (
	KNNScoreSame      = 0 // 1
	KNNScoreDiv       = 1 // 1 / d
	KNNScoreLinear    = 2 // 1 - 0.1 d, 0 beyond 10
	KNNScoreLog       = 3 // 1 / log10(d + 1.7)
	KNNScoreQuadratic = 4 // 1 / d²
)

func knnScoreWeight(weighting, d int) float64 {
	switch weighting {
	case KNNScoreDiv:
		return srWeight(SRDiv, d)
	case KNNScoreLinear:
		return srWeight(SRLinear, d)
	case KNNScoreLog:
		return srWeight(SRLog, d)
	case KNNScoreQuadratic:
		return srWeight(SRQuadratic, d)
	default:
		return 1
	}
}

func knnWeight(weighting int) func(p, l int) float64 {
	switch weighting {
	case KNNSame:
		return func(int, int) float64 { return 1 }
	case KNNDiv:
		return func(p, l int) float64 { return 1 / float64(l-p+1) }
	case KNNQuadratic:
		return func(p, l int) float64 { r := float64(p) / float64(l); return r * r }
	default:
		return func(p, l int) float64 { return float64(p) / float64(l) }
	}
}

// Predict writes the next-page distribution after history into dst.
func (m *VSKNN) Predict(history []int64, dst []float32) []float32 {
	sc := m.x.scratch.Get().(*knnScratch)
	defer m.x.scratch.Put(sc)
	m.x.currentItems(history, sc, knnWeight(m.weighting))
	m.x.neighbours(sc, m.sample)
	for _, nb := range keepTop(sc.nbs, m.k) {
		w := nb.sim * knnScoreWeight(m.scoreWeighting, int(nb.step))
		sc.stamp++
		for _, p := range m.x.sessions[nb.id] {
			if sc.seen[p] != sc.stamp {
				sc.seen[p] = sc.stamp
				if m.idf > 0 {
					sc.itemW[p] += w * (1 + m.idf*m.x.idf[p])
				} else {
					sc.itemW[p] += w
				}
			}
		}
	}
	if m.noRemind {
		m.x.forget(history, sc)
	}
	return m.x.finish(history, sc, m.skipCurrent, dst)
}

// STAN is sequence- and time-aware neighbourhood (Garg et al. 2019): the
// pages of the current history weighted exp(-(L-p)/Lambda1); candidate
// sessions (the Sample latest that share a page) scored by the cosine of
// that vector with theirs times exp(-(now - session)/Lambda2), in
// sessions; a page of one of the K nearest sessions scores its similarity
// times exp(-|q - r|/Lambda3), q its position in that session and r the
// position of the most recent page of the history found there. With
// skipCurrent the current page is never predicted.
type STAN struct {
	x                         *knnIndex
	k, sample                 int
	lambda1, lambda2, lambda3 float64
	now                       float64 // the number of training sessions
	skipCurrent               bool
	noRemind                  bool // never propose a page of the history
}

// Predict writes the next-page distribution after history into dst.
func (m *STAN) Predict(history []int64, dst []float32) []float32 {
	sc := m.x.scratch.Get().(*knnScratch)
	defer m.x.scratch.Put(sc)
	m.x.currentItems(history, sc, func(p, l int) float64 { return math.Exp(-float64(l-p) / m.lambda1) })
	m.x.neighbours(sc, m.sample)
	norm := math.Sqrt(float64(len(sc.items)))
	for i := range sc.nbs {
		nb := &sc.nbs[i]
		nb.sim /= norm * math.Sqrt(float64(m.x.distinct[nb.id]))
		if m.lambda2 > 0 {
			nb.sim *= math.Exp(-(m.now - float64(nb.id)) / m.lambda2)
		}
	}
	for _, nb := range keepTop(sc.nbs, m.k) {
		seq := m.x.sessions[nb.id]
		// r: where the most recent page of the history occurs in seq
		// (sc.items is newest first).
		r := -1
		for _, p := range sc.items {
			if r = slices.Index(seq, p); r >= 0 {
				break
			}
		}
		// a page seen twice in the session counts at its nearest occurrence
		sc.touched = sc.touched[:0]
		for q, p := range seq {
			w := nb.sim * math.Exp(-math.Abs(float64(q-r))/m.lambda3)
			if sc.tmp[p] == 0 {
				sc.touched = append(sc.touched, p)
			}
			sc.tmp[p] = max(sc.tmp[p], w)
		}
		for _, p := range sc.touched {
			sc.itemW[p] += sc.tmp[p]
			sc.tmp[p] = 0
		}
	}
	if m.noRemind {
		m.x.forget(history, sc)
	}
	return m.x.finish(history, sc, m.skipCurrent, dst)
}
