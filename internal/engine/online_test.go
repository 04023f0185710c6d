package engine

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/cputime"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/transitions"
)

// onlineCase is an engine setup for the online statistics: a model, a
// history store, statistics, and how clicks are handed (one by one or in
// runs cut into waves).
type onlineCase struct {
	name  string
	gru   bool // the PyTorch GRU fixture (step form), else the chain model
	redis bool // histories and statistics in redis-server, else in memory
	runs  bool // HandleEvents, else HandleEvent
}

// onlineEngine builds an engine for c with the given statistics; known is
// a page of its vocabulary.
func onlineEngine(t *testing.T, c onlineCase, client *redis.Client, prefix string, stats *transitions.Stats) (e *Engine, w *recWarmer, known string) {
	t.Helper()
	var live *lifecycle.Live
	if c.gru {
		bundle, err := model.LoadBundle("../../model/testdata/gru-probs-opset13")
		if err != nil {
			t.Fatalf("load bundle: %v", err)
		}
		live = &lifecycle.Live{Version: "gru", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Tag: 1}
	} else {
		m := &chainModel{vocab: vocab(t, "/a", "/b", "/c", "/d", "/e")}
		live = &lifecycle.Live{Version: "chain", Model: m, Manifest: m.Manifest(), Vocab: m.vocab, Tag: 1}
	}
	var hist features.Store
	var err error
	if c.redis {
		hist, err = features.NewRedisStore(features.StoreConfig{Backend: features.BackendRedis, KeyPrefix: prefix, History: features.HistoryConfig{MaxLen: 20}}, client, nil)
	} else {
		hist, err = features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 0.3})
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	w = &recWarmer{}
	e, err = New(Config{}, Deps{Models: &models{live: live}, Histories: hist, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval, Transitions: stats}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e, w, live.Vocab.Page(2)
}

