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
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
)

// Models yields the live model; *lifecycle.Manager implements it.
type Models interface {
	// Current is the model serving now, or nil before the first load.
	Current() *lifecycle.Live
	// RecordRequest counts a hint request served by version.
	RecordRequest(version string, latency time.Duration)
}

// Warmer takes prefetch requests without blocking and says which pages are
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

// Deps are the engine's collaborators. All are required.
type Deps struct {
	Models    Models
	Histories features.Store
	Canon     *features.Canonicalizer
	Policy    *prefetch.Policy
	Warmer    Warmer
	Evaluator Evaluator
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

	// vocabs remembers the vocabulary of recent model epochs, so histories
	// written under an earlier model are remapped through page keys.
	vocabMu sync.Mutex
	vocabs  map[uint32]*model.Vocab // guarded by vocabMu
	// seenEpoch is the newest epoch already in vocabs: live skips the lock
	// while the model does not change.
	seenEpoch atomic.Uint32

	policyCache atomic.Pointer[policyForEpoch]

	sample atomic.Pointer[Sample]

	subsMu  sync.RWMutex
	subs    map[string]map[*subscriber]struct{} // guarded by subsMu
	nsubs   atomic.Int64
	counter stats
}

type policyForEpoch struct {
	epoch  uint32
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
}

// LastSample returns a recent click (one in 256 is sampled), or nil.
func (e *Engine) LastSample() *Sample { return e.sample.Load() }

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

// live returns the current model and remembers its vocabulary by epoch.
func (e *Engine) live() (*lifecycle.Live, error) {
	l := e.deps.Models.Current()
	if l == nil {
		return nil, hint.ErrNoModel
	}
	if e.seenEpoch.Load() == l.Epoch && l.Epoch != 0 {
		return l, nil
	}
	e.vocabMu.Lock()
	if _, ok := e.vocabs[l.Epoch]; !ok {
		e.vocabs[l.Epoch] = l.Vocab
		// Keep a bounded set: drop epochs far behind the live one.
		for ep := range e.vocabs {
			if l.Epoch-ep > 16 {
				delete(e.vocabs, ep)
			}
		}
	}
	e.seenEpoch.Store(l.Epoch)
	e.vocabMu.Unlock()
	return l, nil
}

func (e *Engine) vocabOf(epoch uint32) *model.Vocab {
	e.vocabMu.Lock()
	defer e.vocabMu.Unlock()
	return e.vocabs[epoch]
}

// policyFor returns the policy bound to the live model's vocabulary (cost
// weights are keyed by page).
func (e *Engine) policyFor(l *lifecycle.Live) *prefetch.Policy {
	if p := e.policyCache.Load(); p != nil && p.epoch == l.Epoch {
		return p.policy
	}
	p := &policyForEpoch{epoch: l.Epoch, policy: e.deps.Policy.ForVocab(l.Vocab)}
	e.policyCache.Store(p)
	return p.policy
}

// HandleEvent applies one click: history, prediction, prefetch, evaluation
// and watchers. It returns an error wrapping features.ErrDuplicate for a
// redelivered click (not applied twice), hint.ErrNoModel before a model is
// loaded, and ctx.Err() when ctx ends.
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
	click := features.Click{Page: int32(idx), TS: ev.TS, Epoch: l.Epoch, Partition: meta.Partition, Offset: meta.Offset}
	if err := e.deps.Histories.Append(ctx, ev.UserID, click, &b.rec); err != nil {
		if errors.Is(err, features.ErrDuplicate) {
			e.counter.duplicates.Add(1)
		}
		return fmt.Errorf("append click: %w", err)
	}
	// The click counts for the evaluation once it is applied, so a
	// redelivery does not count it twice.
	e.deps.Evaluator.ObserveClick(ev.UserID, page, ev.TS)
	e.counter.events.Add(1)

	if b.rec.Epoch != l.Epoch {
		if err := e.remapRecord(ctx, ev.UserID, l, &b.rec, b); err != nil {
			return err
		}
	}
	var probs []float32
	var err error
	if l.Bundle != nil && l.Bundle.HasStep() {
		probs, err = e.step(ctx, ev.UserID, l, &b.rec, b)
	} else {
		b.hist = widen(b.hist, b.rec.Pages)
		probs, err = e.predict(ctx, l, b.hist, b)
	}
	if err != nil {
		return err
	}
	e.prefetch(ctx, l, ev, page, idx, len(b.rec.Pages), probs, b)
	e.m.handle.Observe(time.Since(start).Seconds())
	return nil
}

