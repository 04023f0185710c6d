package training

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"testing"
	"time"
)

func repeat(n int, seqs ...[]int64) [][]int64 {
	var out [][]int64
	for range n {
		out = append(out, seqs...)
	}
	return out
}

// checkProbs compares the probabilities of the listed pages and checks that
// the distribution sums to 1.
func checkProbs(t *testing.T, got []float32, want map[int64]float64) {
	t.Helper()
	var sum float64
	for _, v := range got {
		sum += float64(v)
	}
	if math.Abs(sum-1) > 1e-5 {
		t.Errorf("probabilities sum to %v, want 1", sum)
	}
	for id, w := range want {
		if math.Abs(float64(got[id])-w) > 1e-5 {
			t.Errorf("P(%d) = %v, want %v", id, got[id], w)
		}
	}
}

func TestMarkov2Backoff(t *testing.T) {
	// After page 3: 2 three times, 4 twice, so first order prefers 2; the
	// pair (2, 3) was followed by 4 twice, the pair (5, 3) by 2 three times.
	seqs := append(repeat(2, []int64{2, 3, 4}), repeat(3, []int64{5, 3, 2})...)
	const v = 6
	first, err := TrainMarkov(seqs, v, MarkovConfig{Alpha: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	c := countNgrams(seqs, v)
	p1 := first.Row(3)
	for _, tc := range []struct {
		name     string
		minCount float64
		history  []int64
		want     map[int64]float64
	}{
		{"pair seen enough", 2, []int64{2, 3}, map[int64]float64{4: 1 - markov2Tie + markov2Tie*float64(p1[4]), 2: markov2Tie * float64(p1[2])}},
		{"pair seen too rarely backs off", 3, []int64{2, 3}, map[int64]float64{4: float64(p1[4]), 2: float64(p1[2])}},
		{"other pair", 3, []int64{5, 3}, map[int64]float64{2: 1 - markov2Tie + markov2Tie*float64(p1[2])}},
		{"unseen pair backs off", 1, []int64{4, 3}, map[int64]float64{4: float64(p1[4]), 2: float64(p1[2])}},
		{"one page backs off", 1, []int64{3}, map[int64]float64{4: float64(p1[4]), 2: float64(p1[2])}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Markov2{counts: c, first: first, minCount: tc.minCount}
			checkProbs(t, m.Predict(tc.history, nil), tc.want)
		})
	}
}

func TestNGramInterpolation(t *testing.T) {
	// Unigram counts 2:2 3:3 4:2 5:1 6:1 (9 views, add-one over 6 indices:
	// denominator 15). After 3: 4 twice, 5 once. After (2, 3): 4 once, 5
	// once. After (6, 3): 4 once.
	seqs := [][]int64{{2, 3, 4}, {2, 3, 5}, {6, 3, 4}}
	c := countNgrams(seqs, 7)
	const d = 0.5
	p0 := map[int64]float64{2: 3.0 / 15, 4: 3.0 / 15, 5: 2.0 / 15, 1: 1.0 / 15}
	p1 := map[int64]float64{ // (c - d)/3 + d*2/3 * p0
		4: 1.5/3 + 1.0/3*p0[4], 5: 0.5/3 + 1.0/3*p0[5], 2: 1.0 / 3 * p0[2],
	}
	for _, tc := range []struct {
		name    string
		order   int
		history []int64
		want    map[int64]float64
	}{
		{"unigram", 1, []int64{2, 3}, p0},
		{"bigram", 2, []int64{2, 3}, p1},
		{"trigram", 3, []int64{2, 3}, map[int64]float64{ // (1 - d)/2 + d*2/2 * p1
			4: 0.25 + 0.5*p1[4], 5: 0.25 + 0.5*p1[5], 2: 0.5 * p1[2]}},
		{"trigram other context", 3, []int64{6, 3}, map[int64]float64{4: 0.5 + 0.5*p1[4], 5: 0.5 * p1[5]}},
		{"unseen trigram backs off to bigram", 4, []int64{4, 3}, p1},
		{"unseen page backs off to unigram", 3, []int64{5}, p0},
		{"empty history", 3, nil, p0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &NGram{counts: c, order: tc.order, discount: d}
			checkProbs(t, m.Predict(tc.history, nil), tc.want)
		})
	}
}

func TestSRWeighting(t *testing.T) {
	seqs := [][]int64{{2, 3, 4}, {5, 5}}
	pop, err := TrainPopularity(seqs, 7)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name             string
		steps, weighting int
		history          []int64
		want             map[int64]float64
	}{
		// rules from 2: 3 at distance 1, 4 at distance 2
		{"div", 2, SRDiv, []int64{2}, map[int64]float64{3: 1 / 1.5, 4: 0.5 / 1.5}},
		{"quadratic", 2, SRQuadratic, []int64{2}, map[int64]float64{3: 0.8, 4: 0.2}},
		{"linear", 2, SRLinear, []int64{2}, map[int64]float64{3: 0.9 / 1.7, 4: 0.8 / 1.7}}, // 1 - 0.1 d
		{"same", 5, SRSame, []int64{2}, map[int64]float64{3: 0.5, 4: 0.5}},
		{"one step", 1, SRDiv, []int64{2}, map[int64]float64{3: 1, 4: 0}},
		{"last page only", 2, SRDiv, []int64{2, 3}, map[int64]float64{4: 1, 3: 0}},
		{"no rules: popularity", 2, SRDiv, []int64{4}, map[int64]float64{5: 2.0 / 5, 3: 1.0 / 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := TrainSR(seqs, 7, tc.steps, tc.weighting, pop)
			checkProbs(t, m.Predict(tc.history, nil), tc.want)
		})
	}
}

