package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/prefetchd/prefetchd/model"
)

// validator runs the checks a version must pass before it may serve.
type validator struct {
	tolerance  float64
	warmup     int
	checkVocab func(*model.Vocab) error
}

// check validates a loaded bundle claimed to be version (empty: any) and
// returns a *RefusedError on failure. It recovers from panics in the model.
func (v validator) check(ctx context.Context, version string, l Model) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &RefusedError{Version: version, Reason: ReasonPanic, Err: fmt.Errorf("model panicked: %v", r)}
		}
	}()
	refuse := func(reason string, err error) error {
		if ctx.Err() != nil {
			reason, err = ReasonTimeout, fmt.Errorf("%w (after %w)", ctx.Err(), err)
		}
		return &RefusedError{Version: version, Reason: reason, Err: err}
	}
	if l == nil {
		return refuse(ReasonLoad, errors.New("loader returned no model"))
	}
	m, vocab := l.Manifest(), l.Vocab()
	switch {
	case m == nil:
		return refuse(ReasonManifest, errors.New("model has no manifest"))
	case vocab == nil:
		return refuse(ReasonVocab, errors.New("model has no vocabulary"))
	}
	if err := m.Validate(); err != nil {
		return refuse(ReasonManifest, err)
	}
	if v.checkVocab != nil {
		if err := v.checkVocab(vocab); err != nil {
			return refuse(ReasonVocab, err)
		}
	}
	if version != "" && m.Version != version {
		return refuse(ReasonManifest, fmt.Errorf("manifest version %q does not match folder %q", m.Version, version))
	}
	width := vocab.Len()
	if m.VocabSize != width {
		return refuse(ReasonContract, fmt.Errorf("manifest vocab_size %d but vocabulary has %d entries", m.VocabSize, width))
	}

	// Contract: one prediction of the right shape, probabilities that are
	// finite, non-negative and sum to one.
	probe := [][]int64{{int64(min(2, width-1))}, {model.UnknownIndex, int64(width - 1)}}
	out, err := l.Predict(ctx, probe)
	if err != nil {
		return refuse(ReasonContract, fmt.Errorf("probe prediction: %w", err))
	}
	if len(out) != len(probe) {
		return refuse(ReasonContract, fmt.Errorf("probe prediction has %d rows for %d histories", len(out), len(probe)))
	}
	for i, row := range out {
		if err := checkProbs([][]float32{row}, 1, width); err != nil {
			return refuse(ReasonContract, fmt.Errorf("probe prediction after history %v: %w", probe[i], err))
		}
	}

	// Every page alone (or, in a large vocabulary, an even sample of them):
	// a row of the model that only one page reaches, a broken embedding or
	// table row, is otherwise never looked at before it serves.
	if err := checkPages(ctx, l, width); err != nil {
		return refuse(ReasonContract, err)
	}

	// Golden cases from the trainer.
	tol := m.Tolerance
	if tol <= 0 {
		tol = v.tolerance
	}
	for i, g := range m.Golden {
		got, err := l.Predict(ctx, g.PageIDs)
		if err != nil {
			return refuse(ReasonGolden, fmt.Errorf("golden case %d: %w", i, err))
		}
		if err := compareGolden(got, g.Probs, tol); err != nil {
			return refuse(ReasonGolden, fmt.Errorf("golden case %d: %w", i, err))
		}
	}

	// Warm-up: a few predictions of growing length so that buffers and
	// caches are in place before the first request.
	for i := range v.warmup {
		seq := min(m.MaxSeqLen, 1+i*max(1, m.MaxSeqLen/max(1, v.warmup-1)))
		batch := 1 + i%4
		hs := make([][]int64, batch)
		for b := range hs {
			hs[b] = make([]int64, seq)
			for j := range hs[b] {
				hs[b][j] = int64(2 + (b*7+j*13)%max(1, width-2))
			}
		}
		out, err := l.Predict(ctx, hs)
		if err != nil {
			return refuse(ReasonWarmup, fmt.Errorf("warm-up %d: %w", i, err))
		}
		if err := checkProbs(out, batch, width); err != nil {
			return refuse(ReasonWarmup, fmt.Errorf("warm-up %d: %w", i, err))
		}
	}
	return nil
}