// prefetch is the end of a click, once scored: policy, warming, watchers and
// the progress sample. histLen is the user's history length.
func (e *Engine) prefetch(ctx context.Context, l *lifecycle.Live, ev features.Event, page string, idx int64, histLen int, probs []float32, b *buffers) {
	b.cands = e.policyFor(l).Select(probs, idx, 0, -1, b.cands)
	if len(b.cands) > 0 {
		b.pages = b.pages[:0]
		for _, c := range b.cands {
			b.pages = append(b.pages, prefetch.Page{Key: l.Vocab.Page(c.Index), Probability: c.Probability})
		}
		n := e.deps.Warmer.Warm(ctx, prefetch.Request{UserID: ev.UserID, Pages: b.pages, ModelVersion: l.Version, At: ev.TS})
		e.counter.prefetches.Add(uint64(n))
	}
	if e.nsubs.Load() > 0 {
		e.publish(ev.UserID, l, b.cands, ev.TS)
	}
	if n := e.counter.events.Load(); n%256 == 1 || (len(b.cands) > 0 && e.sample.Load() == nil) {
		s := &Sample{UserID: ev.UserID, Page: page, History: histLen, ModelVersion: l.Version}
		for _, c := range b.cands {
			s.Hints = append(s.Hints, hint.Hint{Page: l.Vocab.Page(c.Index), Probability: c.Probability})
		}
		e.sample.Store(s)
	}
}

// wave is the working memory of HandleEvents: one row per click of a run
// of clicks by distinct users.
type wave struct {
	seen   map[string]int // clicks per user so far in the run
	recs   []features.Record
	pages  []string
	idx    []int64
	ids    []int64
	states [][]float32
	probs  [][]float32 // by row
	probs2 [][]float32 // by scored row, as ids and states
	users  []string
	clicks []features.Click
	errs   []error
	// ok, rows and saved are row numbers: appended, to score, scored.
	ok, rows, saved []int
	saveUsers       []string
	saveRecs        []*features.Record
	// Cutting a run into waves: each click's wave, the run indices of the
	// wave at hand, and its clicks gathered.
	layer, in []int
	wevs      []features.Event
	wmetas    []features.Meta
	werrs     []error
}

func (w *wave) grow(n int) {
	for len(w.recs) < n {
		w.recs = append(w.recs, features.Record{})
		w.probs = append(w.probs, nil)
	}
	w.pages = append(w.pages[:0], make([]string, n)...)
	w.idx = append(w.idx[:0], make([]int64, n)...)
	w.users = append(w.users[:0], make([]string, n)...)
	w.clicks = append(w.clicks[:0], make([]features.Click, n)...)
	w.errs = append(w.errs[:0], make([]error, n)...)
}

