// Package engine wires the stages of prefetchd for one click and one hint
// query: it canonicalizes the page, extends the user's history (features),
// scores the next page with the live model (model, through the lifecycle
// manager), chooses pages to prefetch (prefetch.Policy), hands them to the
// warmer, feeds the online evaluation, and notifies hint watchers. The Kafka
// consumer calls HandleEvents (runs of clicks, see features.BatchHandler;
// HandleEvent when --ingest-batch is 1), and so does the gRPC Ingest call
// for the events a client has already sent (HandleEvent for a single one);
// the gRPC server also calls Predict and Subscribe.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/transitions"
)

// Models yields the live model; *lifecycle.Manager implements it.
type Models interface {
	// Current is the model serving now, or nil before the first load.
	Current() *lifecycle.Live
	// RecordRequest counts a hint request served by version.
	RecordRequest(version string, latency time.Duration)
}

// Warmer takes prefetch requests (blocking only while a full queue pushes
// back, prefetch.Config.Block) and says which pages are
// in the cache now; *prefetch.Warmer implements it.
type Warmer interface {
	Warm(ctx context.Context, req prefetch.Request) int
	// Present reports in dst[:0], for each page, whether user's key for it
	// is in the cache now; when the cache fails it reports every page
	// absent.
	Present(ctx context.Context, user string, pages []string, dst []bool) []bool
}

// Evaluator joins prefetches with later clicks; *prefetch.Evaluator implements it.
type Evaluator interface {
	ObserveClick(user, page string, at time.Time)
}

// Deps are the engine's collaborators. All are required but Transitions.
type Deps struct {
	Models    Models
	Histories features.Store
	Canon     *features.Canonicalizer
	Policy    *prefetch.Policy
	Warmer    Warmer
	Evaluator Evaluator
	// Transitions, when set, learns page transitions from the clicks and
	// blends them into every prediction (see online.go).
	Transitions *transitions.Stats
}

// Config tunes the engine. The zero value is valid.
type Config struct {
	// Now is the clock used for "warm now" answers. Default time.Now.
	Now func() time.Time
}

// Validate checks the configuration.
func (c *Config) Validate() error { return nil }

// Engine applies clicks and answers hint queries. It is safe for concurrent
// use; the caller keeps one user's clicks in order (the consumer does).
type Engine struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	m    *metrics

	scratch sync.Pool // *buffers
	waves   sync.Pool // *wave

	// unanswered holds clicks whose Append failed, to count them when a
	// retry finds them applied.
	unanswered unanswered

	// vocabs remembers the vocabulary of recent model tags, so histories
	// written under an earlier model are remapped through page keys.
	vocabMu    sync.Mutex
	vocabs     map[uint32]*model.Vocab // guarded by vocabMu
	vocabOrder []uint32                // vocabs' tags, oldest first; guarded by vocabMu
	// seenTag is the newest tag already in vocabs: live skips the lock
	// while the model does not change.
	seenTag atomic.Uint32

	policyCache atomic.Pointer[policyForTag]

	sample  atomic.Pointer[Sample]
	samples sampleRing

	subsMu  sync.RWMutex
	subs    map[string]map[*subscriber]struct{} // guarded by subsMu
	nsubs   atomic.Int64
	counter stats

	onlineState
}

type policyForTag struct {
	tag    uint32
	policy *prefetch.Policy
}

// buffers is the per-call scratch space of the hot path.
type buffers struct {
	rec   features.Record
	hist  []int64
	remap []int64
	probs []float32
	cands []prefetch.Candidate
	pages []prefetch.Page
	fast  fastScores // the clustered path's scores (fastscore.go)

	// Online statistics (online.go): those of the page at hand (nil:
	// none), looked up into dists for the pages from; transitions to learn;
	// the blend's scratch and the names of pages outside the vocabulary.
	// earlyDists are those read for a wave's early warms (warmEarly).
	dist       *transitions.Dist
	dists      []transitions.Dist
	earlyDists []transitions.Dist
	from       []string
	learn      []transitions.Transition
	nextIdx    []int64
	known      []int64 // the vocabulary pages among nextIdx
	mixed      []prefetch.Candidate
	extra      []string
}

// stats are running totals for the service's progress log.
type stats struct {
	events, predictions, prefetches, duplicates atomic.Uint64
}

// Sample is one recent click and what the engine did with it, for the
// service's progress log.
type Sample struct {
	UserID, Page string
	History      int
	ModelVersion string
	Hints        []hint.Hint // the pages chosen for prefetching
	At           time.Time   // when it was sampled
}

// LastSample returns a recent click (one in 256 is sampled), or nil.
func (e *Engine) LastSample() *Sample { return e.sample.Load() }

// recentSamples is how many sampled clicks RecentSamples returns at most.
const recentSamples = 16

// sampleRing keeps the latest sampled clicks.
type sampleRing struct {
	mu   sync.Mutex
	buf  [recentSamples]*Sample
	next int
}

// add keeps s, forgetting the oldest when full.
func (r *sampleRing) add(s *Sample) {
	r.mu.Lock()
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	r.mu.Unlock()
}

// RecentSamples returns the latest sampled clicks (one in 256), newest
// first, at most 16.
func (e *Engine) RecentSamples() []*Sample {
	r := &e.samples
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Sample, 0, len(r.buf))
	for i := 1; i <= len(r.buf); i++ {
		if s := r.buf[(r.next-i+len(r.buf))%len(r.buf)]; s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Totals are the engine's running totals.
type Totals struct {
	Events, Predictions, Prefetches, Duplicates uint64
}

// New builds an engine. reg may be nil.
func New(cfg Config, deps Deps, logger *slog.Logger, reg prometheus.Registerer) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	switch {
	case deps.Models == nil:
		return nil, errors.New("engine: no model source")
	case deps.Histories == nil:
		return nil, errors.New("engine: no history store")
	case deps.Canon == nil:
		return nil, errors.New("engine: no canonicalizer")
	case deps.Policy == nil:
		return nil, errors.New("engine: no policy")
	case deps.Warmer == nil:
		return nil, errors.New("engine: no warmer")
	case deps.Evaluator == nil:
		return nil, errors.New("engine: no evaluator")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:    cfg,
		deps:   deps,
		log:    logger,
		m:      m,
		vocabs: make(map[uint32]*model.Vocab),
		subs:   make(map[string]map[*subscriber]struct{}),
	}
	e.scratch.New = func() any { return new(buffers) }
	e.waves.New = func() any { return &wave{seen: make(map[string]int)} }
	return e, nil
}

