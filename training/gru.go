package training

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prefetchd/prefetchd/model"
)

// GRUConfig is a placeholder until the GRU trainer lands.
type GRUConfig struct{}

// Validate checks the configuration.
func (c GRUConfig) Validate() error { return nil }

// GRUStats describes a GRU training run.
type GRUStats struct{}

// GRU is a trained GRU model.
type GRU struct{}

// Predict is not implemented yet.
func (g *GRU) Predict(_ []int64, dst []float32) []float32 { return dst }

// TrainGRU is not implemented yet.
func TrainGRU(context.Context, *slog.Logger, [][]int64, int, GRUConfig) (*GRU, *GRUStats, error) {
	return nil, nil, errors.New("gru trainer not implemented yet")
}

// GRUBundle is not implemented yet.
func GRUBundle(*GRU, *model.Vocab, ManifestConfig) (*Bundle, error) {
	return nil, errors.New("gru export not implemented yet")
}

// Summary is a one-line description of the run.
func (s *GRUStats) Summary() string { return "" }
