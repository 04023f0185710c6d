package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
)

// TestStepFormMatchesSequenceForm feeds clicks through a PyTorch-exported GRU
// with a step form: the engine advances each user's recurrent state one click
// at a time, and its scores must equal the sequence form on the whole history,
// also right after a model swap, when the state is rebuilt from the history.
func TestStepFormMatchesSequenceForm(t *testing.T) {
	bundle, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
	if err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	if !bundle.HasStep() {
		t.Fatal("fixture has no step form")
	}
	src := &models{}
	setLive := func(epoch uint32) {
		src.mu.Lock()
		src.live = &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Tag: epoch}
		src.mu.Unlock()
	}
	setLive(1)
	hist, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 1e-9})
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	w := &probWarmer{}
	e, err := New(Config{}, Deps{Models: src, Histories: hist, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	v := bundle.Vocab()
	clicks := []int64{17, 42, 5, 99, 17, 3}
	var seq []int64
	for i, c := range clicks {
		if i == 3 {
			setLive(2) // a swap: the stored state is stale and must be rebuilt
		}
		seq = append(seq, c)
		ev := features.Event{UserID: "u", Page: v.Page(c), TS: time.Now()}
		if err := e.HandleEvent(ctx, ev, features.Meta{Offset: int64(i)}); err != nil {
			t.Fatalf("click %d: %v", i, err)
		}
		want, err := bundle.PredictOne(ctx, seq, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := w.last
		if len(got) == 0 {
			t.Fatalf("click %d: nothing warmed", i)
		}
		for _, p := range got {
			idx := v.Index(p.Key)
			if d := math.Abs(float64(p.Probability - want[idx])); d > 1e-5 {
				t.Fatalf("click %d page %s: step-form probability %v, sequence form %v", i, p.Key, p.Probability, want[idx])
			}
		}
	}
}

type probWarmer struct{ last []prefetch.Page }

func (w *probWarmer) Warm(_ context.Context, r prefetch.Request) int {
	w.last = append(w.last[:0], r.Pages...)
	return len(r.Pages)
}

func (*probWarmer) Present(_ context.Context, _ string, pages []string, dst []bool) []bool {
	return absent(pages, dst)
}

// allWarmer records every prefetch request.
type allWarmer struct{ reqs []prefetch.Request }

func (w *allWarmer) Warm(_ context.Context, r prefetch.Request) int {
	r.Pages = append([]prefetch.Page(nil), r.Pages...)
	w.reqs = append(w.reqs, r)
	return len(r.Pages)
}

func (*allWarmer) Present(_ context.Context, _ string, pages []string, dst []bool) []bool {
	return absent(pages, dst)
}

// TestHandleEventsMatchesHandleEvent applies the same clicks (users
// interleaved, a user twice in a row, a redelivered click, a model swap)
// through HandleEvents in runs and through HandleEvent one by one on a
// second engine: histories, recurrent states and prefetch requests must
// agree, and HandleEvents must report the redelivered click as a duplicate
// and go on. It runs on the in-memory store and on a RedisStore (a
// features.BatchStore: a wave's appends and saves in one round trip) on a
// real redis-server.
func TestHandleEventsMatchesHandleEvent(t *testing.T) {
	gru, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
	if err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	markov, err := model.LoadBundle("../../features/testdata/markov1")
	if err != nil || markov.HasStep() {
		t.Fatalf("load the Markov model: %v (step form %t)", err, markov != nil && markov.HasStep())
	}
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	for _, tc := range []struct {
		name   string
		bundle *model.Bundle
		redis  bool
	}{
		{"gru/memory", gru, false},
		{"gru/redis", gru, true},
		{"markov/redis", markov, true}, // waves for the store's sake only
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.redis {
				handleEventsMatch(t, tc.bundle, func(string) features.Store {
					h, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
					return h
				})
				return
			}
			var counted *countingStore
			handleEventsMatch(t, tc.bundle, func(prefix string) features.Store {
				s, err := features.NewRedisStore(features.StoreConfig{Backend: features.BackendRedis, KeyPrefix: tc.name + prefix,
					History: features.HistoryConfig{MaxLen: 20}}, client, nil)
				if err != nil {
					t.Fatal(err)
				}
				if prefix == "many:" {
					counted = &countingStore{RedisStore: s}
					return counted
				}
				return s
			})
			if counted.appends == 0 || (tc.bundle.HasStep() && counted.saves == 0) {
				t.Fatalf("AppendMany called %d times, SaveMany %d: the batch store path was not taken", counted.appends, counted.saves)
			}
		})
	}
}

