package engine

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
)

// watchedStore is a RedisStore whose AppendMany records how many warms the
// engine had sent when it was called, and can fail (its round trip cut
// short, as a timeout would).
type watchedStore struct {
	*features.RedisStore
	warms  func() int // warms sent so far
	mu     sync.Mutex
	before []int // len(warmer.calls) at each AppendMany
	fail   bool
}

func (s *watchedStore) AppendMany(ctx context.Context, rows []*features.BatchRow) {
	n := s.warms()
	s.mu.Lock()
	s.before = append(s.before, n)
	fail := s.fail
	s.mu.Unlock()
	if fail {
		cut, cancel := context.WithCancel(ctx)
		cancel()
		ctx = cut
	}
	s.RedisStore.AppendMany(ctx, rows)
}

func (s *watchedStore) lastBefore() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.before[len(s.before)-1]
}

// TestWarmEarly: with the Redis history store, a click whose record the
// replica foresees (its own latest write) is predicted and warmed before
// the histories' round trip, once; a record another replica wrote
// meanwhile is caught by the reply, and the click predicted and warmed
// again on the stored history; an early warm of a click the store then
// fails to apply is counted as such, and the click handed again is applied
// once. Each outcome has its count.
func TestWarmEarly(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pages := []string{"/a", "/b", "/c", "/d", "/e", "/f"}
	m := &chainModel{vocab: vocab(t, pages...)}
	tag := lifecycle.VersionTag("v", m.vocab)
	live := &lifecycle.Live{Version: "v", Model: m, Manifest: m.Manifest(), Vocab: m.vocab, Tag: tag}
	replica := func() (*Engine, *watchedStore, *recWarmer) {
		rw := &recWarmer{}
		e, ws := earlyReplica(t, client, "early:", 5, live, 0.5, rw, func() int { rw.mu.Lock(); defer rw.mu.Unlock(); return len(rw.calls) })
		return e, ws, rw
	}
	a, sa, wa := replica()
	b, _, _ := replica()
	idx := func(ps ...string) []int64 {
		var out []int64
		for _, p := range ps {
			out = append(out, m.vocab.Index(p))
		}
		return out
	}
	handle := func(e *Engine, user, page string, offset int64) error {
		ev, meta := click(user, page, offset, time.Now())
		return handleRun(ctx, e, ev, meta)
	}
	counts := func() (confirmed, corrected, unapplied float64) { return earlyCounts(a) }
	calls := func() []warmCall {
		wa.mu.Lock()
		defer wa.mu.Unlock()
		return append([]warmCall(nil), wa.calls...)
	}

	// A first click: nothing to foresee, warmed after the reply.
	if err := handle(a, "u1", "/a", 0); err != nil {
		t.Fatal(err)
	}
	if got := sa.lastBefore(); got != 0 || len(calls()) != 1 {
		t.Fatalf("first click: %d warms before the store's reply, %d in all; want 0 and 1", got, len(calls()))
	}

	// The next click of u1: warmed before the reply, on /a /b, and not again.
	if err := handle(a, "u1", "/b", 1); err != nil {
		t.Fatal(err)
	}
	cs := calls()
	if got := sa.lastBefore(); got != 2 || len(cs) != 2 {
		t.Fatalf("foreseen click: %d warms before the store's reply, %d in all; want 2 and 2", got, len(cs))
	}
	if got := cs[1].pages; len(got) != 1 || got[0] != "/c" {
		t.Fatalf("early warm of /a /b: %v, want /c", got)
	}
	if got, want := m.lastSeen(), idx("/a", "/b"); !equal(got, want) {
		t.Fatalf("model saw %v, want %v", got, want)
	}
	if c, r, u := counts(); c != 1 || r != 0 || u != 0 {
		t.Fatalf("early warms confirmed %v, corrected %v, unapplied %v; want 1, 0, 0", c, r, u)
	}

	// Replica b writes u1 meanwhile (a rebalance moved the user): a's
	// foreseen /a /b /e is wrong, the stored history is /a /b /d /e.
	if err := handle(b, "u1", "/d", 2); err != nil {
		t.Fatal(err)
	}
	if err := handle(a, "u1", "/e", 3); err != nil {
		t.Fatal(err)
	}
	if got := len(calls()); got != 4 || sa.lastBefore() != 3 {
		t.Fatalf("corrected click: %d warms in all, %d before the reply; want 4 (early and again) and 3", got, sa.lastBefore())
	}
	if got, want := m.lastSeen(), idx("/a", "/b", "/d", "/e"); !equal(got, want) {
		t.Fatalf("model last saw %v, want the stored history %v", got, want)
	}
	if c, r, u := counts(); c != 1 || r != 1 || u != 0 {
		t.Fatalf("early warms confirmed %v, corrected %v, unapplied %v; want 1, 1, 0", c, r, u)
	}

	// The store fails the next click after its early warm: counted
	// unapplied; handed again, it is applied once (nothing foreseen after
	// a failure) and u1's history holds /f once.
	sa.mu.Lock()
	sa.fail = true
	sa.mu.Unlock()
	if err := handle(a, "u1", "/f", 4); err == nil || features.Final(err) {
		t.Fatalf("click with the store failing: %v, want a transient error", err)
	}
	if c, r, u := counts(); c != 1 || r != 1 || u != 1 {
		t.Fatalf("early warms confirmed %v, corrected %v, unapplied %v; want 1, 1, 1", c, r, u)
	}
	sa.mu.Lock()
	sa.fail = false
	sa.mu.Unlock()
	before := len(calls())
	if err := handle(a, "u1", "/f", 4); err != nil {
		t.Fatal(err)
	}
	if got := len(calls()); got != before+1 || sa.lastBefore() != before {
		t.Fatalf("retried click: %d warms, %d before the reply; want 1, 0", got-before, sa.lastBefore()-before)
	}
	hist, err := sa.Get(ctx, "u1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := widen(nil, hist), idx("/a", "/b", "/d", "/e", "/f"); !equal(got, want) {
		t.Fatalf("stored history %v, want %v", got, want)
	}
}