// HandleEvents applies a run of clicks with the effect of HandleEvent on
// each, every user's clicks in order (features.BatchHandler): errs[i] gets
// click i's outcome, nil or a duplicate, and it returns the index of the
// first click that failed otherwise (its error in errs), or len(evs); every
// click before that index is settled. With a step-form model or a
// features.BatchStore (Redis) the run is cut into waves of distinct users,
// a user's k-th click of the run in wave k: a wave's clicks share one run
// of the step form (model.Bundle.StepMany), which costs much less per click
// than one run each, and a BatchStore appends a wave's histories in one
// round trip (and saves their states in another). Clicks of different
// users may therefore be applied in another order than the run's.
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
	if len(evs) == 1 || !batchStore && (l.Bundle == nil || !l.Bundle.HasStep()) {
		for i := range evs {
			errs[i] = e.handleOne(ctx, l, evs[i], metas[i], b)
			if errs[i] != nil && !errors.Is(errs[i], features.ErrDuplicate) {
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
		if len(w.in) == 0 {
			continue
		}
		w.wevs, w.wmetas = w.wevs[:0], w.wmetas[:0]
		for _, i := range w.in {
			w.wevs = append(w.wevs, evs[i])
			w.wmetas = append(w.wmetas, metas[i])
		}
		w.werrs = append(w.werrs[:0], make([]error, len(w.in))...)
		f := e.handleWave(ctx, l, w.wevs, w.wmetas, w.werrs, w, b)
		for j, i := range w.in {
			errs[i] = w.werrs[j]
		}
		if f < len(w.in) {
			failAt = min(failAt, w.in[f])
		}
	}
	return failAt
}

// handleWave applies clicks of distinct users: every click extends its
// history, one StepMany scores them all, then each is saved and prefetched.
// It fills errs like HandleEvents and returns the first failing row. Appends
// to a plain Store run in order and a failure other than a duplicate ends
// the wave there. A later failure (rebuilding a state, scoring, saving)
// concerns one user: the other clicks are still finished, and the first
// failing row is reported; handed again, the finished clicks after it are
// duplicates.
func (e *Engine) handleWave(ctx context.Context, l *lifecycle.Live, evs []features.Event, metas []features.Meta, errs []error, w *wave, b *buffers) int {
	start := time.Now()
	w.grow(len(evs))
	n := len(evs) // rows attempted
	failAt := n
	fail := func(i int, err error) {
		errs[i] = err
		failAt = min(failAt, i)
	}
	for i := range evs {
		ev, meta := &evs[i], &metas[i]
		w.pages[i] = e.deps.Canon.Canonical(ev.Page)
		w.idx[i] = l.Vocab.Index(w.pages[i])
		w.users[i] = ev.UserID
		w.clicks[i] = features.Click{Page: int32(w.idx[i]), TS: ev.TS, Epoch: l.Epoch, Partition: meta.Partition, Offset: meta.Offset}
	}
	// Histories first: a BatchStore appends every click in one round trip,
	// a plain Store one by one.
	bs, batched := e.deps.Histories.(features.BatchStore)
	if batched {
		bs.AppendMany(ctx, w.users[:n], w.clicks[:n], w.recs[:n], w.errs[:n])
	}
	w.ok = w.ok[:0]
	for i := 0; i < n; i++ {
		ev, rec := &evs[i], &w.recs[i]
		var err error
		if batched {
			err = w.errs[i]
		} else {
			err = e.deps.Histories.Append(ctx, ev.UserID, w.clicks[i], rec)
		}
		switch {
		case errors.Is(err, features.ErrDuplicate):
			e.counter.duplicates.Add(1)
			errs[i] = fmt.Errorf("append click: %w", err)
			continue
		case err != nil:
			fail(i, fmt.Errorf("append click: %w", err))
			if !batched {
				n = i // the rest is not attempted
			}
			continue
		}
		e.deps.Evaluator.ObserveClick(ev.UserID, w.pages[i], ev.TS)
		e.counter.events.Add(1)
		if rec.Epoch != l.Epoch {
			if err := e.remapRecord(ctx, ev.UserID, l, rec, b); err != nil {
				fail(i, err)
				continue
			}
		}
		w.ok = append(w.ok, i)
	}
	if l.Bundle == nil || !l.Bundle.HasStep() {
		// No step form (a BatchStore brought us here): each click is scored
		// on its history, as in HandleEvent; there is no state to save.
		done := 0
		for _, i := range w.ok {
			b.hist = widen(b.hist, w.recs[i].Pages)
			probs, err := e.predict(ctx, l, b.hist, b)
			if err != nil {
				fail(i, err)
				continue
			}
			e.prefetch(ctx, l, evs[i], w.pages[i], w.idx[i], len(w.recs[i].Pages), probs, b)
			done++
		}
		e.observeWave(start, done)
		return failAt
	}
	// States: a missing or stale one is rebuilt from the history first, as
	// in step. Then the rows are scored together, compacted.
	w.ids, w.states, w.probs2, w.rows = w.ids[:0], w.states[:0], w.probs2[:0], w.rows[:0]
	for _, i := range w.ok {
		rec := &w.recs[i]
		state := rec.State
		if len(state) != l.Bundle.StateSize() {
			state = state[:0]
			e.m.stateRebuilt.Inc()
			var err error
			for _, p := range rec.Pages[:len(rec.Pages)-1] {
				if w.probs[i], state, err = l.Bundle.Step(ctx, int64(p), state, w.probs[i]); err != nil {
					break
				}
			}
			if err != nil {
				fail(i, fmt.Errorf("rebuild state with %s: %w", l.Version, err))
				continue
			}
		}
		w.rows = append(w.rows, i)
		w.ids = append(w.ids, int64(rec.Pages[len(rec.Pages)-1]))
		w.states = append(w.states, state)
		w.probs2 = append(w.probs2, w.probs[i])
	}
	e.counter.predictions.Add(uint64(len(w.rows)))
	together := l.Bundle.StepMany(ctx, w.ids, w.states, w.probs2) == nil
	w.saved = w.saved[:0]
	for j, i := range w.rows {
		if !together {
			// StepMany failed: each click alone, as step does, so that one
			// bad row does not fail the others.
			var err error
			if w.probs2[j], w.states[j], err = l.Bundle.Step(ctx, w.ids[j], w.states[j], w.probs2[j]); err != nil {
				fail(i, fmt.Errorf("step with %s: %w", l.Version, err))
				continue
			}
		}
		w.probs[i] = w.probs2[j]
		w.recs[i].State = w.states[j]
		w.saved = append(w.saved, i)
	}
	if batched && len(w.saved) > 0 {
		w.saveUsers, w.saveRecs = w.saveUsers[:0], w.saveRecs[:0]
		for _, i := range w.saved {
			w.saveUsers = append(w.saveUsers, w.users[i])
			w.saveRecs = append(w.saveRecs, &w.recs[i])
		}
		bs.SaveMany(ctx, w.saveUsers, w.saveRecs, w.errs[:len(w.saved)])
	}
	done := 0
	for j, i := range w.saved {
		var err error
		if batched {
			err = w.errs[j]
		} else {
			err = e.deps.Histories.Save(ctx, evs[i].UserID, &w.recs[i])
		}
		if err != nil {
			fail(i, fmt.Errorf("save state: %w", err))
			continue
		}
		e.prefetch(ctx, l, evs[i], w.pages[i], w.idx[i], len(w.recs[i].Pages), w.probs[i], b)
		done++
	}
	e.observeWave(start, done)
	return failAt
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
// recomputed from the history), and saves the record.
func (e *Engine) remapRecord(ctx context.Context, user string, l *lifecycle.Live, rec *features.Record, b *buffers) error {
	old := e.vocabOf(rec.Epoch)
	n := len(rec.Pages)
	switch {
	case n == 0:
	case old == nil:
		// The old vocabulary is gone: keep the newest click only, which was
		// encoded with the live vocabulary.
		rec.Pages = append(rec.Pages[:0], rec.Pages[n-1])
	default:
		b.hist = widen(b.hist, rec.Pages[:n-1])
		b.remap = lifecycle.Remap(b.remap, b.hist, old, l.Vocab)
		for i, x := range b.remap {
			rec.Pages[i] = int32(x)
		}
	}
	rec.State = rec.State[:0]
	rec.Epoch = l.Epoch
	e.m.remapped.Inc()
	if err := e.deps.Histories.Save(ctx, user, rec); err != nil {
		return fmt.Errorf("save remapped history: %w", err)
	}
	return nil
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

// step scores a click with the model's step form: the user's recurrent state
// advances by the new page only. A missing or stale state (new session, new
// model: Remap clears it) is recomputed from the history first, so a state
// made by one model is never fed to another. The state then covers the whole
// session, while the sequence form sees its last MaxSeqLen pages.
func (e *Engine) step(ctx context.Context, user string, l *lifecycle.Live, rec *features.Record, b *buffers) ([]float32, error) {
	e.counter.predictions.Add(1)
	pages := rec.Pages
	state := rec.State
	if len(state) != l.Bundle.StateSize() {
		state = state[:0]
		e.m.stateRebuilt.Inc()
		for _, p := range pages[:len(pages)-1] {
			var err error
			if b.probs, state, err = l.Bundle.Step(ctx, int64(p), state, b.probs); err != nil {
				return nil, fmt.Errorf("rebuild state with %s: %w", l.Version, err)
			}
		}
	}
	probs, state, err := l.Bundle.Step(ctx, int64(pages[len(pages)-1]), state, b.probs)
	b.probs = probs
	if err != nil {
		return nil, fmt.Errorf("step with %s: %w", l.Version, err)
	}
	rec.State = state
	if err := e.deps.Histories.Save(ctx, user, rec); err != nil {
		return nil, fmt.Errorf("save state: %w", err)
	}
	return probs, nil
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
			return hint.Result{}, fmt.Errorf("load history of %s: %w", q.UserID, err)
		}
		if !ok || len(b.rec.Pages) == 0 {
			return hint.Result{ModelVersion: l.Version}, nil
		}
		b.hist = widen(b.hist, b.rec.Pages)
		if b.rec.Epoch != l.Epoch {
			if old := e.vocabOf(b.rec.Epoch); old != nil {
				b.remap = lifecycle.Remap(b.remap, b.hist, old, l.Vocab)
				b.hist, b.remap = b.remap, b.hist
			} else {
				b.hist = b.hist[len(b.hist)-1:]
			}
		}
	}
	probs, err := e.predict(ctx, l, b.hist, b)
	if err != nil {
		return hint.Result{}, err
	}
	current := b.hist[len(b.hist)-1]
	b.cands = e.policyFor(l).Select(probs, current, q.K, q.Threshold, b.cands)
	res := hint.Result{ModelVersion: l.Version, Hints: make([]hint.Hint, len(b.cands))}
	pages := make([]string, len(b.cands))
	for i, c := range b.cands {
		pages[i] = l.Vocab.Page(c.Index)
	}
	// Warm means in the cache now: one round trip, the same answer from
	// every replica sharing the cache.
	warm := e.deps.Warmer.Present(ctx, q.UserID, pages, nil)
	for i, c := range b.cands {
		res.Hints[i] = hint.Hint{Page: pages[i], Probability: c.Probability, Warm: warm[i]}
	}
	d := time.Since(start)
	e.deps.Models.RecordRequest(l.Version, d)
	e.m.predict.Observe(d.Seconds())
	return res, nil
}
