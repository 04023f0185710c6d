package model

import (
	"context"
	"fmt"
	"math"
	"slices"
)

// Hint is a page the model predicts next, with its probability.
type Hint struct {
	Page int64 // vocabulary index
	Prob float32
}

// Scoring describes how StepTopK and PredictTopK score a bundle.
type Scoring struct {
	// Approximate is true when the bundle has a clustered scorer: hints
	// come from the clusters most likely to hold them (see CONTRACT.md,
	// "Large vocabularies"); false when every page is scored exactly.
	Approximate bool
	// Clusters is the number of clusters of the output layer's rows.
	Clusters int
	// IndexBytes is the memory of the clustered scorer, beside the
	// weights of the graphs.
	IndexBytes int64
	// Exact says why a bundle large enough for a clustered scorer scores
	// exactly: its scorer missed the exact hints or probabilities on the
	// probes run at load (verifyIndex). "" otherwise.
	Exact string
}

// Scoring reports how the bundle's TopK calls score.
func (b *Bundle) Scoring() Scoring {
	if b.index == nil {
		return Scoring{Exact: b.indexOff}
	}
	return Scoring{Approximate: true, Clusters: b.index.clusters(), IndexBytes: b.index.bytes()}
}

// attachIndex gives the bundle a clustered scorer when its vocabulary is
// large and its forms end in a constant output layer (Gemm, then Softmax
// for probabilities). When both forms have one they must hold the same
// weights; otherwise the bundle scores exactly.
func (b *Bundle) attachIndex() {
	if b.vsize < clusterMinVocab {
		return
	}
	seq := findHead(b.seq.plan, b.seqOut, b.vsize, b.logits)
	var step *head
	if b.step != nil {
		if step = findHead(b.step.plan, b.stepOut, b.vsize, b.logits); step == nil || seq != nil && !seq.sameWeights(step) {
			return
		}
	}
	src := seq
	if src == nil {
		src = step
	}
	if src == nil {
		return
	}
	b.index = newClusterIndex(src.w, src.bias, b.vsize, src.h)
	if b.index == nil {
		return
	}
	if src.ownW {
		b.index.extraBytes = 4 * int64(len(src.w))
	}
	// The index keeps src's weights for re-scoring; the heads need only
	// their trunks.
	for _, h := range []*head{seq, step} {
		if h != nil {
			h.w, h.bias = nil, nil
		}
	}
	b.seqHead, b.stepHead = seq, step
}

// Probes verifyIndex runs: histories, the hints asked of each, and the
// bounds the clustered scorer must keep (CONTRACT.md, "Large
// vocabularies"): at most indexMisses probes whose hints differ from the
// exact ones, no hinted probability off by more than indexMaxErr.
const (
	indexProbes    = 128
	indexK         = 5
	indexThreshold = 0.01
	indexMisses    = 1
	indexMaxErr    = 1e-3
)

// verifyIndex checks the clustered scorer on the bundle's own weights: for
// indexProbes short histories of pseudo-random pages it compares the hints
// of StepTopK (PredictTopK without a step form) with the exact selection.
// A scorer outside the bounds is dropped and the bundle scores exactly, so
// that an output layer its error model does not fit (a trained one unlike
// the layers it was tuned on) never serves wrong hints; Scoring says why.
func (b *Bundle) verifyIndex() {
	if b.index == nil {
		return
	}
	ctx := context.Background()
	span := uint64(b.vsize - 2)
	seed := uint64(0x9e3779b97f4a7c15)
	next := func() int64 {
		seed ^= seed << 13
		seed ^= seed >> 7
		seed ^= seed << 17
		return 2 + int64(seed%span)
	}
	misses, worst := 0, 0.0
	var exact, state, approxState []float32
	var want, got []Hint
	for i := range indexProbes {
		hist := make([]int64, 1+i%4)
		for j := range hist {
			hist[j] = next()
		}
		var err error
		if b.step != nil {
			state = state[:0]
			for _, id := range hist[:len(hist)-1] {
				if _, state, err = b.Step(ctx, id, state, exact); err != nil {
					return // the scorer stays; Step reports such errors on use
				}
			}
			approxState = append(approxState[:0], state...)
			if exact, state, err = b.Step(ctx, hist[len(hist)-1], state, exact); err != nil {
				return
			}
			if len(approxState) == 0 {
				approxState = nil
			}
			got, _, _, err = b.stepTopK(ctx, hist[len(hist)-1], approxState, indexK, indexThreshold, got, nil, nil)
		} else {
			if exact, err = b.PredictOne(ctx, hist, exact); err != nil {
				return
			}
			got, err = b.predictTopK(ctx, hist, indexK, indexThreshold, got, nil, nil)
		}
		if err != nil {
			return
		}
		want = SelectTopK(exact, indexK, indexThreshold, want)
		if differ(got, want, exact) {
			misses++
		}
		for _, h := range got {
			worst = max(worst, math.Abs(float64(h.Prob)-float64(exact[h.Page])))
		}
	}
	if misses > indexMisses || worst > indexMaxErr {
		b.indexOff = fmt.Sprintf("the clustered scorer missed the exact hints on %d of %d probes (top %d at or above %g), probabilities off by up to %.2g",
			misses, indexProbes, indexK, indexThreshold, worst)
		b.index, b.seqHead, b.stepHead = nil, nil, nil
	}
}