// Totals returns running totals since start.
func (e *Engine) Totals() Totals {
	return Totals{
		Events:      e.counter.events.Load(),
		Predictions: e.counter.predictions.Load(),
		Prefetches:  e.counter.prefetches.Load(),
		Duplicates:  e.counter.duplicates.Load(),
	}
}

// live returns the current model and remembers its vocabulary by tag.
func (e *Engine) live() (*lifecycle.Live, error) {
	l := e.deps.Models.Current()
	if l == nil {
		return nil, hint.ErrNoModel
	}
	if e.seenTag.Load() == l.Tag && l.Tag != 0 {
		return l, nil
	}
	e.vocabMu.Lock()
	if _, ok := e.vocabs[l.Tag]; !ok {
		e.vocabs[l.Tag] = l.Vocab
		// Keep a bounded set: the vocabularies of the last maxVocabs tags.
		e.vocabOrder = append(e.vocabOrder, l.Tag)
		if n := len(e.vocabOrder) - maxVocabs; n > 0 {
			for _, t := range e.vocabOrder[:n] {
				delete(e.vocabs, t)
			}
			e.vocabOrder = append(e.vocabOrder[:0], e.vocabOrder[n:]...)
		}
	}
	e.seenTag.Store(l.Tag)
	e.vocabMu.Unlock()
	return l, nil
}

// maxVocabs bounds the vocabularies the engine remembers for remapping.
const maxVocabs = 16

// vocabOf returns the vocabulary of tag, or nil when it is not one of the
// last maxVocabs this engine served.
func (e *Engine) vocabOf(tag uint32) *model.Vocab {
	e.vocabMu.Lock()
	defer e.vocabMu.Unlock()
	return e.vocabs[tag]
}

// policyFor returns the policy bound to the live model's vocabulary (cost
// weights are keyed by page).
func (e *Engine) policyFor(l *lifecycle.Live) *prefetch.Policy {
	if p := e.policyCache.Load(); p != nil && p.tag == l.Tag {
		return p.policy
	}
	p := &policyForTag{tag: l.Tag, policy: e.deps.Policy.ForVocab(l.Vocab)}
	e.policyCache.Store(p)
	return p.policy
}

// ReasonModel is the features.RejectError reason of a click the model fails
// on (scoring it, or rebuilding the user's state from the history).
const ReasonModel = "model"

// HandleEvent applies one click: history, prediction, prefetch, evaluation
// and watchers. Errors tell the consumer what to do with the event:
//   - one wrapping features.ErrDuplicate: a redelivered click, already
//     applied (final);
//   - a *features.RejectError (reason ReasonModel): the model failed on this
//     click, which retrying would not change (final; the consumer
//     dead-letters it). The page stays in the history, unsettled: the
//     user's next click rebuilds the state;
//   - anything else is transient and the click is to be retried: a store
//     error, hint.ErrNoModel before a model is loaded, ctx.Err() when ctx
//     ends.
//
// With a step-form model a click is settled by saving the new state stamped
// with the click (features.Record.StateSeq); a redelivery of an unsettled
// click (features.ErrUnsettled from the store) is finished, not applied
// again or counted twice, and HandleEvent returns nil for it. The prefetch is
// handed to the warmer before that Save, so a Save whose reply is lost has
// nothing left undone; a redelivery may prefetch again, which is harmless.
// Without a step form Append is the whole effect; a redelivery of a user's
// latest click is still re-scored and prefetched (its first attempt may
// have stopped before) and reported as a duplicate. A Save that finds the
// record moved on (features.ErrStale: another replica appended a later
// click in between) writes nothing and is no error.
func (e *Engine) HandleEvent(ctx context.Context, ev features.Event, meta features.Meta) error {
	l, err := e.live()
	if err != nil {
		return err
	}
	b := e.scratch.Get().(*buffers)
	defer e.scratch.Put(b)
	return e.handleOne(ctx, l, ev, meta, b)
}

// handleOne is HandleEvent with the live model and scratch buffers given.
func (e *Engine) handleOne(ctx context.Context, l *lifecycle.Live, ev features.Event, meta features.Meta, b *buffers) error {
	start := time.Now()
	page := e.deps.Canon.Canonical(ev.Page)

	idx := l.Vocab.Index(page)
	click := newClick(l, idx, ev, meta)
	resumed, err := e.appended(e.deps.Histories.Append(ctx, ev.UserID, click, &b.rec), ev.UserID, click, page,
		prefetch.JudgeTime(ev.TS, meta.Time, start, meta.Receipt))
	if errors.Is(err, errSettled) {
		return nil
	}
	if err != nil {
		return err
	}
	if b.rec.Epoch != l.Tag {
		if err := e.remapRecord(ctx, ev.UserID, l, idx, &b.rec, b); err != nil {
			return err
		}
	}
	e.learnOne(ctx, l, ev.UserID, page, idx, ev.TS, &b.rec, !resumed, b)
	if l.Bundle == nil || !l.Bundle.HasStep() {
		b.hist = widen(b.hist, b.rec.Pages)
		probs, err := e.predict(ctx, l, b.hist, b)
		if err != nil {
			return modelError(ctx, err)
		}
		e.prefetch(ctx, l, ev, meta.Time, meta.Receipt, page, idx, len(b.rec.Pages), probs, b)
		if resumed {
			return e.redelivered()
		}
		e.m.handle.Observe(time.Since(start).Seconds())
		return nil
	}
	e.counter.predictions.Add(1)
	fast := e.fastScoring(l)
	state, probs, err := e.stateBefore(ctx, l, &b.rec, b.probs)
	scores := probs
	if err == nil {
		scores, state, err = e.stepOne(ctx, l, int64(b.rec.Pages[len(b.rec.Pages)-1]), state, probs, fast, b)
		if err != nil {
			err = modelError(ctx, fmt.Errorf("step with %s: %w", l.Version, err))
		}
	}
	if !fast {
		probs = scores
	}
	b.probs = probs
	if err != nil {
		return err
	}
	e.prefetch(ctx, l, ev, meta.Time, meta.Receipt, page, idx, len(b.rec.Pages), scores, b)
	b.rec.State, b.rec.StateSeq = state, b.rec.Seq
	if err := saved(e.deps.Histories.Save(ctx, ev.UserID, &b.rec)); err != nil {
		e.unanswered.put(ev.UserID, click, true)
		return fmt.Errorf("save state: %w", err)
	}
	e.m.handle.Observe(time.Since(start).Seconds())
	return nil
}

