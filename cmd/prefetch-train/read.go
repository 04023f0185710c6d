package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prefetchd/prefetchd/features"
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
			opt.logger.Info("events read", "lines", st.Lines, "events", st.Events, "skipped", st.Skipped)
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

// loadCanonical reads a features.CanonicalizerConfig from a JSON file; an
// empty path gives the zero config, the service's default.
func loadCanonical(path string) (features.CanonicalizerConfig, error) {
	var cfg features.CanonicalizerConfig
	if path == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("canonical config: %w", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("canonical config %s: %w", path, err)
	}
	return cfg, cfg.Validate()
}

func kafkaConfig(brokers, topic, from, to string, fromOff, toOff int64) (training.KafkaConfig, error) {
	cfg := training.KafkaConfig{Topic: topic, FromOffset: fromOff, ToOffset: toOff}
	for _, b := range strings.Split(brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Brokers = append(cfg.Brokers, b)
		}
	}
	for _, t := range []struct {
		s   string
		dst *time.Time
	}{{from, &cfg.From}, {to, &cfg.To}} {
		if t.s == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339Nano, t.s)
		if err != nil {
			return cfg, fmt.Errorf("kafka time %q: %w", t.s, err)
		}
		*t.dst = v
	}
	return cfg, cfg.Validate()
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
	opt.logger.Info("events read", "topic", cfg.Topic, "messages", st.Lines, "events", st.Events, "skipped", st.Skipped)
	sessions := training.Sessionize(events, training.JSONLConfig{Gap: opt.gap, Canonicalizer: canon})
	if opt.collapse {
		sessions = training.CollapseRepeats(sessions)
	}
	return sessions, nil
}
