package model

import (
	"context"
	"fmt"
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
}

// Scoring reports how the bundle's TopK calls score.
func (b *Bundle) Scoring() Scoring {
	if b.index == nil {
		return Scoring{}
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