// newClick is the history entry of ev, page index idx under l.
func newClick(l *lifecycle.Live, idx int64, ev features.Event, meta features.Meta) features.Click {
	return features.Click{Page: int32(idx), TS: ev.TS, Epoch: l.Tag, Partition: meta.Partition, Gen: meta.Gen, Offset: meta.Offset}
}

// appended classifies the result of appending click c: a new click is
// counted (evaluation, totals); resumed is a click an earlier attempt
// appended and did not settle (features.ErrUnsettled), which the caller
// finishes without counting it again. A duplicate or a store error comes
// back as err.
//
// A click whose earlier attempt failed in a store call (an Append or Save
// whose reply may be lost: a timeout after the script ran) is remembered,
// and so is one applied in a run the consumer hands again from an earlier
// click's failure. When its retry finds it appended, it was this engine's
// own work: counted now if the Append's reply never came back, and
// reported applied, not as a duplicate (errSettled when nothing is left to
// do, resumed false when the state is still to be saved).
func (e *Engine) appended(err error, user string, c features.Click, page string, at time.Time) (resumed bool, _ error) {
	switch {
	case err == nil:
		e.unanswered.forget(user, c)
		e.count(user, page, at)
		return false, nil
	case errors.Is(err, features.ErrDuplicate): // ErrUnsettled included
		unsettled := errors.Is(err, features.ErrUnsettled)
		if counted, ok := e.unanswered.take(user, c); ok {
			if !counted {
				e.count(user, page, at)
			}
			if unsettled {
				return false, nil
			}
			return false, errSettled
		}
		if unsettled {
			return true, nil
		}
		e.counter.duplicates.Add(1)
	case c.Offset >= 0 && !errors.Is(err, features.ErrRejected):
		e.unanswered.put(user, c, false)
	}
	return false, fmt.Errorf("append click: %w", err)
}

// errSettled tells that a retried click was found fully applied by the
// attempt that failed to hear back.
var errSettled = errors.New("click settled by an earlier attempt")

// count counts an applied click in the evaluation and the totals; at is
// the time it is judged at (prefetch.JudgeTime).
func (e *Engine) count(user, page string, at time.Time) {
	e.deps.Evaluator.ObserveClick(user, page, at)
	e.counter.events.Add(1)
}

// unanswered remembers, for the clicks of the last moments, what this
// engine knows of their outcome across retries: a click whose Append or
// Save failed (the store may have applied it without the reply getting
// back), and whether a click was counted. The consumer retries a wave from
// its first failed click, so a click this engine applied and counted can
// come back found applied, or fail in a store call and come back again
// found applied: it is then settled, not counted a second time, and not
// reported a duplicate (the consumer counted none of that run from the
// failure on). A click settled and found applied again is a redelivery (a
// duplicate).
// Keyed by the click's position in Kafka (a user may have several clicks
// in one wave). Bounded: two generations of at most maxUnanswered clicks
// each, the older dropped when the newer fills (a click then forgotten is
// at worst reported a duplicate, or not counted in the evaluation).
type unanswered struct {
	n         atomic.Int32 // len(cur) + len(prev), read without the lock
	mu        sync.Mutex
	cur, prev map[clickKey]outcome // guarded by mu
}

// clickKey is a click's identity: its user and position in Kafka.
type clickKey struct {
	user      string
	partition int32
	gen       uint32
	offset    int64
}

// outcome is what an engine knows of a click it handled.
type outcome struct {
	counted bool // in the evaluation and totals
	failed  bool // a store call of its last attempt failed: its reply may be lost
	// pending: applied and counted by an attempt whose run the consumer
	// hands again (it settled none of it), so that the retry finds it
	// applied by this engine rather than redelivered.
	pending bool
}

const maxUnanswered = 1 << 16

func keyOf(user string, c features.Click) clickKey {
	return clickKey{user: user, partition: c.Partition, gen: c.Gen, offset: c.Offset}
}

// get returns what is known of k. mu must be held.
func (u *unanswered) get(k clickKey) (outcome, bool) {
	if o, ok := u.cur[k]; ok {
		return o, true
	}
	o, ok := u.prev[k]
	return o, ok
}

// store records o for k, starting a new generation when the newer is
// full. mu must be held.
func (u *unanswered) store(k clickKey, o outcome) {
	if u.cur == nil || len(u.cur) >= maxUnanswered {
		u.prev, u.cur = u.cur, make(map[clickKey]outcome)
	}
	u.cur[k] = o
	u.n.Store(int32(len(u.cur) + len(u.prev)))
}

