package training

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/transitions"
)

// ReplayConfig sets a time-ordered replay of later sessions through the
// online transition statistics (package transitions), as the service
// learns them from its click stream.
type ReplayConfig struct {
	// Online configures the statistics and the blend (transitions.Blend).
	Online transitions.Config
	// MaxK is k of MRR@k. Default 20.
	MaxK int
	// MaxSeqLen cuts each history to its last pages, as the service does.
	// Default DefaultMaxSeqLen.
	MaxSeqLen int
	// Span is the time the replayed clicks are spread over, evenly and in
	// order, for the statistics' decay (datasets without timestamps).
	// Default 15 days, half of NASA July 1995.
	Span time.Duration
}

// Validate checks the configuration.
func (c ReplayConfig) Validate() error {
	switch {
	case c.MaxK < 0 || c.MaxK > 1000:
		return fmt.Errorf("replay max k %d outside 1..1000", c.MaxK)
	case c.MaxSeqLen < 0:
		return fmt.Errorf("replay max seq len %d is negative", c.MaxSeqLen)
	case c.Span < 0:
		return fmt.Errorf("replay span %v is negative", c.Span)
	}
	return c.Online.Validate()
}

// ReplayGroup is the MRR@k of one group of replayed transitions, for the
// model alone and for the model blended with the online statistics.
type ReplayGroup struct {
	Transitions int     `json:"transitions"`
	Static      float64 `json:"static_mrr"`
	Blend       float64 `json:"blend_mrr"`
}

// ReplayReport is the outcome of Replay.
type ReplayReport struct {
	Model string `json:"model"`
	K     int    `json:"k"`
	// All are every transition; Unseen those to a page absent from the
	// training sessions; Known those to a page of the model's vocabulary.
	All, Unseen, Known ReplayGroup
	// UnseenPages are the distinct pages of the replay absent from the
	// training sessions.
	UnseenPages int `json:"unseen_pages"`
}

// Write prints the report as a table.
func (r ReplayReport) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "transitions (%s)\tcount\tstatic MRR@%d\tblend MRR@%d\t\n", r.Model, r.K, r.K)
	for _, g := range []struct {
		name string
		g    ReplayGroup
	}{{"all", r.All}, {"to pages unseen in training", r.Unseen}, {"to pages the model knows", r.Known}} {
		fmt.Fprintf(tw, "%s\t%d\t%.4f\t%.4f\t\n", g.name, g.g.Transitions, g.g.Static, g.g.Blend)
	}
	return tw.Flush()
}

// Replay streams test, the sessions after train in time order, click by
// click through online statistics that start empty: each transition is
// first predicted (by p alone, and by p blended with the statistics so
// far) and then observed, as in the service. v is p's vocabulary. It
// returns ctx.Err() if ctx ends first.
func Replay(ctx context.Context, name string, p Predictor, v *model.Vocab, train, test []Session, cfg ReplayConfig) (ReplayReport, error) {
	if err := cfg.Validate(); err != nil {
		return ReplayReport{}, err
	}
	if cfg.MaxK == 0 {
		cfg.MaxK = 20
	}
	if cfg.MaxSeqLen == 0 {
		cfg.MaxSeqLen = DefaultMaxSeqLen
	}
	if cfg.Span == 0 {
		cfg.Span = 15 * 24 * time.Hour
	}
	stats, err := transitions.NewMemory(cfg.Online, nil)
	if err != nil {
		return ReplayReport{}, err
	}
	trained := make(map[string]bool)
	for _, s := range train {
		for _, pg := range s.Pages {
			trained[pg] = true
		}
	}
	unseen := make(map[string]bool)
	clicks := 0
	for _, s := range test {
		clicks += len(s.Pages)
		for _, pg := range s.Pages {
			if !trained[pg] {
				unseen[pg] = true
			}
		}
	}
	r := replayer{cfg: cfg, v: v, stats: stats, start: time.Date(1995, 7, 16, 0, 0, 0, 0, time.UTC),
		step: cfg.Span / time.Duration(max(clicks, 1)), scores: make([]float64, v.Len())}
	var sum struct{ all, unseen, known [2]float64 }
	var n struct{ all, unseen, known int }
	sp, fast := p.(SessionPredictor)
	var buf []float32
	for i, s := range test {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return ReplayReport{}, fmt.Errorf("replay %s: %w", name, err)
			}
		}
		ids := Encode(v, []Session{s})[0]
		at := func(t int, probs []float32) {
			static, blend := r.click(ctx, s.Pages[t-1], s.Pages[t], ids[t], probs)
			n.all++
			sum.all[0] += static
			sum.all[1] += blend
			if unseen[s.Pages[t]] {
				n.unseen++
				sum.unseen[0] += static
				sum.unseen[1] += blend
			}
			if ids[t] > model.UnknownIndex {
				n.known++
				sum.known[0] += static
				sum.known[1] += blend
			}
		}
		r.clock += r.step // the session's first click
		if fast {
			sp.PredictSession(ids, cfg.MaxSeqLen, at)
			continue
		}
		for t := 1; t < len(ids); t++ {
			buf = p.Predict(ids[max(0, t-cfg.MaxSeqLen):t], buf)
			at(t, buf)
		}
	}
	group := func(n int, s [2]float64) ReplayGroup {
		if n == 0 {
			return ReplayGroup{}
		}
		return ReplayGroup{Transitions: n, Static: s[0] / float64(n), Blend: s[1] / float64(n)}
	}
	return ReplayReport{
		Model: name, K: cfg.MaxK, UnseenPages: len(unseen),
		All: group(n.all, sum.all), Unseen: group(n.unseen, sum.unseen), Known: group(n.known, sum.known),
	}, nil
}

