package main

import (
	"flag"
	"strconv"

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

func (g *gruFlags) config(seed uint64, window int) training.GRUConfig {
	return training.GRUConfig{
		Embedding: *g.embedding, Hidden: *g.hidden, Epochs: *g.epochs, Patience: *g.patience,
		BatchSize: *g.batch, Sampled: *g.sampled, FullSoftmax: *g.full, LearningRate: *g.lr, LRDecay: *g.decay, Window: window, Seed: seed,
		Tied: *g.tied, DropoutEmbedding: *g.dropEmb, DropoutHidden: *g.dropHid, Workers: *g.workers,
		Distill: g.distill.v, Skip: g.skip.v, SampleExponent: g.sampleExp.v,
	}
}