// put records that a store call of c failed; counted tells that its
// Append was answered. A click once counted stays counted.
func (u *unanswered) put(user string, c features.Click, counted bool) {
	u.merge(user, c, outcome{counted: counted, failed: true})
}

// applied records that c was appended and counted by an attempt whose wave
// is to be retried: a later attempt may fail in a store call and the one
// after find it applied.
func (u *unanswered) applied(user string, c features.Click) {
	u.merge(user, c, outcome{counted: true, pending: true})
}

// merge adds o to what is known of c: a click once counted stays counted,
// once failed stays failed until take settles it.
func (u *unanswered) merge(user string, c features.Click, o outcome) {
	if c.Offset < 0 {
		return // no position: a retry is never found a duplicate
	}
	k := keyOf(user, c)
	u.mu.Lock()
	defer u.mu.Unlock()
	was, _ := u.get(k)
	u.store(k, outcome{counted: o.counted || was.counted, failed: o.failed || was.failed, pending: o.pending || was.pending})
}

// take reports whether a store call of c failed in an earlier attempt of
// this engine, or an earlier attempt applied c in a run handed again, and
// whether c was counted; from then on c is remembered as counted and
// settled, as the caller counts it if it was not.
func (u *unanswered) take(user string, c features.Click) (counted, ok bool) {
	if u.n.Load() == 0 || c.Offset < 0 {
		return false, false
	}
	k := keyOf(user, c)
	u.mu.Lock()
	defer u.mu.Unlock()
	was, found := u.get(k)
	if !found || !was.failed && !was.pending {
		return false, false
	}
	u.store(k, outcome{counted: true})
	return was.counted, true
}

// forget drops what is known of c (appended now: an earlier attempt's
// failure is no longer news).
func (u *unanswered) forget(user string, c features.Click) {
	if u.n.Load() == 0 || c.Offset < 0 {
		return
	}
	k := keyOf(user, c)
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.cur, k)
	delete(u.prev, k)
	u.n.Store(int32(len(u.cur) + len(u.prev)))
}

// redelivered is the outcome of a resumed click of a model without state:
// Append was its whole effect, so it is a duplicate once prefetched again.
func (e *Engine) redelivered() error {
	e.counter.duplicates.Add(1)
	return fmt.Errorf("append click: %w", features.ErrDuplicate)
}

// modelError classifies a model failure on a click: when ctx has ended it
// is returned as is (the click is retried); otherwise the model fails on
// this input and the click is rejected.
func modelError(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &features.RejectError{Reason: ReasonModel, Detail: err.Error()}
}

// stateBefore returns the recurrent state before rec's newest click: the
// stored one when its stamp says it covers exactly the history before that
// click (StateSeq == Seq-1), else one rebuilt from the history (a new
// session, a swapped model, an unsettled or unknown state). probs is
// scratch space, returned grown. A model failure is classified by
// modelError.
func (e *Engine) stateBefore(ctx context.Context, l *lifecycle.Live, rec *features.Record, probs []float32) (state, _ []float32, err error) {
	if len(rec.State) == l.Bundle.StateSize() && rec.StateSeq == rec.Seq-1 {
		return rec.State, probs, nil
	}
	e.m.stateRebuilt.Inc()
	state = rec.State[:0]
	fast := l.Bundle.Scoring().Approximate
	for _, p := range rec.Pages[:len(rec.Pages)-1] {
		if fast {
			// Only the state is wanted: no output row is scored.
			_, state, err = l.Bundle.StepTopK(ctx, int64(p), state, 0, 0, nil)
		} else {
			probs, state, err = l.Bundle.Step(ctx, int64(p), state, probs)
		}
		if err != nil {
			return nil, probs, modelError(ctx, fmt.Errorf("rebuild state with %s: %w", l.Version, err))
		}
	}
	return state, probs, nil
}

// prefetch is the end of a click, once scored: policy, warming, watchers and
// the progress sample. histLen is the user's history length; recorded is
// the click's record timestamp (features.Meta.Time).
func (e *Engine) prefetch(ctx context.Context, l *lifecycle.Live, ev features.Event, recorded time.Time, receipt bool, page string, idx int64, histLen int, probs []float32, b *buffers) {
	b.cands = e.choose(l, probs, idx, page, 0, -1, b)
	b.pages = b.pages[:0]
	for _, c := range b.cands {
		b.pages = append(b.pages, prefetch.Page{Key: b.page(l, c.Index), Probability: c.Probability})
	}
	// Without pages too: the warmer counts a click on a page still on its way.
	n := e.deps.Warmer.Warm(ctx, prefetch.Request{UserID: ev.UserID, Pages: b.pages, ModelVersion: l.Version,
		At: ev.TS, Recorded: recorded, Receipt: receipt, Page: page})
	e.counter.prefetches.Add(uint64(n))
	if e.nsubs.Load() > 0 {
		e.publish(ev.UserID, l, b, ev.TS)
	}
	if n := e.counter.events.Load(); n%256 == 1 || (len(b.cands) > 0 && e.sample.Load() == nil) {
		s := &Sample{UserID: ev.UserID, Page: page, History: histLen, ModelVersion: l.Version, At: time.Now()}
		for _, c := range b.cands {
			s.Hints = append(s.Hints, hint.Hint{Page: b.page(l, c.Index), Probability: c.Probability})
		}
		e.sample.Store(s)
		e.samples.add(s)
	}
}

// wave is the working memory of HandleEvents.
type wave struct {
	seen map[string]int // clicks per user so far in the run
	// counted are the run indices of the clicks this attempt appended and
	// counted: those at or after the first failure come back on the retry.
	counted []int
	// rows are the clicks of the wave at hand, their buffers (record,
	// scores) kept from wave to wave.
	rows []waveRow
	// batch are rows handed to a BatchStore; live the rows still going
	// (appended, then scored), scored those whose state is ready to step.
	batch        []*features.BatchRow
	live, scored []*waveRow
	// early are the live rows whose record the store foresaw; ready those
	// stepped early on the record the store then returned.
	early, ready []*waveRow
	// StepMany's arguments, by scored row: page ids, states and scores.
	ids           []int64
	states, probs [][]float32
	// Cutting a run into waves: each click's wave, and the run indices of
	// the wave at hand.
	layer, in []int
}