func TestVSKNNNeighbours(t *testing.T) {
	// Sessions 0..3; the history [2 3] shares both pages with session 0,
	// page 2 with session 1, page 3 with session 3, nothing with session 2.
	seqs := [][]int64{{2, 3}, {2, 4}, {5, 6}, {3, 4}}
	x, err := knnPrepare(seqs, 7)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("sample keeps the latest sessions", func(t *testing.T) {
		sc := x.scratch.Get().(*knnScratch)
		x.currentItems([]int64{2, 3}, sc, knnWeight(KNNSame))
		x.neighbours(sc, 2)
		want := []neighbour{{3, 1, 1}, {1, 1, 2}}
		if !slices.Equal(sc.nbs, want) {
			t.Errorf("neighbours %v, want %v", sc.nbs, want)
		}
		x.neighbours(sc, 10)
		want = []neighbour{{3, 1, 1}, {1, 1, 2}, {0, 2, 1}}
		if !slices.Equal(sc.nbs, want) {
			t.Errorf("neighbours %v, want %v", sc.nbs, want)
		}
	})
	for _, tc := range []struct {
		name    string
		m       *VSKNN
		history []int64
		want    map[int64]float64
	}{
		// k=2: session 0 (sim 2) and session 3 (sim 1, later than 1).
		{"same weights", &VSKNN{x: x, k: 2, sample: 10, weighting: KNNSame}, []int64{2, 3},
			map[int64]float64{2: 2.0 / 6, 3: 3.0 / 6, 4: 1.0 / 6}},
		{"skip current", &VSKNN{x: x, k: 2, sample: 10, weighting: KNNSame, skipCurrent: true}, []int64{2, 3},
			map[int64]float64{2: 2.0 / 3, 3: 0, 4: 1.0 / 3}},
		// linear: page 2 weighs 1/2, page 3 weighs 1: session 0 sim 1.5,
		// session 3 sim 1, session 1 sim 0.5.
		{"linear weights", &VSKNN{x: x, k: 3, sample: 10, weighting: KNNLinear}, []int64{2, 3},
			map[int64]float64{2: 2.0 / 6, 3: 2.5 / 6, 4: 1.5 / 6}},
		{"no neighbour: popularity", &VSKNN{x: x, k: 2, sample: 10}, []int64{}, map[int64]float64{2: 0.25, 6: 0.125}},
		// remind 0: the history's pages are never proposed.
		{"no remind", &VSKNN{x: x, k: 2, sample: 10, weighting: KNNSame, noRemind: true}, []int64{2, 3},
			map[int64]float64{2: 0, 3: 0, 4: 1}},
		// 1/d by the clicks back to the newest shared page: sessions 0
		// and 3 hold the last page (d = 1), session 1 only page 2 (d = 2):
		// 2 scores 2 + 0.5, 3 2 + 1, 4 1 + 0.5.
		{"score weighting", &VSKNN{x: x, k: 3, sample: 10, weighting: KNNSame, scoreWeighting: KNNScoreDiv}, []int64{2, 3},
			map[int64]float64{2: 2.5 / 7, 3: 3.0 / 7, 4: 1.5 / 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkProbs(t, tc.m.Predict(tc.history, nil), tc.want)
		})
	}
}

func TestVSKNNIDF(t *testing.T) {
	// Four sessions; page 3 is viewed once, page 4 three times. After
	// page 2, sessions 0 and 1 are the neighbours (similarity 1 each), so
	// 3 and 4 tie without idf; with idf 1 each vote gains idf x log(4 /
	// views).
	seqs := [][]int64{{2, 3}, {2, 4}, {4, 5}, {4, 6}}
	x, err := knnPrepare(seqs, 7)
	if err != nil {
		t.Fatal(err)
	}
	s3, s4 := 1+math.Log(4), 1+math.Log(4.0/3)
	for _, tc := range []struct {
		name string
		idf  float64
		want map[int64]float64
	}{
		{"none", 0, map[int64]float64{3: 0.5, 4: 0.5}},
		{"idf 1", 1, map[int64]float64{3: s3 / (s3 + s4), 4: s4 / (s3 + s4)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &VSKNN{x: x, k: 10, sample: 10, weighting: KNNSame, skipCurrent: true, idf: tc.idf}
			checkProbs(t, m.Predict([]int64{2}, nil), tc.want)
		})
	}
}