// differ reports whether hints got differ from the exact selection want
// (exact the exact probabilities) by more than near-ties: a page in one
// list and not the other counts only when its exact probability is more
// than indexMaxErr from the selection's edge (the threshold, or the k-th
// probability when the list is full), which an error within the bound
// could not explain. The order of pages within indexMaxErr of each other
// is not counted either.
func differ(got, want []Hint, exact []float32) bool {
	edge := float64(indexThreshold)
	if len(want) == indexK {
		edge = max(edge, float64(want[len(want)-1].Prob))
	}
	near := func(p int64) bool { return math.Abs(float64(exact[p])-edge) <= indexMaxErr }
	in := func(hs []Hint, p int64) bool {
		return slices.ContainsFunc(hs, func(h Hint) bool { return h.Page == p })
	}
	for _, h := range got {
		if !in(want, h.Page) && !near(h.Page) {
			return true
		}
	}
	for _, h := range want {
		if !in(got, h.Page) && !near(h.Page) {
			return true
		}
	}
	for j := 1; j < len(got); j++ {
		if exact[got[j].Page] > exact[got[j-1].Page]+indexMaxErr {
			return true // out of order by more than the bound
		}
	}
	return false
}

// SelectTopK writes into dst (from its start) the at most k pages of probs
// with the highest probabilities at or above threshold, highest first, ties
// to the lower index, and returns it. It is the selection StepTopK and
// PredictTopK make when they score exactly.
func SelectTopK(probs []float32, k int, threshold float32, dst []Hint) []Hint {
	dst = dst[:0]
	if k <= 0 {
		return dst
	}
	for i, p := range probs {
		if p < threshold || len(dst) == k && p <= dst[k-1].Prob {
			continue
		}
		if len(dst) < k {
			dst = append(dst, Hint{})
		}
		j := len(dst) - 1
		for j > 0 && p > dst[j-1].Prob {
			dst[j] = dst[j-1]
			j--
		}
		dst[j] = Hint{Page: int64(i), Prob: p}
	}
	return dst
}

// StepTopK is Step followed by SelectTopK: it feeds one click, updates
// state as Step does, and writes into dst the at most k most probable next
// pages at or above threshold. With a clustered scorer (Scoring) only the
// output rows of the likeliest clusters are scored, in tens of
// microseconds at 100,000 pages, and the hints equal exact scoring's for
// all but a small share of clicks (CONTRACT.md gives the measured
// figures); without one it is exactly Step and SelectTopK. Errors are
// Step's; on error state is unchanged.
func (b *Bundle) StepTopK(ctx context.Context, pageID int64, state []float32, k int, threshold float32, dst []Hint) (hints []Hint, newState []float32, err error) {
	hints, newState, _, err = b.stepTopK(ctx, pageID, state, k, threshold, dst, nil, nil)
	return hints, newState, err
}

// StepTopKWith is StepTopK that also sets probs[i] (len(probs) at least
// len(pages)) to the probability of page pages[i] from the same scoring:
// for a caller that blends the model with other evidence about a few
// pages. With a clustered scorer those pages' logits are computed exactly
// and divided by the normaliser the hints are (so their error is that of
// the hints'); without one they are Step's. Pages outside the vocabulary
// get 0. Errors are Step's.
func (b *Bundle) StepTopKWith(ctx context.Context, pageID int64, state []float32, k int, threshold float32, dst []Hint, pages []int64, probs []float32) (hints []Hint, newState []float32, err error) {
	hints, newState, _, err = b.stepTopK(ctx, pageID, state, k, threshold, dst, pages, probs[:len(pages)])
	return hints, newState, err
}