// waveRow is one click of a wave.
type waveRow struct {
	// BatchRow is the user, the click, the record after Append and the
	// store's result of the latest call.
	features.BatchRow
	at       int // index in the run
	ev       *features.Event
	recorded time.Time // the record timestamp (features.Meta.Time)
	receipt  bool      // recorded is a receipt time (features.Meta.Receipt)
	page     string    // canonical
	idx      int64     // page index under the live model
	probs    []float32 // scores of the next page
	resumed  bool      // an earlier attempt appended the click (features.ErrUnsettled)
	err      error     // the click's outcome
	// dist are the online statistics of page (in the wave's buffers), or nil.
	dist *transitions.Dist
	// spec is the record the store foresaw (features.Foresight), early
	// whether the click was warmed on it before the store's reply.
	spec  features.Record
	early bool
	// earlyState is the state after the click stepped early (step form).
	earlyState []float32
}

// reset makes n rows, keeping the buffers of earlier ones.
func (w *wave) reset(n int) []waveRow {
	if n > cap(w.rows) {
		w.rows = append(w.rows[:cap(w.rows)], make([]waveRow, n-cap(w.rows))...)
	}
	w.rows = w.rows[:n]
	return w.rows
}

// batchOf returns the store rows of rows, for a BatchStore.
func (w *wave) batchOf(rows []*waveRow) []*features.BatchRow {
	w.batch = w.batch[:0]
	for _, r := range rows {
		w.batch = append(w.batch, &r.BatchRow)
	}
	return w.batch
}

// HandleEvents applies a run of clicks with the effect of HandleEvent on
// each, every user's clicks in order (features.BatchHandler): errs[i] gets
// click i's outcome, nil or a final error (a duplicate, or a rejection when
// the model fails on the click: see HandleEvent), and it returns the index
// of the first click that failed with a transient error (its error in
// errs), or len(evs); every click before that index is settled. With a
// step-form model or a features.BatchStore (Redis) the run is cut into
// waves of distinct users, a user's k-th click of the run in wave k: a
// wave's clicks share one run of the step form (model.Bundle.StepMany),
// which costs much less per click than one run each, and a BatchStore
// appends a wave's histories in one round trip (and saves their states in
// another). Clicks of different users may therefore be applied in another
// order than the run's.
func (e *Engine) HandleEvents(ctx context.Context, evs []features.Event, metas []features.Meta, errs []error) int {
	if n := min(len(evs), len(metas), len(errs)); n < len(evs) {
		evs = evs[:n] // a caller's mistake: apply what can be reported
	}
	if len(evs) == 0 {
		return 0
	}
	clear(errs[:len(evs)])
	l, err := e.live()
	if err != nil {
		errs[0] = err
		return 0
	}
	b := e.scratch.Get().(*buffers)
	defer e.scratch.Put(b)
	_, batchStore := e.deps.Histories.(features.BatchStore)
	if !batchStore && (len(evs) == 1 || l.Bundle == nil || !l.Bundle.HasStep()) {
		for i := range evs {
			errs[i] = e.handleOne(ctx, l, evs[i], metas[i], b)
			if errs[i] != nil && !features.Final(errs[i]) {
				return i
			}
		}
		return len(evs)
	}
	w := e.waves.Get().(*wave)
	defer e.waves.Put(w)
	// Wave k holds every user's k-th click of the run, in run order: each
	// wave has distinct users, and a user's clicks go in order, one wave
	// after the other.
	var waves int
	w.layer, waves = features.Waves(evs, w.seen, w.layer)
	w.counted = w.counted[:0]
	failAt := len(evs)
	for k := range waves {
		// The wave's clicks; after a failure only those before it, which
		// must be settled when HandleEvents returns.
		w.in = w.in[:0]
		for i, lk := range w.layer {
			if i >= failAt {
				break
			}
			if lk == k {
				w.in = append(w.in, i)
			}
		}
		if len(w.in) > 0 {
			failAt = min(failAt, e.handleWave(ctx, l, evs, metas, w.in, errs, w, b))
		}
	}
	// The consumer hands the run again from failAt: the clicks from there
	// that this attempt counted (in any wave) will come back.
	for _, i := range w.counted {
		if i >= failAt {
			m := metas[i]
			e.unanswered.applied(evs[i].UserID, features.Click{Partition: m.Partition, Gen: m.Gen, Offset: m.Offset})
		}
	}
	return failAt
}

