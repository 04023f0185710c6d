package prefetch

import (
	"errors"
	"fmt"
	"math"
)

// Policy defaults.
const (
	// DefaultK is the number of pages prefetched per event when
	// PolicyConfig.K is unset.
	DefaultK = 3
	// DefaultThreshold is the minimum probability (or expected utility) when
	// PolicyConfig.Threshold is unset.
	DefaultThreshold = 0.5
)

// Reserved vocabulary indices that are never prefetched. They match the model
// package's PadIndex and UnknownIndex.
const (
	padIndex     = 0
	unknownIndex = 1
)

// ErrInvalidConfig is wrapped by every Validate error in this package.
var ErrInvalidConfig = errors.New("invalid config")

// PolicyConfig configures a Policy. The zero value is valid and means the
// defaults. K and Threshold accept 0 as a value: each has a Set flag, and it
// is used as given when it is non-zero or its flag is true; zero with the
// flag false means the default.
type PolicyConfig struct {
	// K is the maximum number of pages prefetched per event. Unset means
	// DefaultK; 0 (with KSet) selects nothing.
	K    int
	KSet bool
	// Threshold is the minimum score a page needs to be prefetched, in
	// [0, 1]. Unset means DefaultThreshold; 0 (with ThresholdSet) admits
	// every page, k still applying. Without UseExpectedUtility the score is
	// the page's probability.
	Threshold    float64
	ThresholdSet bool
	// CostWeights maps a page (as named by the vocabulary) to the cost weight
	// used by the expected-utility rule: how much a hit on that page is worth
	// relative to an ordinary page (for example its origin latency or size).
	// Pages not listed weigh 1. Weights must be finite and not negative.
	CostWeights map[string]float64
	// UseExpectedUtility switches the score from probability to
	// probability × cost weight. Pages are ranked by and compared with the
	// threshold on that score.
	UseExpectedUtility bool
}

// Validate reports a configuration error wrapping ErrInvalidConfig.
func (c PolicyConfig) Validate() error {
	if c.K < 0 {
		return fmt.Errorf("policy k %d is negative: %w", c.K, ErrInvalidConfig)
	}
	if math.IsNaN(c.Threshold) || c.Threshold < 0 || c.Threshold > 1 {
		return fmt.Errorf("policy threshold %v outside [0, 1]: %w", c.Threshold, ErrInvalidConfig)
	}
	for page, w := range c.CostWeights {
		if math.IsNaN(w) || math.IsInf(w, 0) || w < 0 {
			return fmt.Errorf("policy cost weight %v for page %q: %w", w, page, ErrInvalidConfig)
		}
	}
	return nil
}

// Candidate is a page chosen for prefetching.
type Candidate struct {
	// Index is the page's vocabulary index.
	Index int64
	// Probability is the model's probability for the page.
	Probability float32
}

// Pages names vocabulary indices; *model.Vocab satisfies it.
type Pages interface {
	// Len is the vocabulary size.
	Len() int
	// Page is the page named by index i.
	Page(i int64) string
}

// Policy chooses the pages to prefetch from one probability vector. It is
// immutable and safe for concurrent use.
//
// The rule: consider every index except 0 (padding), 1 (unknown page) and
// the page the user is on; score each page by its probability, or, with
// UseExpectedUtility, by probability × cost weight; keep the pages whose score
// is at least the threshold; return the k best by score, highest first, ties
// to the lower index. Pages with a NaN probability are never chosen.
type Policy struct {
	k         int
	threshold float64
	utility   bool
	// weights holds the cost weight per vocabulary index once bound with
	// ForVocab; indices past its end weigh 1.
	weights []float32
	// byPage is the configured map, kept for ForVocab.
	byPage map[string]float64
}

// NewPolicy validates cfg (errors wrap ErrInvalidConfig) and builds a Policy. With UseExpectedUtility, bind
// the policy to a model's vocabulary with ForVocab so that cost weights, which
// are keyed by page, apply to indices; unbound, every page weighs 1.
func NewPolicy(cfg PolicyConfig) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Policy{k: cfg.K, threshold: cfg.Threshold, utility: cfg.UseExpectedUtility}
	if p.k == 0 && !cfg.KSet {
		p.k = DefaultK
	}
	if p.threshold == 0 && !cfg.ThresholdSet {
		p.threshold = DefaultThreshold
	}
	if len(cfg.CostWeights) > 0 {
		p.byPage = make(map[string]float64, len(cfg.CostWeights))
		for page, w := range cfg.CostWeights {
			p.byPage[page] = w
		}
	}
	return p, nil
}

