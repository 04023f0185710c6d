package model

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// topicOutput is an output layer with the structure of a site, so that the
// next-page distribution is peaked and top-k is meaningful (random weights
// give flat distributions): pages belong to topics (sections, about 200
// pages each, drawn at random), a page's row is its topic's vector
// (Gaussian, standard deviation topicScale per dimension) plus its own
// noise (pageScale), and its bias is a Zipf popularity, -log(rank) for a
// random rank. hidden is the GRU's state width.
func topicOutput(vocab, hidden int, seed uint64) (w, b []float32) {
	const topicScale, pageScale = 1.2, 0.15
	rng := rand.New(rand.NewPCG(seed, 7))
	topics := max(1, vocab/200)
	u := make([]float32, topics*hidden)
	for i := range u {
		u[i] = float32(rng.NormFloat64() * topicScale)
	}
	w = make([]float32, vocab*hidden)
	for i := range vocab {
		t := rng.IntN(topics)
		for d := range hidden {
			w[i*hidden+d] = u[t*hidden+d] + float32(rng.NormFloat64()*pageScale)
		}
	}
	b = make([]float32, vocab)
	for i, r := range rng.Perm(vocab) {
		b[i] = -float32(math.Log(float64(r + 1)))
	}
	return w, b
}

// topicBundle is a GRU bundle (emb 32) with a topicOutput output layer.
func topicBundle(t testing.TB, vocab, hidden int) *Bundle {
	t.Helper()
	w, b := topicOutput(vocab, hidden, 1)
	seq, step := gruGraphsOut(vocab, 32, hidden, w, b)
	return graphsBundle(t, vocab, seq, step)
}

// agreement compares hints with exact scoring's: the same pages in the same
// order, each probability within tol.
func agreement(got, want []Hint, tol float64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].Page != want[i].Page || math.Abs(float64(got[i].Prob-want[i].Prob)) > tol {
			return false
		}
	}
	return true
}

// sessionClicks is a deterministic click stream: sessions of 1 to 30
// random pages.
func sessionClicks(vocab, n int, seed uint64) (pages []int64, newSession []bool) {
	rng := rand.New(rand.NewPCG(seed, 3))
	left := 0
	for range n {
		newSession = append(newSession, left == 0)
		if left == 0 {
			left = 1 + rng.IntN(30)
		}
		left--
		pages = append(pages, 2+rng.Int64N(int64(vocab-2)))
	}
	return pages, newSession
}

// compareSteps runs the clicks (a new session where fresh) through
// StepTopK and through Step with SelectTopK, and returns the clicks with
// identical hints (probabilities within 1e-3), the clicks exact scoring
// gives hints for, and the largest probability error on a page both name
// at the same rank. It logs the output rows StepTopK scored per click.
func compareSteps(ctx context.Context, t *testing.T, b *Bundle, pages []int64, fresh []bool, k int, threshold float32) (same, hinted int, worst float64) {
	t.Helper()
	var fast, exact, probs []float32
	var got, want []Hint
	var rows []int
	defer func() {
		slices.Sort(rows)
		q := func(f float64) int { return rows[int(f*float64(len(rows)-1))] }
		t.Logf("rows scored per click: p50 %d, p90 %d, p99 %d, max %d of %d", q(0.5), q(0.9), q(0.99), q(1), b.vsize)
	}()
	for i, p := range pages {
		if fresh[i] {
			fast, exact = fast[:0], exact[:0]
		}
		var err error
		var n int
		if got, fast, n, err = b.stepTopK(ctx, p, fast, k, threshold, got, nil, nil); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, n)
		if probs, exact, err = b.Step(ctx, p, exact, probs); err != nil {
			t.Fatal(err)
		}
		want = SelectTopK(probs, k, threshold, want)
		if agreement(got, want, 1e-3) {
			same++
		} else if testing.Verbose() {
			t.Logf("click %d: got %v, want %v", i, got, want)
		}
		if len(want) > 0 {
			hinted++
		}
		for j := range min(len(got), len(want)) {
			if got[j].Page == want[j].Page {
				worst = max(worst, math.Abs(float64(got[j].Prob-want[j].Prob)))
			}
		}
	}
	return same, hinted, worst
}

