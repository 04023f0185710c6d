// Package transitions learns page-to-page transitions from the click stream
// as it flows, between the history store (features) and the prefetch policy:
// every click that follows another in a session adds one to the decayed
// count of (previous page → page), pages outside the model's vocabulary
// included, so that a page published after the last training becomes
// predictable within seconds of a few dozen users opening it. The engine
// blends these online statistics with the model's probabilities (Blend).
//
// Counts decay exponentially with a half-life, by the clicks' timestamps.
// Memory is bounded: at most Config.MaxPages source pages (least recently
// updated evicted first) with at most Config.MaxNext next pages each (the
// smallest count replaced first). The statistics live in the process
// (NewMemory, sharded by source page) or in Redis (NewRedis), where
// replicas share them: one hash per source page, updated by script calls
// of up to 64 source pages each, one pipeline per Observe (Share batches
// the Observes of a flush interval).
package transitions

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Config.
const (
	DefaultHalfLife = time.Hour
	DefaultEvidence = 50
	DefaultMaxPages = 100_000
	DefaultMaxNext  = 32
)

// ErrInvalidConfig is wrapped by every Validate error in this package.
var ErrInvalidConfig = errors.New("invalid transitions config")

// Config tunes the statistics and the blend. The zero value is valid and
// means the defaults.
type Config struct {
	// HalfLife is the time after which a transition counts half. Default
	// DefaultHalfLife.
	HalfLife time.Duration
	// Evidence is k in the online share w = n / (n + k) of a source page
	// with n decayed transitions out of it (see Blend). 0 is a value (with
	// EvidenceSet): the online statistics take the whole share as soon as
	// a source has any. Unset means DefaultEvidence.
	Evidence    float64
	EvidenceSet bool
	// MaxPages bounds the source pages kept (least recently updated evicted
	// first; in process, among the pages of one shard: past 2,048 pages the
	// pages are spread over up to 64 shards of MaxPages / shards each), and
	// the pages outside the vocabulary remembered for the online-only
	// gauge. In Redis a source's hash also expires once unchanged for
	// Retention. Default DefaultMaxPages.
	MaxPages int
	// MaxNext bounds the next pages kept per source page; past it the
	// smallest count makes room. Default DefaultMaxNext.
	MaxNext int
	// KeyPrefix prefixes the Redis keys. Default "prefetchd:tr:".
	KeyPrefix string
	// OpTimeout bounds each read of the statistics from Redis (Lookup),
	// which a hint query or a click waits for: they are best effort, and
	// the caller goes on without them. Writes run off the click path
	// (Stats.Run). Default DefaultOpTimeout.
	OpTimeout time.Duration
}

// DefaultOpTimeout is Config.OpTimeout's default.
const DefaultOpTimeout = 500 * time.Millisecond

// Validate reports a configuration error wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	switch {
	case c.HalfLife < 0:
		return fmt.Errorf("half-life %v is negative: %w", c.HalfLife, ErrInvalidConfig)
	case math.IsNaN(c.Evidence) || math.IsInf(c.Evidence, 0) || c.Evidence < 0:
		return fmt.Errorf("evidence %v is not a finite number >= 0: %w", c.Evidence, ErrInvalidConfig)
	case c.MaxPages < 0:
		return fmt.Errorf("max pages %d is negative: %w", c.MaxPages, ErrInvalidConfig)
	case c.MaxNext < 0:
		return fmt.Errorf("max next pages %d is negative: %w", c.MaxNext, ErrInvalidConfig)
	case c.OpTimeout < 0:
		return fmt.Errorf("op timeout %v is negative: %w", c.OpTimeout, ErrInvalidConfig)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.HalfLife == 0 {
		c.HalfLife = DefaultHalfLife
	}
	if c.Evidence == 0 && !c.EvidenceSet {
		c.Evidence = DefaultEvidence
	}
	if c.MaxPages == 0 {
		c.MaxPages = DefaultMaxPages
	}
	if c.MaxNext == 0 {
		c.MaxNext = DefaultMaxNext
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "prefetchd:tr:"
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	return c
}

// Retention is how long a page's statistics are kept without news: ten
// half-lives, after which a count weighs less than 1/1000.
func (c Config) Retention() time.Duration { return 10 * c.withDefaults().HalfLife }

// Transition is one click that followed another in a user's session.
type Transition struct {
	From, To string
	At       time.Time
	// FromUnknown and ToUnknown say that the page is outside the model's
	// vocabulary (for the online-only gauge).
	FromUnknown, ToUnknown bool
	// ToIndex is the caller's name for To's place in its vocabulary (the
	// engine: the index, with the model's tag in the high 32 bits; 0:
	// none). The in-process store keeps the latest with the next page and
	// returns it in Next.Index; the store never reads it.
	ToIndex int64
}

// Next is a next page and its decayed count.
type Next struct {
	Page  string
	Count float64
	// Index is the latest Transition.ToIndex observed for Page: by the
	// in-process store, or for the Redis store by this process's Share
	// cache (0 for a next page only other replicas observed, and without
	// the cache). It saves the caller a vocabulary lookup, but the model
	// may have changed since: the caller checks it against its vocabulary.
	Index int64
	// hash is PageHash(Page), or 0 when not known (a Next built outside
	// this package): a cheap first test for Is.
	hash uint64
}

// pageSeed seeds PageHash for the life of the process.
var pageSeed = maphash.MakeSeed()

// PageHash returns a nonzero hash of page for Next.Is: a caller comparing
// many next pages with one page hashes it once.
func PageHash(page string) uint64 { return maphash.String(pageSeed, page) | 1 }

