// Package embedded provides what `make run` needs on a fresh machine: an
// in-process Redis-protocol store and a replay of real sessions (NASA Kennedy
// Space Center, July 1995) into Kafka, so the whole pipeline runs with nothing
// installed. The in-process Kafka-protocol broker lives in internal/broker.
package embedded

import (
	"embed"
	"fmt"
	"io/fs"

	"github.com/alicebob/miniredis/v2"

	"github.com/prefetchd/prefetchd/internal/nasa"
	"github.com/prefetchd/prefetchd/training"
)

// StartRedis starts an in-process Redis-protocol store on 127.0.0.1 whose
// TTLs follow the wall clock. Close it with Close.
func StartRedis() (*miniredis.Miniredis, error) {
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start in-process redis: %w", err)
	}
	return m, nil
}

// NASASessions returns the bundled sessions, each a list of page keys
// ("/page/N") in visit order.
func NASASessions() ([]training.Session, error) {
	s, err := training.ReadSPMF(nasa.SPMF())
	if err != nil {
		return nil, fmt.Errorf("bundled sessions: %w", err)
	}
	return s, nil
}

// bundledModel is the model `make run` serves: a GRU (with its step form)
// trained on the bundled NASA July 1995 sessions (see model/manifest.json).
//
//go:embed model/model.onnx model/step.onnx model/vocab.txt model/manifest.json model/report.json model/report.txt model/recall.svg
var bundledModel embed.FS

// Model returns the bundled model bundle as a file system and the folder
// inside it, for model.LoadBundleFS.
func Model() (fs.FS, string) { return bundledModel, "model" }
