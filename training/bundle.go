package training

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prefetchd/prefetchd/model"
)

// File names inside a bundle folder.
const (
	ModelFile = "model.onnx"
	StepFile  = "step.onnx"
	VocabFile = "vocab.txt"
)

// Report files the trainer writes beside a bundle (Bundle.Reports).
const (
	ReportJSONFile = "report.json"
	ReportTextFile = "report.txt"
	RecallSVGFile  = "recall.svg"
)

// ErrNotBundleDir is returned by CheckBundleDir and WriteBundle when the
// destination exists and is not a folder a bundle may replace.
var ErrNotBundleDir = errors.New("not a bundle folder")

// bundleFiles are the files a bundle folder written by the trainer holds.
var bundleFiles = []string{ModelFile, StepFile, VocabFile, model.ManifestFile, ReportJSONFile, ReportTextFile, RecallSVGFile}

// CheckBundleDir reports whether WriteBundle may write dir: dir does not
// exist, or it is a folder holding nothing but files a bundle written by
// the trainer holds (model.onnx, step.onnx, vocab.txt, manifest.json,
// report.json, report.txt, recall.svg, and the extra report names given).
// Anything else (a file, a folder with other entries) gives an error
// matching ErrNotBundleDir naming the first stranger, so that a mistyped
// --out never deletes data.
func CheckBundleDir(dir string, extra ...string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check bundle folder: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s exists and is not a folder: %w", dir, ErrNotBundleDir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("check bundle folder: %w", err)
	}
	for _, e := range entries {
		known := slices.Contains(bundleFiles, e.Name()) || slices.Contains(extra, e.Name())
		if !known || !e.Type().IsRegular() {
			return fmt.Errorf("%s holds %s, which no bundle written by the trainer holds (refusing to replace the folder; choose a new or empty one): %w",
				dir, e.Name(), ErrNotBundleDir)
		}
	}
	return nil
}

// DefaultMaxSeqLen is the history length bundles declare by default.
const DefaultMaxSeqLen = 20

// Predictor is a trained model as the evaluation and the golden cases see
// it: Predict writes into dst (grown as needed) the probabilities of the
// next page after pageIDs, one row of the sequence form's input, padding
// included, exactly as the exported graph computes them. Predict is called
// from several goroutines at once (each with its own dst).
type Predictor interface {
	Predict(pageIDs []int64, dst []float32) []float32
}

// Bundle is a model ready to be written as a bundle folder.
type Bundle struct {
	Model    []byte // model.onnx, the sequence form
	Step     []byte // step.onnx, optional
	Vocab    *model.Vocab
	Manifest *model.Manifest
	// Reports are files written beside the model, by name (report.json,
	// report.txt, recall.svg): a published version carries its own
	// evaluation, which the service's status page shows.
	Reports map[string][]byte
}

// Validate checks that the parts agree with each other.
func (b *Bundle) Validate() error {
	switch {
	case len(b.Model) == 0:
		return errors.New("bundle has no model.onnx")
	case b.Vocab == nil:
		return errors.New("bundle has no vocabulary")
	case b.Manifest == nil:
		return errors.New("bundle has no manifest")
	}
	if err := b.Manifest.Validate(); err != nil {
		return fmt.Errorf("bundle manifest: %w", err)
	}
	if b.Manifest.VocabSize != b.Vocab.Len() {
		return fmt.Errorf("bundle manifest vocab_size %d, vocabulary has %d entries", b.Manifest.VocabSize, b.Vocab.Len())
	}
	if hasStep := len(b.Step) > 0; hasStep != b.Manifest.HasForm(model.FormStep) {
		return fmt.Errorf("bundle step.onnx present=%t but manifest forms are %v", hasStep, b.Manifest.Forms)
	}
	for name := range b.Reports {
		switch name {
		case ModelFile, StepFile, VocabFile, model.ManifestFile:
			return fmt.Errorf("bundle report %q would replace a model file", name)
		}
		if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
			return fmt.Errorf("bundle report %q is not a plain file name", name)
		}
	}
	return nil
}

// WriteBundle writes b as the folder dir, atomically for readers: the files
// go to a temporary sibling folder, are synced, and the folder is renamed
// to dir. When dir already exists it is replaced: moved aside, the new
// folder renamed in, the old one removed (a reader may find dir missing
// for the instant between the two renames, never half written). Only a
// previous bundle is replaced: when CheckBundleDir refuses dir (a file, or
// a folder holding anything else) WriteBundle writes nothing and returns
// its error, matching ErrNotBundleDir. The vocabulary is read back from
// its vocab.txt form before anything is written; one that does not read
// back entry for entry is an error.
func WriteBundle(dir string, b *Bundle) error {
	if err := b.Validate(); err != nil {
		return err
	}
	dir = filepath.Clean(dir)
	if err := CheckBundleDir(dir, slices.Collect(maps.Keys(b.Reports))...); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	var vocab, manifest bytes.Buffer
	if _, err := b.Vocab.WriteTo(&vocab); err != nil {
		return err
	}
	if err := checkVocabReadsBack(b.Vocab, vocab.Bytes()); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	if _, err := b.Manifest.WriteTo(&manifest); err != nil {
		return err
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op after a successful rename
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{{ModelFile, b.Model}, {StepFile, b.Step}, {VocabFile, vocab.Bytes()}, {model.ManifestFile, manifest.Bytes()}}
	for _, name := range slices.Sorted(maps.Keys(b.Reports)) {
		files = append(files, struct {
			name string
			data []byte
		}{name, b.Reports[name]})
	}
	for _, f := range files {
		if f.data == nil {
			continue
		}
		if err := writeSynced(filepath.Join(tmp, f.name), f.data); err != nil {
			return fmt.Errorf("write bundle: %w", err)
		}
	}
	if err := syncDir(tmp); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	var old string
	if _, err := os.Stat(dir); err == nil {
		old = fmt.Sprintf("%s.old-%d", tmp, time.Now().UnixNano())
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("write bundle: move old %s aside: %w", dir, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			_ = os.Rename(old, dir)
		}
		return fmt.Errorf("write bundle: %w", err)
	}
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("write bundle: remove old %s: %w", old, err)
		}
	}
	if err := syncDir(parent); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	return nil
}

