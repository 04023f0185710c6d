package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Forms a bundle may provide.
const (
	FormSequence = "sequence" // model.onnx: page_ids [batch, seq] -> scores [batch, vocab]
	FormStep     = "step"     // step.onnx: page_id [batch, 1] + state_in -> scores + state_out
)

// Output kinds of a bundle's graphs.
const (
	OutputProbs  = "probs"
	OutputLogits = "logits"
)

// ManifestFile is the name of the manifest inside a bundle folder.
const ManifestFile = "manifest.json"

// ErrBadManifest is returned (wrapped) when a manifest breaks the contract.
var ErrBadManifest = errors.New("bad manifest")

// Manifest describes a model bundle: what it is, which forms it has, and the
// golden cases a loader runs before it trusts the bundle.
type Manifest struct {
	Name      string             `json:"name"`
	Version   string             `json:"version"`
	Forms     []string           `json:"forms"`
	Output    string             `json:"output"`      // "probs" or "logits"
	MaxSeqLen int                `json:"max_seq_len"` // histories are cut to this many pages
	VocabSize int                `json:"vocab_size"`
	Cell      string             `json:"cell,omitempty"` // "gru", "lstm", "rnn", "markov1", ...
	Layers    int                `json:"layers,omitempty"`
	Hidden    int                `json:"hidden,omitempty"`
	Created   time.Time          `json:"created"`
	Metrics   map[string]float64 `json:"metrics,omitempty"`
	Golden    []GoldenCase       `json:"golden,omitempty"`
	Tolerance float64            `json:"tolerance,omitempty"` // max abs error on golden cases; 0 means 1e-5
}

// GoldenCase is an input and the probabilities the trainer computed for it.
type GoldenCase struct {
	PageIDs [][]int64   `json:"page_ids"`
	Probs   [][]float32 `json:"probs"`
}

// HasForm reports whether the manifest lists form f.
func (m *Manifest) HasForm(f string) bool {
	for _, g := range m.Forms {
		if g == f {
			return true
		}
	}
	return false
}

// MaxSeqLenLimit is the longest history a bundle may declare (max_seq_len).
const MaxSeqLenLimit = 4096

// Validate checks the fields every bundle must set.
func (m *Manifest) Validate() error {
	switch {
	case m.Name == "":
		return fmt.Errorf("%w: name is empty", ErrBadManifest)
	case m.Version == "":
		return fmt.Errorf("%w: version is empty", ErrBadManifest)
	case m.Output != OutputProbs && m.Output != OutputLogits:
		return fmt.Errorf("%w: output %q is neither %q nor %q", ErrBadManifest, m.Output, OutputProbs, OutputLogits)
	case m.MaxSeqLen <= 0 || m.MaxSeqLen > MaxSeqLenLimit:
		return fmt.Errorf("%w: max_seq_len %d outside 1..%d", ErrBadManifest, m.MaxSeqLen, MaxSeqLenLimit)
	case m.VocabSize < 2:
		return fmt.Errorf("%w: vocab_size %d below 2", ErrBadManifest, m.VocabSize)
	case !m.HasForm(FormSequence):
		return fmt.Errorf("%w: forms %v lack %q", ErrBadManifest, m.Forms, FormSequence)
	}
	for _, f := range m.Forms {
		if f != FormSequence && f != FormStep {
			return fmt.Errorf("%w: unknown form %q", ErrBadManifest, f)
		}
	}
	for i, g := range m.Golden {
		if len(g.PageIDs) != len(g.Probs) {
			return fmt.Errorf("%w: golden case %d has %d inputs and %d outputs", ErrBadManifest, i, len(g.PageIDs), len(g.Probs))
		}
	}
	return nil
}

// MaxManifestBytes is the largest manifest.json ReadManifest reads.
const MaxManifestBytes = 256 << 20

// ReadManifest decodes and validates a manifest of at most
// MaxManifestBytes.
func ReadManifest(r io.Reader) (*Manifest, error) {
	var m Manifest
	lr := &io.LimitedReader{R: r, N: MaxManifestBytes + 1}
	dec := json.NewDecoder(lr)
	if err := dec.Decode(&m); err != nil {
		if lr.N <= 0 {
			return nil, fmt.Errorf("%w: over the limit of %d bytes", ErrBadManifest, MaxManifestBytes)
		}
		return nil, fmt.Errorf("%w: %w", ErrBadManifest, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// WriteTo encodes the manifest as indented JSON.
func (m *Manifest) WriteTo(w io.Writer) (int64, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("encode manifest: %w", err)
	}
	n, err := w.Write(append(b, '\n'))
	if err != nil {
		return int64(n), fmt.Errorf("write manifest: %w", err)
	}
	return int64(n), nil
}