// replayer is the state of one replay.
type replayer struct {
	cfg         ReplayConfig
	v           *model.Vocab
	stats       *transitions.Stats
	start       time.Time
	clock, step time.Duration
	scores      []float64 // blended scores by vocabulary index
	dists       []transitions.Dist
	extra       []float64 // blended scores of pages outside the vocabulary
}

// click predicts the transition from → to (to's index target) from probs,
// the model's probabilities, and the statistics, returns the reciprocal
// ranks (0 past k) of to, then observes the transition.
func (r *replayer) click(ctx context.Context, from, to string, target int64, probs []float32) (static, blend float64) {
	r.clock += r.step
	at := r.start.Add(r.clock)
	if target > model.UnknownIndex {
		if rk := rank(probs, target, r.cfg.MaxK); rk > 0 {
			static = 1 / float64(rk)
		}
	}
	r.dists, _ = r.stats.Lookup(ctx, []string{from}, at, r.dists) // the memory store never fails
	blend = r.blended(probs, to, target, r.dists[0])
	_ = r.stats.Observe(ctx, []transitions.Transition{{From: from, To: to, At: at}})
	return static, blend
}

// blended is the reciprocal rank of to among the blended scores, ties
// counted against it.
func (r *replayer) blended(probs []float32, to string, target int64, d transitions.Dist) float64 {
	w := r.stats.Blend.Weight(d.N)
	for j, p := range probs {
		r.scores[j] = (1 - w) * float64(p)
	}
	r.extra = r.extra[:0]
	var own float64
	if target > model.UnknownIndex {
		own = r.scores[target]
	}
	var cOut float64
	for _, n := range d.Next {
		if r.v.Index(n.Page) <= model.UnknownIndex {
			cOut += n.Count
		}
	}
	for _, n := range d.Next {
		if j := r.v.Index(n.Page); j > model.UnknownIndex {
			r.scores[j] = r.stats.Blend.Next(w, d, n, float64(probs[j]), true, cOut)
			if j == target {
				own = r.scores[j]
			}
			continue
		}
		p := r.stats.Blend.Next(w, d, n, float64(probs[model.UnknownIndex]), false, cOut)
		if n.Page == to {
			own = p
			continue
		}
		r.extra = append(r.extra, p)
	}
	if !(own > 0) {
		return 0
	}
	ahead := 0
	for j := model.UnknownIndex + 1; j < len(r.scores); j++ {
		if s := r.scores[j]; s > own || s == own && int64(j) != target && (target <= model.UnknownIndex || int64(j) < target) {
			ahead++
		}
	}
	for _, s := range r.extra {
		if s >= own {
			ahead++
		}
	}
	if ahead >= r.cfg.MaxK {
		return 0
	}
	return 1 / float64(ahead+1)
}

// SplitHalf cuts time-ordered sessions at the first session that starts
// past half of the clicks: the first half for training, the second for a
// replay.
func SplitHalf(sessions []Session) (first, second []Session) {
	total := 0
	for _, s := range sessions {
		total += len(s.Pages)
	}
	seen := 0
	for i, s := range sessions {
		if 2*seen >= total {
			return sessions[:i], sessions[i:]
		}
		seen += len(s.Pages)
	}
	return sessions, nil
}
