package training

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Names of the baselines in reports.
const (
	ModelMarkov2 = "markov2"
	ModelNGram   = "ngram"
	ModelSR      = "sr"
	ModelVSKNN   = "vsknn"
	ModelSTAN    = "stan"
)

// maxKNNTuneSessions caps the validation sessions of the session-kNN
// models, whose predictions cost the most; they are also tuned in one
// coordinate pass.
const maxKNNTuneSessions = 1000

// Baseline is a trained baseline with the hyperparameters chosen on the
// validation split and the time its tuning and training took.
type Baseline struct {
	Name      string
	Predictor Predictor
	Params    Params
	// ValMRR20 is the MRR@20 of the chosen setting on the validation
	// sessions (fitted on the rest of the training sessions).
	ValMRR20 float64
	Seconds  float64
}

// baselineSpec is how one baseline is tuned and trained: prepare does the
// work shared by every setting on a set of training sequences (counting,
// indexing) and returns the builder of one setting.
type baselineSpec struct {
	name    string
	maxVal  int // validation sessions scored per setting; 0: maxTuneSessions
	passes  int // coordinate-ascent passes; 0: tunePasses
	params  []tuneParam
	prepare func(seqs [][]int64) (func(Params) (Predictor, error), error)
}

// TrainBaselines tunes every baseline (popularity, markov1, markov2, ngram,
// sr, vsknn, stan) on the last valFraction of train by MRR@20, fitting on
// the rest, and retrains it on the whole of train with the chosen
// setting. alpha is the first markov1 smoothing tried. It returns
// ctx.Err() (wrapped) when ctx ends.
func TrainBaselines(ctx context.Context, logger *slog.Logger, train [][]int64, vocabSize int, valFraction, alpha float64, eval EvalConfig) ([]Baseline, error) {
	if err := checkSeqs("baselines", train, vocabSize); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	fit, val := tuneSplit(train, valFraction)
	// markov1 is needed by markov2 in every fit, with its own tuned alpha.
	var mkAlpha float64
	var out []Baseline
	for _, spec := range baselineSpecs(vocabSize, alpha, &mkAlpha) {
		start := time.Now()
		build, err := spec.prepare(fit)
		if err != nil {
			return nil, err
		}
		sval := val
		if spec.maxVal > 0 && len(sval) > spec.maxVal {
			sval = sval[len(sval)-spec.maxVal:]
		}
		best, valMRR, err := tuneGrid(ctx, logger, spec.name, sval, eval, cmp.Or(spec.passes, tunePasses), spec.params, build)
		if err != nil {
			return nil, err
		}
		if spec.name == ModelMarkov {
			mkAlpha = best["alpha"]
		}
		build, err = spec.prepare(train)
		if err != nil {
			return nil, err
		}
		p, err := build(best)
		if err != nil {
			return nil, err
		}
		out = append(out, Baseline{Name: spec.name, Predictor: p, Params: best, ValMRR20: valMRR,
			Seconds: time.Since(start).Seconds()})
		logger.Info("baseline trained", "model", spec.name, "params", best.String(), "seconds", time.Since(start).Seconds())
	}
	return out, nil
}

