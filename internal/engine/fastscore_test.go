package engine

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/training"
	"github.com/prefetchd/prefetchd/transitions"
)

// largeBundle trains a small GRU (embedding 8, hidden 16) on sessions over
// 20,000 pages and loads it: a vocabulary large enough for a clustered
// scorer. Every page opens one session, then three clicks go to pages of a
// Zipf popularity over 300, so that the next-page distribution is peaked
// enough for hints at 0.01.
func largeBundle(t testing.TB) *model.Bundle {
	t.Helper()
	const pages, popular = 20_000, 300
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rng := rand.New(rand.NewPCG(4, 2))
	zipf := rand.NewZipf(rng, 1.2, 1, popular-1)
	sessions := make([]training.Session, pages)
	for i := range sessions {
		s := &sessions[i]
		s.Pages = append(s.Pages, fmt.Sprintf("/p/%d", i))
		for range 3 {
			s.Pages = append(s.Pages, fmt.Sprintf("/p/%d", zipf.Uint64()))
		}
	}
	v, err := training.BuildVocab(sessions, training.VocabConfig{})
	if err != nil {
		t.Fatal(err)
	}
	g, _, err := training.TrainGRU(ctx, nil, training.Encode(v, sessions), v.Len(), training.GRUConfig{Embedding: 8, Hidden: 16, Epochs: 1, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := training.GRUBundle(g, v, training.ManifestConfig{Name: "large", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "large")
	if err := training.WriteBundle(dir, tb); err != nil {
		t.Fatal(err)
	}
	b, err := model.LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Scoring().Approximate || !b.HasStep() {
		t.Fatalf("bundle of %d pages: Scoring() = %+v, step form %t; want a clustered scorer and a step form", v.Len(), b.Scoring(), b.HasStep())
	}
	return b
}

// TestClusteredScoringMatchesExact applies the same clicks (users
// interleaved, a model swap that rebuilds the states from the histories)
// to two engines on a bundle with a clustered scorer: one whose policy
// ranks by probability, which takes the clustered path, and one whose
// policy ranks by expected utility with every weight 1 (the same choice),
// which scores every page exactly. Through HandleEvent and through
// HandleEvents in runs, the prefetch requests must name the same pages in
// the same order, with probabilities within 1e-3, for at least 99% of the
// clicks, and some clicks must have hints; so must the answers to hint
// queries, every one.
func TestClusteredScoringMatchesExact(t *testing.T) {
	bundle := largeBundle(t)
	v := bundle.Vocab()
	newEngine := func(utility, online bool) (*Engine, *allWarmer, *models) {
		w := &allWarmer{}
		e, src := largeEngine(t, bundle, utility, online, w)
		return e, w, src
	}
	for _, c := range []struct {
		name            string
		batched, online bool
		pages           int64 // clicks go to pages 2 to pages+1
	}{
		{"HandleEvent", false, false, int64(v.Len() - 2)},
		{"HandleEvents", true, false, int64(v.Len() - 2)},
		// Clicks among 60 pages: the online statistics soon know their
		// transitions, and the blend reads the model's probabilities of
		// the pages they name.
		{"HandleEvents with online statistics", true, true, 60},
	} {
		t.Run(c.name, func(t *testing.T) {
			batched := c.batched
			rng := rand.New(rand.NewPCG(8, 8))
			var evs []features.Event
			for i := range 400 {
				evs = append(evs, features.Event{UserID: fmt.Sprintf("u%d", rng.IntN(40)), Page: v.Page(2 + rng.Int64N(c.pages)), TS: time.Unix(1000+int64(i), 0)})
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			fast, fw, fsrc := newEngine(false, c.online)
			exact, ew, esrc := newEngine(true, c.online)
			if !fast.fastScoring(fsrc.Current()) || exact.fastScoring(esrc.Current()) {
				t.Fatalf("clustered path: %t and %t, want true for the probability policy and false for expected utility", fast.fastScoring(fsrc.Current()), exact.fastScoring(esrc.Current()))
			}
			for i := 0; i < len(evs); i += 20 {
				if i == len(evs)/2 {
					// A swap: both rebuild every user's state.
					for _, src := range []*models{fsrc, esrc} {
						live := *src.Current()
						live.Tag = 2
						src.mu.Lock()
						src.live = &live
						src.mu.Unlock()
					}
				}
				run := evs[i : i+20]
				for _, e := range []*Engine{fast, exact} {
					if batched {
						metas := make([]features.Meta, len(run))
						for j := range metas {
							metas[j] = features.Meta{Offset: int64(i + j)}
						}
						errs := make([]error, len(run))
						if n := e.HandleEvents(ctx, run, metas, errs); n != len(run) {
							t.Fatalf("click %d: %v", i+n, errs[n])
						}
						for j, err := range errs {
							if err != nil {
								t.Fatalf("click %d: %v", i+j, err)
							}
						}
						continue
					}
					for j, ev := range run {
						if err := e.HandleEvent(ctx, ev, features.Meta{Offset: int64(i + j)}); err != nil {
							t.Fatalf("click %d: %v", i+j, err)
						}
					}
				}
			}
			if len(fw.reqs) != len(evs) || len(ew.reqs) != len(evs) {
				t.Fatalf("%d and %d prefetch requests, want %d each", len(fw.reqs), len(ew.reqs), len(evs))
			}
			same, hinted := 0, 0
			for i := range fw.reqs {
				got, want := fw.reqs[i].Pages, ew.reqs[i].Pages
				if len(want) > 0 {
					hinted++
				}
				ok := len(got) == len(want)
				for j := 0; ok && j < len(got); j++ {
					ok = got[j].Key == want[j].Key && math.Abs(float64(got[j].Probability-want[j].Probability)) <= 1e-3
				}
				if ok {
					same++
				} else {
					t.Logf("click %d: clustered %v, exact %v", i, got, want)
				}
			}
			// Hint queries: each user's history (the policy's K and
			// threshold), and explicit pages with K 5 at 0.02.
			for u := range 40 {
				for _, q := range []hint.Query{
					{UserID: fmt.Sprintf("u%d", u), Threshold: -1},
					{Pages: []string{evs[u].Page, evs[u+1].Page}, K: 5, Threshold: 0.02},
				} {
					got, err := fast.Predict(ctx, q)
					if err != nil {
						t.Fatal(err)
					}
					want, err := exact.Predict(ctx, q)
					if err != nil {
						t.Fatal(err)
					}
					ok := len(got.Hints) == len(want.Hints) && len(want.Hints) > 0
					for j := 0; ok && j < len(got.Hints); j++ {
						ok = got.Hints[j].Page == want.Hints[j].Page && math.Abs(float64(got.Hints[j].Probability-want.Hints[j].Probability)) <= 1e-3
					}
					if !ok {
						t.Errorf("query %+v: clustered %v, exact %v", q, got.Hints, want.Hints)
					}
				}
			}
			t.Logf("identical prefetch requests for %d of %d clicks; %d with pages", same, len(evs), hinted)
			if same*100 < 99*len(evs) {
				t.Errorf("identical prefetch requests for %d of %d clicks, want at least 99%%", same, len(evs))
			}
			if hinted < len(evs)/4 {
				t.Errorf("only %d of %d clicks have pages to prefetch: the fixture is too flat to test hints", hinted, len(evs))
			}
		})
	}
}

// largeEngine is an engine on bundle (in-memory histories, K 3 at 0.01,
// warmer w) whose policy ranks by probability, or
// with utility by expected utility with every weight 1; with online it
// keeps online statistics in memory.
func largeEngine(t testing.TB, bundle *model.Bundle, utility, online bool, w Warmer) (*Engine, *models) {
	t.Helper()
	hist, _ := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	policy, err := prefetch.NewPolicy(prefetch.PolicyConfig{K: 3, Threshold: 0.01, UseExpectedUtility: utility})
	if err != nil {
		t.Fatal(err)
	}
	eval, _ := prefetch.NewEvaluator(prefetch.EvaluatorConfig{}, nil)
	src := &models{live: &lifecycle.Live{Version: "large", Model: bundle, Bundle: bundle, Manifest: bundle.Manifest(), Vocab: bundle.Vocab(), Tag: 1}}
	deps := Deps{Models: src, Histories: hist, Canon: canon, Policy: policy, Warmer: w, Evaluator: eval}
	if online {
		if deps.Transitions, err = transitions.NewMemory(transitions.Config{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	e, err := New(Config{}, deps, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e, src
}

// BenchmarkHandleEventClustered measures HandleEvent on largeBundle's
// 20,000 pages (hidden 16) through the clustered path and, in the same
// run, through exact scoring (expected utility, every weight 1).
func BenchmarkHandleEventClustered(b *testing.B) {
	bundle := largeBundle(b)
	v := bundle.Vocab()
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		utility bool
	}{{"clustered", false}, {"exact", true}} {
		b.Run(c.name, func(b *testing.B) {
			e, _ := largeEngine(b, bundle, c.utility, false, nopWarmer{})
			b.ReportAllocs()
			rng := rand.New(rand.NewPCG(1, 1))
			i := 0
			for b.Loop() {
				ev := features.Event{UserID: fmt.Sprintf("u%d", i%64), Page: v.Page(2 + rng.Int64N(int64(v.Len()-2))), TS: time.Unix(int64(i), 0)}
				if err := e.HandleEvent(ctx, ev, features.Meta{Offset: int64(i)}); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