// handleWave applies the clicks evs[i], i in in, of distinct users: every
// click extends its history, one StepMany scores them all, then each is
// prefetched and its state saved. It fills errs[i] like HandleEvents and
// returns the first i that failed other than finally (duplicate, rejected),
// or len(evs). Appends to a plain Store run in order and a store failure
// ends the wave there. A later failure (saving a state, a remap) concerns
// one user: the other clicks are still finished; handed again, they are
// duplicates, and the failed one, when its Append had succeeded, is
// resumed (features.ErrUnsettled).
func (e *Engine) handleWave(ctx context.Context, l *lifecycle.Live, evs []features.Event, metas []features.Meta, in []int, errs []error, w *wave, b *buffers) int {
	start := time.Now()
	rows := w.reset(len(in))
	w.live = w.live[:0]
	for j, i := range in {
		r, ev := &rows[j], &evs[i]
		r.at, r.ev, r.page, r.resumed, r.err, r.Err, r.early, r.dist = i, ev, e.deps.Canon.Canonical(ev.Page), false, nil, nil, false, nil
		r.idx, r.recorded, r.receipt = l.Vocab.Index(r.page), metas[i].Time, metas[i].Receipt
		r.User, r.Click = ev.UserID, newClick(l, r.idx, *ev, metas[i])
		w.live = append(w.live, r)
	}
	// Histories first: a BatchStore appends every click in one round trip,
	// a plain Store one by one.
	bs, batched := e.deps.Histories.(features.BatchStore)
	if batched {
		if fs, ok := bs.(features.Foresight); ok {
			e.warmEarly(ctx, l, fs, w, b)
		}
		bs.AppendMany(ctx, w.batchOf(w.live))
	}
	w.live = w.live[:0]
	for i := range rows {
		r := &rows[i]
		if !batched {
			r.Err = e.deps.Histories.Append(ctx, r.User, r.Click, &r.Rec)
		}
		var err error
		r.resumed, err = e.appended(r.Err, r.User, r.Click, r.page, prefetch.JudgeTime(r.ev.TS, r.recorded, time.Now(), r.receipt))
		if err == nil || errors.Is(err, errSettled) {
			// Applied in effect by this attempt (appended now, or found
			// applied by an earlier one and settled here): handed again
			// after a failure earlier in the run, it is settled, not a
			// duplicate.
			w.counted = append(w.counted, r.at)
		}
		if errors.Is(err, errSettled) {
			continue // applied by an attempt whose reply was lost: nothing left to do
		} else if err != nil {
			r.err = err
			if !batched && !features.Final(err) {
				rows = rows[:i+1] // the rest is not attempted
				break
			}
			continue
		}
		if r.Rec.Epoch != l.Tag {
			if r.err = e.remapRecord(ctx, r.User, l, r.idx, &r.Rec, b); r.err != nil {
				continue
			}
		}
		w.live = append(w.live, r)
	}
	e.learnWave(ctx, l, w.live, b)
	done := 0
	if l.Bundle == nil || !l.Bundle.HasStep() {
		// No step form (a BatchStore brought us here): each click is scored
		// on its history, as in HandleEvent; there is no state to save.
		for _, r := range w.live {
			if !e.settleEarly(r, r.early && slices.Equal(r.spec.Pages, r.Rec.Pages)) {
				b.hist = widen(b.hist, r.Rec.Pages)
				probs, err := e.predict(ctx, l, b.hist, b)
				if err != nil {
					r.err = modelError(ctx, err)
					continue
				}
				b.dist = r.dist
				e.prefetch(ctx, l, *r.ev, r.recorded, r.receipt, r.page, r.idx, len(r.Rec.Pages), probs, b)
			}
			if r.resumed {
				r.err = e.redelivered()
				continue
			}
			done++
		}
	} else {
		done = e.stepWave(ctx, l, w, b)
	}
	for i := range rows {
		if rows[i].early { // warmed early, then not applied
			rows[i].early = false
			e.m.early.WithLabelValues(earlyUnapplied).Inc()
		}
	}
	e.observeWave(start, done)
	failAt := len(evs)
	for _, r := range rows {
		if errs[r.at] = r.err; r.err != nil && !features.Final(r.err) {
			failAt = min(failAt, r.at)
		}
	}
	return failAt
}

// warmEarly predicts and warms, before the store's reply, the live clicks
// of w whose record fs foresees under the live vocabulary: the warm writes
// travel while the histories' round trip does, instead of after it.
// handleWave then compares each foreseen history with the one the store
// returned: the same, the click is done; another (a replica or a restart
// wrote the user meanwhile), it is predicted and warmed again on the stored
// one. The online statistics are read here as handleWave would read them.
func (e *Engine) warmEarly(ctx context.Context, l *lifecycle.Live, fs features.Foresight, w *wave, b *buffers) {
	w.early = w.early[:0]
	for _, r := range w.live {
		if fs.Foresee(r.User, r.Click, &r.spec) && r.spec.Epoch == l.Tag {
			w.early = append(w.early, r)
		}
	}
	if len(w.early) == 0 {
		return
	}
	// Read here, these statistics serve the click after the reply too.
	e.lookupRows(ctx, w.early, &b.earlyDists, b)
	if l.Bundle != nil && l.Bundle.HasStep() {
		e.stepEarly(ctx, l, w, b)
		return
	}
	for _, r := range w.early {
		b.hist = widen(b.hist, r.spec.Pages)
		probs, err := e.predict(ctx, l, b.hist, b)
		if err != nil {
			continue // predicted again, and reported, on the stored history
		}
		b.dist = r.dist
		e.prefetch(ctx, l, *r.ev, r.recorded, r.receipt, r.page, r.idx, len(r.spec.Pages), probs, b)
		r.early = true
	}
}

// stepEarly is warmEarly with the step form: each foreseen record's state
// before its click (stored or rebuilt), one StepMany for all, then each
// click is warmed and its new state kept in earlyState, for stepWave to
// save when the store's record is the one foreseen (sameRecord). The
// foreseen record's own state stays the state before, to compare.
func (e *Engine) stepEarly(ctx context.Context, l *lifecycle.Live, w *wave, b *buffers) {
	w.resetSteps()
	for _, r := range w.early {
		state, probs, err := e.stateBefore(ctx, l, &r.spec, r.probs)
		if r.probs = probs; err != nil {
			continue // stepped again, and reported, on the stored record
		}
		r.earlyState = append(r.earlyState[:0], state...)
		w.queueStep(r, &r.spec, r.earlyState)
	}
	e.stepScored(ctx, l, w, b, func(j int, r *waveRow, scores []float32, err error) {
		if err != nil {
			return // stepped again, and reported, on the stored record
		}
		r.earlyState = w.states[j]
		e.prefetch(ctx, l, *r.ev, r.recorded, r.receipt, r.page, r.idx, len(r.spec.Pages), scores, b)
		r.early = true
	})
}