// earlyReplica is an engine serving live on a Redis history store (key
// prefix, histories of maxLen pages) watched for the warms sent to w
// (counted by warms) before each AppendMany, with a policy of k 3 at
// threshold.
func earlyReplica(t *testing.T, client *redis.Client, prefix string, maxLen int, live *lifecycle.Live, threshold float64, w Warmer, warms func() int) (*Engine, *watchedStore) {
	t.Helper()
	rs, err := features.NewRedisStore(features.StoreConfig{Backend: features.BackendRedis, KeyPrefix: prefix,
		History: features.HistoryConfig{MaxLen: maxLen}}, client, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws := &watchedStore{RedisStore: rs, warms: warms}
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: threshold})
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	e, err := New(Config{}, Deps{Models: &models{live: live}, Histories: ws, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e, ws
}

// handleRun hands e a run of one click and returns its outcome.
func handleRun(ctx context.Context, e *Engine, ev features.Event, meta features.Meta) error {
	errs := make([]error, 1)
	e.HandleEvents(ctx, []features.Event{ev}, []features.Meta{meta}, errs)
	return errs[0]
}

// earlyCounts reads e's prefetchd_engine_early_warms_total by outcome.
func earlyCounts(e *Engine) (confirmed, corrected, unapplied float64) {
	return testutil.ToFloat64(e.m.early.WithLabelValues(earlyConfirmed)),
		testutil.ToFloat64(e.m.early.WithLabelValues(earlyCorrected)),
		testutil.ToFloat64(e.m.early.WithLabelValues(earlyUnapplied))
}

// stepWarmer records the prefetch requests of a step-form engine.
type stepWarmer struct {
	mu   sync.Mutex
	reqs []prefetch.Request
}

func (w *stepWarmer) Warm(_ context.Context, r prefetch.Request) int {
	r.Pages = append([]prefetch.Page(nil), r.Pages...)
	w.mu.Lock()
	w.reqs = append(w.reqs, r)
	w.mu.Unlock()
	return len(r.Pages)
}

func (*stepWarmer) Present(_ context.Context, _ string, pages []string, dst []bool) []bool {
	return absent(pages, dst)
}

func (w *stepWarmer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.reqs)
}

// TestWarmEarlyStepForm: with a step-form GRU and the Redis history store,
// a foreseen click is stepped from the state this replica saved and warmed
// before the histories' round trip, with the sequence form's probabilities
// on the stored history; the state saved with it is the one stepped early
// (the next click's early step still matches the sequence form); a record
// another replica advanced meanwhile is caught, and the click stepped again
// on the stored record.
func TestWarmEarlyStepForm(t *testing.T) {
	bundle, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
	if err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	live := &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Tag: 9}
	replica := func() (*Engine, *watchedStore, *stepWarmer) {
		w := &stepWarmer{}
		e, ws := earlyReplica(t, client, "early-step:", 20, live, 1e-9, w, w.count)
		return e, ws, w
	}
	a, sa, wa := replica()
	b, _, _ := replica()
	v := bundle.Vocab()
	var seq []int64
	at := time.Now()
	for i, c := range []struct {
		page    int64
		other   bool // replica b applies it
		early   bool // a warms it before the store's reply
		outcome string
	}{
		{page: 17},
		{page: 42, early: true, outcome: earlyConfirmed},
		{page: 5, early: true, outcome: earlyConfirmed},
		{page: 99, other: true},
		{page: 17, early: true, outcome: earlyCorrected},
		{page: 3, early: true, outcome: earlyConfirmed},
	} {
		seq = append(seq, c.page)
		ev := features.Event{UserID: "u", Page: v.Page(c.page), TS: at.Add(time.Duration(i) * time.Second)}
		e := a
		if c.other {
			e = b
		}
		c0, r0, u0 := earlyCounts(a)
		before := wa.count()
		if err := handleRun(ctx, e, ev, features.Meta{Offset: int64(i)}); err != nil {
			t.Fatalf("click %d: %v", i, err)
		}
		if c.other {
			continue
		}
		if got := sa.lastBefore() - before; got != map[bool]int{false: 0, true: 1}[c.early] {
			t.Fatalf("click %d: %d warms before the store's reply, want early %v", i, got, c.early)
		}
		c1, r1, u1 := earlyCounts(a)
		if got := map[string]float64{earlyConfirmed: c1 - c0, earlyCorrected: r1 - r0, earlyUnapplied: u1 - u0}; c.outcome != "" && got[c.outcome] != 1 || got[earlyConfirmed]+got[earlyCorrected]+got[earlyUnapplied] != map[bool]float64{false: 0, true: 1}[c.outcome != ""] {
			t.Fatalf("click %d: early outcomes %v, want one %q", i, got, c.outcome)
		}
		want, err := bundle.PredictOne(ctx, seq, nil)
		if err != nil {
			t.Fatal(err)
		}
		wa.mu.Lock()
		last := wa.reqs[len(wa.reqs)-1]
		wa.mu.Unlock()
		if len(last.Pages) == 0 {
			t.Fatalf("click %d: nothing warmed", i)
		}
		for _, p := range last.Pages {
			if d := math.Abs(float64(p.Probability - want[v.Index(p.Key)])); d > 1e-5 {
				t.Fatalf("click %d page %s: warmed with probability %v, the sequence form on the stored history gives %v", i, p.Key, p.Probability, want[v.Index(p.Key)])
			}
		}
	}
}
