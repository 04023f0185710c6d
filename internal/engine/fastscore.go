package engine

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/transitions"
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

// stepFast feeds one click with model.Bundle.StepTopKWith and returns the
// scores of the policy's choice (fastScores.ask and scores). Errors are
// StepTopKWith's.
func (e *Engine) stepFast(ctx context.Context, l *lifecycle.Live, pageID int64, state []float32, b *buffers) ([]float32, []float32, error) {
	f := &b.fast
	k, thr := f.ask(l, e.policyFor(l), 0, -1, b.dist)
	var err error
	f.hints, state, err = l.Bundle.StepTopKWith(ctx, pageID, state, k, thr, f.hints, f.pages, f.probs)
	if err != nil {
		return nil, state, err
	}
	return f.scores(l), state, nil
}

// predictFast scores the history with model.Bundle.PredictTopKWith for a
// choice among k pages at threshold (a query's: 0 and below -1 mean the
// policy's, as choose reads them) and returns the scores (fastScores.ask
// and scores). Errors are PredictTopKWith's.
func (e *Engine) predictFast(ctx context.Context, l *lifecycle.Live, hist []int64, k int, threshold float64, b *buffers) ([]float32, error) {
	e.counter.predictions.Add(1)
	f := &b.fast
	n, thr := f.ask(l, e.policyFor(l), k, threshold, b.dist)
	var err error
	if f.hints, err = l.Bundle.PredictTopKWith(ctx, hist, n, thr, f.hints, f.pages, f.probs); err != nil {
		return nil, fmt.Errorf("predict with %s: %w", l.Version, err)
	}
	return f.scores(l), nil
}

// ask sets up a clustered-path scoring for choose's choice among k pages
// at threshold (k <= 0: the policy's K; threshold below 0 or NaN: the
// policy's) with the online statistics d (nil: none). It returns how many
// hints to ask for: k, three more for the pages choose skips (the current
// page, <pad>, <unk>) and one more per page d names; and the threshold as
// float32 rounded down, so that every page choose accepts is among them.
// It sets f.pages to the pages whose model probability the blend reads
// (those d names, and <unk> for those outside the vocabulary) and f.probs
// to their length.
func (f *fastScores) ask(l *lifecycle.Live, pol *prefetch.Policy, k int, threshold float64, d *transitions.Dist) (int, float32) {
	if k <= 0 {
		k = pol.K()
	}
	if threshold < 0 || math.IsNaN(threshold) {
		threshold = pol.Threshold()
	}
	k += 3
	f.pages = f.pages[:0]
	if d != nil {
		k += len(d.Next)
		f.pages = append(f.pages, model.UnknownIndex)
		for _, n := range d.Next {
			if i := l.Vocab.Index(n.Page); i > model.UnknownIndex {
				f.pages = append(f.pages, i)
			}
		}
	}
	f.probs = slices.Grow(f.probs[:0], len(f.pages))[:len(f.pages)]
	thr := float32(threshold)
	if float64(thr) > threshold {
		thr = math.Nextafter32(thr, float32(math.Inf(-1)))
	}
	return k, thr
}

// scores returns a score vector (f's, valid until the next call) holding
// the probabilities of f.hints and f.pages and zero elsewhere, cut after
// its last non-zero entry: choose reads a missing entry as zero, so the
// policy scans no further.
func (f *fastScores) scores(l *lifecycle.Live) []float32 {
	if n := l.Bundle.Vocab().Len(); len(f.vec) != n {
		f.vec, f.written = make([]float32, n), f.written[:0]
	}
	for _, i := range f.written {
		f.vec[i] = 0
	}
	f.written = f.written[:0]
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
	return f.vec[:end]
}