func TestSTANWeights(t *testing.T) {
	seqs := [][]int64{{2, 3, 4}, {5, 6}, {3, 5}}
	x, err := knnPrepare(seqs, 7)
	if err != nil {
		t.Fatal(err)
	}
	e1 := math.Exp(-1)
	// History [2 3] with lambda1 = 1: page 3 weighs 1, page 2 e^-1.
	// Session 0: cosine (1 + e^-1) / sqrt(2*3); session 2: 1 / sqrt(2*2).
	sim0, sim2 := (1+e1)/math.Sqrt(6), 0.5
	for _, tc := range []struct {
		name string
		m    *STAN
		want map[int64]float64
	}{
		// k=1 keeps session 0; page 3 sits at position 1, pages 2 and 4
		// one step away.
		{"nearest session", &STAN{x: x, k: 1, sample: 10, lambda1: 1, lambda3: 1, now: 3},
			map[int64]float64{2: e1 / (1 + 2*e1), 3: 1 / (1 + 2*e1), 4: e1 / (1 + 2*e1)}},
		{"two sessions, current skipped", &STAN{x: x, k: 2, sample: 10, lambda1: 1, lambda3: 1, now: 3, skipCurrent: true},
			map[int64]float64{2: sim0 * e1 / (2*sim0*e1 + sim2*e1), 4: sim0 * e1 / (2*sim0*e1 + sim2*e1), 5: sim2 * e1 / (2*sim0*e1 + sim2*e1)}},
		// lambda2 = 1: session 0 is 3 sessions old (e^-3), session 2 one
		// (e^-1), so session 2 is the nearest.
		{"no remind", &STAN{x: x, k: 2, sample: 10, lambda1: 1, lambda3: 1, now: 3, noRemind: true},
			map[int64]float64{2: 0, 3: 0, 4: sim0 / (sim0 + sim2), 5: sim2 / (sim0 + sim2)}},
		{"recency", &STAN{x: x, k: 1, sample: 10, lambda1: 1, lambda2: 1, lambda3: 1, now: 3, skipCurrent: true},
			map[int64]float64{5: 1, 2: 0, 4: 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkProbs(t, tc.m.Predict([]int64{2, 3}, nil), tc.want)
		})
	}
}

func TestTuneGridPicksBest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The model predicts page a after any history, b second; the
	// validation transition is 2 -> 4, so a = 4 is best, then b decides
	// nothing.
	val := [][]int64{{2, 4}}
	build := func(p Params) (Predictor, error) {
		probs := make([]float32, 6)
		probs[int(p["a"])], probs[int(p["b"])] = 0.6, 0.4
		return &Popularity{probs: probs}, nil
	}
	got, score, err := tuneGrid(ctx, slog.New(slog.DiscardHandler), "test", val, EvalConfig{}, 2,
		[]tuneParam{{"a", []float64{2, 3, 4, 5}}, {"b", []float64{5, 3}}}, build)
	if err != nil {
		t.Fatal(err)
	}
	if got["a"] != 4 || got["b"] != 5 || score != 1 {
		t.Errorf("tuned %v with MRR@20 %v, want a=4 b=5 with 1", got, score)
	}
	got, _, err = tuneGrid(ctx, nil, "test", nil, EvalConfig{}, 1, []tuneParam{{"a", []float64{2, 3}}}, build)
	if err != nil || got["a"] != 2 {
		t.Errorf("tuning without validation = %v, %v; want the first value", got, err)
	}
}

func TestTrainBaselinesNamesAndParams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A cycle 2 -> 3 -> 4 -> 2: the sequence models learn it; the kNN
	// models cannot (every session holds every page).
	var seqs [][]int64
	for i := range 60 {
		s := []int64{}
		for j := range 6 {
			s = append(s, int64(2+(i+j)%3))
		}
		seqs = append(seqs, s)
	}
	bs, err := TrainBaselines(ctx, nil, seqs, 5, 0.1, 0.01, EvalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range bs {
		names = append(names, b.Name)
		if b.Name == ModelPopularity {
			continue
		}
		if len(b.Params) == 0 {
			t.Errorf("%s has no tuned parameters", b.Name)
		}
		if b.Name == ModelVSKNN || b.Name == ModelSTAN {
			continue
		}
		res, err := Evaluate(ctx, b.Name, b.Predictor, [][]int64{{2, 3, 4, 2}}, EvalConfig{})
		if err != nil || res.RecallAt1 != 1 {
			t.Errorf("%s Recall@1 on the cycle = %v (%v), want 1", b.Name, res.RecallAt1, err)
		}
	}
	want := []string{ModelPopularity, ModelMarkov, ModelMarkov2, ModelNGram, ModelSR, ModelVSKNN, ModelSTAN}
	if !slices.Equal(names, want) {
		t.Errorf("baselines %v, want %v", names, want)
	}
	if _, err := TrainBaselines(ctx, nil, [][]int64{{2, 9}}, 5, 0.1, 0.01, EvalConfig{}); err == nil {
		t.Error("TrainBaselines with a page outside the vocabulary succeeded")
	}
}
