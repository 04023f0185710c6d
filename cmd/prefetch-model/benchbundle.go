package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/prefetchd/prefetchd/model"
)

// formFlag is --form: the form of a bundle that bench measures.
type formFlag string

func (f *formFlag) String() string { return string(*f) }

func (f *formFlag) Set(s string) error {
	if s != model.FormStep && s != model.FormSequence {
		return fmt.Errorf("want %s or %s, got %q", model.FormStep, model.FormSequence, s)
	}
	*f = formFlag(s)
	return nil
}

// countFlag is a flag holding a count of at least 1.
type countFlag int

func (c *countFlag) String() string { return strconv.Itoa(int(*c)) }

func (c *countFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return fmt.Errorf("want a whole number of at least 1, got %q", s)
	}
	*c = countFlag(n)
	return nil
}

// bundleBench is a bench of a bundle folder: the hints of one click at a
// time, as the service asks for them.
type bundleBench struct {
	dir       string
	form      string
	length    int     // clicks per session (step), pages per history (sequence)
	k         int     // hints per click
	threshold float32 // least probability of a hint
	dur       time.Duration
}

// hintTol is how far a probability may be from exact scoring's for the
// hints to count as equal.
const hintTol = 1e-3

// maxChecked bounds the clicks whose hints are checked against exact
// scoring.
const maxChecked = 500

// checked is a click kept for the check against exact scoring: what the
// fast path saw and answered.
type checked struct {
	page    int64
	state   []float32 // step form: the state before the click
	history []int64   // sequence form: the history
	hints   []model.Hint
}

// run loads the bundle and measures StepTopK (form step) or PredictTopK
// (form sequence) click by click on random pages until the duration is
// spent, in wall time and, where there is a per-thread clock, in CPU
// time. When the bundle's scoring is approximate it then runs exact
// scoring (Step or PredictOne, then SelectTopK) on up to maxChecked of
// those clicks, evenly spaced, reports its latency and the share of them
// whose hints equal the fast path's. The phases run apart, so that exact
// scoring's pass over the whole output layer does not evict the fast
// path's index from the caches between clicks.
func (bb bundleBench) run(ctx context.Context, out io.Writer) error {
	b, err := model.LoadBundle(bb.dir)
	if err != nil {
		return err
	}
	if bb.form == model.FormStep && !b.HasStep() {
		return fmt.Errorf("bench %s: %w: bundle has no step form", bb.dir, model.ErrUnsupported)
	}
	sc := b.Scoring()
	vocab := b.Vocab().Len()
	if vocab < 3 {
		return fmt.Errorf("bench %s: vocabulary of %d pages has no page to click", bb.dir, vocab)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var (
		state   []float32
		hints   []model.Hint
		history []int64
		lat     []time.Duration
		cpu     []time.Duration
		keep    []checked
	)
	cpuNow, release, hasCPU := threadCPU()
	defer release()
	stride := 1
	start := time.Now()
	for i := 0; i == 0 || time.Since(start) < bb.dur; i++ {
		if i%bb.length == 0 {
			state, history = state[:0], history[:0]
		}
		page := 2 + rng.Int64N(int64(vocab-2))
		history = append(history, page)
		check := sc.Approximate && i%stride == 0
		var c checked
		if check {
			c = checked{page: page, state: slices.Clone(state), history: slices.Clone(history)}
		}
		t0, c0 := time.Now(), cpuNow()
		var err error
		if bb.form == model.FormStep {
			hints, state, err = b.StepTopK(ctx, page, state, bb.k, bb.threshold, hints)
		} else {
			hints, err = b.PredictTopK(ctx, history, bb.k, bb.threshold, hints)
		}
		lat = append(lat, time.Since(t0))
		cpu = append(cpu, time.Duration(cpuNow()-c0))
		if err != nil {
			return err
		}
		if !check {
			continue
		}
		c.hints = slices.Clone(hints)
		keep = append(keep, c)
		if len(keep) == 2*maxChecked {
			// Keep every other click and check half as often from now on.
			for j := range maxChecked {
				keep[j] = keep[2*j]
			}
			keep, stride = keep[:maxChecked], 2*stride
		}
	}
	var (
		exactLat []time.Duration
		probs    []float32
		exact    []model.Hint
		same     int
	)
	if len(keep) > maxChecked {
		keep = keep[:maxChecked]
	}
	for _, c := range keep {
		t0 := time.Now()
		var err error
		if bb.form == model.FormStep {
			probs, _, err = b.Step(ctx, c.page, c.state, probs)
		} else {
			probs, err = b.PredictOne(ctx, c.history, probs)
		}
		if err != nil {
			return err
		}
		exact = model.SelectTopK(probs, bb.k, bb.threshold, exact)
		exactLat = append(exactLat, time.Since(t0))
		if sameHints(c.hints, exact) {
			same++
		}
	}
	w := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintf(w, "bundle\t%s\n", bb.dir)
	fmt.Fprintf(w, "form\t%s (%d pages, %d clicks per %s)\n", bb.form, vocab, bb.length, map[string]string{model.FormStep: "session", model.FormSequence: "history"}[bb.form])
	fmt.Fprintf(w, "hints\ttop %d at or above %g\n", bb.k, bb.threshold)
	if sc.Approximate {
		fmt.Fprintf(w, "scoring\tapproximate: %d clusters, index %.1f MB\n", sc.Clusters, float64(sc.IndexBytes)/1e6)
	} else {
		if sc.Exact != "" {
			fmt.Fprintf(w, "scoring\texact (%s)\n", sc.Exact)
		} else {
			fmt.Fprintf(w, "scoring\texact\n")
		}
	}
	fmt.Fprintf(w, "clicks\t%d\n", len(lat))
	fmt.Fprintf(w, "p50 / p99\t%v / %v\n", quantile(lat, 0.5), quantile(lat, 0.99))
	if hasCPU {
		fmt.Fprintf(w, "cpu p50 / p99\t%v / %v\n", quantile(cpu, 0.5), quantile(cpu, 0.99))
	}
	if sc.Approximate {
		fmt.Fprintf(w, "clicks checked\t%d\n", len(keep))
		fmt.Fprintf(w, "exact scoring p50 / p99\t%v / %v\n", quantile(exactLat, 0.5), quantile(exactLat, 0.99))
		fmt.Fprintf(w, "exact agreement\t%.4f\n", float64(same)/float64(len(keep)))
	}
	return w.Flush()
}

// sameHints reports whether two hint lists name the same pages in the same
// order with probabilities within hintTol.
func sameHints(a, b []model.Hint) bool {
	return slices.EqualFunc(a, b, func(x, y model.Hint) bool {
		return x.Page == y.Page && math.Abs(float64(x.Prob-y.Prob)) <= hintTol
	})
}

// quantile returns the q-quantile of lat (not empty), sorting it.
func quantile(lat []time.Duration, q float64) time.Duration {
	slices.Sort(lat)
	return lat[int(q*float64(len(lat)-1))]
}