func baselineSpecs(v int, alpha float64, mkAlpha *float64) []baselineSpec {
	if alpha == 0 {
		alpha = 0.01
	}
	return []baselineSpec{
		{name: ModelPopularity, prepare: func(seqs [][]int64) (func(Params) (Predictor, error), error) {
			pop, err := TrainPopularity(seqs, v)
			return func(Params) (Predictor, error) { return pop, nil }, err
		}},
		{name: ModelMarkov, params: []tuneParam{{"alpha", []float64{alpha, 0.001, 0.1, 1}}},
			prepare: func(seqs [][]int64) (func(Params) (Predictor, error), error) {
				return func(p Params) (Predictor, error) {
					return TrainMarkov(seqs, v, MarkovConfig{Alpha: p["alpha"]})
				}, nil
			}},
		{name: ModelMarkov2, params: []tuneParam{{"min_count", []float64{1, 2, 3, 5, 10}}},
			prepare: func(seqs [][]int64) (func(Params) (Predictor, error), error) {
				first, err := TrainMarkov(seqs, v, MarkovConfig{Alpha: *mkAlpha})
				if err != nil {
					return nil, err
				}
				c := countNgrams(seqs, v)
				return func(p Params) (Predictor, error) {
					return &Markov2{counts: c, first: first, minCount: p["min_count"]}, nil
				}, nil
			}},
		{name: ModelNGram, params: []tuneParam{{"order", []float64{4, 2, 3, 5}}, {"discount", []float64{0.5, 0.1, 0.3, 0.7, 0.9, 0.95}}},
			prepare: func(seqs [][]int64) (func(Params) (Predictor, error), error) {
				c := countNgrams(seqs, v)
				return func(p Params) (Predictor, error) {
					return &NGram{counts: c, order: int(p["order"]), discount: p["discount"]}, nil
				}, nil
			}},
		{name: ModelSR, params: []tuneParam{{"steps", []float64{10, 3, 5, 20}}, {"weighting", []float64{SRDiv, SRLinear, SRSame, SRLog, SRQuadratic}}},
			prepare: func(seqs [][]int64) (func(Params) (Predictor, error), error) {
				pop, err := TrainPopularity(seqs, v)
				return func(p Params) (Predictor, error) {
					return TrainSR(seqs, v, int(p["steps"]), int(p["weighting"]), pop), nil
				}, err
			}},
		{name: ModelVSKNN, maxVal: maxKNNTuneSessions, passes: 1, params: []tuneParam{{"remind", []float64{0, 1}},
			{"skip_current", []float64{1, 0}}, {"k", []float64{200, 100, 50, 500}}, {"sample", []float64{2000, 1000, 500}},
			{"weighting", []float64{KNNDiv, KNNLinear, KNNSame, KNNQuadratic}},
			{"weighting_score", []float64{KNNScoreQuadratic, KNNScoreDiv, KNNScoreSame, KNNScoreLinear, KNNScoreLog}},
			{"idf", []float64{1, 0, 2, 5}}},
			prepare: func(seqs [][]int64) (func(Params) (Predictor, error), error) {
				x, err := knnPrepare(seqs, v)
				return func(p Params) (Predictor, error) {
					return &VSKNN{x: x, k: int(p["k"]), sample: int(p["sample"]), weighting: int(p["weighting"]),
						skipCurrent: p["skip_current"] == 1, scoreWeighting: int(p["weighting_score"]), idf: p["idf"],
						noRemind: p["remind"] == 0}, nil
				}, err
			}},
		{name: ModelSTAN, maxVal: maxKNNTuneSessions, passes: 1, params: []tuneParam{{"remind", []float64{0, 1}},
			{"skip_current", []float64{1, 0}}, {"k", []float64{200, 100, 50, 500}}, {"lambda1", []float64{0.5, 0.25, 1, 2, 4, 8}},
			{"lambda2_share", []float64{0.3, 0.03, 0.1, 1, 0}}, {"lambda3", []float64{1, 0.5, 2, 4, 8}}, {"sample", []float64{2000, 1000}}},
			prepare: func(seqs [][]int64) (func(Params) (Predictor, error), error) {
				x, err := knnPrepare(seqs, v)
				return func(p Params) (Predictor, error) {
					n := float64(len(seqs))
					return &STAN{x: x, k: int(p["k"]), sample: int(p["sample"]), lambda1: p["lambda1"],
						lambda2: p["lambda2_share"] * n, lambda3: p["lambda3"], now: n, skipCurrent: p["skip_current"] == 1,
						noRemind: p["remind"] == 0}, nil
				}, err
			}},
	}
}

func knnPrepare(seqs [][]int64, v int) (*knnIndex, error) {
	pop, err := TrainPopularity(seqs, v)
	if err != nil {
		return nil, fmt.Errorf("session knn: %w", err)
	}
	return newKNNIndex(seqs, v, pop), nil
}