// stepScored advances the states of w.scored by their clicks (w.ids,
// w.states, w.probs) in one StepMany, or click by click when that fails (so
// that one bad row does not fail the others) or the clustered path scores,
// and calls done for each row with its scores, its new state in
// w.states[j], or the error of its step.
func (e *Engine) stepScored(ctx context.Context, l *lifecycle.Live, w *wave, b *buffers, done func(j int, r *waveRow, scores []float32, err error)) {
	e.counter.predictions.Add(uint64(len(w.scored)))
	fast := e.fastScoring(l)
	together := !fast && l.Bundle.StepMany(ctx, w.ids, w.states, w.probs) == nil
	for j, r := range w.scored {
		b.dist = r.dist
		scores := w.probs[j]
		if !together {
			var err error
			if scores, w.states[j], err = e.stepOne(ctx, l, w.ids[j], w.states[j], w.probs[j], fast, b); err != nil {
				done(j, r, nil, err)
				continue
			}
		}
		if !fast {
			w.probs[j] = scores
		}
		r.probs = w.probs[j]
		done(j, r, scores, nil)
	}
}

// settleEarly settles r's early warm, if it had one, by the store's reply:
// same says it was made on the stored record. It counts the outcome and
// reports whether the click is done (warmed on the stored record).
func (e *Engine) settleEarly(r *waveRow, same bool) bool {
	if !r.early {
		return false
	}
	r.early = false
	if same {
		e.m.early.WithLabelValues(earlyConfirmed).Inc()
		return true
	}
	e.m.early.WithLabelValues(earlyCorrected).Inc()
	return false
}

// resetSteps empties the rows StepMany advances.
func (w *wave) resetSteps() {
	w.ids, w.states, w.probs, w.scored = w.ids[:0], w.states[:0], w.probs[:0], w.scored[:0]
}

// queueStep adds r to the rows StepMany advances: the last page of rec (its
// click) from state, the scores into r.probs.
func (w *wave) queueStep(r *waveRow, rec *features.Record, state []float32) {
	w.scored = append(w.scored, r)
	w.ids = append(w.ids, int64(rec.Pages[len(rec.Pages)-1]))
	w.states = append(w.states, state)
	w.probs = append(w.probs, r.probs)
}

// sameRecord reports whether the store's record after a click is the one
// foreseen for it: the same history, sequence numbers and state before the
// click.
func sameRecord(foreseen, stored *features.Record) bool {
	return foreseen.Seq == stored.Seq && foreseen.StateSeq == stored.StateSeq &&
		slices.Equal(foreseen.Pages, stored.Pages) && slices.Equal(foreseen.State, stored.State)
}

// stepWave finishes the live rows of w with the step form: each row's state
// before its click (stored or rebuilt), one StepMany for all, then each
// click is prefetched and its state saved, stamped with the click. It
// returns the rows finished.
func (e *Engine) stepWave(ctx context.Context, l *lifecycle.Live, w *wave, b *buffers) int {
	w.resetSteps()
	w.ready = w.ready[:0]
	for _, r := range w.live {
		if e.settleEarly(r, r.early && sameRecord(&r.spec, &r.Rec)) {
			// Stepped and warmed early on this very record.
			r.Rec.State, r.Rec.StateSeq = append(r.Rec.State[:0], r.earlyState...), r.Rec.Seq
			w.ready = append(w.ready, r)
			continue
		}
		state, probs, err := e.stateBefore(ctx, l, &r.Rec, r.probs)
		if r.probs = probs; err != nil {
			r.err = err
			continue
		}
		w.queueStep(r, &r.Rec, state)
	}
	// Prefetch before saving: a settled click has been handed to the warmer.
	w.live = w.live[:0]
	e.stepScored(ctx, l, w, b, func(j int, r *waveRow, scores []float32, err error) {
		if err != nil {
			r.err = modelError(ctx, fmt.Errorf("step with %s: %w", l.Version, err))
			return
		}
		r.Rec.State, r.Rec.StateSeq = w.states[j], r.Rec.Seq
		e.prefetch(ctx, l, *r.ev, r.recorded, r.receipt, r.page, r.idx, len(r.Rec.Pages), scores, b)
		w.live = append(w.live, r)
	})
	w.live = append(w.live, w.ready...)
	if bs, batched := e.deps.Histories.(features.BatchStore); batched && len(w.live) > 0 {
		bs.SaveMany(ctx, w.batchOf(w.live))
	} else if !batched {
		for _, r := range w.live {
			r.Err = e.deps.Histories.Save(ctx, r.User, &r.Rec)
		}
	}
	done := 0
	for _, r := range w.live {
		if err := saved(r.Err); err != nil {
			e.unanswered.put(r.User, r.Click, true)
			r.err = fmt.Errorf("save state: %w", err)
			continue
		}
		done++
	}
	return done
}

// saved is the error of a Save: none when the record had moved on
// (features.ErrStale: another writer appended a later click, whose state
// supersedes this one).
func saved(err error) error {
	if errors.Is(err, features.ErrStale) {
		return nil
	}
	return err
}

// observeWave records the wave's time per applied click in the event
// latency histogram, once per click (two clock reads per wave, not per
// click).
func (e *Engine) observeWave(start time.Time, clicks int) {
	if clicks == 0 {
		return
	}
	per := (time.Since(start) / time.Duration(clicks)).Seconds()
	for range clicks {
		e.m.handle.Observe(per)
	}
}