// stepTopK is StepTopKWith, also returning the number of output rows
// scored.
func (b *Bundle) stepTopK(ctx context.Context, pageID int64, state []float32, k int, threshold float32, dst []Hint, pages []int64, probs []float32) ([]Hint, []float32, int, error) {
	hd := b.stepHead
	if hd == nil {
		buf := b.probsBuf()
		defer b.probsPool.Put(buf)
		var err error
		if *buf, state, err = b.Step(ctx, pageID, state, *buf); err != nil {
			return dst[:0], state, 0, err
		}
		probsAt(*buf, pages, probs)
		return SelectTopK(*buf, k, threshold, dst), state, b.vsize, nil
	}
	state, err := b.stepState(ctx, pageID, state)
	if err != nil {
		return dst[:0], state, 0, err
	}
	ex := hd.pool.Get().(*exec)
	defer hd.pool.Put(ex)
	if err := b.runStep(ctx, hd.trunk, ex, pageID, state); err != nil {
		return dst[:0], state, 0, err
	}
	x, so := ex.cur[hd.hidden], ex.cur[b.stepStateOut]
	if len(x.f) != hd.h || len(so.f) != len(state) {
		return dst[:0], state, 0, fmt.Errorf("step: %w: hidden %v and state %v for one row", ErrContract, x.shape, so.shape)
	}
	copy(state, so.f)
	var rows int
	dst, rows = b.index.topKWith(x.f, k, threshold, dst, pages, probs)
	return dst, state, rows, nil
}

// PredictTopK is PredictOne followed by SelectTopK, with the clustered
// scorer when the bundle has one (see StepTopK). Errors are PredictOne's.
func (b *Bundle) PredictTopK(ctx context.Context, history []int64, k int, threshold float32, dst []Hint) ([]Hint, error) {
	return b.predictTopK(ctx, history, k, threshold, dst, nil, nil)
}

// PredictTopKWith is PredictTopK that also sets probs[i] (len(probs) at
// least len(pages)) to the probability of page pages[i] from the same
// scoring, as StepTopKWith does. Errors are PredictOne's.
func (b *Bundle) PredictTopKWith(ctx context.Context, history []int64, k int, threshold float32, dst []Hint, pages []int64, probs []float32) ([]Hint, error) {
	return b.predictTopK(ctx, history, k, threshold, dst, pages, probs[:len(pages)])
}

func (b *Bundle) predictTopK(ctx context.Context, history []int64, k int, threshold float32, dst []Hint, pages []int64, probs []float32) ([]Hint, error) {
	hd := b.seqHead
	if hd == nil {
		buf := b.probsBuf()
		defer b.probsPool.Put(buf)
		var err error
		if *buf, err = b.PredictOne(ctx, history, *buf); err != nil {
			return dst[:0], err
		}
		probsAt(*buf, pages, probs)
		return SelectTopK(*buf, k, threshold, dst), nil
	}
	if err := ctx.Err(); err != nil {
		return dst[:0], err
	}
	h, err := b.prepare(history)
	if err != nil {
		return dst[:0], err
	}
	ex := hd.pool.Get().(*exec)
	defer hd.pool.Put(ex)
	if err := b.runSeq(ctx, hd.trunk, ex, h); err != nil {
		return dst[:0], err
	}
	x := ex.cur[hd.hidden]
	if len(x.f) != hd.h {
		return dst[:0], fmt.Errorf("%w: hidden %v for one history", ErrContract, x.shape)
	}
	dst, _ = b.index.topKWith(x.f, k, threshold, dst, pages, probs)
	return dst, nil
}

// probsAt sets probs[i] to all[pages[i]], 0 for a page outside all.
func probsAt(all []float32, pages []int64, probs []float32) {
	for i, p := range pages {
		probs[i] = 0
		if p >= 0 && p < int64(len(all)) {
			probs[i] = all[p]
		}
	}
}

// probsBuf takes a vocabulary-sized buffer from the bundle's pool.
func (b *Bundle) probsBuf() *[]float32 {
	if p, ok := b.probsPool.Get().(*[]float32); ok {
		return p
	}
	buf := make([]float32, b.vsize)
	return &buf
}
