package lifecycle

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/prefetchd/prefetchd/internal/onnxenc"
	"github.com/prefetchd/prefetchd/model"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testName is the model name of test repositories.
const testName = "clicks"

// base is the creation time of test versions; version i is created i
// minutes later.
var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// spec describes a Markov test bundle: the page that follows index i is
// i+shift (wrapping over the pages 2..width-1) with probability 0.7.
type spec struct {
	version string
	created time.Time
	width   int  // vocabulary size; default 12
	shift   int  // default 1
	noGold  bool // write no golden cases
	// edit may change the files (name -> content) before they are published.
	edit func(files map[string][]byte)
	// manifest may change the manifest before it is encoded.
	manifest func(m *model.Manifest)
}

func (s spec) withDefaults() spec {
	if s.width == 0 {
		s.width = 12
	}
	if s.shift == 0 {
		s.shift = 1
	}
	if s.created.IsZero() {
		s.created = base
	}
	return s
}

// next is the page the spec's model predicts most likely after page.
func (s spec) next(page int64) int64 {
	s = s.withDefaults()
	n := int64(s.width - 2)
	if page < 2 {
		page = 2
	}
	return 2 + (page-2+int64(s.shift))%n
}

// rows returns the transition matrix of the spec.
func (s spec) rows() [][]float32 {
	s = s.withDefaults()
	rows := make([][]float32, s.width)
	rest := float32(0.3) / float32(s.width-2)
	for i := range rows {
		row := make([]float32, s.width)
		for j := 1; j < s.width; j++ {
			row[j] = rest
		}
		row[s.next(int64(i))] = 0.7
		rows[i] = row
	}
	return rows
}

func testVocab(width int) *model.Vocab {
	pages := []string{model.PadKey, model.UnknownKey}
	for i := 2; i < width; i++ {
		pages = append(pages, fmt.Sprintf("/page/%d", i))
	}
	v, err := model.NewVocab(pages)
	if err != nil {
		panic(err) // test data
	}
	return v
}

// markovONNX encodes a first-order Markov model: probs = rows[page_ids[:, -1]].
func markovONNX(t testing.TB, rows [][]float32) []byte {
	t.Helper()
	v := int64(len(rows))
	flat := make([]float32, 0, len(rows)*len(rows[0]))
	for _, r := range rows {
		flat = append(flat, r...)
	}
	om := &onnxenc.Model{
		ProducerName: "lifecycle-test",
		Graph: onnxenc.Graph{
			Name: "markov",
			Nodes: []onnxenc.Node{
				{Name: "last", OpType: "Gather", Inputs: []string{"page_ids", "minus_one"}, Outputs: []string{"last"},
					Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 1)}},
				{Name: "row", OpType: "Gather", Inputs: []string{"table", "last"}, Outputs: []string{model.OutputProbs},
					Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 0)}},
			},
			Initializers: []onnxenc.Tensor{
				onnxenc.Int64Tensor("minus_one", []int64{-1}),
				onnxenc.FloatTensor("table", flat, v, int64(len(rows[0]))),
			},
			Inputs: []onnxenc.ValueInfo{{Name: "page_ids", ElemType: onnxenc.Int64,
				Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Symbolic("seq")}}},
			Outputs: []onnxenc.ValueInfo{{Name: model.OutputProbs, ElemType: onnxenc.Float32,
				Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Fixed(int64(len(rows[0])))}}},
		},
	}
	b, err := om.Marshal()
	if err != nil {
		t.Fatalf("encode markov model: %v", err)
	}
	return b
}

// files returns the bundle files of the spec.
func (s spec) files(t testing.TB) map[string][]byte {
	t.Helper()
	s = s.withDefaults()
	rows := s.rows()
	man := &model.Manifest{
		Name: testName, Version: s.version, Forms: []string{model.FormSequence},
		Output: model.OutputProbs, MaxSeqLen: 20, VocabSize: s.width, Cell: "markov1",
		Created: s.created,
	}
	if !s.noGold {
		in := [][]int64{{2}, {3, 4}, {}}
		out := make([][]float32, len(in))
		for i, h := range in {
			last := int64(0)
			if len(h) > 0 {
				last = h[len(h)-1]
			}
			out[i] = append([]float32(nil), rows[last]...)
		}
		man.Golden = []model.GoldenCase{{PageIDs: in, Probs: out}}
	}
	if s.manifest != nil {
		s.manifest(man)
	}
	var mb, vb bytes.Buffer
	if _, err := man.WriteTo(&mb); err != nil {
		t.Fatal(err)
	}
	if _, err := testVocab(s.width).WriteTo(&vb); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		ModelFile:          markovONNX(t, rows),
		VocabFile:          vb.Bytes(),
		model.ManifestFile: mb.Bytes(),
	}
	if s.edit != nil {
		s.edit(files)
	}
	return files
}

// publish writes files as <repo>/<testName>/<version> the way publishers
// must: into a hidden temporary folder, then renamed.
func publish(t testing.TB, repo, version string, files map[string][]byte) string {
	t.Helper()
	parent := filepath.Join(repo, testName)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(parent, ".publish-")
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, tmp, files)
	dir := filepath.Join(parent, version)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatalf("publish %s: %v", version, err)
	}
	return dir
}

func writeFiles(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// publishSpec publishes a Markov bundle.
func publishSpec(t testing.TB, repo string, s spec) string {
	t.Helper()
	return publish(t, repo, s.version, s.files(t))
}

// gruFiles returns the GRU fixture bundle (a real PyTorch export) with its
// manifest version set to version and created time to created.
func gruFiles(t testing.TB, version string, created time.Time) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range []string{ModelFile, VocabFile, model.ManifestFile} {
		b, err := os.ReadFile(filepath.Join("testdata", "gru", name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	man, err := model.ReadManifest(bytes.NewReader(files[model.ManifestFile]))
	if err != nil {
		t.Fatal(err)
	}
	man.Name, man.Version, man.Created = testName, version, created
	var mb bytes.Buffer
	if _, err := man.WriteTo(&mb); err != nil {
		t.Fatal(err)
	}
	files[model.ManifestFile] = mb.Bytes()
	return files
}

// newTest returns a Manager on a fresh repository with a registry.
func newTest(t testing.TB, cfg Config) (*Manager, string, *prometheus.Registry) {
	t.Helper()
	if cfg.Repo == "" {
		cfg.Repo = t.TempDir()
	}
	cfg.Name = testName
	reg := prometheus.NewRegistry()
	m, err := New(cfg, LoadBundle, testLogger(t), reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m, cfg.Repo, reg
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// activeVersion returns the live version or "".
func activeVersion(m *Manager) string {
	if l := m.Current(); l != nil {
		return l.Version
	}
	return ""
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metric returns the sum of the series name{labels...} in reg (a histogram
// counts its samples), or 0 when there is none.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range s.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if got[labels[i]] != labels[i+1] {
					continue series
				}
			}
			switch {
			case s.Counter != nil:
				sum += s.GetCounter().GetValue()
			case s.Gauge != nil:
				sum += s.GetGauge().GetValue()
			case s.Histogram != nil:
				sum += float64(s.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// truncate returns the first half of b.
func truncate(b []byte) []byte { return b[:len(b)/2] }