// Is reports whether n is page, whose PageHash is hash. Comparing the
// hashes first spares most string comparisons, which on a busy process
// miss the cache: the page names live apart from the Next.
func (n *Next) Is(page string, hash uint64) bool {
	return (n.hash == 0 || n.hash == hash) && n.Page == page
}

// Dist is what is known online of the pages that follow a source page.
type Dist struct {
	// N is the decayed number of transitions out of the page, including
	// those to next pages no longer kept.
	N float64
	// Next are the kept next pages, highest count first.
	Next []Next
}

// Blend is the rule that mixes online statistics into a model's
// probabilities. For a source page with evidence n (Dist.N), a next page d
// with decayed count c, and the online share w = n / (n + k), k =
// Config.Evidence:
//
//	p(d) = (1 - w) · p_model(d) + w · c / n                 d in the vocabulary
//	p(d) = (1 - w) · p_model(<unk>) · c / c_out + w · c / n   d outside it
//
// where c_out is the total count of the source's next pages outside the
// vocabulary: the model's probability of "a page I do not know" is shared
// among them as the stream saw them. A source page the model does not know
// has p_model of the unknown page's context, which the same weight
// discounts as evidence grows. Without evidence (n = 0) p is p_model.
type Blend struct{ k float64 }

// Weight is the online share w of a source with evidence n.
func (b Blend) Weight(n float64) float64 {
	if !(n > 0) {
		return 0
	}
	return n / (n + b.k)
}

// Next is p(d) for next page nx of d, w = Weight(d.N). For a page in the
// vocabulary pModel is its model probability; for one outside it (inVocab
// false) pModel is the model's probability of the unknown page and cOut
// the total count of d's next pages outside the vocabulary.
func (Blend) Next(w float64, d Dist, nx Next, pModel float64, inVocab bool, cOut float64) float64 {
	p := w * nx.Count / d.N
	switch {
	case inVocab:
		p += (1 - w) * pModel
	case cOut > 0:
		p += (1 - w) * pModel * nx.Count / cOut
	}
	return p
}

// Store keeps the statistics. Implementations are safe for concurrent use.
type Store interface {
	// Observe adds the transitions, each at its time. It returns ctx.Err()
	// when ctx ends, or the backend's error; then some of the transitions
	// may have been added.
	Observe(ctx context.Context, ts []Transition) error
	// Lookup fills dst[i] (dst grown to len(from), its buffers reused) with
	// the statistics of from[i] as of at. An unknown page gets a zero Dist.
	Lookup(ctx context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error)
}

// Stats are the online statistics of one service: a store, the blend rule
// and their metrics.
type Stats struct {
	Store
	Blend Blend
	m     *metrics
}

// Served counts a prediction served with pages from online statistics.
func (s *Stats) Served() { s.m.served.Inc() }

// metrics are the statistics' Prometheus metrics.
type metrics struct {
	onlineOnly prometheus.Gauge
	observed   prometheus.Counter
	evicted    prometheus.Counter
	served     prometheus.Counter
	dropped    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		onlineOnly: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "prefetchd_transitions_online_only_pages",
			Help: "Pages outside the model's vocabulary seen in transitions within the retention (ten half-lives), at most the max pages. In-process statistics count it as clicks come and keep the last value while none do; Redis-shared ones refresh it every second.",
		}),
		observed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_transitions_observed_total",
			Help: "Page-to-page transitions added to the online statistics.",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_transitions_evicted_pages_total",
			Help: "Source pages dropped from the in-process statistics to stay within the max pages.",
		}),
		served: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_transitions_served_predictions_total",
			Help: "Predictions (prefetch decisions and hint answers) with at least one page whose probability has an online share.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_transitions_dropped_total",
			Help: "Transitions the shared online statistics dropped, by reason: buffer_full (the buffer past its bound while sends could not keep up), send_failed (a send to Redis failed; some of its transitions may have been added).",
		}, []string{"reason"}),
	}
	m.dropped.WithLabelValues("buffer_full")
	m.dropped.WithLabelValues("send_failed")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.onlineOnly, m.observed, m.evicted, m.served, m.dropped} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register transitions metrics: %w", err)
			}
		}
	}
	return m, nil
}

// decay is the forward-decay arithmetic shared by both stores: a count
// added at t is stored as exp(λ (t - base)) for a per-page base time, so an
// addition touches one count; the decayed value at now is the stored one
// times exp(-λ (now - base)). When the growth passes rebase the page's
// counts are scaled back and its base moved to t.
type decay struct{ lambda float64 } // per second

const rebase = 20 // e^20 ≈ 5e8, far from float64 limits

func newDecay(halfLife time.Duration) decay {
	return decay{lambda: math.Ln2 / halfLife.Seconds()}
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// weight is the stored increment of a count added at t for base.
func (d decay) weight(base, t float64) float64 { return math.Exp(d.lambda * (t - base)) }

// sortNext orders next pages by count, highest first, ties by page: an
// insertion sort, as the pages are kept in order and arrive nearly so.
func sortNext(next []Next) {
	for i := 1; i < len(next); i++ {
		up(next, i)
	}
}

// up moves next[i] ahead of the pages it now precedes in the order of
// sortNext, next[:i] being in order.
func up(next []Next, i int) {
	for ; i > 0 && less(next[i], next[i-1]); i-- {
		next[i], next[i-1] = next[i-1], next[i]
	}
}

func less(a, b Next) bool { return a.Count > b.Count || a.Count == b.Count && a.Page < b.Page }

// grow returns dst with length n, its elements' Next buffers kept.
func grow(dst []Dist, n int) []Dist {
	if n > cap(dst) {
		dst = append(dst[:cap(dst)], make([]Dist, n-cap(dst))...)
	}
	dst = dst[:n]
	for i := range dst {
		dst[i].N, dst[i].Next = 0, dst[i].Next[:0]
	}
	return dst
}