// countingStore counts the batch calls made to a RedisStore.
type countingStore struct {
	*features.RedisStore
	appends, saves int
}

func (c *countingStore) AppendMany(ctx context.Context, rows []*features.BatchRow) {
	c.appends++
	c.RedisStore.AppendMany(ctx, rows)
}

func (c *countingStore) SaveMany(ctx context.Context, rows []*features.BatchRow) {
	c.saves++
	c.RedisStore.SaveMany(ctx, rows)
}

func handleEventsMatch(t *testing.T, bundle *model.Bundle, newStore func(prefix string) features.Store) {
	type side struct {
		e    *Engine
		hist features.Store
		w    *allWarmer
		src  *models
	}
	mk := func(prefix string) side {
		src := &models{live: &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Tag: 1}}
		hist := newStore(prefix)
		canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
		policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 1e-9})
		eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
		w := &allWarmer{}
		e, err := New(Config{}, Deps{Models: src, Histories: hist, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return side{e: e, hist: hist, w: w, src: src}
	}
	one, many := mk("one:"), mk("many:")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := bundle.Vocab()
	at := time.Now().Add(-time.Hour)
	var evs []features.Event
	var metas []features.Meta
	users := []string{"a", "b", "c", "a", "a", "d", "b", "c", "e", "a", "d", "b"}
	for i, u := range users {
		evs = append(evs, features.Event{UserID: u, Page: v.Page(int64(2 + (i*13)%(v.Len()-2))), TS: at.Add(time.Duration(i) * time.Second)})
		metas = append(metas, features.Meta{Partition: 0, Offset: int64(i)})
	}
	for i := range evs {
		if err := one.e.HandleEvent(ctx, evs[i], metas[i]); err != nil {
			t.Fatalf("HandleEvent %d: %v", i, err)
		}
	}
	errs := make([]error, len(evs))
	if n := many.e.HandleEvents(ctx, evs[:7], metas[:7], errs); n != 7 || errors.Join(errs...) != nil {
		t.Fatalf("HandleEvents(first 7) = %d, %v", n, errs)
	}
	// A run that begins with a redelivery of click 6: a duplicate, then the rest.
	clear(errs)
	if n := many.e.HandleEvents(ctx, evs[6:], metas[6:], errs); n != len(evs)-6 || !errors.Is(errs[0], features.ErrDuplicate) || errors.Join(errs[1:]...) != nil {
		t.Fatalf("HandleEvents(redelivery first) = %d, %v; want all, a duplicate first", n, errs)
	}
	for _, u := range []string{"a", "b", "c", "d", "e"} {
		var r1, r2 features.Record
		ok1, err1 := one.hist.Load(ctx, u, &r1)
		ok2, err2 := many.hist.Load(ctx, u, &r2)
		if !ok1 || !ok2 || err1 != nil || err2 != nil {
			t.Fatalf("user %s: Get %t %v / %t %v", u, ok1, err1, ok2, err2)
		}
		if fmt.Sprint(r1.Pages) != fmt.Sprint(r2.Pages) {
			t.Fatalf("user %s: history %v one by one, %v in runs", u, r1.Pages, r2.Pages)
		}
		if len(r1.State) != bundle.StateSize() || len(r2.State) != len(r1.State) {
			t.Fatalf("user %s: state lengths %d and %d", u, len(r1.State), len(r2.State))
		}
		for i := range r1.State {
			if d := math.Abs(float64(r1.State[i] - r2.State[i])); d > 1e-5 {
				t.Fatalf("user %s: states differ by %g at %d", u, d, i)
			}
		}
	}
	manyReqs := many.w.reqs
	if !bundle.HasStep() {
		// Without a step form the redelivered click, the user's latest, is
		// prefetched again: drop that repeat of the user's previous request.
		manyReqs = nil
		prev := map[string]time.Time{}
		for _, r := range many.w.reqs {
			if at, ok := prev[r.UserID]; ok && at.Equal(r.At) {
				continue
			}
			prev[r.UserID] = r.At
			manyReqs = append(manyReqs, r)
		}
		if len(manyReqs) != len(many.w.reqs)-1 {
			t.Fatalf("%d prefetch requests in runs, %d without repeats; want the redelivered click prefetched again once", len(many.w.reqs), len(manyReqs))
		}
	}
	if len(one.w.reqs) != len(evs) || len(manyReqs) != len(one.w.reqs) {
		t.Fatalf("%d prefetch requests one by one, %d in runs, %d clicks", len(one.w.reqs), len(manyReqs), len(evs))
	}
	// Runs may interleave users differently; each user's requests come in
	// the order of its clicks.
	byUser := func(reqs []prefetch.Request) map[string][]prefetch.Request {
		m := map[string][]prefetch.Request{}
		for _, r := range reqs {
			m[r.UserID] = append(m[r.UserID], r)
		}
		return m
	}
	u1, u2 := byUser(one.w.reqs), byUser(manyReqs)
	for u, rs1 := range u1 {
		rs2 := u2[u]
		if len(rs1) != len(rs2) {
			t.Fatalf("user %s: %d requests one by one, %d in runs", u, len(rs1), len(rs2))
		}
		for i, r1 := range rs1 {
			r2 := rs2[i]
			if len(r1.Pages) != len(r2.Pages) || !r1.At.Equal(r2.At) {
				t.Fatalf("user %s request %d: %d pages at %v one by one, %d at %v in runs", u, i, len(r1.Pages), r1.At, len(r2.Pages), r2.At)
			}
			for j := range r1.Pages {
				if r1.Pages[j].Key != r2.Pages[j].Key || math.Abs(float64(r1.Pages[j].Probability-r2.Pages[j].Probability)) > 1e-5 {
					t.Fatalf("user %s request %d page %d: %+v one by one, %+v in runs", u, i, j, r1.Pages[j], r2.Pages[j])
				}
			}
		}
	}
	// After a model swap the stored states are stale: HandleEvents rebuilds
	// them from the histories, as HandleEvent does.
	for _, s := range []side{one, many} {
		s.src.mu.Lock()
		l := *s.src.live
		l.Tag = 2
		s.src.live = &l
		s.src.mu.Unlock()
	}
	more := []features.Event{{UserID: "a", Page: v.Page(9), TS: at.Add(time.Minute)}, {UserID: "b", Page: v.Page(4), TS: at.Add(time.Minute)}}
	moreMeta := []features.Meta{{Offset: 100}, {Offset: 101}}
	for i := range more {
		if err := one.e.HandleEvent(ctx, more[i], moreMeta[i]); err != nil {
			t.Fatal(err)
		}
	}
	if n := many.e.HandleEvents(ctx, more, moreMeta, errs[:2]); n != 2 || errors.Join(errs[:2]...) != nil {
		t.Fatalf("HandleEvents after swap = %d, %v", n, errs[:2])
	}
	last1, last2 := one.w.reqs[len(one.w.reqs)-1], many.w.reqs[len(many.w.reqs)-1]
	for j := range last1.Pages {
		if last1.Pages[j].Key != last2.Pages[j].Key || math.Abs(float64(last1.Pages[j].Probability-last2.Pages[j].Probability)) > 1e-5 {
			t.Fatalf("after swap, page %d: %+v one by one, %+v in runs", j, last1.Pages[j], last2.Pages[j])
		}
	}
}