// checkVocabReadsBack reads data, v in vocab.txt form, as the service does
// and checks that it gives back v's entries: a page holding a line break
// would otherwise become two entries the service refuses.
func checkVocabReadsBack(v *model.Vocab, data []byte) error {
	back, err := model.ReadVocab(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("vocabulary does not read back: %w", err)
	}
	if back.Len() != v.Len() {
		return fmt.Errorf("vocabulary of %d entries reads back as %d", v.Len(), back.Len())
	}
	for i := range v.Len() {
		if got, want := back.Page(int64(i)), v.Page(int64(i)); got != want {
			return fmt.Errorf("vocabulary entry %d %q reads back as %q", i, want, got)
		}
	}
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// GoldenCases runs p on each batch of left-padded rows and records the
// probabilities, for the manifest's golden cases.
func GoldenCases(p Predictor, batches [][][]int64) []model.GoldenCase {
	out := make([]model.GoldenCase, 0, len(batches))
	for _, batch := range batches {
		gc := model.GoldenCase{PageIDs: batch}
		for _, row := range batch {
			gc.Probs = append(gc.Probs, p.Predict(row, nil))
		}
		out = append(out, gc)
	}
	return out
}

// DefaultGoldenInputs returns a few inputs for golden cases that fit a
// vocabulary of vocabSize: an all-padding row, the unknown page, a batch of
// two left-padded rows, and a row of the most popular pages. Rows are cut
// to their last maxSeqLen pages (0: no cut), as the runtime cuts histories
// to the manifest's max_seq_len before it runs them.
func DefaultGoldenInputs(vocabSize, maxSeqLen int) [][][]int64 {
	idx := func(i int64) int64 { return 2 + (i % int64(vocabSize-2)) }
	batches := [][][]int64{
		{{0, 0, 0}},
		{{model.UnknownIndex}},
		{{0, idx(0), idx(1)}, {idx(2), idx(0), idx(3)}},
		{{idx(0), idx(1), idx(2), idx(3), idx(4), idx(5)}},
	}
	for _, batch := range batches {
		for i, row := range batch {
			if maxSeqLen > 0 && len(row) > maxSeqLen {
				batch[i] = row[len(row)-maxSeqLen:]
			}
		}
	}
	return batches
}

// ManifestConfig carries the descriptive fields of a manifest.
type ManifestConfig struct {
	Name      string
	Version   string    // default: Created as 20060102T150405Z
	Created   time.Time // default: now
	MaxSeqLen int       // default DefaultMaxSeqLen
	Metrics   map[string]float64
}

// MarkovBundle exports m with its vocabulary, golden cases and manifest.
func MarkovBundle(m *Markov, v *model.Vocab, cfg ManifestConfig) (*Bundle, error) {
	if v.Len() != m.VocabSize() {
		return nil, fmt.Errorf("markov bundle: vocabulary has %d entries, model %d", v.Len(), m.VocabSize())
	}
	onnx, err := m.ONNX()
	if err != nil {
		return nil, err
	}
	man := newManifest(cfg, v.Len())
	man.Cell = CellMarkov
	man.Output = model.OutputProbs
	man.Forms = []string{model.FormSequence}
	man.Golden = GoldenCases(m, DefaultGoldenInputs(v.Len(), man.MaxSeqLen))
	return &Bundle{Model: onnx, Vocab: v, Manifest: man}, nil
}

func newManifest(cfg ManifestConfig, vocabSize int) *model.Manifest {
	created := cfg.Created
	if created.IsZero() {
		created = time.Now()
	}
	created = created.UTC().Truncate(time.Second)
	version := cfg.Version
	if version == "" {
		version = created.Format("20060102T150405Z")
	}
	maxLen := cfg.MaxSeqLen
	if maxLen == 0 {
		maxLen = DefaultMaxSeqLen
	}
	return &model.Manifest{
		Name:      cfg.Name,
		Version:   version,
		MaxSeqLen: maxLen,
		VocabSize: vocabSize,
		Created:   created,
		Metrics:   cfg.Metrics,
	}
}