// newStats builds the statistics in memory or in redis under prefix.
func newStats(t *testing.T, c onlineCase, client *redis.Client, prefix string, reg prometheus.Registerer) *transitions.Stats {
	t.Helper()
	var s *transitions.Stats
	var err error
	if c.redis {
		s, err = transitions.NewRedis(transitions.Config{KeyPrefix: prefix + "tr:"}, client, reg)
	} else {
		s, err = transitions.NewMemory(transitions.Config{}, reg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// apply hands the engine clicks, one by one or as one run.
func apply(ctx context.Context, t *testing.T, e *Engine, runs bool, evs []features.Event, metas []features.Meta) {
	t.Helper()
	if !runs {
		for i := range evs {
			if err := e.HandleEvent(ctx, evs[i], metas[i]); err != nil {
				t.Fatalf("HandleEvent %+v: %v", evs[i], err)
			}
		}
		return
	}
	errs := make([]error, len(evs))
	if n := e.HandleEvents(ctx, evs, metas, errs); n != len(evs) {
		t.Fatalf("HandleEvents stopped at %d of %d: %v", n, len(evs), errs[n])
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("click %d %+v: %v", i, evs[i], err)
		}
	}
}

func hintPages(r hint.Result) []string {
	var out []string
	for _, h := range r.Hints {
		out = append(out, h.Page)
	}
	return out
}

// TestNewPageBecomesHint: a page outside the model's vocabulary, opened
// from a known page by 30 users, is a hint for that page within seconds,
// with no new model: with the default evidence k = 50 its probability is
// at least w = 30/80 = 0.375, so it is warmed for the next user who opens
// the known page (the policy's threshold 0.3), answered by Predict, and,
// with Redis, by another engine sharing the statistics. A page followed
// from the new page is learned too (the engine remembers the unknown page
// by name).
func TestNewPageBecomesHint(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	for _, c := range []onlineCase{
		{name: "chain/memory/one-by-one"},
		{name: "chain/redis/runs", redis: true, runs: true},
		{name: "gru/memory/runs", gru: true, runs: true},
		{name: "gru/redis/one-by-one", gru: true, redis: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			reg := prometheus.NewRegistry()
			stats := newStats(t, c, client, c.name+":", reg)
			e, w, known := onlineEngine(t, c, client, c.name+":", stats)
			const fresh, after = "/news/just-published", "/news/follow-up"

			ask := func(e *Engine) []string {
				t.Helper()
				r, err := e.Predict(ctx, hint.Query{Pages: []string{known}, K: 3, Threshold: 0})
				if err != nil {
					t.Fatalf("Predict: %v", err)
				}
				return hintPages(r)
			}
			if got := ask(e); slices.Contains(got, fresh) {
				t.Fatalf("hints before any traffic %v contain %s", got, fresh)
			}
			start := time.Now()
			var evs []features.Event
			var metas []features.Meta
			for u := range 30 {
				for j, p := range []string{known, fresh, after} {
					evs = append(evs, features.Event{UserID: fmt.Sprintf("u%d", u), Page: p, TS: start.Add(time.Duration(u*3+j) * time.Millisecond)})
					metas = append(metas, features.Meta{Partition: 0, Offset: int64(len(metas))})
				}
			}
			apply(ctx, t, e, c.runs, evs, metas)

			// The next user on the known page gets the new page warmed.
			w.calls = nil
			apply(ctx, t, e, false, []features.Event{{UserID: "next", Page: known, TS: time.Now()}}, []features.Meta{{Offset: int64(len(metas))}})
			if len(w.calls) != 1 || !slices.Contains(w.calls[0].pages, fresh) {
				t.Fatalf("warmed for the next user on %s: %+v, want %s among them", known, w.calls, fresh)
			}
			if got := ask(e); !slices.Contains(got, fresh) {
				t.Fatalf("hints for %s after 30 users = %v, want %s among them", known, got, fresh)
			}
			r, err := e.Predict(ctx, hint.Query{Pages: []string{fresh}, K: 3, Threshold: 0})
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(r.Hints, func(h hint.Hint) bool { return h.Page == after })
			if i < 0 || r.Hints[i].Probability < 0.374 {
				t.Errorf("hints for the new page %s = %+v, want %s with p >= 0.375 (30 of 30, w = 30/80)", fresh, r.Hints, after)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("learning took %v, want seconds", d)
			}
			if c.redis {
				// A replica sharing the statistics answers the same.
				other, _, _ := onlineEngine(t, c, client, c.name+":", newStats(t, c, client, c.name+":", nil))
				if got := ask(other); !slices.Contains(got, fresh) {
					t.Errorf("another replica's hints for %s = %v, want %s among them", known, got, fresh)
				}
			}
			if got := metricValue(t, reg, "prefetchd_transitions_online_only_pages"); got != 2 {
				t.Errorf("pages known online only = %v, want 2", got)
			}
			if got := metricValue(t, reg, "prefetchd_transitions_served_predictions_total"); got < 3 {
				t.Errorf("predictions served from online statistics = %v, want at least 3", got)
			}
		})
	}
}

// TestChooseFollowsBlend compares the engine's blended choice with the
// rule of transitions.Blend applied to every page, on random model
// probabilities and online statistics: evidence from a few clicks (the
// model's share large) to thousands (the online share near 1), next pages
// in and outside the vocabulary, and next pages tagged with the current
// epoch, a stale one, a wrong index or none (as from Redis).
func TestChooseFollowsBlend(t *testing.T) {
	const epoch = 7
	pages := []string{"<pad>", "<unk>"}
	for i := range 60 {
		pages = append(pages, fmt.Sprintf("/p/%d", i))
	}
	v, err := model.NewVocab(pages)
	if err != nil {
		t.Fatal(err)
	}
	live := &lifecycle.Live{Version: "v", Vocab: v, Tag: epoch}
	stats, err := transitions.NewMemory(transitions.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hist, _ := features.NewHistories(features.HistoryConfig{}, nil)
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{})
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	e, err := New(Config{}, Deps{Models: &models{live: live}, Histories: hist, Canon: canon, Policy: policy, Warmer: nopWarmer{}, Evaluator: eval, Transitions: stats}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 2000 {
		// A few large, many small: from nearly even to one page taking
		// nearly all.
		probs := make([]float32, v.Len())
		var sum float32
		peak := float64(1 + rng.IntN(60))
		for i := range probs {
			probs[i] = float32(math.Pow(rng.Float64(), peak))
			sum += probs[i]
		}
		for i := range probs {
			probs[i] /= sum
		}
		current := int64(2 + rng.IntN(v.Len()-2))
		page := v.Page(current)
		// Next pages: distinct, some outside the vocabulary, with counts
		// summing to at most N.
		scale := math.Pow(10, 4*rng.Float64())
		var d transitions.Dist
		seen := map[string]bool{}
		for range rng.IntN(32) + 1 {
			name := fmt.Sprintf("/p/%d", rng.IntN(60))
			idx := v.Index(name)
			if rng.IntN(4) == 0 {
				name, idx = fmt.Sprintf("/new/%d", rng.IntN(20)), model.UnknownIndex
			}
			if seen[name] {
				continue
			}
			seen[name] = true
			n := transitions.Next{Page: name, Count: scale * rng.ExpFloat64()}
			switch rng.IntN(4) {
			case 0:
				n.Index = nextTag(live, idx)
			case 1:
				n.Index = int64(epoch-1)<<32 | idx // a model swapped since
			case 2:
				n.Index = nextTag(live, 2+int64(rng.IntN(60))) // another page's
			}
			d.Next = append(d.Next, n)
			d.N += n.Count
		}
		d.N *= 1 + rng.Float64()
		slices.SortFunc(d.Next, func(a, b transitions.Next) int { return cmp.Compare(b.Count, a.Count) })
		k, threshold := 1+rng.IntN(6), 0.4*rng.Float64()

		want := blendByRule(stats.Blend, v, probs, current, page, d, k, threshold)
		b := &buffers{dist: &d}
		var got []choice
		for _, c := range e.choose(live, probs, current, page, k, threshold, b) {
			got = append(got, choice{page: b.page(live, c.Index), p: float64(c.Probability)})
		}
		same := len(got) == len(want)
		for i := 0; same && i < len(got); i++ {
			same = got[i].page == want[i].page && math.Abs(got[i].p-want[i].p) <= 1e-6
		}
		if !same {
			t.Fatalf("trial %d (k %d, threshold %.3f, N %.1f, w %.3f): chose %v, the rule gives %v", trial, k, threshold, d.N, stats.Blend.Weight(d.N), got, want)
		}
	}
}

// choice is a page chosen and its probability.
type choice struct {
	page string
	p    float64
}

// blendByRule is the k most likely pages at or above threshold when every
// page's probability is blended by b, the page the user is on (index
// current, named page) left out.
func blendByRule(b transitions.Blend, v *model.Vocab, probs []float32, current int64, page string, d transitions.Dist, k int, threshold float64) []choice {
	w := b.Weight(d.N)
	var cOut float64
	for _, n := range d.Next {
		if v.Index(n.Page) == model.UnknownIndex {
			cOut += n.Count
		}
	}
	var all []choice
	for i := int64(model.UnknownIndex + 1); i < int64(v.Len()); i++ {
		if i == current {
			continue
		}
		p := (1 - w) * float64(probs[i])
		if j := slices.IndexFunc(d.Next, func(n transitions.Next) bool { return n.Page == v.Page(i) }); j >= 0 {
			p = b.Next(w, d, d.Next[j], float64(probs[i]), true, cOut)
		}
		all = append(all, choice{v.Page(i), float64(float32(p))})
	}
	for _, n := range d.Next {
		if n.Page != page && v.Index(n.Page) == model.UnknownIndex {
			all = append(all, choice{n.Page, float64(float32(b.Next(w, d, n, float64(probs[model.UnknownIndex]), false, cOut)))})
		}
	}
	all = slices.DeleteFunc(all, func(h choice) bool { return !(h.p >= threshold) })
	slices.SortStableFunc(all, func(a, b choice) int { return cmp.Compare(b.p, a.p) })
	return all[:min(k, len(all))]
}

// TestOnlineOff: without statistics the engine chooses as the model says.
func TestOnlineOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, _, known := onlineEngine(t, onlineCase{}, nil, "", nil)
	var evs []features.Event
	var metas []features.Meta
	for u := range 30 {
		for j, p := range []string{known, "/news/x"} {
			evs = append(evs, features.Event{UserID: fmt.Sprintf("u%d", u), Page: p, TS: time.Now()})
			metas = append(metas, features.Meta{Offset: int64(u*2 + j)})
		}
	}
	apply(ctx, t, e, false, evs, metas)
	r, err := e.Predict(ctx, hint.Query{Pages: []string{known}, K: 3, Threshold: 0})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hintPages(r), []string{"/b", "/c", "/d"}; !slices.Equal(got, want) {
		t.Errorf("hints %v, want the model's %v", got, want)
	}
}

// metricValue is the value of the unlabelled gauge or counter name in reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// BenchmarkHandleEventOnline is the per-click cost of the engine on the
// first-order Markov model of the service benchmark with in-process online statistics (every click
// observed and its page looked up, hints blended) beside the same engine
// without them, measured in the same run, on NASA July 1995 sessions, 1,024
// users at a time, a millisecond apart: popular pages keep many next pages,
// as in the service.
func BenchmarkHandleEventOnline(b *testing.B) {
	bundle, err := model.LoadBundle("../../features/testdata/markov1")
	if err != nil {
		b.Fatal(err)
	}
	nasa, err := embedded.NASAClicks(1024, 200_000, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	clicks := make([]features.Event, len(nasa))
	for i, c := range nasa {
		clicks[i] = features.Event{UserID: c.User, Page: c.Page, TS: c.At}
	}
	for _, online := range []bool{true, false} {
		name := "online"
		if !online {
			name = "baseline-off"
		}
		b.Run(name, func(b *testing.B) {
			var stats *transitions.Stats
			if online {
				var err error
				if stats, err = transitions.NewMemory(transitions.Config{}, nil); err != nil {
					b.Fatal(err)
				}
			}
			e := benchEngineWith(b, bundle, stats)
			ctx := context.Background()
			b.ReportAllocs()
			cpu := cputime.Used()
			n := 0
			for ; b.Loop(); n++ {
				if err := e.HandleEvent(ctx, clicks[n%len(clicks)], features.Meta{Offset: int64(n)}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cputime.Used()-cpu)/float64(n), "cpu-ns/op")
		})
	}
}

// BenchmarkNewPagesMemory reports the heap held per user whose latest page
// is outside the vocabulary (the engine remembers it by name), for user ids
// and pages of typical length.
func BenchmarkNewPagesMemory(b *testing.B) {
	const users = 50_000
	var perUser float64
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var n newPages
		for i := range users {
			n.set(fmt.Sprintf("user-%08d", i), fmt.Sprintf("/news/2026/12/article-%d", i), true)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perUser = float64(after.HeapAlloc-before.HeapAlloc) / users
		runtime.KeepAlive(&n)
	}
	b.ReportMetric(perUser, "B/user")
}

// TestTopK checks the insertion pass against a stable sort truncated to k,
// ties included (probabilities drawn from a few values).
func TestTopK(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for _, tc := range []struct{ n, k, values int }{
		{0, 3, 4}, {1, 3, 4}, {5, 0, 4}, {5, 3, 2}, {40, 3, 5}, {40, 40, 3}, {67, 8, 1000}, {3, 10, 2},
	} {
		for trial := range 50 {
			cs := make([]prefetch.Candidate, tc.n)
			for i := range cs {
				cs[i] = prefetch.Candidate{Index: int64(i), Probability: float32(rng.IntN(tc.values)) / float32(tc.values)}
			}
			want := slices.Clone(cs)
			slices.SortStableFunc(want, func(a, b prefetch.Candidate) int { return cmp.Compare(b.Probability, a.Probability) })
			want = want[:min(tc.k, len(want))]
			if got := topK(cs, tc.k); !slices.Equal(got, want) {
				t.Fatalf("n %d k %d trial %d: got %v, want %v", tc.n, tc.k, trial, got, want)
			}
		}
	}
}

// TestFutureClickWeighsOne: a click dated hours ahead (within --max-skew)
// counts in the online statistics as one click now, not as e^(λ·skew)
// clicks: after 30 users go from a known page to one new page, one user
// dated 20 h ahead to another, and 30 more users to a third, the first and
// third pages are the hints for the known page, the future one is not, and
// the statistics go on learning (the Redis store kept the later clicks at
// zero weight when it rebased a page's counts to the future time).
func TestFutureClickWeighsOne(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	for _, c := range []onlineCase{
		{name: "chain/memory/runs", runs: true},
		{name: "chain/redis/runs", redis: true, runs: true},
		{name: "chain/redis/one-by-one", redis: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			stats := newStats(t, c, client, "future-"+c.name+":", nil)
			e, _, known := onlineEngine(t, c, client, "future-"+c.name+":", stats)
			now := time.Now()
			var evs []features.Event
			var metas []features.Meta
			add := func(user, next string, at time.Time) {
				for j, p := range []string{known, next} {
					evs = append(evs, features.Event{UserID: user, Page: p, TS: at.Add(time.Duration(j) * time.Millisecond)})
					metas = append(metas, features.Meta{Partition: 0, Offset: int64(len(metas))})
				}
			}
			for u := range 30 {
				add(fmt.Sprintf("y%d", u), "/new/y", now.Add(-time.Minute))
			}
			add("skewed", "/bogus/p", now.Add(20*time.Hour))
			for u := range 30 {
				add(fmt.Sprintf("z%d", u), "/new/z", now.Add(-time.Second))
			}
			apply(ctx, t, e, c.runs, evs, metas)
			r, err := e.Predict(ctx, hint.Query{Pages: []string{known}, K: 3, Threshold: 0})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]float32{}
			for _, h := range r.Hints {
				got[h.Page] = h.Probability
			}
			if got["/new/y"] < 0.2 || got["/new/z"] < 0.2 {
				t.Errorf("hints for %s = %+v, want /new/y and /new/z each with 30 of 61 transitions", known, r.Hints)
			}
			if p, ok := got["/bogus/p"]; ok && p >= got["/new/z"] {
				t.Errorf("the future click's page %s has %v, /new/z %v: want it weighed as one click", "/bogus/p", p, got["/new/z"])
			}
		})
	}
}