// errSaveFault and errAppendFault are the errors of injected failures.
var (
	errSaveFault   = errors.New("injected save failure")
	errAppendFault = errors.New("injected append failure")
)

// faultyStore is a Store whose Save (or, with onAppend, Append) fails for
// one user while fails > 0 (each failure counts one down; < 0 fails for
// good). With lost the write is made before the error: a reply lost after
// the store applied it.
type faultyStore struct {
	features.Store
	mu       sync.Mutex
	user     string
	fails    int
	lost     bool
	onAppend bool
	// refuse makes an Append of the user fail before it reaches the store
	// (a refused connection), while fails lasts; with onAppend unset. With
	// refuseAt, only the clicks at those offsets.
	refuse   bool
	refuseAt map[int64]bool
}

// refused reports whether an Append for user fails now without its write.
func (f *faultyStore) refused(user string, c features.Click) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if user != f.user || f.fails == 0 || !f.refuse || f.refuseAt != nil && !f.refuseAt[c.Offset] {
		return false
	}
	if f.fails > 0 {
		f.fails--
	}
	return true
}

// trip reports whether a Save for user fails now.
func (f *faultyStore) trip(user string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if user != f.user || f.fails == 0 || f.onAppend || f.refuse {
		return false
	}
	if f.fails > 0 {
		f.fails--
	}
	return true
}

// heal ends the failures.
func (f *faultyStore) heal() {
	f.mu.Lock()
	f.fails = 0
	f.mu.Unlock()
}

// tripAppend reports whether an Append for user fails now, after its write.
func (f *faultyStore) tripAppend(user string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if user != f.user || f.fails == 0 || !f.onAppend {
		return false
	}
	if f.fails > 0 {
		f.fails--
	}
	return true
}

