package training

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/model"
)

func pages(keys ...string) Session { return Session{Pages: keys} }

func TestReadSPMF(t *testing.T) {
	const text = "1 -1 2 -1 -2\n\n3 -1 4 -1 3 -1 -2\n% comment\n5 -1 -2\n"
	want := []Session{
		pages("/page/1", "/page/2"),
		pages("/page/3", "/page/4", "/page/3"),
		pages("/page/5"),
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(text))
	zw.Close()
	tests := []struct {
		name string
		in   []byte
	}{{"plain", []byte(text)}, {"gzip", gz.Bytes()}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadSPMF(bytes.NewReader(tc.in))
			if err != nil {
				t.Fatalf("ReadSPMF: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("sessions = %v, want %v", got, want)
			}
		})
	}
	for _, bad := range []string{"1 -1 x -2\n", "1 -1 -7 -2\n"} {
		if _, err := ReadSPMF(strings.NewReader(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("ReadSPMF(%q) error = %v, want ErrFormat", bad, err)
		}
	}
}

func TestBuildVocab(t *testing.T) {
	sessions := []Session{pages("a", "b", "a", "c"), pages("b", "a", "d"), pages("e")}
	tests := []struct {
		name string
		cfg  VocabConfig
		want []string
	}{
		{"all", VocabConfig{}, []string{"<pad>", "<unk>", "a", "b", "c", "d", "e"}},
		{"min count 2", VocabConfig{MinCount: 2}, []string{"<pad>", "<unk>", "a", "b"}},
		{"max size 3", VocabConfig{MaxSize: 3}, []string{"<pad>", "<unk>", "a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := BuildVocab(sessions, tc.cfg)
			if err != nil {
				t.Fatalf("BuildVocab: %v", err)
			}
			var got []string
			for i := 0; i < v.Len(); i++ {
				got = append(got, v.Page(int64(i)))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("vocab = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := BuildVocab(sessions, VocabConfig{MaxSize: 2}); err == nil {
		t.Error("BuildVocab with MaxSize 2 succeeded, want an error")
	}
	v, _ := BuildVocab(sessions, VocabConfig{MinCount: 2})
	if got, want := Encode(v, sessions[:1]), [][]int64{{2, 3, 2, 1}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Encode = %v, want %v", got, want)
	}
}

func TestSplitIsDeterministic(t *testing.T) {
	items := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	train, test, err := Split(items, SplitConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(train, items[:8]) || !reflect.DeepEqual(test, items[8:]) {
		t.Fatalf("split = %v / %v, want the last 20%% held out", train, test)
	}
	a1, b1, _ := Split(items, SplitConfig{Shuffle: true, Seed: 7})
	a2, b2, _ := Split(items, SplitConfig{Shuffle: true, Seed: 7})
	if !reflect.DeepEqual(a1, a2) || !reflect.DeepEqual(b1, b2) || len(b1) != 2 {
		t.Fatalf("shuffled split not deterministic: %v %v vs %v %v", a1, b1, a2, b2)
	}
	if _, _, err := Split(items, SplitConfig{HoldoutFraction: 1}); err == nil {
		t.Error("Split with fraction 1 succeeded, want an error")
	}
}

func TestMarkovRows(t *testing.T) {
	// vocab: 0 pad, 1 unk, 2..4 pages. Transitions: 2->3 twice, 2->4 once, 3->2 once.
	seqs := [][]int64{{2, 3, 2, 4}, {2, 3}}
	m, err := TrainMarkov(seqs, 5, MarkovConfig{Alpha: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < 5; i++ {
		var sum float64
		for _, p := range m.Row(i) {
			sum += float64(p)
		}
		if math.Abs(sum-1) > 1e-6 || m.Row(i)[0] != 0 {
			t.Errorf("row %d sums to %v with padding %v, want 1 and 0", i, sum, m.Row(i)[0])
		}
	}
	// Row 2: counts [_,0,0,2,1], alpha .5 over 4 columns: den 3+2 = 5.
	want := []float32{0, 0.1, 0.1, 0.5, 0.3}
	if got := m.Predict([]int64{0, 4, 2}, nil); !closeTo(got, want, 1e-6) {
		t.Errorf("P(.|2) = %v, want %v", got, want)
	}
	// Row 0 is popularity: views [_,0,3,2,1] + .5 each over 8.
	wantPop := []float32{0, 0.0625, 0.4375, 0.3125, 0.1875}
	if got := m.Predict(nil, nil); !closeTo(got, wantPop, 1e-6) {
		t.Errorf("P(.|empty) = %v, want popularity %v", got, wantPop)
	}
	if got := m.Predict([]int64{4}, nil); !closeTo(got, wantPop, 1e-6) {
		t.Errorf("P(.|4) = %v, want popularity (4 is never followed) %v", got, wantPop)
	}
	if _, err := TrainMarkov([][]int64{{2, 9}}, 5, MarkovConfig{}); err == nil {
		t.Error("TrainMarkov with an index outside the vocabulary succeeded")
	}
}

func closeTo(a, b []float32, tol float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > tol {
			return false
		}
	}
	return true
}

// fixed is a Predictor that returns the same scores for every history.
type fixed []float32

func (f fixed) Predict(_ []int64, dst []float32) []float32 { return append(dst[:0], f...) }

func TestEvaluate(t *testing.T) {
	// Scores rank 3 > 4 > 2. Transitions: ->3 (rank 1), ->2 (rank 3),
	// ->4 (rank 2), ->1 (unknown, miss).
	p := fixed{0.5, 0.2, 0.05, 0.6, 0.25}
	test := [][]int64{{2, 3, 2}, {3, 4, 1}}
	res, err := Evaluate(context.Background(), "f", p, test, EvalConfig{MaxK: 5, Threshold: 0.2, TopK: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Transitions != 4 || res.UnknownTargets != 1 {
		t.Fatalf("transitions %d unknown %d, want 4 and 1", res.Transitions, res.UnknownTargets)
	}
	wantCurve := []float64{0.25, 0.5, 0.75, 0.75, 0.75}
	if !reflect.DeepEqual(res.RecallCurve, wantCurve) || res.RecallAt1 != 0.25 || res.RecallAt5 != 0.75 {
		t.Errorf("recall curve %v (R@1 %v, R@5 %v), want %v", res.RecallCurve, res.RecallAt1, res.RecallAt5, wantCurve)
	}
	if want := (1 + 1.0/3 + 0.5) / 4; math.Abs(res.MRRAt20-want) > 1e-12 {
		t.Errorf("MRR = %v, want %v", res.MRRAt20, want)
	}
	// Prefetched per click (top 2 >= .2, never the current page):
	// at 2: {3,4} hit 3; at 3: {4} miss (target 2); at 3: {4} hit; at 4: {3} miss.
	if res.PrefetchesPerClick != 5.0/4 || res.Precision != 2.0/5 || res.Coverage != 0.5 {
		t.Errorf("prefetch per click %v precision %v coverage %v, want 1.25, 0.4, 0.5",
			res.PrefetchesPerClick, res.Precision, res.Coverage)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Evaluate(ctx, "f", p, test, EvalConfig{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Evaluate on a cancelled context: %v, want context.Canceled", err)
	}
}

func tinyMarkovBundle(t *testing.T, version string) *Bundle {
	t.Helper()
	sessions := []Session{pages("/a", "/b", "/c"), pages("/b", "/c", "/a", "/b")}
	v, err := BuildVocab(sessions, VocabConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := TrainMarkov(Encode(v, sessions), v.Len(), MarkovConfig{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarkovBundle(m, v, ManifestConfig{Name: "tiny", Version: version, Created: time.Unix(1e9, 0)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriteBundleAndPublish(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "out")
	b := tinyMarkovBundle(t, "v1")
	for round := 0; round < 2; round++ { // the second round replaces the folder
		if err := WriteBundle(dir, b); err != nil {
			t.Fatalf("WriteBundle round %d: %v", round, err)
		}
	}
	for _, f := range []string{ModelFile, VocabFile, model.ManifestFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("bundle lacks %s: %v", f, err)
		}
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 1 {
		t.Errorf("root holds %d entries after writing, want only the bundle (no temporary folders)", len(entries))
	}
	f, err := os.Open(filepath.Join(dir, model.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	man, err := model.ReadManifest(f)
	if err != nil {
		t.Fatalf("ReadManifest: %v", err)
	}
	if man.Cell != CellMarkov || man.VocabSize != 5 || len(man.Golden) == 0 || man.MaxSeqLen != DefaultMaxSeqLen {
		t.Errorf("manifest = %+v, want markov1, vocab 5, golden cases, max_seq_len 20", man)
	}
	v, err := model.LoadVocab(filepath.Join(dir, VocabFile))
	if err != nil || v.Len() != 5 || v.Page(2) != "/b" {
		t.Errorf("vocab.txt: %v, len %d, page 2 %q; want 5 entries with /b at 2", err, v.Len(), v.Page(2))
	}

	repo := filepath.Join(root, "models")
	got, err := Publish(repo, b)
	if err != nil || got != filepath.Join(repo, "tiny", "v1") {
		t.Fatalf("Publish = %q, %v; want %s", got, err, filepath.Join(repo, "tiny", "v1"))
	}
	if _, err := Publish(repo, b); !errors.Is(err, ErrVersionExists) {
		t.Errorf("second Publish: %v, want ErrVersionExists", err)
	}
	bad := *b
	bad.Manifest = &model.Manifest{}
	*bad.Manifest = *b.Manifest
	bad.Manifest.VocabSize = 9
	if err := WriteBundle(filepath.Join(root, "bad"), &bad); err == nil {
		t.Error("WriteBundle with a wrong vocab_size succeeded")
	}
	for _, name := range []string{ModelFile, "../report.json", ".hidden", ""} {
		withReport := *b
		withReport.Reports = map[string][]byte{name: []byte("{}")}
		if err := WriteBundle(filepath.Join(root, "bad-report"), &withReport); err == nil {
			t.Errorf("WriteBundle with a report named %q succeeded", name)
		}
	}
	withReport := *b
	withReport.Reports = map[string][]byte{"report.json": []byte(`{"a":1}`)}
	got, err = Publish(repo, func() *Bundle {
		m := *withReport.Manifest
		m.Version = "v2"
		withReport.Manifest = &m
		return &withReport
	}())
	if err != nil {
		t.Fatalf("Publish with a report: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(got, "report.json")); err != nil || string(data) != `{"a":1}` {
		t.Errorf("published report.json = %q, %v", data, err)
	}
}

func TestRunPipeline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sessions := synthSessions(200, 11)
	rep, b, err := Run(ctx, nil, "synthetic", sessions, Config{Name: "s", SkipGRU: true, Vocab: VocabConfig{MinCount: 1}, Eval: EvalConfig{TopK: 2, Threshold: 0.3}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, res := range rep.Results {
		if res.TopK != 2 || res.Threshold != 0.3 {
			t.Errorf("%s evaluated with top_k %d, threshold %v; want the settings of the run (2, 0.3) in the report", res.Model, res.TopK, res.Threshold)
		}
	}
	if rep.TrainSessions != 160 || rep.TestSessions != 40 || rep.Exported != ModelMarkov {
		t.Fatalf("report %+v, want 160/40 sessions, markov1 exported", rep)
	}
	var names []string
	for _, res := range rep.Results {
		names = append(names, res.Model)
	}
	want := []string{ModelPopularity, ModelMarkov, ModelMarkov2, ModelNGram, ModelSR, ModelVSKNN, ModelSTAN}
	if !slices.Equal(names, want) {
		t.Errorf("report models %v, want %v", names, want)
	}
	if p := rep.Result(ModelNGram).Params; p["order"] < 2 || p["discount"] <= 0 {
		t.Errorf("ngram params %v, want a tuned order and discount", p)
	}
	best := rep.Result(rep.BestBaseline)
	if rep.BestBaseline == ModelMarkov || best == nil {
		t.Fatalf("best baseline %q, want a model other than the exported markov1", rep.BestBaseline)
	}
	for _, res := range rep.Results {
		if res.Model != ModelMarkov && res.MRRAt20 > best.MRRAt20 {
			t.Errorf("%s MRR@20 %v above best baseline %s %v", res.Model, res.MRRAt20, rep.BestBaseline, best.MRRAt20)
		}
	}
	wantGain := (rep.Result(ModelMarkov).MRRAt20 - best.MRRAt20) / best.MRRAt20
	if math.Abs(rep.ExportedGain-wantGain) > 1e-12 || !strings.Contains(rep.Verdict, rep.BestBaseline) {
		t.Errorf("gain %v, verdict %q; want gain %v naming %s", rep.ExportedGain, rep.Verdict, wantGain, rep.BestBaseline)
	}
	if b.Manifest.Cell != CellMarkov || b.Manifest.Metrics["mrr_at_20"] != rep.Result(ModelMarkov).MRRAt20 {
		t.Errorf("bundle manifest %+v does not carry the markov1 evaluation", b.Manifest)
	}
	for _, cfg := range []Config{{Export: "lstm"}, {SkipGRU: true, Export: ModelGRU}, {Split: SplitConfig{HoldoutFraction: 2}}} {
		if _, _, err := Run(ctx, nil, "synthetic", sessions, cfg); err == nil {
			t.Errorf("Run with %+v succeeded, want a config error", cfg)
		}
	}
}

// TestMarkovLargeVocabulary trains first-order Markov over a catalog of
// 200,000 pages: memory follows the transitions seen (a dense table would
// be 160 GB), rows are still distributions, and exporting the dense graph
// is refused with an error instead of exhausting memory.
func TestMarkovLargeVocabulary(t *testing.T) {
	const v = 200_000
	var seqs [][]int64
	for s := range 2_000 {
		seq := make([]int64, 10)
		for i := range seq {
			seq[i] = int64(2 + (s*7919+i*104729)%(v-2))
		}
		seqs = append(seqs, seq)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m, err := TrainMarkov(seqs, v, MarkovConfig{})
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 64<<20 {
		t.Errorf("model of %d pages holds %d MB, want under 64 MB", v, grown>>20)
	}
	from := seqs[5][3]
	row := m.Predict([]int64{from}, nil)
	var sum float64
	best := 0
	for j, p := range row {
		sum += float64(p)
		if p > row[best] {
			best = j
		}
	}
	if math.Abs(sum-1) > 1e-3 {
		t.Errorf("row of %d sums to %v, want 1", from, sum)
	}
	if want := seqs[5][4]; int64(best) != want {
		t.Errorf("likeliest page after %d is %d, want %d (the only one counted)", from, best, want)
	}
	if _, err := m.ONNX(); err == nil || !strings.Contains(err.Error(), "dense table") {
		t.Errorf("ONNX at %d pages: err %v, want the dense table refused", v, err)
	}
}