// pageProbeBudget bounds the work of checkPages: about this many output
// values are scored (every page alone while pages² stays below it).
const pageProbeBudget = 1 << 24

// stepper is the step form of a model, when it has one (model.Bundle).
type stepper interface {
	HasStep() bool
	Step(ctx context.Context, pageID int64, state, dst []float32) (probs, newState []float32, err error)
}

// checkPages predicts after each page alone, every page of the vocabulary
// when width² is within pageProbeBudget and an even sample of
// pageProbeBudget/width pages (at least 64) otherwise, in both forms of a
// model that has a step form, and checks each row as checkProbs does.
func checkPages(ctx context.Context, l Model, width int) error {
	n := min(width, max(64, pageProbeBudget/max(1, width)))
	pages := make([]int64, 0, n)
	for i := range n {
		pages = append(pages, int64(i*width/n))
	}
	const batch = 64
	for at := 0; at < len(pages); at += batch {
		chunk := pages[at:min(at+batch, len(pages))]
		hs := make([][]int64, len(chunk))
		for i, p := range chunk {
			hs[i] = []int64{p}
		}
		out, err := l.Predict(ctx, hs)
		if err != nil {
			return fmt.Errorf("prediction after page %d alone: %w", chunk[0], err)
		}
		for i, row := range out {
			if err := checkProbs([][]float32{row}, 1, width); err != nil {
				return fmt.Errorf("prediction after page %d alone: %w", chunk[i], err)
			}
		}
	}
	st, ok := l.(stepper)
	if !ok || !st.HasStep() {
		return nil
	}
	var probs, state []float32
	for _, p := range pages {
		var err error
		if probs, state, err = st.Step(ctx, p, state[:0], probs); err != nil {
			return fmt.Errorf("step form after page %d alone: %w", p, err)
		}
		if err := checkProbs([][]float32{probs}, 1, width); err != nil {
			return fmt.Errorf("step form after page %d alone: %w", p, err)
		}
		for _, v := range state {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("step form after page %d alone: state value %v is not finite", p, v)
			}
		}
	}
	return nil
}

// checkProbs checks the shape and values of a prediction.
func checkProbs(out [][]float32, batch, width int) error {
	if len(out) != batch {
		return fmt.Errorf("prediction has %d rows for a batch of %d", len(out), batch)
	}
	for r, row := range out {
		if len(row) != width {
			return fmt.Errorf("output width %d differs from vocabulary size %d", len(row), width)
		}
		var sum float64
		for j, p := range row {
			if math.IsNaN(float64(p)) || math.IsInf(float64(p), 0) || p < 0 {
				return fmt.Errorf("row %d index %d: %v is not a probability (an output of raw scores must be named \"logits\")", r, j, p)
			}
			sum += float64(p)
		}
		if math.Abs(sum-1) > 1e-3 {
			return fmt.Errorf("row %d: probabilities sum to %g, not 1", r, sum)
		}
	}
	return nil
}

// compareGolden compares a prediction with a golden case.
func compareGolden(got, want [][]float32, tol float64) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d rows, want %d", len(got), len(want))
	}
	for r := range want {
		if len(got[r]) != len(want[r]) {
			return fmt.Errorf("row %d: width %d, want %d", r, len(got[r]), len(want[r]))
		}
		for j := range want[r] {
			d := math.Abs(float64(got[r][j]) - float64(want[r][j]))
			if !(d <= tol) {
				return fmt.Errorf("row %d index %d: %g, want %g (tolerance %g)", r, j, got[r][j], want[r][j], tol)
			}
		}
	}
	return nil
}

// loadReason classifies a loader error.
func loadReason(err error) string {
	switch {
	case errors.Is(err, model.ErrBadManifest):
		return ReasonManifest
	case errors.Is(err, model.ErrBadVocab):
		return ReasonVocab
	case errors.Is(err, model.ErrContract):
		return ReasonContract
	case errors.Is(err, model.ErrGolden):
		return ReasonGolden
	default:
		return ReasonLoad
	}
}