// remapRecord translates a history written under an earlier model into the
// live vocabulary through page keys, drops the old recurrent state (it is
// recomputed from the history), and saves the record. The newest page is
// set to idx, the click's page under l: a resumed click may have been
// appended under an earlier model.
func (e *Engine) remapRecord(ctx context.Context, user string, l *lifecycle.Live, idx int64, rec *features.Record, b *buffers) error {
	old := e.vocabOf(rec.Epoch)
	n := len(rec.Pages)
	switch {
	case n == 0:
	case old == nil:
		// The old vocabulary is unknown here (another replica's model, one
		// served before a restart, or one swapped out long ago): keep the
		// newest click only, which was encoded with the live vocabulary.
		rec.Pages = append(rec.Pages[:0], int32(idx))
		e.m.unknownVocab.Inc()
	default:
		b.hist = widen(b.hist, rec.Pages[:n-1])
		b.remap = lifecycle.Remap(b.remap, b.hist, old, l.Vocab)
		for i, x := range b.remap {
			rec.Pages[i] = int32(x)
		}
		e.keepName(user, old, b.hist, b.remap)
		rec.Pages[n-1] = int32(idx)
		e.m.remapped.Inc() // translated; a history cut to its newest click is vocab_unknown
	}
	rec.State = rec.State[:0]
	rec.Epoch = l.Tag
	if err := saved(e.deps.Histories.Save(ctx, user, rec)); err != nil {
		return fmt.Errorf("save remapped history: %w", err)
	}
	return nil
}

// keepName remembers, as the user's latest page outside the vocabulary,
// the name of the newest page of a history (hist, encoded with old) that
// the live vocabulary does not hold (remapped to <unk>): a swap must not
// lose the page the user is on for the online statistics, which know pages
// by name.
func (e *Engine) keepName(user string, old *model.Vocab, hist, remapped []int64) {
	n := len(hist)
	if n == 0 || len(remapped) != n || remapped[n-1] != model.UnknownIndex || hist[n-1] <= model.UnknownIndex {
		return
	}
	if name := old.Page(hist[n-1]); name != "" {
		e.newPages.set(user, name, true)
	}
}

func (e *Engine) predict(ctx context.Context, l *lifecycle.Live, hist []int64, b *buffers) ([]float32, error) {
	e.counter.predictions.Add(1)
	if l.Bundle != nil {
		probs, err := l.Bundle.PredictOne(ctx, hist, b.probs)
		b.probs = probs
		if err != nil {
			return nil, fmt.Errorf("predict with %s: %w", l.Version, err)
		}
		return probs, nil
	}
	out, err := l.Model.Predict(ctx, [][]int64{hist})
	if err != nil {
		return nil, fmt.Errorf("predict with %s: %w", l.Version, err)
	}
	return out[0], nil
}

func widen(dst []int64, src []int32) []int64 {
	dst = dst[:0]
	for _, x := range src {
		dst = append(dst, int64(x))
	}
	return dst
}

// Predict answers a hint query from the user's history or from the explicit
// pages. An unknown user gets no hints and no error. It returns
// hint.ErrNoModel before a model is loaded.
func (e *Engine) Predict(ctx context.Context, q hint.Query) (hint.Result, error) {
	return e.predictQuery(ctx, q, true)
}

// PredictUncounted is Predict for the service's own use (the hints that
// WatchHints sends to watchers of every user): it is not counted as a
// request of the model version, nor in the engine's predict latency.
func (e *Engine) PredictUncounted(ctx context.Context, q hint.Query) (hint.Result, error) {
	return e.predictQuery(ctx, q, false)
}

func (e *Engine) predictQuery(ctx context.Context, q hint.Query, count bool) (hint.Result, error) {
	start := time.Now()
	l, err := e.live()
	if err != nil {
		return hint.Result{}, err
	}
	b := e.scratch.Get().(*buffers)
	defer e.scratch.Put(b)

	b.hist = b.hist[:0]
	if len(q.Pages) > 0 {
		for _, p := range q.Pages {
			b.hist = append(b.hist, l.Vocab.Index(e.deps.Canon.Canonical(p)))
		}
	} else {
		ok, err := e.deps.Histories.Load(ctx, q.UserID, &b.rec)
		if err != nil {
			return hint.Result{}, err // the store names the user
		}
		if !ok || len(b.rec.Pages) == 0 {
			// An answer too (no hints): counted like any other.
			if count {
				e.deps.Models.RecordRequest(l.Version, time.Since(start))
			}
			return hint.Result{ModelVersion: l.Version}, nil
		}
		b.hist = widen(b.hist, b.rec.Pages)
		if b.rec.Epoch != l.Tag {
			old := e.vocabOf(b.rec.Epoch)
			if old == nil {
				// Written under a model whose vocabulary this engine does
				// not know (another replica's, or before a restart): its
				// indices name unknown pages. Like an unknown user: no
				// hints; the user's next click starts the history again.
				e.m.unknownVocab.Inc()
				if count {
					e.deps.Models.RecordRequest(l.Version, time.Since(start))
				}
				return hint.Result{ModelVersion: l.Version}, nil
			}
			b.remap = lifecycle.Remap(b.remap, b.hist, old, l.Vocab)
			e.keepName(q.UserID, old, b.hist, b.remap)
			b.hist, b.remap = b.remap, b.hist
		}
	}
	current := b.hist[len(b.hist)-1]
	page := e.lookupQuery(ctx, l, q, current, b)
	var probs []float32
	if e.fastScoring(l) {
		probs, err = e.predictFast(ctx, l, b.hist, q.K, q.Threshold, b)
	} else {
		probs, err = e.predict(ctx, l, b.hist, b)
	}
	if err != nil {
		return hint.Result{}, err
	}
	b.cands = e.choose(l, probs, current, page, q.K, q.Threshold, b)
	res := hint.Result{ModelVersion: l.Version, Hints: make([]hint.Hint, len(b.cands))}
	pages := make([]string, len(b.cands))
	for i, c := range b.cands {
		pages[i] = b.page(l, c.Index)
	}
	// Warm means in the cache now: one round trip, the same answer from
	// every replica sharing the cache.
	warm := e.deps.Warmer.Present(ctx, q.UserID, pages, nil)
	for i, c := range b.cands {
		res.Hints[i] = hint.Hint{Page: pages[i], Probability: c.Probability, Warm: warm[i]}
	}
	if count {
		d := time.Since(start)
		e.deps.Models.RecordRequest(l.Version, d)
		e.m.predict.Observe(d.Seconds())
	}
	return res, nil
}