// ForVocab returns a copy of the policy whose cost weights are resolved for
// the given vocabulary's indices. Call it once per loaded model; the original
// policy is unchanged. Without UseExpectedUtility it returns p itself.
func (p *Policy) ForVocab(pages Pages) *Policy {
	if !p.utility || pages == nil {
		return p
	}
	q := *p
	q.weights = make([]float32, pages.Len())
	for i := range q.weights {
		q.weights[i] = 1
		if w, ok := p.byPage[pages.Page(int64(i))]; ok {
			q.weights[i] = float32(w)
		}
	}
	return &q
}

// K is the default number of pages per decision.
func (p *Policy) K() int { return p.k }

// Threshold is the default minimum score.
func (p *Policy) Threshold() float64 { return p.threshold }

// Utility reports whether pages are ranked by expected utility
// (UseExpectedUtility) rather than by probability.
func (p *Policy) Utility() bool { return p.utility }

// maxProbability is the largest value Select takes for a probability:
// 1, with room for float32 rounding.
const maxProbability = 1 + 1e-3

// Select appends to dst[:0] the pages to prefetch given probs, the model's
// probabilities indexed by vocabulary index, and current, the index of the
// page the user is on. k <= 0 means the policy's K; threshold < 0 means the
// policy's threshold (a per-request override may be 0 to accept every
// page). The result is ordered by score, highest first; it is empty when
// the policy's K is 0 and no k is given. With a dst of capacity at least k
// it allocates nothing. Values that are no probability (NaN, negative,
// above 1, infinite: a broken model row) are never selected.
func (p *Policy) Select(probs []float32, current int64, k int, threshold float64, dst []Candidate) []Candidate {
	dst = dst[:0]
	if k <= 0 {
		k = p.k
	}
	if k == 0 {
		return dst
	}
	if threshold < 0 || math.IsNaN(threshold) {
		threshold = p.threshold
	}
	thr := float32(threshold)
	if float64(thr) < threshold {
		// Keep "probability >= threshold" exact after the float32 rounding.
		thr = math.Nextafter32(thr, float32(math.Inf(1)))
	}
	if !p.utility {
		for i := unknownIndex + 1; i < len(probs); i++ {
			pr := probs[i]
			if !(pr >= thr) || int64(i) == current { // NaN fails the first test
				continue
			}
			n := len(dst)
			if n == k && pr <= dst[n-1].Probability {
				continue
			}
			if pr > maxProbability {
				continue // +Inf or another value above 1: a broken model row
			}
			if n == k {
				n--
				dst = dst[:n]
			}
			// Insert keeping descending probability; ties keep index order.
			dst = append(dst, Candidate{})
			j := n
			for j > 0 && dst[j-1].Probability < pr {
				dst[j] = dst[j-1]
				j--
			}
			dst[j] = Candidate{Index: int64(i), Probability: pr}
		}
		return dst
	}
	// Expected utility: rank by score = probability × weight; scores
	// parallels dst.
	var scoreBuf [8]float32
	scores := scoreBuf[:0]
	if k > len(scoreBuf) {
		scores = make([]float32, 0, k)
	}
	for i := unknownIndex + 1; i < len(probs); i++ {
		pr := probs[i]
		s := pr
		if i < len(p.weights) {
			s = pr * p.weights[i]
		}
		if !(s >= thr) || !(pr >= 0) || pr > maxProbability || int64(i) == current {
			continue
		}
		n := len(dst)
		if n == k {
			if s <= scores[n-1] {
				continue
			}
			n--
			dst, scores = dst[:n], scores[:n]
		}
		dst, scores = append(dst, Candidate{}), append(scores, 0)
		j := n
		for j > 0 && scores[j-1] < s {
			dst[j], scores[j] = dst[j-1], scores[j-1]
			j--
		}
		dst[j], scores[j] = Candidate{Index: int64(i), Probability: pr}, s
	}
	return dst
}