func (f *faultyStore) Append(ctx context.Context, user string, c features.Click, rec *features.Record) error {
	if f.refused(user, c) {
		return errAppendFault
	}
	err := f.Store.Append(ctx, user, c, rec)
	if err == nil && f.tripAppend(user) {
		return errAppendFault
	}
	return err
}

func (f *faultyStore) Save(ctx context.Context, user string, rec *features.Record) error {
	if !f.trip(user) {
		return f.Store.Save(ctx, user, rec)
	}
	if f.lost {
		if err := f.Store.Save(ctx, user, rec); err != nil {
			return err
		}
	}
	return errSaveFault
}

// faultyBatch is a faultyStore on a BatchStore, whose SaveMany fails the
// same way for the row of the user.
type faultyBatch struct {
	*faultyStore
	bs features.BatchStore
}

func (f faultyBatch) AppendMany(ctx context.Context, rows []*features.BatchRow) {
	if i := slices.IndexFunc(rows, func(r *features.BatchRow) bool { return f.refused(r.User, r.Click) }); i >= 0 {
		f.bs.AppendMany(ctx, slices.Delete(slices.Clone(rows), i, i+1))
		rows[i].Err = errAppendFault
		return
	}
	f.bs.AppendMany(ctx, rows)
	for _, r := range rows {
		if r.Err == nil && f.tripAppend(r.User) {
			r.Err = errAppendFault
		}
	}
}

func (f faultyBatch) SaveMany(ctx context.Context, rows []*features.BatchRow) {
	i := slices.IndexFunc(rows, func(r *features.BatchRow) bool { return f.trip(r.User) })
	switch {
	case i < 0 || f.lost:
		f.bs.SaveMany(ctx, rows)
	default: // the row's write is not made: save the others
		f.bs.SaveMany(ctx, slices.Delete(slices.Clone(rows), i, i+1))
	}
	if i >= 0 && (!f.lost || rows[i].Err == nil) {
		rows[i].Err = errSaveFault
	}
}

// newFaulty wraps s, a BatchStore too when s is one.
func newFaulty(s features.Store, f *faultyStore) features.Store {
	f.Store = s
	if bs, ok := s.(features.BatchStore); ok {
		return faultyBatch{f, bs}
	}
	return f
}