// TestSwapKeepsCurrentPageName: a swap to a vocabulary without the page a
// user is on must not lose that page for the online statistics, which
// know pages by name: a hint query for the user blends the page's learned
// next pages, and the user's next click is learned as a transition out of
// it. Both with clicks one by one and in runs.
func TestSwapKeepsCurrentPageName(t *testing.T) {
	for _, runs := range []bool{false, true} {
		t.Run(fmt.Sprintf("runs=%v", runs), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			stats := newStats(t, onlineCase{}, nil, "", nil)
			hist, err := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
			if err != nil {
				t.Fatal(err)
			}
			canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
			policy, _ := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 0.3})
			eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
			ms := &models{}
			ms.set("v1", 1, &chainModel{vocab: vocab(t, "/a", "/b", "/c", "/d", "/e")})
			e, err := New(Config{}, Deps{Models: ms, Histories: hist, Canon: canon, Policy: policy, Warmer: &recWarmer{}, Evaluator: eval, Transitions: stats}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			var evs []features.Event
			var metas []features.Meta
			add := func(user, page string) {
				evs = append(evs, features.Event{UserID: user, Page: page, TS: start.Add(time.Duration(len(evs)) * time.Millisecond)})
				metas = append(metas, features.Meta{Offset: int64(len(metas))})
			}
			for u := range 40 {
				add(fmt.Sprintf("u%d", u), "/c")
				add(fmt.Sprintf("u%d", u), "/later")
			}
			for u := range 40 {
				add(fmt.Sprintf("r%d", u), "/b")
				add(fmt.Sprintf("r%d", u), "/c") // on /c when the model is swapped
			}
			add("probe", "/b")
			add("probe", "/c")
			apply(ctx, t, e, runs, evs, metas)

			ms.set("v2", 2, &chainModel{vocab: vocab(t, "/a", "/b", "/d", "/e")}) // without /c
			r, err := e.Predict(ctx, hint.Query{UserID: "probe", K: 3, Threshold: 0})
			if err != nil {
				t.Fatal(err)
			}
			if got := hintPages(r); !slices.Contains(got, "/later") {
				t.Errorf("hints for a user on /c after the swap = %v, want /later (learned after /c)", got)
			}
			evs, metas = evs[:0], metas[:0]
			for u := range 40 {
				add(fmt.Sprintf("r%d", u), "/next")
			}
			for i := range metas {
				metas[i].Offset += 1000
			}
			apply(ctx, t, e, runs, evs, metas)
			r, err = e.Predict(ctx, hint.Query{Pages: []string{"/c"}, K: 3, Threshold: 0})
			if err != nil {
				t.Fatal(err)
			}
			if got := hintPages(r); !slices.Contains(got, "/next") {
				t.Errorf("hints for /c after 40 users went on from it after the swap = %v, want /next", got)
			}
		})
	}
}
