package training

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
)

// EvalConfig sets how held-out sessions are scored.
type EvalConfig struct {
	// MaxK is the largest k of the Recall@k curve and of MRR@k. Default 20.
	MaxK int
	// MaxSeqLen cuts each history to its last pages, as the service does.
	// Default DefaultMaxSeqLen.
	MaxSeqLen int
	// Threshold is the service's prefetch threshold: pages scoring at least
	// this much are prefetched. Default DefaultThreshold.
	Threshold float64
	// TopK caps the pages prefetched per click. Default DefaultTopK.
	TopK int
}

// Defaults of the prefetch simulation: the service's policy defaults.
const (
	DefaultThreshold = prefetch.DefaultThreshold
	DefaultTopK      = prefetch.DefaultK
)

func (c EvalConfig) withDefaults() EvalConfig {
	if c.MaxK == 0 {
		c.MaxK = 20
	}
	if c.MaxSeqLen == 0 {
		c.MaxSeqLen = DefaultMaxSeqLen
	}
	if c.Threshold == 0 {
		c.Threshold = DefaultThreshold
	}
	if c.TopK == 0 {
		c.TopK = DefaultTopK
	}
	return c
}

// Validate checks the configuration.
func (c EvalConfig) Validate() error {
	switch {
	case c.MaxK < 0 || c.MaxK > 1000:
		return fmt.Errorf("eval max k %d outside 1..1000", c.MaxK)
	case c.MaxSeqLen < 0:
		return fmt.Errorf("eval max seq len %d is negative", c.MaxSeqLen)
	case c.Threshold < 0 || c.Threshold > 1:
		return fmt.Errorf("eval threshold %v outside 0..1", c.Threshold)
	case c.TopK < 0:
		return fmt.Errorf("eval top k %d is negative", c.TopK)
	}
	return nil
}

// Result is the evaluation of one model on held-out transitions. A
// transition is a (history, next page) pair; a next page outside the
// vocabulary is a miss for every model, and the padding and unknown indices
// are never candidates.
type Result struct {
	Model string `json:"model"`
	// Params are the hyperparameters chosen on the validation split.
	Params Params `json:"params,omitempty"`
	// TrainSeconds is the time taken to tune and train the model.
	TrainSeconds float64 `json:"train_seconds"`
	// ValMRRAt20 is the MRR@20 on the validation sessions (the last of the
	// training sessions), on which the model was tuned or stopped.
	ValMRRAt20 float64 `json:"val_mrr_at_20"`
	RecallAt1  float64 `json:"recall_at_1"`
	RecallAt5  float64 `json:"recall_at_5"`
	RecallAt20 float64 `json:"recall_at_20"`
	MRRAt20    float64 `json:"mrr_at_20"`
	// RecallCurve[k-1] is Recall@k for k = 1..MaxK.
	RecallCurve []float64 `json:"recall_curve"`
	// Prefetch simulation at Threshold (at most TopK pages per click,
	// never the current page).
	Threshold float64 `json:"threshold"`
	TopK      int     `json:"top_k"`
	// Precision is the share of prefetched pages that were the next page.
	Precision float64 `json:"precision"`
	// Coverage is the share of transitions whose next page was prefetched.
	Coverage float64 `json:"coverage"`
	// PrefetchesPerClick is the mean number of pages prefetched per click.
	PrefetchesPerClick float64 `json:"prefetches_per_click"`
	Transitions        int     `json:"transitions"`
	UnknownTargets     int     `json:"unknown_targets"`
}

// SessionPredictor is an optional faster path for models that can score
// every prefix of a session in one pass (a recurrent model keeps its
// state). fn gets, for t = 1..len(seq)-1, the probabilities of seq[t]
// given seq[max(0, t-maxLen):t]; probs is only valid during the call.
type SessionPredictor interface {
	PredictSession(seq []int64, maxLen int, fn func(t int, probs []float32))
}

// Evaluate scores every transition of the held-out sequences test with p.
// It returns ctx.Err() if ctx ends first. The sessions are shared out
// between up to evalWorkers goroutines (every transition reads a whole row
// of scores: at 100,000 pages and more the evaluation's cost), so p must
// be safe for concurrent use; a SessionPredictor scores each session in
// one pass. The figures are counts, so they do not depend on how the
// sessions were shared out.
func Evaluate(ctx context.Context, name string, p Predictor, test [][]int64, cfg EvalConfig) (Result, error) {
	return evaluate(ctx, name, p, test, cfg, min(runtime.GOMAXPROCS(0), evalWorkers, max(len(test)/64, 1)))
}

// evaluate is Evaluate on the given number of goroutines.
func evaluate(ctx context.Context, name string, p Predictor, test [][]int64, cfg EvalConfig, workers int) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	cfg = cfg.withDefaults()
	var acc evalAcc
	acc.init(cfg)
	if err := evaluateSessions(ctx, p, test, cfg, &acc, workers); err != nil {
		return Result{}, fmt.Errorf("evaluate %s: %w", name, err)
	}
	return acc.result(name), nil
}

// evalWorkers bounds the goroutines of Evaluate.
const evalWorkers = 4

