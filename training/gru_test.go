package training

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func tinyGRU(t *testing.T, v, d, h int) gruParams {
	t.Helper()
	p := newGRUParams(v, d, h)
	p.init(rand.New(rand.NewPCG(3, 4)))
	// Larger weights than the default init exercise the nonlinearities.
	for _, ts := range p.tensors() {
		for i := range ts {
			ts[i] *= 2
		}
	}
	clear(p.Emb[:d])
	return p
}

// TestGRUGradientCheck compares backpropagation through time with central
// finite differences of the loss, for the full and the sampled softmax,
// with and without an n-gram teacher in the target, with and without the
// last-page skip term.
func TestGRUGradientCheck(t *testing.T) {
	const v, d, h = 7, 3, 4
	batch := packBatch([][]int64{{2, 3, 4, 1, 6}, {5, 2}, {3, 3, 6, 2}})
	sampler := newNegSampler([][]int64{{2, 3, 4, 5, 6, 1}}, v)
	cand := []int64{1, 2, 3, 4, 5, 6} // every page: the batch holds them all
	kd := newDistiller([][]int64{{2, 3, 4, 5}, {3, 4, 6}, {2, 3, 4, 6, 1}}, v, 3, 0.5, 0.4)
	tests := []struct {
		name string
		loss func(p *gruParams, grad *gruParams) float64
	}{
		{"full softmax", func(p, grad *gruParams) float64 {
			l, _ := p.lossAndGrad(batch, grad, &gruWork{})
			return l
		}},
		{"sampled softmax", func(p, grad *gruParams) float64 {
			l, _ := p.lossAndGradSampled(batch, grad, &gruWork{}, sampler, 3, cand)
			return l
		}},
		{"full softmax distilled", func(p, grad *gruParams) float64 {
			l, _ := p.lossAndGrad(batch, grad, &gruWork{kd: kd, exactLoss: true})
			return l
		}},
		{"sampled softmax distilled", func(p, grad *gruParams) float64 {
			l, _ := p.lossAndGradSampled(batch, grad, &gruWork{kd: kd, exactLoss: true}, sampler, 3, cand)
			return l
		}},
	}
	for _, tc := range tests {
		for _, skip := range []bool{false, true} {
			name := tc.name
			if skip {
				name += " skip"
			}
			t.Run(name, func(t *testing.T) { checkGRUGradient(t, tc.loss, skip) })
		}
	}
}

// checkGRUGradient compares the gradient loss adds for a tiny GRU (with
// the last-page skip term when skip) with central finite differences.
func checkGRUGradient(t *testing.T, loss func(p, grad *gruParams) float64, skip bool) {
	const v, d, h = 7, 3, 4
	p := tinyGRU(t, v, d, h)
	if skip {
		p.Skip = make([]float32, v*h)
		rng := rand.New(rand.NewPCG(5, 6))
		for i := h; i < len(p.Skip); i++ {
			p.Skip[i] = float32(rng.NormFloat64())
		}
	}
	grad := p.zeros()
	loss(&p, &grad)
	names := []string{"Emb", "Wx", "Rh", "BW", "BR", "Wo", "Bo", "Skip"}
	const eps = 1e-2
	checked := 0
	for k, w := range p.tensors() {
		g := grad.tensors()[k]
		for i := range w {
			if k == 0 && i < d {
				continue // padding row is not trained
			}
			orig := w[i]
			w[i] = orig + eps
			lp := loss(&p, ptr(p.zeros()))
			w[i] = orig - eps
			lm := loss(&p, ptr(p.zeros()))
			w[i] = orig
			num := (lp - lm) / (2 * eps)
			if diff := math.Abs(num - float64(g[i])); diff > 2e-3+2e-2*math.Max(math.Abs(num), math.Abs(float64(g[i]))) {
				t.Errorf("%s[%d]: backprop %.6f, finite difference %.6f", names[k], i, g[i], num)
			}
			checked++
		}
	}
	if checked < 100 {
		t.Fatalf("checked only %d weights", checked)
	}
}

func ptr[T any](v T) *T { return &v }

