package training

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// maxTuneSessions caps the validation sessions a baseline is tuned on: the
// last ones, the same the GRU stops early on.
const maxTuneSessions = maxValidation

// Params are the hyperparameters of a model, by name.
type Params map[string]float64

// String lists the parameters sorted by name, "name=value" separated by
// spaces.
func (p Params) String() string {
	keys := slices.Sorted(maps.Keys(p))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.FormatFloat(p[k], 'g', 4, 64)
	}
	return strings.Join(parts, " ")
}

// tuneParam is one hyperparameter and the values tried.
type tuneParam struct {
	name   string
	values []float64
}

// tunePasses is the default number of coordinate-ascent passes.
const tunePasses = 2

// tuneGrid searches params by coordinate ascent on the MRR@20 of val:
// passes over the parameters in order, each tried at every value with the
// others at their best so far (the first value of each to start). build
// makes the model of a setting. It returns the best setting and its
// validation MRR@20.
func tuneGrid(ctx context.Context, logger *slog.Logger, name string, val [][]int64, eval EvalConfig, passes int,
	params []tuneParam, build func(Params) (Predictor, error)) (Params, float64, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	best := Params{}
	for _, p := range params {
		best[p.name] = p.values[0]
	}
	if len(val) == 0 {
		return best, 0, nil
	}
	scores := map[string]float64{}
	score := func(set Params) (float64, error) {
		key := set.String()
		if s, ok := scores[key]; ok {
			return s, nil
		}
		m, err := build(set)
		if err != nil {
			return 0, err
		}
		res, err := Evaluate(ctx, name, m, val, eval)
		if err != nil {
			return 0, err
		}
		scores[key] = res.MRRAt20
		logger.Debug("tuning", "model", name, "params", key, "val_mrr_at_20", res.MRRAt20)
		return res.MRRAt20, nil
	}
	bestScore, err := score(best)
	if err != nil {
		return nil, 0, err
	}
	for range passes {
		for _, p := range params {
			if len(p.values) < 2 {
				continue
			}
			for _, v := range p.values {
				set := maps.Clone(best)
				set[p.name] = v
				s, err := score(set)
				if err != nil {
					return nil, 0, err
				}
				if s > bestScore {
					best, bestScore = set, s
				}
			}
		}
	}
	logger.Info("tuned", "model", name, "params", best.String(), "val_mrr_at_20", bestScore, "settings_tried", len(scores))
	return best, bestScore, nil
}

// tuneSplit returns the part of the training sequences a baseline is fitted
// on while tuning and the validation part (the last fraction, at most its
// last maxTuneSessions sessions).
func tuneSplit(train [][]int64, fraction float64) (fit, val [][]int64) {
	n := int(float64(len(train)) * fraction)
	fit, val = train[:len(train)-n], train[len(train)-n:]
	if len(val) > maxTuneSessions {
		val = val[len(val)-maxTuneSessions:]
	}
	return fit, val
}

func checkSeqs(name string, seqs [][]int64, vocabSize int) error {
	if vocabSize < 3 {
		return fmt.Errorf("%s: vocabulary of %d has no pages", name, vocabSize)
	}
	for _, s := range seqs {
		for _, p := range s {
			if p <= 0 || p >= int64(vocabSize) {
				return fmt.Errorf("%s: page index %d outside 1..%d", name, p, vocabSize-1)
			}
		}
	}
	return nil
}

// normalize scales dst to sum to 1 and returns false when it sums to 0.
func normalize(dst []float32) bool {
	var sum float64
	for _, v := range dst {
		sum += float64(v)
	}
	if sum <= 0 {
		return false
	}
	inv := 1 / sum
	for i, v := range dst {
		dst[i] = float32(float64(v) * inv)
	}
	return true
}