// evaluateSessions scores every session of test into acc, the sessions
// shared out between workers goroutines, each with its own accumulator,
// added into acc at the end.
func evaluateSessions(ctx context.Context, p Predictor, test [][]int64, cfg EvalConfig, acc *evalAcc, workers int) error {
	accs := make([]evalAcc, max(workers, 1))
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range accs {
		accs[w].init(cfg)
		wg.Add(1)
		go func(a *evalAcc) {
			defer wg.Done()
			score := sessionScorer(p)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(test) || (i%256 == 0 && ctx.Err() != nil) {
					return
				}
				seq := test[i]
				score(seq, cfg.MaxSeqLen, func(t int, probs []float32) {
					a.add(probs, seq[t-1], seq[t])
				})
			}
		}(&accs[w])
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	for i := range accs {
		acc.merge(&accs[i])
	}
	return nil
}

// sessionScorer returns how one goroutine scores every prefix of a
// session with p: its PredictSession, or one Predict per prefix (the
// history cut to its last maxLen pages) into a buffer of the goroutine's
// own.
func sessionScorer(p Predictor) func(seq []int64, maxLen int, fn func(t int, probs []float32)) {
	if sp, ok := p.(SessionPredictor); ok {
		return sp.PredictSession
	}
	var buf []float32
	return func(seq []int64, maxLen int, fn func(t int, probs []float32)) {
		for t := 1; t < len(seq); t++ {
			buf = p.Predict(seq[max(0, t-maxLen):t], buf)
			fn(t, buf)
		}
	}
}

type evalAcc struct {
	cfg                      EvalConfig
	hits                     []int // hits[r-1]: transitions whose target ranked r
	n, unknown               int
	prefetched, prefetchHits int
	top                      []int64
}

func (a *evalAcc) init(cfg EvalConfig) {
	a.cfg = cfg
	a.hits = make([]int, cfg.MaxK)
	a.top = make([]int64, 0, cfg.TopK)
}

// add scores one transition from page cur to page target.
func (a *evalAcc) add(probs []float32, cur, target int64) {
	a.n++
	if target <= model.UnknownIndex || target >= int64(len(probs)) {
		a.unknown++
	} else if r := rank(probs, target, a.cfg.MaxK); r > 0 {
		a.hits[r-1]++
	}
	// Prefetch simulation: top TopK pages at or above the threshold.
	a.top = topAbove(probs, a.cfg.TopK, float32(a.cfg.Threshold), cur, a.top[:0])
	a.prefetched += len(a.top)
	for _, p := range a.top {
		if p == target {
			a.prefetchHits++
		}
	}
}

// merge adds b's counts into a.
func (a *evalAcc) merge(b *evalAcc) {
	for i, h := range b.hits {
		a.hits[i] += h
	}
	a.n += b.n
	a.unknown += b.unknown
	a.prefetched += b.prefetched
	a.prefetchHits += b.prefetchHits
}

func (a *evalAcc) result(name string) Result {
	r := Result{Model: name, Threshold: a.cfg.Threshold, TopK: a.cfg.TopK, Transitions: a.n, UnknownTargets: a.unknown}
	if a.n == 0 {
		r.RecallCurve = make([]float64, a.cfg.MaxK)
		return r
	}
	n := float64(a.n)
	cum := 0
	for k := 1; k <= a.cfg.MaxK; k++ {
		cum += a.hits[k-1]
		r.RecallCurve = append(r.RecallCurve, float64(cum)/n)
	}
	at := func(k int) float64 { return r.RecallCurve[min(k, a.cfg.MaxK)-1] }
	r.RecallAt1, r.RecallAt5, r.RecallAt20 = at(1), at(5), at(20)
	var rr float64 // the reciprocal ranks, from the counts by rank
	for k, h := range a.hits {
		rr += float64(h) / float64(k+1)
	}
	r.MRRAt20 = rr / n
	if a.prefetched > 0 {
		r.Precision = float64(a.prefetchHits) / float64(a.prefetched)
	}
	r.Coverage = float64(a.prefetchHits) / n
	r.PrefetchesPerClick = float64(a.prefetched) / n
	return r
}

// rank returns the 1-based rank of target among the page indices (>= 2) of
// probs, ties going to the lower index, or 0 when it ranks below maxK.
func rank(probs []float32, target int64, maxK int) int {
	s := probs[target]
	r := 1
	for j := 2; j < len(probs); j++ {
		if p := probs[j]; p > s || (p == s && int64(j) < target) {
			r++
			if r > maxK {
				return 0
			}
		}
	}
	return r
}

// topAbove appends to dst the indices (>= 2, not skip) of the k highest
// scores that reach threshold, highest first, ties to the lower index.
func topAbove(probs []float32, k int, threshold float32, skip int64, dst []int64) []int64 {
	for j := 2; j < len(probs); j++ {
		p := probs[j]
		if p < threshold || int64(j) == skip {
			continue
		}
		if len(dst) == k && p <= probs[dst[k-1]] {
			continue
		}
		if len(dst) < k {
			dst = append(dst, int64(j))
		} else {
			dst[k-1] = int64(j)
		}
		for i := len(dst) - 1; i > 0 && probs[dst[i]] > probs[dst[i-1]]; i-- {
			dst[i], dst[i-1] = dst[i-1], dst[i]
		}
	}
	return dst
}