// TestGRUPredictMatchesBatchForward checks the inference path against the
// training forward pass, and the step path against the sequence path.
func TestGRUPredictMatchesBatchForward(t *testing.T) {
	p := tinyGRU(t, 9, 4, 5)
	g := &GRU{p: p}
	row := []int64{0, 0, 3, 8, 2, 1}
	b := packBatch([][]int64{row})
	w := &gruWork{}
	p.forward(b, w)
	probs := g.Predict(row, nil)
	want := make([]float32, p.V)
	p.output(w.hs[len(row)*p.H:(len(row)+1)*p.H], want)
	if !closeTo(probs, want, 1e-6) {
		t.Fatalf("Predict = %v, batch forward gives %v", probs, want)
	}
	var state []float32
	var stepProbs []float32
	for _, id := range row {
		stepProbs, state = g.Step(id, state)
	}
	if !closeTo(stepProbs, probs, 1e-6) {
		t.Fatalf("Step path = %v, sequence path %v", stepProbs, probs)
	}
	var sum float64
	for _, x := range probs {
		sum += float64(x)
	}
	if math.Abs(sum-1) > 1e-5 {
		t.Errorf("probabilities sum to %v, want 1", sum)
	}
}

// TestTrainGRULearnsCycle trains on a deterministic cycle that a
// first-order model cannot resolve (the page after 3 depends on the page
// before it) and expects the GRU to beat Markov on held-out data.
func TestTrainGRULearnsCycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(1, 2))
	var seqs [][]int64
	for range 400 {
		// Two interleaved patterns: 2 3 4 ... and 5 3 6 ...
		var s []int64
		for range 2 + rng.IntN(4) {
			if rng.IntN(2) == 0 {
				s = append(s, 2, 3, 4)
			} else {
				s = append(s, 5, 3, 6)
			}
		}
		seqs = append(seqs, s)
	}
	train, test := seqs[:320], seqs[320:]
	mk, _ := TrainMarkov(train, 7, MarkovConfig{})
	mr, _ := Evaluate(ctx, "markov1", mk, test, EvalConfig{})
	for _, tc := range []struct {
		name    string
		full    bool
		sampled int
		tied    bool
		emb     int
		dropout float64
		distill float64
	}{{"full softmax", true, 0, false, 8, 0, 0}, {"sampled softmax", false, 2, false, 8, 0, 0},
		{"tied embeddings with dropout", false, 2, true, 16, 0.1, 0},
		{"full softmax distilled", true, 0, false, 8, 0, 0.8}, {"sampled softmax distilled", false, 2, false, 8, 0, 0.5}} {
		t.Run(tc.name, func(t *testing.T) {
			g, stats, err := TrainGRU(ctx, nil, train, 7, GRUConfig{Embedding: tc.emb, Hidden: 16, Epochs: 15, Patience: 5,
				BatchSize: 16, LearningRate: 0.02, LRDecay: 1, FullSoftmax: tc.full, Sampled: tc.sampled, Seed: 1,
				Tied: tc.tied, DropoutEmbedding: tc.dropout, DropoutHidden: tc.dropout, Distill: &tc.distill})
			if err != nil {
				t.Fatalf("TrainGRU: %v", err)
			}
			if stats.Epochs == 0 || stats.SequencesPerSecond <= 0 || stats.PeakMemoryBytes == 0 {
				t.Errorf("stats = %+v, want epochs, throughput and memory", stats)
			}
			if tc.tied && !slices.Equal(g.p.Wo, g.p.Emb) {
				t.Error("tied model's output weights differ from its embeddings")
			}
			gr, _ := Evaluate(ctx, "gru", g, test, EvalConfig{})
			if gr.RecallAt1 <= mr.RecallAt1+0.05 {
				t.Errorf("gru Recall@1 %.3f, markov %.3f: want the gru clearly ahead", gr.RecallAt1, mr.RecallAt1)
			}
		})
	}
}

