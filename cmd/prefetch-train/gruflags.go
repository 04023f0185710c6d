package main

import (
	"flag"
	"math"
	"strconv"

	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/training"
)

// gruFlags are the GRU's command-line settings; zero means the trainer's default.
type gruFlags struct {
	embedding, hidden, epochs, patience, batch, sampled, workers *int
	lr, decay, dropEmb, dropHid                                  *float64
	full, tied                                                   *bool
	distill                                                      optionalFloat
	skip                                                         optionalBool
	sampleExp                                                    optionalFloat
}

// optionalFloat is a float flag that tells unset (nil) from 0.
type optionalFloat struct{ v *float64 }

func (o *optionalFloat) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatFloat(*o.v, 'g', -1, 64)
}

func (o *optionalFloat) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return err
	}
	o.v = &f
	return nil
}

// optionalBool is a boolean flag that tells unset (nil) from false;
// --name alone sets it to true.
type optionalBool struct{ v *bool }

func (o *optionalBool) String() string {
	if o == nil || o.v == nil {
		return ""
	}
	return strconv.FormatBool(*o.v)
}

func (o *optionalBool) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	o.v = &b
	return nil
}

func (o *optionalBool) IsBoolFlag() bool { return true }

func registerGRUFlags(fs *flag.FlagSet) *gruFlags {
	g := &gruFlags{
		embedding: fs.Int("gru-embedding", 0, "GRU embedding size (0: 48)"),
		hidden:    fs.Int("gru-hidden", 0, "GRU hidden size (0: 128)"),
		epochs:    fs.Int("gru-epochs", 0, "most GRU training epochs (0: 8)"),
		patience:  fs.Int("gru-patience", 0, "epochs without validation gain before stopping (0: 2)"),
		batch:     fs.Int("gru-batch", 0, "GRU batch size (0: 64)"),
		sampled:   fs.Int("gru-sampled", 0, "negative pages per step of the sampled softmax (0: 512)"),
		full:      fs.Bool("gru-full-softmax", false, "train with the full softmax instead of the sampled one"),
		tied:      fs.Bool("gru-tied", false, "share the embedding matrix with the output layer (embedding = hidden)"),
		dropEmb:   fs.Float64("gru-dropout-embedding", 0, "dropout rate of the embeddings during training"),
		dropHid:   fs.Float64("gru-dropout-hidden", 0, "dropout rate of the GRU states fed to the output layer during training"),
		lr:        fs.Float64("gru-lr", 0, "Adam learning rate of the first epoch (0: 0.005)"),
		decay:     fs.Float64("gru-lr-decay", 0, "learning rate factor after each epoch (0: 0.7)"),
		workers:   fs.Int("gru-workers", 0, "goroutines sharing each training batch (0: GOMAXPROCS, at most 4)"),
	}
	fs.Var(&g.distill, "gru-distill", "weight of the tuned n-gram's distribution in the GRU's training target, 0 to 1 (default 0.5; 0: none)")
	fs.Var(&g.sampleExp, "gru-sample-exponent", "exponent of the page frequencies the sampled softmax draws negatives by, 0 to 2 (default 0.75; 0: uniform)")
	fs.Var(&g.skip, "gru-skip", "add the last-page skip term to the GRU's output layer (h + a learned vector of the last page; default false)")
	return g
}

// validate checks every GRU flag against the values it can take and
// returns a usage error naming the first that cannot; 0 keeps the meaning
// its help gives. Combinations (--gru-tied with unequal sizes) are left to
// training.Config.Validate.
func (g *gruFlags) validate() error {
	for _, c := range []struct {
		name   string
		v, max int
	}{
		{"gru-embedding", *g.embedding, 4096}, {"gru-hidden", *g.hidden, 4096},
		{"gru-epochs", *g.epochs, math.MaxInt}, {"gru-patience", *g.patience, math.MaxInt},
		{"gru-batch", *g.batch, math.MaxInt}, {"gru-sampled", *g.sampled, math.MaxInt},
		{"gru-workers", *g.workers, math.MaxInt},
	} {
		if c.v < 0 || c.v > c.max {
			if c.max == math.MaxInt {
				return cli.Usagef("--%s %d: want 0 (the default) or more", c.name, c.v)
			}
			return cli.Usagef("--%s %d: want 0 (the default) to %d", c.name, c.v, c.max)
		}
	}
	for _, c := range []struct {
		name      string
		v         *float64
		lo, hi    float64
		hiExclude bool
	}{
		{"gru-lr", g.lr, 0, math.Inf(1), true},
		{"gru-lr-decay", g.decay, 0, 1, false},
		{"gru-dropout-embedding", g.dropEmb, 0, 1, true},
		{"gru-dropout-hidden", g.dropHid, 0, 1, true},
		{"gru-distill", g.distill.v, 0, 1, false},
		{"gru-sample-exponent", g.sampleExp.v, 0, 2, false},
	} {
		if c.v == nil {
			continue
		}
		v := *c.v
		if v >= c.lo && (v < c.hi || !c.hiExclude && v == c.hi) {
			continue
		}
		switch {
		case math.IsInf(c.hi, 1):
			return cli.Usagef("--%s %v: want %v or more", c.name, v, c.lo)
		case c.hiExclude:
			return cli.Usagef("--%s %v: want %v or more, less than %v", c.name, v, c.lo, c.hi)
		default:
			return cli.Usagef("--%s %v: want %v to %v", c.name, v, c.lo, c.hi)
		}
	}
	return nil
}

func (g *gruFlags) config(seed uint64, window int) training.GRUConfig {
	return training.GRUConfig{
		Embedding: *g.embedding, Hidden: *g.hidden, Epochs: *g.epochs, Patience: *g.patience,
		BatchSize: *g.batch, Sampled: *g.sampled, FullSoftmax: *g.full, LearningRate: *g.lr, LRDecay: *g.decay, Window: window, Seed: seed,
		Tied: *g.tied, DropoutEmbedding: *g.dropEmb, DropoutHidden: *g.dropHid, Workers: *g.workers,
		Distill: g.distill.v, Skip: g.skip.v, SampleExponent: g.sampleExp.v,
	}
}
