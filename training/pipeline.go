package training

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Model names used in reports and by Config.Export.
const (
	ModelPopularity = "popularity"
	ModelMarkov     = "markov1"
	ModelGRU        = "gru"
)

// Config is a whole offline run: vocabulary, split, models, evaluation and
// which model becomes the bundle.
type Config struct {
	// Name is the bundle name written in the manifest. Default "prefetchd".
	Name string
	// Version of the bundle; default the creation time (20060102T150405Z).
	Version string
	// Export is the model written as the bundle: ModelMarkov or ModelGRU.
	// Default ModelGRU.
	Export string
	// SkipGRU trains only the baselines (Export must then be ModelMarkov).
	SkipGRU bool
	Vocab   VocabConfig
	Split   SplitConfig
	Markov  MarkovConfig
	GRU     GRUConfig
	Eval    EvalConfig
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "prefetchd"
	}
	if c.Export == "" {
		c.Export = ModelGRU
		if c.SkipGRU {
			c.Export = ModelMarkov
		}
	}
	return c
}

// Validate checks the configuration and its parts.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Export != ModelMarkov && c.Export != ModelGRU {
		return fmt.Errorf("export model %q is neither %q nor %q", c.Export, ModelMarkov, ModelGRU)
	}
	if c.SkipGRU && c.Export == ModelGRU {
		return errors.New("cannot export the gru when it is skipped")
	}
	return errors.Join(c.Vocab.Validate(), c.Split.Validate(), c.Markov.Validate(), c.Eval.Validate(), c.GRU.Validate())
}

// Report is the outcome of a run, written as report.json.
type Report struct {
	Dataset       string `json:"dataset"`
	Sessions      int    `json:"sessions"`
	TrainSessions int    `json:"train_sessions"`
	TestSessions  int    `json:"test_sessions"`
	VocabSize     int    `json:"vocab_size"`
	Exported      string `json:"exported"`
	// BestBaseline is the baseline (any model but the exported one) with
	// the highest held-out MRR@20, and ExportedGain the exported model's
	// relative MRR@20 gain over it (0.05 is 5% better, negative is worse).
	BestBaseline string  `json:"best_baseline,omitempty"`
	ExportedGain float64 `json:"exported_gain_over_best_baseline"`
	// Verdict says in words whether the exported model beats BestBaseline.
	Verdict string    `json:"verdict,omitempty"`
	Results []Result  `json:"results"`
	GRU     *GRUStats `json:"gru_training,omitempty"`
	Created time.Time `json:"created"`
}

// Result returns the result of the named model, or nil.
func (r *Report) Result(name string) *Result {
	for i := range r.Results {
		if r.Results[i].Model == name {
			return &r.Results[i]
		}
	}
	return nil
}

// compareExported sets BestBaseline, ExportedGain and Verdict from the
// results.
func (r *Report) compareExported() {
	exp := r.Result(r.Exported)
	if exp == nil {
		return
	}
	var best *Result
	for i := range r.Results {
		res := &r.Results[i]
		if res.Model != r.Exported && (best == nil || res.MRRAt20 > best.MRRAt20) {
			best = res
		}
	}
	if best == nil {
		return
	}
	r.BestBaseline = best.Model
	r.ExportedGain = (exp.MRRAt20 - best.MRRAt20) / max(best.MRRAt20, 1e-12)
	if r.ExportedGain > 0 {
		r.Verdict = fmt.Sprintf("exported %s beats best baseline %s by %.1f%% MRR@20 (%.4f vs %.4f)",
			r.Exported, best.Model, 100*r.ExportedGain, exp.MRRAt20, best.MRRAt20)
	} else {
		r.Verdict = fmt.Sprintf("exported %s does not beat best baseline %s: MRR@20 %.4f vs %.4f (%+.1f%%)",
			r.Exported, best.Model, exp.MRRAt20, best.MRRAt20, 100*r.ExportedGain)
	}
}

// ErrNothingToScore is returned by Run when the split leaves no training
// session or no held-out transition to score: the figures would all be 0.
var ErrNothingToScore = errors.New("nothing to train on or to score")

// checkSplit returns an error matching ErrNothingToScore, with the counts
// and the fewest sessions the holdout fraction needs, when train is empty
// or test holds no transition (no session of two pages or more).
func checkSplit(n int, train, test []Session, cfg SplitConfig) error {
	transitions := 0
	for _, s := range test {
		transitions += max(len(s.Pages)-1, 0)
	}
	if len(train) > 0 && transitions > 0 {
		return nil
	}
	frac := cfg.HoldoutFraction
	if frac == 0 {
		frac = 0.2
	}
	// The fewest sessions of which the split holds one out and keeps one.
	need := max(int(math.Ceil(0.5/frac)), 2)
	for int(float64(need)*frac+0.5) < 1 {
		need++
	}
	for need-int(float64(need)*frac+0.5) < 1 {
		need++
	}
	return fmt.Errorf("%w: %d sessions split into %d for training and %d held out (holdout %v) with %d transitions to score; "+
		"need at least %d sessions, the held-out ones with 2 pages or more",
		ErrNothingToScore, n, len(train), len(test), frac, transitions, need)
}