func TestDropout(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct {
		name string
		rate float32
	}{{"none", 0}, {"quarter", 0.25}, {"half", 0.5}} {
		t.Run(tc.name, func(t *testing.T) {
			x := make([]float32, 20000)
			for i := range x {
				x[i] = 1
			}
			mask := dropout(x, nil, tc.rate, rng)
			if tc.rate == 0 {
				if mask != nil || slices.ContainsFunc(x, func(v float32) bool { return v != 1 }) {
					t.Fatal("rate 0 changed the input or returned a mask")
				}
				return
			}
			zeros := 0
			for i, v := range x {
				if v != mask[i] || (v != 0 && math.Abs(float64(v)-1/float64(1-tc.rate)) > 1e-6) {
					t.Fatalf("x[%d] = %v with mask %v, want 0 or 1/(1-rate)", i, v, mask[i])
				}
				if v == 0 {
					zeros++
				}
			}
			if got := float64(zeros) / float64(len(x)); math.Abs(got-float64(tc.rate)) > 0.02 {
				t.Errorf("dropped %.3f of the elements, want %.2f", got, tc.rate)
			}
			g := make([]float32, len(x))
			for i := range g {
				g[i] = 2
			}
			applyMask(g, mask)
			for i := range g {
				if g[i] != 2*mask[i] {
					t.Fatalf("gradient %d = %v, want %v", i, g[i], 2*mask[i])
				}
			}
		})
	}
	if err := (GRUConfig{Tied: true, Embedding: 8, Hidden: 16}).Validate(); err == nil {
		t.Error("tied embeddings with embedding 8 and hidden 16 validated")
	}
	if err := (GRUConfig{DropoutHidden: 1}).Validate(); err == nil {
		t.Error("dropout rate 1 validated")
	}
	for _, w := range []float64{-0.1, 1.5, math.NaN()} {
		if err := (GRUConfig{Distill: &w}).Validate(); err == nil {
			t.Errorf("distillation weight %v validated", w)
		}
	}
	if err := (GRUConfig{TeacherOrder: ngramMaxOrder + 1}).Validate(); err == nil {
		t.Errorf("teacher order %d validated", ngramMaxOrder+1)
	}
}

func TestExpNeg(t *testing.T) {
	for x := float32(-90); x <= 0; x += 0.0137 {
		want := math.Exp(float64(x))
		got := float64(expNeg(x))
		if math.Abs(got-want) > 2e-5*want+1e-37 {
			t.Fatalf("expNeg(%v) = %v, want %v", x, got, want)
		}
	}
}

func TestTrainGRUStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	seqs := [][]int64{{2, 3, 4}, {3, 4, 2}}
	if _, _, err := TrainGRU(ctx, nil, seqs, 5, GRUConfig{Hidden: 4, Embedding: 2}); !errors.Is(err, context.Canceled) {
		t.Fatalf("TrainGRU on a cancelled context: %v, want context.Canceled", err)
	}
	bad := []struct {
		name string
		seqs [][]int64
		cfg  GRUConfig
	}{
		{"index outside vocabulary", [][]int64{{2, 9}}, GRUConfig{}},
		{"padding inside a session", [][]int64{{2, 0, 3}}, GRUConfig{}},
		{"negative hidden", seqs, GRUConfig{Hidden: -1}},
		{"decay above 1", seqs, GRUConfig{LRDecay: 2}},
		{"no transitions", [][]int64{{2}, {3}}, GRUConfig{}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, _, err := TrainGRU(ctx, nil, tc.seqs, 5, tc.cfg); err == nil {
				t.Fatal("TrainGRU succeeded, want an error")
			}
		})
	}
}

// predictOnly hides a model's SessionPredictor, so Evaluate scores it one
// Predict per transition.
type predictOnly struct{ Predictor }

// TestEvaluateSessionsMatchesPredict: the GRU's evaluation, sessions shared
// out between goroutines with a running state each, gives exactly the
// figures of scoring every transition alone on its history, sessions
// longer than the history limit included.
func TestEvaluateSessionsMatchesPredict(t *testing.T) {
	p := newGRUParams(300, 8, 16)
	p.init(rand.New(rand.NewPCG(3, 4)))
	g := &GRU{p: p}
	rng := rand.New(rand.NewPCG(5, 6))
	test := make([][]int64, 700)
	for i := range test {
		test[i] = make([]int64, 2+rng.IntN(14))
		for j := range test[i] {
			test[i][j] = int64(1 + rng.IntN(299))
		}
	}
	cfg := EvalConfig{MaxSeqLen: 6, Threshold: 0.01}
	got, err := Evaluate(t.Context(), "gru", g, test, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Evaluate(t.Context(), "gru", predictOnly{g}, test, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got.Transitions == 0 || got.RecallAt20 == 0 {
		t.Fatalf("nothing scored: %+v", got)
	}
	if got.Transitions != want.Transitions || got.UnknownTargets != want.UnknownTargets ||
		!slices.Equal(got.RecallCurve, want.RecallCurve) || math.Abs(got.MRRAt20-want.MRRAt20) > 1e-12 ||
		got.Precision != want.Precision || got.Coverage != want.Coverage {
		t.Fatalf("sessions in parallel: %+v\nalone: %+v", got, want)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Evaluate(ctx, "gru", g, test, cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("Evaluate with a cancelled context: %v, want context.Canceled", err)
	}
}