// TestTopKAgreement runs a click stream through StepTopK (clustered
// scoring) and through Step with SelectTopK (exact) at vocabulary 100,000
// and hidden 128, and requires identical hints for at least 99% of clicks
// with probabilities within 1e-3; PredictTopK is checked the same way on
// histories.
func TestTopKAgreement(t *testing.T) {
	const vocab, hidden, clicks = 100_000, 128, 1500
	start := time.Now()
	b := topicBundle(t, vocab, hidden)
	t.Logf("load with clustering: %v, %+v", time.Since(start), b.Scoring())
	if !b.Scoring().Approximate {
		t.Fatalf("Scoring() = %+v, want a clustered scorer at vocabulary %d", b.Scoring(), vocab)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pages, fresh := sessionClicks(vocab, clicks, 1)
	for _, c := range []struct {
		k         int
		threshold float32
	}{{3, 0.05}, {5, 0.01}} {
		t.Run(fmt.Sprintf("step_k%d_threshold%g", c.k, c.threshold), func(t *testing.T) {
			same, hinted, worst := compareSteps(ctx, t, b, pages, fresh, c.k, c.threshold)
			frac := float64(same) / float64(len(pages))
			t.Logf("identical hints for %d of %d clicks (%.4f); %d clicks have hints; worst probability error %.2g", same, len(pages), frac, hinted, worst)
			if frac < 0.99 {
				t.Errorf("identical hints for %.4f of clicks, want at least 0.99", frac)
			}
			if hinted < len(pages)/2 {
				t.Errorf("only %d of %d clicks have hints: the fixture is too flat to test top-k", hinted, len(pages))
			}
			if worst > 1e-3 {
				t.Errorf("worst probability error %.3g, want at most 1e-3", worst)
			}
		})
	}
	t.Run("sequence", func(t *testing.T) {
		var got, want []Hint
		var probs []float32
		same := 0
		const n = 100
		for i := range n {
			h := pages[i*10 : i*10+1+i%12]
			var err error
			if got, err = b.PredictTopK(ctx, h, 5, 0.01, got); err != nil {
				t.Fatal(err)
			}
			if probs, err = b.PredictOne(ctx, h, probs); err != nil {
				t.Fatal(err)
			}
			want = SelectTopK(probs, 5, 0.01, want)
			if agreement(got, want, 1e-3) {
				same++
			}
		}
		if same < n*99/100 {
			t.Errorf("identical hints for %d of %d histories, want at least 99%%", same, n)
		}
	})
}

// TestTopKExactBelowMinVocab checks that a bundle below the clustered
// scorer's vocabulary scores exactly: StepTopK and PredictTopK equal
// SelectTopK on Step's and PredictOne's probabilities, bit for bit.
func TestTopKExactBelowMinVocab(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := topicBundle(t, 2000, 32)
	if s := b.Scoring(); s.Approximate {
		t.Fatalf("Scoring() = %+v, want exact at vocabulary 2000", s)
	}
	pages, _ := sessionClicks(2000, 50, 2)
	var fast, exact, probs []float32
	var got, want []Hint
	for i, p := range pages {
		var err error
		if got, fast, err = b.StepTopK(ctx, p, fast, 4, 0.001, got); err != nil {
			t.Fatal(err)
		}
		if probs, exact, err = b.Step(ctx, p, exact, probs); err != nil {
			t.Fatal(err)
		}
		want = SelectTopK(probs, 4, 0.001, want)
		if !agreement(got, want, 0) {
			t.Fatalf("click %d: StepTopK %v, want %v", i, got, want)
		}
		if got, err = b.PredictTopK(ctx, pages[:i+1], 4, 0.001, got); err != nil {
			t.Fatal(err)
		}
		if probs, err = b.PredictOne(ctx, pages[:i+1], probs); err != nil {
			t.Fatal(err)
		}
		want = SelectTopK(probs, 4, 0.001, want)
		if !agreement(got, want, 0) {
			t.Fatalf("history %d: PredictTopK %v, want %v", i, got, want)
		}
	}
}

func TestSelectTopK(t *testing.T) {
	probs := []float32{0.1, 0.3, 0.05, 0.3, 0.2, 0.05}
	tests := []struct {
		name      string
		k         int
		threshold float32
		want      []Hint
	}{
		{"top3", 3, 0, []Hint{{1, 0.3}, {3, 0.3}, {4, 0.2}}},
		{"threshold cuts", 5, 0.15, []Hint{{1, 0.3}, {3, 0.3}, {4, 0.2}}},
		{"threshold inclusive", 6, 0.05, []Hint{{1, 0.3}, {3, 0.3}, {4, 0.2}, {0, 0.1}, {2, 0.05}, {5, 0.05}}},
		{"k zero", 0, 0, nil},
		{"nothing above", 3, 0.5, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SelectTopK(probs, tt.k, tt.threshold, nil)
			if !agreement(got, tt.want, 0) {
				t.Errorf("SelectTopK(k=%d, threshold=%g) = %v, want %v", tt.k, tt.threshold, got, tt.want)
			}
		})
	}
}

