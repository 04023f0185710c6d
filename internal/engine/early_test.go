package engine

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/prefetch"
)

// watchedStore is a RedisStore whose AppendMany records how many warms the
// engine had sent when it was called, and can fail (its round trip cut
// short, as a timeout would).
type watchedStore struct {
	*features.RedisStore
	warmer *recWarmer
	mu     sync.Mutex
	before []int // len(warmer.calls) at each AppendMany
	fail   bool
}

func (s *watchedStore) AppendMany(ctx context.Context, rows []*features.BatchRow) {
	s.warmer.mu.Lock()
	n := len(s.warmer.calls)
	s.warmer.mu.Unlock()
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
	replica := func() (*Engine, *watchedStore) {
		rs, err := features.NewRedisStore(features.StoreConfig{Backend: features.BackendRedis, KeyPrefix: "early:",
			History: features.HistoryConfig{MaxLen: 5}}, client, nil)
		if err != nil {
			t.Fatal(err)
		}
		ws := &watchedStore{RedisStore: rs, warmer: &recWarmer{}}
		src := &models{live: &lifecycle.Live{Version: "v", Model: m, Manifest: m.Manifest(), Vocab: m.vocab, Tag: tag}}
		canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
		policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 0.5})
		eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
		e, err := New(Config{}, Deps{Models: src, Histories: ws, Canon: canon, Policy: policy, Warmer: ws.warmer, Evaluator: eval}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return e, ws
	}
	a, sa := replica()
	b, _ := replica()
	idx := func(ps ...string) []int64 {
		var out []int64
		for _, p := range ps {
			out = append(out, m.vocab.Index(p))
		}
		return out
	}
	handle := func(e *Engine, user, page string, offset int64) error {
		t.Helper()
		ev, meta := click(user, page, offset, time.Now())
		errs := make([]error, 1)
		if n := e.HandleEvents(ctx, []features.Event{ev}, []features.Meta{meta}, errs); n != 1 {
			return errs[0]
		}
		return errs[0]
	}
	counts := func() (confirmed, corrected, unapplied float64) {
		return testutil.ToFloat64(a.m.early.WithLabelValues(earlyConfirmed)),
			testutil.ToFloat64(a.m.early.WithLabelValues(earlyCorrected)),
			testutil.ToFloat64(a.m.early.WithLabelValues(earlyUnapplied))
	}
	calls := func() []warmCall {
		sa.warmer.mu.Lock()
		defer sa.warmer.mu.Unlock()
		return append([]warmCall(nil), sa.warmer.calls...)
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