// EmptyVocabError is returned by Run when no page of the training
// sessions enters the vocabulary: none is viewed MinCount times (or every
// page is one vocab.txt cannot hold).
type EmptyVocabError struct {
	MinCount, TrainSessions int
}

func (e *EmptyVocabError) Error() string {
	if e.MinCount <= 1 {
		return fmt.Sprintf("vocabulary: no page of the %d training sessions can enter it", e.TrainSessions)
	}
	return fmt.Sprintf("vocabulary: no page reached the min count (%d views) in the %d training sessions; lower the min count", e.MinCount, e.TrainSessions)
}

// Run builds the vocabulary on the training part of sessions, trains the
// models, evaluates them on the held-out part and returns the report and
// the bundle of the exported model. It returns early with ctx.Err() when
// ctx ends.
func Run(ctx context.Context, logger *slog.Logger, dataset string, sessions []Session, cfg Config) (*Report, *Bundle, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("training config: %w", err)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	train, test, err := Split(sessions, cfg.Split)
	if err != nil {
		return nil, nil, err
	}
	if err := checkSplit(len(sessions), train, test, cfg.Split); err != nil {
		return nil, nil, err
	}
	vocab, err := BuildVocab(train, cfg.Vocab)
	if err != nil {
		return nil, nil, err
	}
	if vocab.Len() <= 2 {
		return nil, nil, &EmptyVocabError{MinCount: max(cfg.Vocab.MinCount, 1), TrainSessions: len(train)}
	}
	trainSeq, testSeq := Encode(vocab, train), Encode(vocab, test)
	created := time.Now().UTC().Truncate(time.Second)
	rep := &Report{
		Dataset: dataset, Sessions: len(sessions), TrainSessions: len(train), TestSessions: len(test),
		VocabSize: vocab.Len(), Exported: cfg.Export, Created: created,
	}
	logger.Info("data split", "sessions", len(sessions), "train", len(train), "test", len(test), "vocab", vocab.Len())
	if cfg.Export == ModelMarkov {
		// Known now, not after every baseline is tuned.
		if err := checkMarkovExport(vocab.Len()); err != nil {
			return nil, nil, err
		}
	}

	baselines, err := TrainBaselines(ctx, logger, trainSeq, vocab.Len(), cfg.GRU.withDefaults().ValidationFraction, cfg.Markov.Alpha, cfg.Eval)
	if err != nil {
		return nil, nil, err
	}
	var mk *Markov
	for _, b := range baselines {
		if m, ok := b.Predictor.(*Markov); ok {
			mk = m
		}
	}
	var gru *GRU
	if !cfg.SkipGRU {
		gcfg := cfg.GRU
		for _, b := range baselines {
			if b.Name == ModelNGram && gcfg.TeacherOrder == 0 && gcfg.TeacherDiscount == 0 {
				gcfg.TeacherOrder, gcfg.TeacherDiscount = int(b.Params["order"]), b.Params["discount"] // the tuned n-gram teaches
			}
		}
		var stats *GRUStats
		gru, stats, err = TrainGRU(ctx, logger, trainSeq, vocab.Len(), gcfg)
		if err != nil {
			return nil, nil, err
		}
		rep.GRU = stats
		var val float64
		if stats.BestEpoch > 0 {
			val = stats.History[stats.BestEpoch-1].ValMRR20
		}
		baselines = append(baselines, Baseline{Name: ModelGRU, Predictor: gru, ValMRR20: val, Seconds: stats.Seconds})
	}
	for _, m := range baselines {
		start := time.Now()
		res, err := Evaluate(ctx, m.Name, m.Predictor, testSeq, cfg.Eval)
		if err != nil {
			return nil, nil, err
		}
		res.Params, res.TrainSeconds, res.ValMRRAt20 = m.Params, m.Seconds, m.ValMRR20
		logger.Info("evaluated", "model", m.Name, "recall_at_1", res.RecallAt1, "recall_at_5", res.RecallAt5,
			"recall_at_20", res.RecallAt20, "mrr_at_20", res.MRRAt20, "seconds", time.Since(start).Seconds())
		rep.Results = append(rep.Results, res)
	}
	rep.compareExported()

	mcfg := ManifestConfig{Name: cfg.Name, Version: cfg.Version, Created: created, MaxSeqLen: cfg.Eval.withDefaults().MaxSeqLen}
	res := rep.Result(cfg.Export)
	mcfg.Metrics = map[string]float64{
		"recall_at_1": res.RecallAt1, "recall_at_5": res.RecallAt5, "recall_at_20": res.RecallAt20,
		"mrr_at_20": res.MRRAt20, "precision": res.Precision, "coverage": res.Coverage,
		"test_transitions": float64(res.Transitions),
	}
	var b *Bundle
	switch cfg.Export {
	case ModelMarkov:
		b, err = MarkovBundle(mk, vocab, mcfg)
	case ModelGRU:
		b, err = GRUBundle(gru, vocab, mcfg)
	}
	if err != nil {
		return nil, nil, err
	}
	return rep, b, nil
}
