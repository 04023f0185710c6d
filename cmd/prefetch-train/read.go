package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/training"
)

type readOptions struct {
	collapse  bool
	gap       time.Duration
	canonical features.CanonicalizerConfig
	logger    *slog.Logger
}

func readSessions(path, format string, opt readOptions) ([]training.Session, error) {
	switch format {
	case "spmf", "msnbc", "jsonl":
	default:
		return nil, fmt.Errorf("unknown format %q (want jsonl, msnbc or spmf)", format)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var sessions []training.Session
	switch format {
	case "spmf":
		sessions, err = training.ReadSPMF(f)
	case "msnbc":
		sessions, err = training.ReadMSNBC(f)
	case "jsonl":
		var canon *features.Canonicalizer
		canon, err = features.NewCanonicalizer(opt.canonical)
		if err != nil {
			return nil, fmt.Errorf("canonicalizer: %w", err)
		}
		var st training.JSONLStats
		sessions, st, err = training.ReadJSONL(f, training.JSONLConfig{Gap: opt.gap, Canonicalizer: canon})
		if err == nil {
			opt.logger.Info("events read", "lines", st.Lines, "events", st.Events, "skipped", st.Skipped, "duplicates", st.Duplicates)
		}
	default:
		return nil, fmt.Errorf("unknown format %q (want jsonl, msnbc or spmf)", format)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if opt.collapse {
		sessions = training.CollapseRepeats(sessions)
	}
	return sessions, nil
}

// loadCanonical reads a features.CanonicalizerConfig from a JSON file as
// the service does (features.ReadCanonicalizerConfig: unknown fields are
// refused) and checks its rules; an empty path gives the zero config, the
// service's default. A file that is not a valid config is a usage error.
func loadCanonical(path string) (features.CanonicalizerConfig, error) {
	if path == "" {
		return features.CanonicalizerConfig{}, nil
	}
	cfg, err := features.ReadCanonicalizerConfig(path)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		return cfg, cli.UsageError(fmt.Errorf("--canonical-config: %w", err))
	}
	return cfg, nil
}

// kafkaConfig builds the Kafka read from the flags; every mistake is a
// usage error naming its flag.
func kafkaConfig(brokers, topic, from, to string, fromOff, toOff int64) (training.KafkaConfig, error) {
	cfg := training.KafkaConfig{Topic: topic, FromOffset: fromOff, ToOffset: toOff}
	for _, b := range strings.Split(brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Brokers = append(cfg.Brokers, b)
		}
	}
	if len(cfg.Brokers) == 0 {
		return cfg, cli.Usagef("--format kafka needs --kafka-brokers")
	}
	for _, b := range cfg.Brokers {
		if err := cli.CheckHostPort(b); err != nil {
			return cfg, cli.Usagef("--kafka-brokers: %v", err)
		}
	}
	for _, t := range []struct {
		flag, s string
		dst     *time.Time
	}{{"from", from, &cfg.From}, {"to", to, &cfg.To}} {
		if t.s == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339Nano, t.s)
		if err != nil {
			return cfg, cli.Usagef("--%s %q: want an RFC 3339 time such as 2026-11-01T00:00:00Z", t.flag, t.s)
		}
		*t.dst = v
	}
	if err := cfg.Validate(); err != nil {
		return cfg, cli.UsageError(fmt.Errorf("kafka flags: %w", err))
	}
	return cfg, nil
}

func readKafka(ctx context.Context, cfg training.KafkaConfig, opt readOptions) ([]training.Session, error) {
	canon, err := features.NewCanonicalizer(opt.canonical)
	if err != nil {
		return nil, fmt.Errorf("canonicalizer: %w", err)
	}
	events, st, err := training.ReadKafka(ctx, cfg)
	if err != nil {
		return nil, err
	}
	opt.logger.Info("events read", "topic", cfg.Topic, "messages", st.Lines, "events", st.Events, "skipped", st.Skipped, "duplicates", st.Duplicates)
	if st.Unsettled > 0 {
		opt.logger.Warn("records at or after the start of a transaction still open were not read", "topic", cfg.Topic, "records", st.Unsettled,
			"hint", "the last stable offset stops the read there, committed records after it included; a later run reads them once the transaction ends")
	}
	sessions := training.Sessionize(events, training.JSONLConfig{Gap: opt.gap, Canonicalizer: canon})
	if opt.collapse {
		sessions = training.CollapseRepeats(sessions)
	}
	return sessions, nil
}