func TestStepTopKErrors(t *testing.T) {
	ctx := context.Background()
	b := topicBundle(t, 20_000, 16)
	if !b.Scoring().Approximate {
		t.Fatalf("Scoring() = %+v, want a clustered scorer", b.Scoring())
	}
	state := make([]float32, b.StateSize())
	state[0] = 0.5
	tests := []struct {
		name  string
		ctx   context.Context
		page  int64
		state []float32
		want  error
	}{
		{"page outside vocabulary", ctx, 20_000, state, ErrBadInput},
		{"negative page", ctx, -1, state, ErrBadInput},
		{"short state", ctx, 5, state[:3], ErrBadInput},
		{"canceled", canceled(), 5, state, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got, err := b.StepTopK(tt.ctx, tt.page, tt.state, 3, 0, nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("StepTopK error %v, want %v", err, tt.want)
			}
			if len(got) == len(state) && got[0] != 0.5 {
				t.Errorf("state changed on error: %v", got[:4])
			}
		})
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// BenchmarkTopK measures one click at vocabulary 100,000 and hidden 128
// (topicBundle): StepTopK with the clustered scorer beside exact scoring
// (Step and SelectTopK) in the same run, the step form again with every
// cache emptied before each click, and the sequence form likewise. It
// reports the rows scored exactly per click.
func BenchmarkTopK(b *testing.B) {
	ctx := context.Background()
	const vocab = 100_000
	bun := topicBundle(b, vocab, 128)
	pages, fresh := sessionClicks(vocab, 4096, 5)
	var rows int // output rows scored exactly by the clustered scorer
	run := func(name string, f func(i int)) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b, cpuTime())
			rows = 0
			for i := 0; b.Loop(); i++ {
				f(i % len(pages))
			}
			if rows > 0 {
				b.ReportMetric(float64(rows)/float64(b.N), "rows/op")
			}
		})
	}
	var state []float32
	var hints []Hint
	var probs []float32
	step := func(i int) {
		if fresh[i] {
			state = state[:0]
		}
	}
	for _, order := range []string{"fast_first", "exact_first"} {
		fast := func(i int) {
			step(i)
			var err error
			var n int
			if hints, state, n, err = bun.stepTopK(ctx, pages[i], state, 5, 0.01, hints, nil, nil); err != nil {
				b.Fatal(err)
			}
			rows += n
		}
		exact := func(i int) {
			step(i)
			var err error
			if probs, state, err = bun.Step(ctx, pages[i], state, probs); err != nil {
				b.Fatal(err)
			}
			hints = SelectTopK(probs, 5, 0.01, hints)
		}
		if order == "fast_first" {
			run(order+"/step_fast", fast)
			run(order+"/step_exact", exact)
		} else {
			run(order+"/step_exact", exact)
			run(order+"/step_fast", fast)
		}
	}
	// The same clicks, each after 64 MB have been written outside the
	// timer: every cache is emptied of the index, the GRU's weights and
	// the rows, as on a core shared with processes that stream memory.
	// Timed in wall time only (the writes would count in the CPU time).
	b.Run("cold/step_fast", func(b *testing.B) {
		b.ReportAllocs()
		junk := make([]byte, 64<<20)
		state = state[:0]
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			for j := 0; j < len(junk); j += 64 {
				junk[j]++
			}
			b.StartTimer()
			c := i % len(pages)
			step(c)
			var err error
			if hints, state, _, err = bun.stepTopK(ctx, pages[c], state, 5, 0.01, hints, nil, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	h := pages[:20]
	run("seq_len20_fast", func(int) {
		var err error
		if hints, err = bun.PredictTopK(ctx, h, 5, 0.01, hints); err != nil {
			b.Fatal(err)
		}
	})
	run("seq_len20_exact", func(int) {
		var err error
		if probs, err = bun.PredictOne(ctx, h, probs); err != nil {
			b.Fatal(err)
		}
		hints = SelectTopK(probs, 5, 0.01, hints)
	})
}

// TestTopKLayouts checks the clustered scorer on the output layers it
// accepts (Gemm with transB, without it, with alpha) against exact
// scoring, and that forms with different output weights score exactly.
func TestTopKLayouts(t *testing.T) {
	const vocab, hidden = 20_000, 16
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, bias := topicOutput(vocab, hidden, 3)
	// wT is w transposed: [hidden, vocab].
	wT := make([]float32, len(w))
	for r := range vocab {
		for c := range hidden {
			wT[c*vocab+r] = w[r*hidden+c]
		}
	}
	half := make([]float32, len(w))
	for i, x := range w {
		half[i] = x / 2
	}
	// withHead replaces the output layer of g: weights (dims) and the Gemm
	// attributes.
	withHead := func(g tGraph, weights []float32, dims []int64, attrs ...[]byte) tGraph {
		g.inits = append([][]byte(nil), g.inits...)
		g.inits[4] = tFloatTensor("out.weight", dims, weights)
		g.nodes = append([]tNode(nil), g.nodes...)
		for i, n := range g.nodes {
			if n.name == "out" {
				g.nodes[i].attrs = attrs
			}
		}
		return g
	}
	seq, step := gruGraphsOut(vocab, 8, hidden, w, bias)
	tests := []struct {
		name        string
		seq, step   tGraph
		approximate bool
		copied      bool // the scorer holds its own float copy of the rows
	}{
		{"transB", seq, step, true, false},
		{"B as hidden×vocab", withHead(seq, wT, []int64{hidden, vocab}), withHead(step, wT, []int64{hidden, vocab}), true, true},
		{"alpha 2", withHead(seq, half, []int64{vocab, hidden}, tAttrInt("transB", 1), tAttrFloat("alpha", 2)),
			withHead(step, half, []int64{vocab, hidden}, tAttrInt("transB", 1), tAttrFloat("alpha", 2)), true, true},
	}
	// A step form whose head differs from the sequence form's is refused at
	// load (checkForms), before any scorer could be built on it.
	if _, err := LoadBundleFS(graphsFS(vocab, seq, withHead(step, half, []int64{vocab, hidden}, tAttrInt("transB", 1))), "b"); !errors.Is(err, ErrContract) {
		t.Errorf("forms differ: LoadBundleFS error %v, want ErrContract", err)
	}
	pages, fresh := sessionClicks(vocab, 300, 4)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := graphsBundle(t, vocab, tt.seq, tt.step)
			if got := b.Scoring().Approximate; got != tt.approximate {
				t.Fatalf("Scoring().Approximate = %t, want %t", got, tt.approximate)
			}
			if copied := b.Scoring().IndexBytes >= 4*vocab*hidden; tt.approximate && copied != tt.copied {
				t.Errorf("IndexBytes %d: float copy %t, want %t", b.Scoring().IndexBytes, copied, tt.copied)
			}
			same, _, _ := compareSteps(ctx, t, b, pages, fresh, 5, 0.01)
			if need := len(pages) * 99 / 100; same < need {
				t.Errorf("identical hints for %d of %d clicks, want at least %d", same, len(pages), need)
			}
		})
	}
}

