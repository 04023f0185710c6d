package engine

import (
	"context"
	"math"
	"slices"

	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
)

// fastScores is the scratch space of the clustered path (stepFast): a
// vocabulary-sized score vector, zero but for the entries it last wrote.
type fastScores struct {
	vec     []float32
	written []int64
	hints   []model.Hint
	pages   []int64   // the pages whose model probability the blend reads
	probs   []float32 // and those probabilities
}

// fastScoring reports whether clicks on l take the clustered path: its
// bundle has a clustered scorer (model.Bundle.Scoring) and the policy
// ranks pages by probability. The expected-utility rule weighs every page
// by its own cost, so it reads every score, exactly.
func (e *Engine) fastScoring(l *lifecycle.Live) bool {
	return l.Bundle != nil && l.Bundle.Scoring().Approximate && !e.policyFor(l).Utility()
}

// stepOne feeds one click to the step form and returns the scores the
// prefetch decision reads: Step's, or with fast stepFast's.
func (e *Engine) stepOne(ctx context.Context, l *lifecycle.Live, pageID int64, state, probs []float32, fast bool, b *buffers) (scores, newState []float32, err error) {
	if !fast {
		return l.Bundle.Step(ctx, pageID, state, probs)
	}
	return e.stepFast(ctx, l, pageID, state, b)
}

// stepFast feeds one click with model.Bundle.StepTopKWith and returns a
// score vector (b.fast's, valid until the next call, cut after its last
// non-zero entry) that holds the probabilities of every page choose can
// pick and read, zero elsewhere: the policy's K most probable pages at or above its threshold,
// three more for the pages it skips (the current page, <pad>, <unk>) and
// one more per page the online statistics b.dist name; and those pages'
// own probabilities and <unk>'s, which the blend reads. Errors are
// StepTopKWith's.
func (e *Engine) stepFast(ctx context.Context, l *lifecycle.Live, pageID int64, state []float32, b *buffers) ([]float32, []float32, error) {
	f := &b.fast
	if n := l.Bundle.Vocab().Len(); len(f.vec) != n {
		f.vec, f.written = make([]float32, n), f.written[:0]
	}
	for _, i := range f.written {
		f.vec[i] = 0
	}
	f.written = f.written[:0]
	pol := e.policyFor(l)
	k := pol.K() + 3
	f.pages = f.pages[:0]
	if d := b.dist; d != nil {
		k += len(d.Next)
		f.pages = append(f.pages, model.UnknownIndex)
		for _, n := range d.Next {
			if i := l.Vocab.Index(n.Page); i > model.UnknownIndex {
				f.pages = append(f.pages, i)
			}
		}
	}
	// The threshold rounded down to float32, so that every page the
	// policy accepts is among the hints.
	thr := float32(pol.Threshold())
	if float64(thr) > pol.Threshold() {
		thr = math.Nextafter32(thr, float32(math.Inf(-1)))
	}
	f.probs = slices.Grow(f.probs[:0], len(f.pages))[:len(f.pages)]
	var err error
	f.hints, state, err = l.Bundle.StepTopKWith(ctx, pageID, state, k, thr, f.hints, f.pages, f.probs)
	if err != nil {
		return f.vec, state, err
	}
	end := int64(0) // past the last entry written
	for _, h := range f.hints {
		f.vec[h.Page] = h.Prob
		f.written = append(f.written, h.Page)
		end = max(end, h.Page+1)
	}
	for i, p := range f.pages {
		f.vec[p] = f.probs[i]
		f.written = append(f.written, p)
		end = max(end, p+1)
	}
	// The rest is zeros: the policy and the blend read a missing entry as
	// zero, so the vector stops at the last one written and the policy
	// scans no further.
	return f.vec[:end], state, nil
}