// gruEngine is an engine on the PyTorch GRU fixture and store, whose warmer
// records every request.
func gruEngine(t *testing.T, store features.Store) (*Engine, *allWarmer, *prefetch.Evaluator, *model.Bundle) {
	t.Helper()
	bundle, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
	if err != nil {
		t.Fatalf("load bundle: %v", err)
	}
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 1e-9})
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	w := &allWarmer{}
	src := &models{live: &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Tag: 1}}
	e, err := New(Config{}, Deps{Models: src, Histories: store, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e, w, eval, bundle
}

// saveFailingEngine is an engine on the PyTorch GRU fixture whose store
// (in-memory histories, returned) fails every Save for user until healed.
func saveFailingEngine(t *testing.T, user string) (*Engine, *features.Histories, *faultyStore, *allWarmer, *model.Bundle) {
	t.Helper()
	hist, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
	f := &faultyStore{user: user, fails: -1}
	e, w, _, bundle := gruEngine(t, newFaulty(hist, f))
	return e, hist, f, w, bundle
}

// TestHandleEventsSaveFailure: a wave where one user's state cannot be
// saved reports that click, finishes the other users' clicks (scored,
// saved, prefetched), and those come back settled when handed again.
// The failed click, handed again once the store is back, is resumed: not
// appended twice, its state saved and stamped, prefetched.
func TestHandleEventsSaveFailure(t *testing.T) {
	e, hist, faulty, w, bundle := saveFailingEngine(t, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := bundle.Vocab()
	at := time.Now().Add(-time.Minute)
	var evs []features.Event
	var metas []features.Meta
	for i, u := range []string{"a", "b", "c", "d"} {
		evs = append(evs, features.Event{UserID: u, Page: v.Page(int64(3 + i)), TS: at})
		metas = append(metas, features.Meta{Offset: int64(10 + i)})
	}
	errs := make([]error, len(evs))
	n := e.HandleEvents(ctx, evs, metas, errs)
	if n != 1 || !errors.Is(errs[1], errSaveFault) || errors.Is(errs[1], features.ErrRejected) || errs[0] != nil {
		t.Fatalf("HandleEvents = %d, %v; want 1 and the save error of b, not a rejection", n, errs)
	}
	warmed := map[string]int{}
	for _, r := range w.reqs {
		warmed[r.UserID]++
	}
	// b is prefetched before its state is saved.
	if warmed["a"] != 1 || warmed["b"] != 1 || warmed["c"] != 1 || warmed["d"] != 1 {
		t.Fatalf("prefetch requests by user %v, want one each", warmed)
	}
	for _, u := range []string{"a", "c", "d"} {
		var rec features.Record
		if ok, _ := hist.Load(ctx, u, &rec); !ok || len(rec.State) != bundle.StateSize() || rec.StateSeq != rec.Seq {
			t.Fatalf("user %s: state not saved (found %t, %d values, stamp %d of %d)", u, ok, len(rec.State), rec.StateSeq, rec.Seq)
		}
	}
	// The consumer hands the rest again (it settled none of the run from
	// b on): c and d are found applied by this engine, settled, not
	// duplicates (no redelivery: the consumer counts them now, once).
	clear(errs)
	if n := e.HandleEvents(ctx, evs[2:], metas[2:], errs[:2]); n != 2 || errs[0] != nil || errs[1] != nil {
		t.Fatalf("handing c and d again = %d, %v; want both settled", n, errs[:2])
	}
	// b again, the store back: finished, counted once.
	faulty.heal()
	clear(errs)
	if n := e.HandleEvents(ctx, evs[1:2], metas[1:2], errs[:1]); n != 1 || errs[0] != nil {
		t.Fatalf("handing b again = %d, %v; want it finished", n, errs[:1])
	}
	var rec features.Record
	if ok, _ := hist.Load(ctx, "b", &rec); !ok || len(rec.Pages) != 1 || len(rec.State) != bundle.StateSize() || rec.Seq != 1 || rec.StateSeq != 1 {
		t.Fatalf("b's record: pages %v, %d state values, stamp %d of %d; want one page, a state, stamp 1 of 1", rec.Pages, len(rec.State), rec.StateSeq, rec.Seq)
	}
	if tot := e.Totals(); tot.Events != 4 || tot.Duplicates != 0 {
		t.Fatalf("totals %+v, want 4 events and no duplicate", tot)
	}
	if warmed := w.reqs[len(w.reqs)-1]; warmed.UserID != "b" {
		t.Fatalf("last prefetch request for %s, want b's, made again on resuming", warmed.UserID)
	}
}

// TestHandleEventsWavesAcrossUsers: a run where one user clicks several
// times in a row is cut into waves of distinct users (a user's k-th click in
// wave k). A failure reports the first failing click; every click before it
// is settled first, even one in a later wave, and the user's clicks keep
// their order.
func TestHandleEventsWavesAcrossUsers(t *testing.T) {
	e, hist, _, _, bundle := saveFailingEngine(t, "b")
	ctx := context.Background()
	v := bundle.Vocab()
	at := time.Now().Add(-time.Minute)
	users := []string{"a", "a", "a", "b", "c", "a"}
	var evs []features.Event
	var metas []features.Meta
	for i, u := range users {
		evs = append(evs, features.Event{UserID: u, Page: v.Page(int64(3 + i)), TS: at.Add(time.Duration(i) * time.Second)})
		metas = append(metas, features.Meta{Offset: int64(i)})
	}
	errs := make([]error, len(evs))
	n := e.HandleEvents(ctx, evs, metas, errs)
	if n != 3 || errs[3] == nil || errors.Join(errs[:3]...) != nil {
		t.Fatalf("HandleEvents = %d, %v; want 3 (b's save fails) with a's clicks settled", n, errs)
	}
	var rec features.Record
	if ok, _ := hist.Load(ctx, "a", &rec); !ok || fmt.Sprint(rec.Pages) != fmt.Sprint([]int32{3, 4, 5}) {
		t.Fatalf("a's history %v, want its three clicks before b's, in order", rec.Pages)
	}
	// a's later click (index 5, after the failure) was left alone.
	clear(errs)
	if n := e.HandleEvents(ctx, evs[4:], metas[4:], errs[:2]); n != 2 || errs[0] != nil || errs[1] != nil {
		t.Fatalf("handing c and a again = %d, %v; want c settled (applied in the first wave, not a duplicate) and a applied", n, errs[:2])
	}
	if tot := e.Totals(); tot.Events != 6 || tot.Duplicates != 0 {
		t.Fatalf("totals %+v, want 6 events (b counted at its Append) and no duplicate", tot)
	}
	if ok, _ := hist.Load(ctx, "a", &rec); !ok || len(rec.Pages) != 4 {
		t.Fatalf("a's history %v after its fourth click", rec.Pages)
	}
}
