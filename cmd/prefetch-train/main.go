// Command prefetch-train trains prefetchd's models offline: it reads logged
// clicks (the service's JSONL events or its Kafka topic) or a research
// dataset (MSNBC .seq, SPMF sessions), holds out the last sessions, trains
// seven baselines (popularity, markov1, markov2, ngram, sr, vsknn, stan)
// and a GRU, evaluates them, and writes the chosen model (gru or markov1)
// as a bundle folder with report.json, report.txt and recall.svg.
//
//	prefetch-train --input clicks.jsonl --format jsonl --out ./out
//	prefetch-train --input sessions.spmf.gz --format spmf --model markov1 --out ./out
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"syscall"
	"time"

	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/internal/kafkasec"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/training"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.Exit("prefetch-train", err, os.Stderr))
}

const usage = `usage: prefetch-train --input FILE --format jsonl|msnbc|spmf --out DIR [flags]
       prefetch-train --format kafka --kafka-brokers B --out DIR [flags]

Trains seven baselines (popularity, markov1, markov2, ngram, sr, vsknn,
stan) and a GRU on logged sessions, evaluates them on the last sessions held
out, and writes the chosen one (gru or markov1) as a bundle folder with
report.json, report.txt and recall.svg.

--out must be a new or empty folder or one a previous run wrote (bundle and
report files only): it is replaced as a whole, and anything else there makes
the trainer refuse before reading its input. All flags, --canonical-config
and the --publish target are checked before the input is read; a mistake
exits with status 2. Pages holding a line break never enter the vocabulary.`

