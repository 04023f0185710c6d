package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
)

// chainModel predicts, from the last page index i of a history, index i+1
// with probability 0.7 and i+2 with 0.2 (the rest spread evenly). It records
// the histories it saw.
type chainModel struct {
	vocab *model.Vocab
	mu    sync.Mutex
	seen  [][]int64
	fail  bool // Predict fails
}

func (m *chainModel) Predict(ctx context.Context, hs [][]int64) ([][]float32, error) {
	m.mu.Lock()
	fail := m.fail
	m.mu.Unlock()
	if fail {
		return nil, errors.New("chain model: cannot score")
	}
	out := make([][]float32, len(hs))
	n := m.vocab.Len()
	for b, h := range hs {
		m.mu.Lock()
		m.seen = append(m.seen, append([]int64(nil), h...))
		m.mu.Unlock()
		p := make([]float32, n)
		last := int(h[len(h)-1])
		rest := float32(0.1) / float32(n-2)
		for i := range p {
			p[i] = rest
		}
		p[(last+1)%n] += 0.7
		p[(last+2)%n] += 0.2
		out[b] = p
	}
	return out, nil
}
func (m *chainModel) Manifest() *model.Manifest {
	return &model.Manifest{Name: "chain", Version: "v", Forms: []string{model.FormSequence}, Output: "probs", MaxSeqLen: 5, VocabSize: m.vocab.Len()}
}
func (m *chainModel) Vocab() *model.Vocab { return m.vocab }

func (m *chainModel) lastSeen() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.seen[len(m.seen)-1]
}

// models is a swappable model source.
type models struct {
	mu   sync.Mutex
	live *lifecycle.Live
	reqs int
}

func (s *models) Current() *lifecycle.Live { s.mu.Lock(); defer s.mu.Unlock(); return s.live }
func (s *models) RecordRequest(string, time.Duration) {
	s.mu.Lock()
	s.reqs++
	s.mu.Unlock()
}
func (s *models) requests() int { s.mu.Lock(); defer s.mu.Unlock(); return s.reqs }
func (s *models) set(version string, epoch uint32, m *chainModel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live = &lifecycle.Live{Version: version, Model: m, Manifest: m.Manifest(), Vocab: m.vocab, Tag: epoch}
}

type warmCall struct {
	user    string
	pages   []string
	version string
}

// recWarmer records prefetch requests; its cache holds the keys user+page
// put in present.
type recWarmer struct {
	mu      sync.Mutex
	calls   []warmCall
	present map[string]bool
}

func (w *recWarmer) Present(_ context.Context, user string, pages []string, dst []bool) []bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	dst = dst[:0]
	for _, p := range pages {
		dst = append(dst, w.present[user+p])
	}
	return dst
}

func (w *recWarmer) Warm(_ context.Context, r prefetch.Request) int {
	c := warmCall{user: r.UserID, version: r.ModelVersion}
	for _, p := range r.Pages {
		c.pages = append(c.pages, p.Key)
	}
	w.mu.Lock()
	w.calls = append(w.calls, c)
	w.mu.Unlock()
	return len(r.Pages)
}