// TestStepTopKWith checks the probabilities StepTopKWith and
// PredictTopKWith give for named pages (the hints, pages picked at random,
// the edges of the vocabulary and pages outside it) against Step's and
// PredictOne's, with and without a clustered scorer, and that their hints
// (and state) are StepTopK's and PredictTopK's.
func TestStepTopKWith(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tt := range []struct {
		name        string
		vocab       int
		approximate bool
		tol         float64
	}{{"clustered", 20_000, true, 1e-3}, {"exact", 2000, false, 0}} {
		t.Run(tt.name, func(t *testing.T) {
			b := topicBundle(t, tt.vocab, 16)
			if got := b.Scoring().Approximate; got != tt.approximate {
				t.Fatalf("Scoring().Approximate = %t, want %t", got, tt.approximate)
			}
			clicks, fresh := sessionClicks(tt.vocab, 100, 7)
			var with, plain, exact, probs []float32
			var hw, hp []Hint
			pages := make([]int64, 0, 12)
			got := make([]float32, 12)
			for i, p := range clicks {
				if fresh[i] {
					with, plain, exact = with[:0], plain[:0], exact[:0]
				}
				pages = append(pages[:0], 0, 1, int64(tt.vocab-1), int64(tt.vocab), -1, clicks[(i+7)%len(clicks)], int64(i*37%tt.vocab))
				var err error
				if hp, plain, err = b.StepTopK(ctx, p, plain, 5, 0.01, hp); err != nil {
					t.Fatal(err)
				}
				for _, h := range hp {
					pages = append(pages, h.Page)
				}
				if hw, with, err = b.StepTopKWith(ctx, p, with, 5, 0.01, hw, pages, got); err != nil {
					t.Fatal(err)
				}
				if probs, exact, err = b.Step(ctx, p, exact, probs); err != nil {
					t.Fatal(err)
				}
				if !agreement(hw, hp, 0) || !slices.Equal(with, plain) {
					t.Fatalf("click %d: StepTopKWith hints %v and state differ from StepTopK's %v", i, hw, hp)
				}
				checkProbs := func(form string) {
					for j, pg := range pages {
						var want float32
						if pg >= 0 && pg < int64(tt.vocab) {
							want = probs[pg]
						}
						if d := math.Abs(float64(got[j] - want)); d > tt.tol {
							t.Errorf("click %d, %s, page %d: probability %g, want %g", i, form, pg, got[j], want)
						}
					}
				}
				checkProbs("step")
				// The sequence form on the session so far, likewise.
				start := i
				for start > 0 && !fresh[start] {
					start--
				}
				hist := clicks[start : i+1]
				if hw, err = b.PredictTopKWith(ctx, hist, 5, 0.01, hw, pages, got); err != nil {
					t.Fatal(err)
				}
				if hp, err = b.PredictTopK(ctx, hist, 5, 0.01, hp); err != nil {
					t.Fatal(err)
				}
				if probs, err = b.PredictOne(ctx, hist, probs); err != nil {
					t.Fatal(err)
				}
				if !agreement(hw, hp, 0) {
					t.Fatalf("history %d: PredictTopKWith hints %v differ from PredictTopK's %v", i, hw, hp)
				}
				checkProbs("sequence")
			}
		})
	}
}