// run trains as the flags say, logging to stderr and printing the evaluation
// table to stdout. --help and --version print to stdout and return
// cli.ErrPrinted; flag mistakes return errors matching cli.ErrUsage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("prefetch-train", flag.ContinueOnError)
	var (
		input    = fs.String("input", "", "input file (gzip is detected)")
		format   = fs.String("format", "", "input format: jsonl, msnbc, spmf, or kafka (reads --topic from --kafka-brokers)")
		brokers  = fs.String("kafka-brokers", "", "kafka: comma-separated bootstrap brokers")
		topic    = fs.String("topic", "clicks", "kafka: click topic")
		from     = fs.String("from", "", "kafka: first message time, RFC 3339 (default: earliest)")
		to       = fs.String("to", "", "kafka: end message time, RFC 3339, exclusive (default: the end when the read starts)")
		fromOff  = fs.Int64("from-offset", 0, "kafka: first offset read in every partition")
		toOff    = fs.Int64("to-offset", 0, "kafka: end offset in every partition, exclusive (0: no bound)")
		kTLS     = fs.Bool("kafka-tls", false, "kafka: connect over TLS")
		kCA      = fs.String("kafka-ca", "", "kafka: CA bundle (PEM) for TLS; default the system roots")
		kMech    = fs.String("kafka-sasl-mechanism", "", "kafka: SASL mechanism, PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
		kUser    = fs.String("kafka-username", "", "kafka: SASL user")
		kPass    = fs.String("kafka-password", "", "kafka: SASL password (default $PREFETCHD_KAFKA_PASSWORD, as the service reads it; prefer the variable)")
		out      = fs.String("out", "", "output folder: the bundle plus report.json, report.txt, recall.svg; replaced as a whole,\nso it must be new, empty or hold only such files (a previous run's)")
		publish  = fs.String("publish", "", "model repository: also publish the bundle as <publish>/<name>/<version>/ (never over an existing version)")
		name     = fs.String("name", "default", "bundle name: the model name the service serves (its --model-name, default too), so --publish REPO lands where prefetchd --model-repo REPO looks")
		version  = fs.String("bundle-version", "", "bundle version (default: creation time, 20060102T150405Z)")
		export   = fs.String("model", training.ModelGRU, "model written as the bundle: gru or markov1")
		noGRU    = fs.Bool("no-gru", false, "train only the baselines (implies --model markov1)")
		vocabMin = fs.Int("vocab-min-count", 2, "fewest views a page needs to enter the vocabulary")
		vocabMax = fs.Int("vocab-max", 100_000, "vocabulary size cap, padding and unknown included (0: no cap)")
		holdout  = fs.Float64("holdout", 0.2, "share of sessions held out for evaluation (the last ones)")
		shuffle  = fs.Bool("shuffle", false, "shuffle sessions with --seed before the split")
		seed     = fs.Uint64("seed", 1, "random seed (split shuffle, GRU initialization and batches)")
		alpha    = fs.Float64("alpha", 0.01, "markov1 add-alpha smoothing tried first on validation (also 0.001, 0.1, 1)")
		thresh   = fs.Float64("threshold", training.DefaultThreshold, "prefetch threshold for precision and coverage")
		topK     = fs.Int("top-k", training.DefaultTopK, "most pages prefetched per click")
		maxLen   = fs.Int("max-seq-len", training.DefaultMaxSeqLen, "history length the bundle declares and evaluation uses")
		collapse = fs.Bool("collapse-repeats", false, "every format: collapse back-to-back repeats of a page")
		gap      = fs.Duration("session-gap", training.DefaultSessionGap, "jsonl and kafka: inactivity that ends a session")
		canonCfg = fs.String("canonical-config", "", "jsonl and kafka: JSON file with the service's page canonicalization\n(features.CanonicalizerConfig, read as prefetchd reads its --canonical-config: unknown fields are refused)")
		cpuProf  = fs.String("cpuprofile", "", "write a CPU profile to this file")
		verbose  = fs.Bool("v", false, "debug logging")
	)
	gruFlags := registerGRUFlags(fs)
	if err := cli.Parse(fs, args, stdout, cli.Help{Usage: usage}); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected arguments %q", fs.Args())
	}
	if (*input == "" && *format != "kafka") || *format == "" || *out == "" {
		return cli.Usagef("--input (or --format kafka), --format and --out are required")
	}
	// Zero is a value: a setting 0 cannot mean is refused, never replaced
	// by its default.
	switch {
	case !slices.Contains([]string{"jsonl", "msnbc", "spmf", "kafka"}, *format):
		return cli.Usagef("--format %q: want jsonl, msnbc, spmf or kafka", *format)
	case *export != training.ModelGRU && *export != training.ModelMarkov:
		return cli.Usagef("--model %q: want %s or %s", *export, training.ModelGRU, training.ModelMarkov)
	case *noGRU && *export == training.ModelGRU && cli.IsSet(fs, "model"):
		return cli.Usagef("--no-gru trains no GRU to export: drop --model gru")
	case !(*holdout > 0 && *holdout < 1):
		return cli.Usagef("--holdout %v: want a share between 0 and 1, both excluded", *holdout)
	case *topK < 1:
		return cli.Usagef("--top-k %d: want at least 1", *topK)
	case *maxLen < 1 || *maxLen > model.MaxSeqLenLimit:
		return cli.Usagef("--max-seq-len %d: want 1 to %d (what a bundle may declare)", *maxLen, model.MaxSeqLenLimit)
	case *vocabMin < 1:
		return cli.Usagef("--vocab-min-count %d: want at least 1", *vocabMin)
	case *vocabMax < 0:
		return cli.Usagef("--vocab-max %d: want 0 (no cap) or more", *vocabMax)
	case !(*thresh >= 0 && *thresh <= 1):
		return cli.Usagef("--threshold %v: want a probability from 0 to 1", *thresh)
	case !(*alpha > 0):
		return cli.Usagef("--alpha %v: want more than 0", *alpha)
	case *gap <= 0:
		return cli.Usagef("--session-gap %v: want more than 0", *gap)
	case *name == "":
		return cli.Usagef("--name is empty")
	}
	if *format == "kafka" && cli.IsSet(fs, "input") {
		return cli.Usagef("--input names a file: --format kafka reads --topic from --kafka-brokers instead")
	}
	if *format == "spmf" || *format == "msnbc" {
		// Sessions are given whole, and pages are category or page numbers.
		for _, f := range []string{"session-gap", "canonical-config"} {
			if cli.IsSet(fs, f) {
				return cli.Usagef("--%s applies to jsonl and kafka, not %s (its sessions are given whole)", f, *format)
			}
		}
	}
	if *format != "kafka" {
		// Flags of the Kafka reader given with a file would be ignored.
		for _, f := range []string{"kafka-brokers", "topic", "from", "to", "from-offset", "to-offset", "kafka-tls", "kafka-ca", "kafka-sasl-mechanism", "kafka-username", "kafka-password"} {
			if cli.IsSet(fs, f) {
				return cli.Usagef("--%s reads Kafka: it needs --format kafka (not %s)", f, *format)
			}
		}
	}
	if err := gruFlags.validate(); err != nil {
		return err
	}
	cfg := training.Config{
		Name:    *name,
		Version: *version,
		Export:  *export,
		SkipGRU: *noGRU,
		Vocab:   training.VocabConfig{MinCount: *vocabMin, MaxSize: *vocabMax},
		Split:   training.SplitConfig{HoldoutFraction: *holdout, Shuffle: *shuffle, Seed: *seed},
		Markov:  training.MarkovConfig{Alpha: *alpha},
		GRU:     gruFlags.config(*seed, *maxLen),
		Eval:    training.EvalConfig{Threshold: *thresh, TopK: *topK, MaxSeqLen: *maxLen},
	}
	if *noGRU {
		cfg.Export = training.ModelMarkov
	}
	if err := cfg.Validate(); err != nil {
		return cli.UsageError(fmt.Errorf("training settings: %w", err))
	}
	var kcfg training.KafkaConfig
	if *format == "kafka" {
		var err error
		if kcfg, err = kafkaConfig(*brokers, *topic, *from, *to, *fromOff, *toOff); err != nil {
			return err
		}
		sec := kafkasec.Config{TLS: *kTLS, CA: *kCA, Mechanism: *kMech, Username: *kUser, Password: *kPass}
		if !cli.IsSet(fs, "kafka-password") {
			sec.Password = os.Getenv("PREFETCHD_KAFKA_PASSWORD")
		}
		if sec.Mechanism == "" && !cli.IsSet(fs, "kafka-password") {
			sec.Password = "" // the variable of a service config without SASL
		}
		if err := sec.Validate(); err != nil {
			return cli.UsageError(err)
		}
		if kcfg.TLS, kcfg.SASL, err = sec.Build(); err != nil {
			return cli.UsageError(err)
		}
	}
	canonical, err := loadCanonical(*canonCfg)
	if err != nil {
		return err
	}
	if err := training.CheckBundleDir(*out); err != nil {
		if errors.Is(err, training.ErrNotBundleDir) {
			return cli.UsageError(fmt.Errorf("--out: %w", err))
		}
		return err
	}
	// The name and version are folder names of a model repository even
	// without --publish: the service finds versions by them.
	repo := *publish
	if repo == "" {
		repo = "."
	}
	if err := training.CheckPublish(repo, *name, *version); errors.Is(err, training.ErrBadFolderName) {
		return cli.UsageError(fmt.Errorf("--name %q, --bundle-version %q: %w", *name, *version, err))
	} else if *publish != "" && errors.Is(err, training.ErrVersionExists) {
		return cli.UsageError(fmt.Errorf("--publish %s: %w", *publish, err))
	} else if *publish != "" && err != nil {
		return err
	}
	if *publish != "" {
		if err := training.CheckRepoWritable(*publish, *name); err != nil {
			return cli.UsageError(fmt.Errorf("--publish %s: %w", *publish, err))
		}
	}
	if *cpuProf != "" {
		if *format != "kafka" && sameFile(*cpuProf, *input) {
			return cli.Usagef("--cpuprofile %s is the input: it would be overwritten", *cpuProf)
		}
		f, err := os.Create(*cpuProf)
		if err != nil {
			return cli.UsageError(fmt.Errorf("--cpuprofile: %w", err))
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	start := time.Now()
	opt := readOptions{collapse: *collapse, gap: *gap, canonical: canonical, logger: logger}
	var sessions []training.Session
	if *format == "kafka" {
		sessions, err = readKafka(ctx, kcfg, opt)
		if err != nil {
			return err
		}
		*input = "kafka:" + *topic
	} else {
		sessions, err = readSessions(*input, *format, opt)
	}
	if err != nil {
		return err
	}
	logger.Info("sessions read", "input", *input, "format", *format, "sessions", len(sessions), "seconds", time.Since(start).Seconds())

	dataset := filepath.Base(*input)
	if *collapse {
		dataset += " (repeats collapsed)"
	}
	rep, bundle, err := training.Run(ctx, logger, dataset, sessions, cfg)
	if ev := (*training.EmptyVocabError)(nil); errors.As(err, &ev) && ev.MinCount > 1 {
		return fmt.Errorf("no page reached --vocab-min-count (%d views) in the %d training sessions: lower --vocab-min-count", ev.MinCount, ev.TrainSessions)
	}
	if err != nil {
		return err
	}
	if bundle.Reports, err = renderReports(rep); err != nil {
		return err
	}
	if err := training.WriteBundle(*out, bundle); err != nil {
		return err
	}
	if *publish != "" {
		dir, err := training.Publish(*publish, bundle)
		if err != nil {
			return err
		}
		logger.Info("bundle published", "dir", dir)
	}
	if err := rep.WriteTable(stdout); err != nil {
		return err
	}
	logger.Info("done", "out", *out, "model", cfg.Export, "seconds", time.Since(start).Seconds())
	return nil
}

// renderReports renders the report files that go with the bundle, in
// --out and in a published version alike.
func renderReports(rep *training.Report) (map[string][]byte, error) {
	out := make(map[string][]byte, 3)
	for _, f := range []struct {
		name  string
		write func(io.Writer) error
	}{{training.ReportJSONFile, rep.WriteJSON}, {training.ReportTextFile, rep.WriteTable}, {training.RecallSVGFile, rep.WriteSVG}} {
		var buf bytes.Buffer
		if err := f.write(&buf); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.name, err)
		}
		out[f.name] = buf.Bytes()
	}
	return out, nil
}

// sameFile reports whether paths a and b name the same file (one of them
// may not exist yet: then they are not the same).
func sameFile(a, b string) bool {
	ia, err1 := os.Stat(a)
	ib, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		return filepath.Clean(a) == filepath.Clean(b)
	}
	return os.SameFile(ia, ib)
}