func vocab(t *testing.T, pages ...string) *model.Vocab {
	t.Helper()
	v, err := model.NewVocab(append([]string{model.PadKey, model.UnknownKey}, pages...))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type fixture struct {
	eng    *Engine
	models *models
	warmer *recWarmer
	eval   *prefetch.Evaluator
	hist   *features.Histories
}

func newFixture(t *testing.T, threshold float64) *fixture {
	t.Helper()
	f := &fixture{models: &models{}, warmer: &recWarmer{}}
	f.models.set("v1", 1, &chainModel{vocab: vocab(t, "/a", "/b", "/c", "/d", "/e")})
	var err error
	if f.hist, err = features.NewHistories(features.HistoryConfig{MaxLen: 5}, nil); err != nil {
		t.Fatal(err)
	}
	canon, err := features.NewCanonicalizer(features.CanonicalizerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	policy, err := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: threshold})
	if err != nil {
		t.Fatal(err)
	}
	if f.eval, err = prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil); err != nil {
		t.Fatal(err)
	}
	f.eng, err = New(Config{}, Deps{Models: f.models, Histories: f.hist, Canon: canon, Policy: policy, Warmer: f.warmer, Evaluator: f.eval}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// failModel makes the live model fail every prediction.
func (f *fixture) failModel() {
	m := f.models.Current().Model.(*chainModel)
	m.mu.Lock()
	m.fail = true
	m.mu.Unlock()
}

func click(user, page string, offset int64, at time.Time) (features.Event, features.Meta) {
	return features.Event{UserID: user, Page: page, TS: at}, features.Meta{Partition: 0, Offset: offset}
}

func TestHandleEventWarmsPredictedPages(t *testing.T) {
	tests := []struct {
		name      string
		threshold float64
		page      string
		want      []string
	}{
		{name: "above threshold only", threshold: 0.5, page: "/a", want: []string{"/b"}},
		{name: "two pass a lower threshold", threshold: 0.15, page: "/a", want: []string{"/b", "/c"}},
		{name: "canonicalized page", threshold: 0.5, page: "https://example.org/c/?x=1", want: []string{"/d"}},
		{name: "none pass", threshold: 0.95, page: "/a", want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.threshold)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			ev, meta := click("u1", tc.page, 0, time.Now())
			if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
				t.Fatalf("HandleEvent: %v", err)
			}
			var got []string
			if len(f.warmer.calls) > 0 {
				got = f.warmer.calls[0].pages
				if f.warmer.calls[0].version != "v1" || f.warmer.calls[0].user != "u1" {
					t.Errorf("warm call %+v, want user u1 version v1", f.warmer.calls[0])
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("warmed %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("warmed %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestHandleEventDuplicateNotAppliedTwice(t *testing.T) {
	f := newFixture(t, 0.5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := time.Now()
	for i, p := range []string{"/a", "/b"} {
		ev, meta := click("u1", p, int64(i), now)
		if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
			t.Fatalf("HandleEvent %s: %v", p, err)
		}
	}
	ev, meta := click("u1", "/b", 1, now) // redelivered
	if err := f.eng.HandleEvent(ctx, ev, meta); !errors.Is(err, features.ErrDuplicate) {
		t.Fatalf("redelivery: err %v, want ErrDuplicate", err)
	}
	h, _ := f.hist.Get(ctx, "u1", nil)
	if len(h) != 2 {
		t.Fatalf("history %v after a redelivery, want 2 pages", h)
	}
	if tot := f.eng.Totals(); tot.Events != 2 || tot.Duplicates != 1 {
		t.Fatalf("totals %+v, want 2 events and 1 duplicate", tot)
	}
}

func TestVocabularySwapRemapsHistories(t *testing.T) {
	f := newFixture(t, 0.5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := time.Now()
	for i, p := range []string{"/a", "/c"} {
		ev, meta := click("u1", p, int64(i), now)
		if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
			t.Fatal(err)
		}
	}
	// The new model orders pages differently and lacks /a.
	m2 := &chainModel{vocab: vocab(t, "/e", "/d", "/c", "/b")}
	f.models.set("v2", 2, m2)

	res, err := f.eng.Predict(ctx, hint.Query{UserID: "u1", Threshold: -1})
	if err != nil {
		t.Fatalf("Predict after swap: %v", err)
	}
	want := []int64{model.UnknownIndex, m2.vocab.Index("/c")}
	if got := m2.lastSeen(); !equal(got, want) {
		t.Fatalf("new model saw history %v, want %v (remapped through page keys)", got, want)
	}
	if res.ModelVersion != "v2" {
		t.Errorf("model version %q, want v2", res.ModelVersion)
	}

	ev, meta := click("u1", "/d", 2, now)
	if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
		t.Fatal(err)
	}
	want = []int64{model.UnknownIndex, m2.vocab.Index("/c"), m2.vocab.Index("/d")}
	if got := m2.lastSeen(); !equal(got, want) {
		t.Fatalf("history after the next click %v, want %v", got, want)
	}
}

// TestPredictUnknownVocabulary: a history written under a vocabulary the
// engine no longer knows (more than maxVocabs swaps ago, or by another
// process) names pages by indices of that vocabulary. Predict answers no
// hints rather than reading them in the live vocabulary, and the next click
// starts the history again from itself.
func TestPredictUnknownVocabulary(t *testing.T) {
	f := newFixture(t, 0.5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, meta := click("u1", "/e", 0, time.Now()) // index 6 under v1
	if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
		t.Fatal(err)
	}
	for i := range maxVocabs + 1 {
		f.models.set("v-other", uint32(100+i), &chainModel{vocab: vocab(t, "/x", "/y", "/z")})
		if _, err := f.eng.Predict(ctx, hint.Query{Pages: []string{"/x"}, Threshold: -1}); err != nil {
			t.Fatal(err)
		}
	}
	small := &chainModel{vocab: vocab(t, "/b", "/a")} // index 6 is outside it
	f.models.set("v-small", 500, small)
	res, err := f.eng.Predict(ctx, hint.Query{UserID: "u1", Threshold: 0})
	if err != nil {
		t.Fatalf("Predict on a history of a forgotten vocabulary: %v", err)
	}
	if len(res.Hints) != 0 || res.ModelVersion != "v-small" {
		t.Fatalf("Predict = %+v, want no hints from v-small", res)
	}
	ev, meta = click("u1", "/a", 1, time.Now())
	if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
		t.Fatal(err)
	}
	if got, want := small.lastSeen(), []int64{small.vocab.Index("/a")}; !equal(got, want) {
		t.Fatalf("history after the next click %v, want %v (the click alone)", got, want)
	}
	if n := testutil.ToFloat64(f.eng.m.unknownVocab); n != 2 {
		t.Errorf("histories_vocab_unknown_total = %v, want 2 (the query, the click)", n)
	}
	if n := testutil.ToFloat64(f.eng.m.remapped); n != 0 {
		t.Errorf("histories_remapped_total = %v, want 0: a history cut to its newest click was not translated", n)
	}
}

// normalized scales a chainModel's rows to sum to 1, as the lifecycle's
// validation wants.
type normalized struct{ *chainModel }

func (n normalized) Predict(ctx context.Context, hs [][]int64) ([][]float32, error) {
	out, err := n.chainModel.Predict(ctx, hs)
	for _, row := range out {
		var sum float32
		for _, p := range row {
			sum += p
		}
		for i := range row {
			row[i] /= sum
		}
	}
	return out, err
}

// TestReplicasShareHistories: two processes serving the same model version
// read each other's histories in a shared Redis, whatever number of swaps
// each has made (the records carry lifecycle.Live.Tag, not a swap count).
func TestReplicasShareHistories(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Replica a has swapped models three times, replica b (a Static
	// manager, as after a restart) once: their epochs differ.
	replica := func(models Models) *Engine {
		store, err := features.NewRedisStore(features.StoreConfig{Backend: features.BackendRedis, KeyPrefix: "shared:",
			History: features.HistoryConfig{MaxLen: 5}}, client, nil)
		if err != nil {
			t.Fatal(err)
		}
		canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
		policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 0.5})
		eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
		e, err := New(Config{}, Deps{Models: models, Histories: store, Canon: canon, Policy: policy, Warmer: &recWarmer{}, Evaluator: eval}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	pages := []string{"/a", "/b", "/c", "/d", "/e"}
	ma := &chainModel{vocab: vocab(t, pages...)}
	srcA := &models{live: &lifecycle.Live{Version: "v", Model: ma, Manifest: ma.Manifest(), Vocab: ma.vocab,
		Epoch: 3, Tag: lifecycle.VersionTag("v", ma.vocab)}}
	a := replica(srcA)
	mb := &chainModel{vocab: vocab(t, pages...)}
	mgrB, err := lifecycle.Static(ctx, normalized{mb}, lifecycle.Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := replica(mgrB)
	if la, lb := srcA.Current(), mgrB.Current(); la.Epoch == lb.Epoch || la.Tag != lb.Tag {
		t.Fatalf("replicas at epochs %d and %d, tags %d and %d: want other epochs, one tag", la.Epoch, lb.Epoch, la.Tag, lb.Tag)
	}
	for i, p := range []string{"/a", "/c"} {
		ev, meta := click("u1", p, int64(i), time.Now())
		if err := a.HandleEvent(ctx, ev, meta); err != nil {
			t.Fatal(err)
		}
	}
	res, err := b.Predict(ctx, hint.Query{UserID: "u1", Threshold: -1})
	if err != nil {
		t.Fatalf("Predict on the other replica: %v", err)
	}
	if got, want := mb.lastSeen(), []int64{mb.vocab.Index("/a"), mb.vocab.Index("/c")}; !equal(got, want) {
		t.Fatalf("other replica's model saw %v, want %v", got, want)
	}
	if len(res.Hints) != 1 || res.Hints[0].Page != "/d" {
		t.Fatalf("other replica's hints %+v, want /d", res.Hints)
	}
}

func TestPredict(t *testing.T) {
	f := newFixture(t, 0.5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, meta := click("u1", "/a", 0, time.Now())
	if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
		t.Fatal(err)
	}
	// Pretend the cache holds /b for u1: warm is what the cache holds.
	f.warmer.mu.Lock()
	f.warmer.present = map[string]bool{"u1/b": true}
	f.warmer.mu.Unlock()

	tests := []struct {
		name  string
		q     hint.Query
		want  []string
		warm0 bool
	}{
		{name: "from history", q: hint.Query{UserID: "u1", Threshold: -1}, want: []string{"/b"}, warm0: true},
		{name: "explicit pages", q: hint.Query{Pages: []string{"/a", "/c"}, Threshold: -1}, want: []string{"/d"}},
		{name: "threshold override", q: hint.Query{UserID: "u1", Threshold: 0.1}, want: []string{"/b", "/c"}, warm0: true},
		{name: "k override", q: hint.Query{UserID: "u1", Threshold: 0.1, K: 1}, want: []string{"/b"}, warm0: true},
		{name: "unknown user", q: hint.Query{UserID: "nobody", Threshold: -1}, want: nil},
		{name: "unknown page", q: hint.Query{Pages: []string{"/zzz"}, Threshold: 0.01, K: 1}, want: []string{"/a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.models.requests()
			res, err := f.eng.Predict(ctx, tc.q)
			if err != nil {
				t.Fatalf("Predict: %v", err)
			}
			if n := f.models.requests() - before; n != 1 {
				t.Errorf("%d requests recorded for the call, want 1 (an answer without hints counts too)", n)
			}
			if len(res.Hints) != len(tc.want) {
				t.Fatalf("hints %+v, want pages %v", res.Hints, tc.want)
			}
			for i, h := range res.Hints {
				if h.Page != tc.want[i] {
					t.Fatalf("hints %+v, want pages %v", res.Hints, tc.want)
				}
			}
			if len(res.Hints) > 0 && res.Hints[0].Warm != tc.warm0 {
				t.Errorf("first hint warm = %v, want %v", res.Hints[0].Warm, tc.warm0)
			}
		})
	}
}

func TestNoModel(t *testing.T) {
	f := newFixture(t, 0.5)
	f.models.mu.Lock()
	f.models.live = nil
	f.models.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.eng.Predict(ctx, hint.Query{UserID: "u"}); !errors.Is(err, hint.ErrNoModel) {
		t.Errorf("Predict without a model: %v, want ErrNoModel", err)
	}
	ev, meta := click("u", "/a", 0, time.Now())
	if err := f.eng.HandleEvent(ctx, ev, meta); !errors.Is(err, hint.ErrNoModel) {
		t.Errorf("HandleEvent without a model: %v, want ErrNoModel", err)
	}
}

func TestSubscribe(t *testing.T) {
	f := newFixture(t, 0.5)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	updates, stop := f.eng.Subscribe([]string{"u1"}, 4)
	for i, u := range []string{"u2", "u1"} {
		ev, meta := click(u, "/b", int64(i), time.Now())
		if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case u := <-updates:
		if u.UserID != "u1" || len(u.Result.Hints) != 1 || u.Result.Hints[0].Page != "/c" {
			t.Fatalf("update %+v, want u1 with hint /c", u)
		}
	case <-ctx.Done():
		t.Fatal("no update for u1")
	}
	select {
	case u := <-updates:
		t.Fatalf("unexpected second update %+v (u2 is not watched)", u)
	default:
	}
	stop()
	if _, ok := <-updates; ok {
		t.Fatal("channel open after cancel")
	}
	stop() // idempotent
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestExpectedUtility binds cost weights, keyed by page, to the live model's
// vocabulary: a cheap likely page loses to a costly less likely one.
func TestExpectedUtility(t *testing.T) {
	f := newFixture(t, 0.5)
	policy, err := prefetch.NewPolicy(prefetch.PolicyConfig{K: 1, Threshold: 0.5, UseExpectedUtility: true, CostWeights: map[string]float64{"/c": 5}})
	if err != nil {
		t.Fatal(err)
	}
	f.eng.deps.Policy = policy
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, meta := click("u1", "/a", 0, time.Now())
	if err := f.eng.HandleEvent(ctx, ev, meta); err != nil {
		t.Fatal(err)
	}
	// /b: 0.7 × 1; /c: 0.2 × 5 = 1.0.
	if len(f.warmer.calls) != 1 || len(f.warmer.calls[0].pages) != 1 || f.warmer.calls[0].pages[0] != "/c" {
		t.Fatalf("warm calls %+v, want only /c (highest expected utility)", f.warmer.calls)
	}
}

// TestRecentSamples checks that the engine keeps its latest sampled clicks,
// newest first, each with the time it was sampled, and at most 16 of them.
func TestRecentSamples(t *testing.T) {
	var e Engine
	if got := e.RecentSamples(); len(got) != 0 {
		t.Fatalf("RecentSamples of a new engine = %d, want none", len(got))
	}
	start := time.Now()
	for i := range 20 {
		e.samples.add(&Sample{UserID: fmt.Sprint("u", i), At: start.Add(time.Duration(i) * time.Second)})
	}
	got := e.RecentSamples()
	if len(got) != recentSamples {
		t.Fatalf("RecentSamples = %d samples, want %d", len(got), recentSamples)
	}
	for i, s := range got {
		if want := fmt.Sprint("u", 19-i); s.UserID != want {
			t.Fatalf("sample %d is %s, want %s (newest first)", i, s.UserID, want)
		}
	}
}
