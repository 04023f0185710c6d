package model

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

func readRef(t testing.TB, dir string) *Reference {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ref, err := ReadReference(f)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func maxDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

func fixtureDirs(t testing.TB) []string {
	t.Helper()
	refs, err := filepath.Glob("testdata/*/reference.json")
	if err != nil || len(refs) < 2 {
		t.Fatalf("fixtures: %d found, err %v", len(refs), err)
	}
	var dirs []string
	for _, r := range refs {
		dirs = append(dirs, filepath.Dir(r))
	}
	return dirs
}

func TestLoadBundleFixtures(t *testing.T) {
	for _, dir := range fixtureDirs(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ref := readRef(t, dir)
			_, statErr := os.Stat(filepath.Join(dir, StepFile))
			b, err := LoadBundle(dir)
			if err != nil {
				t.Fatalf("LoadBundle: %v", err)
			}
			m := b.Manifest()
			if m.Output != ref.Output || b.HasStep() != (statErr == nil) || m.VocabSize != ref.Vocab || m.Cell != ref.Cell {
				t.Fatalf("manifest %+v, step %t; want output %q, step %t, vocab %d, cell %q", m, b.HasStep(), ref.Output, statErr == nil, ref.Vocab, ref.Cell)
			}
			for i, c := range ref.Cases {
				got, err := b.Predict(ctx, c.PageIDs)
				if err != nil {
					t.Fatalf("case %d: Predict: %v", i, err)
				}
				for r := range got {
					want := c.Output[r]
					if ref.Output == OutputLogits {
						want = make([]float32, len(c.Output[r]))
						softmaxRow(want, c.Output[r])
					}
					if d := maxDiff(got[r], want); d > 1e-5 {
						t.Errorf("case %d row %d: max abs error %g", i, r, d)
					}
					var sum float64
					for _, p := range got[r] {
						sum += float64(p)
					}
					if math.Abs(sum-1) > 1e-4 {
						t.Errorf("case %d row %d: probabilities sum to %g", i, r, sum)
					}
					one, err := b.PredictOne(ctx, c.PageIDs[r], nil)
					if err != nil {
						t.Fatalf("PredictOne: %v", err)
					}
					if d := maxDiff(one, got[r]); d > 1e-6 {
						t.Errorf("case %d row %d: PredictOne differs from Predict by %g", i, r, d)
					}
				}
			}
		})
	}
}

// TestStepMatchesSequence checks the incremental path: clicks fed one by one
// to Step from a zero state give the scores of Predict on the history.
func TestStepMatchesSequence(t *testing.T) {
	ran := 0
	for _, dir := range fixtureDirs(t) {
		if _, err := os.Stat(filepath.Join(dir, StepFile)); err != nil {
			continue
		}
		ran++
		t.Run(filepath.Base(dir), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			b, err := LoadBundle(dir)
			if err != nil {
				t.Fatal(err)
			}
			ref := readRef(t, dir)
			sc := ref.StepCheck
			histories := append([][]int64{sc.PageIDs[0]}, ref.Cases[len(ref.Cases)-1].PageIDs...)
			for hi, h := range histories {
				var state, probs []float32
				for i, id := range h {
					probs, state, err = b.Step(ctx, id, state, probs)
					if err != nil {
						t.Fatalf("Step: %v", err)
					}
					want, err := b.PredictOne(ctx, h[:i+1], nil)
					if err != nil {
						t.Fatal(err)
					}
					if d := maxDiff(probs, want); d > 1e-5 {
						t.Fatalf("history %d click %d: step and sequence differ by %g", hi, i, d)
					}
				}
				if hi > 0 {
					continue
				}
				want := sc.Output[0]
				if ref.Output == OutputLogits {
					want = make([]float32, len(want))
					softmaxRow(want, sc.Output[0])
				}
				if d := maxDiff(probs, want); d > 1e-5 {
					t.Errorf("step check output: max abs error %g", d)
				}
				var flat []float32
				for _, l := range sc.State {
					flat = append(flat, l[0]...)
				}
				if d := maxDiff(state, flat); d > 1e-5 {
					t.Errorf("step check state: max abs error %g", d)
				}
			}
		})
	}
	if ran < 2 {
		t.Fatalf("only %d fixtures with a step form", ran)
	}
}

func markovFS(t testing.TB, manifest string) fstest.MapFS {
	t.Helper()
	const v = 4
	trans := []float32{
		0.25, 0.25, 0.25, 0.25,
		0.1, 0.2, 0.3, 0.4,
		0, 0, 0, 1,
		0.5, 0.5, 0, 0,
	}
	fsys := fstest.MapFS{
		"m/model.onnx": {Data: markovGraph(v, trans).encode()},
		"m/vocab.txt":  {Data: []byte("<pad>\n<unk>\n/a\n/b\n")},
	}
	if manifest != "" {
		fsys["m/manifest.json"] = &fstest.MapFile{Data: []byte(manifest)}
	}
	return fsys
}

func TestLoadBundleFSMarkov(t *testing.T) {
	const good = `{"name":"markov","version":"v1","forms":["sequence"],"output":"probs","max_seq_len":3,"vocab_size":4,
		"golden":[{"page_ids":[[2,3]],"probs":[[0.5,0.5,0,0]]}]}`
	const badGolden = `{"name":"markov","version":"v1","forms":["sequence"],"output":"probs","max_seq_len":3,"vocab_size":4,
		"golden":[{"page_ids":[[2,3]],"probs":[[0.25,0.25,0.25,0.25]]}]}`
	const badVocab = `{"name":"markov","version":"v1","forms":["sequence"],"output":"probs","max_seq_len":3,"vocab_size":5}`
	const badOutput = `{"name":"markov","version":"v1","forms":["sequence"],"output":"logits","max_seq_len":3,"vocab_size":4}`
	const badForms = `{"name":"markov","version":"v1","forms":["sequence","step"],"output":"probs","max_seq_len":3,"vocab_size":4}`
	tests := []struct {
		name     string
		manifest string
		wantErr  error
	}{
		{"manifest", good, nil},
		{"default manifest", "", nil},
		{"golden mismatch", badGolden, ErrGolden},
		{"vocab size", badVocab, ErrContract},
		{"output kind", badOutput, ErrContract},
		{"missing step", badForms, ErrContract},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := LoadBundleFS(markovFS(t, tt.manifest), "m")
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("LoadBundleFS error %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadBundleFS: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, err := b.Predict(ctx, [][]int64{{2}, {3, 2, 1}, {}, {1, 1, 1, 1, 3}})
			if err != nil {
				t.Fatalf("Predict: %v", err)
			}
			want := [][]float32{{0, 0, 0, 1}, {0.1, 0.2, 0.3, 0.4}, {0.25, 0.25, 0.25, 0.25}, {0.5, 0.5, 0, 0}}
			for i := range want {
				if d := maxDiff(got[i], want[i]); d != 0 {
					t.Errorf("history %d: got %v, want %v", i, got[i], want[i])
				}
			}
			if tt.manifest == "" {
				m := b.Manifest()
				if m.Name != "m" || m.Version == "" || m.MaxSeqLen != DefaultMaxSeqLen || m.Output != OutputProbs {
					t.Errorf("default manifest %+v", m)
				}
			}
			if _, err := b.Predict(ctx, [][]int64{{4}}); !errors.Is(err, ErrBadInput) {
				t.Errorf("Predict with index 4 of 4: error %v, want ErrBadInput", err)
			}
			if _, _, err := b.Step(ctx, 2, nil, nil); !errors.Is(err, ErrUnsupported) {
				t.Errorf("Step without step form: error %v, want ErrUnsupported", err)
			}
			var buf bytes.Buffer
			if _, err := b.Manifest().WriteTo(&buf); err != nil || !strings.Contains(buf.String(), `"name"`) {
				t.Errorf("manifest WriteTo: %v", err)
			}
		})
	}
}

func TestLoadBundleFSStaticShape(t *testing.T) {
	g := markovGraph(4, make([]float32, 16))
	g.inputs[0].dims = []any{int64(1), int64(5)}
	fsys := markovFS(t, "")
	fsys["m/model.onnx"].Data = g.encode()
	if _, err := LoadBundleFS(fsys, "m"); !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), "dynamic") {
		t.Fatalf("LoadBundleFS with a fixed-shape input: %v, want ErrContract about dynamic axes", err)
	}
}

func TestPredictCanceled(t *testing.T) {
	b, err := LoadBundleFS(markovFS(t, ""), "m")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Predict(ctx, [][]int64{{2}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Predict on canceled context: %v", err)
	}
	if _, err := b.PredictOne(ctx, []int64{2}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("PredictOne on canceled context: %v", err)
	}
}

func TestPredictCutsToMaxSeqLen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := LoadBundle("testdata/gru-probs-opset13")
	if err != nil {
		t.Fatal(err)
	}
	n := b.Manifest().MaxSeqLen
	long := history(n+17, b.Vocab().Len())
	got, err := b.PredictOne(ctx, long, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := b.PredictOne(ctx, long[17:], nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(got, want); d != 0 {
		t.Errorf("history of %d differs from its last %d pages by %g", len(long), n, d)
	}
	// The graph itself, given all pages, scores differently: the cut matters.
	full, err := b.seq.Run(ctx, map[string]Tensor{InputPageIDs: {Shape: []int{1, len(long)}, Int64: long}})
	if err != nil {
		t.Fatal(err)
	}
	if maxDiff(full[OutputProbs].Float32, want) == 0 {
		t.Errorf("the graph scores %d pages like their last %d: the test cannot see the cut", len(long), n)
	}
}

// TestStepManyMatchesStep runs several users' sessions through StepMany,
// users joining at different clicks (a zero state beside advanced ones),
// and compares every row with Step on that user alone.
func TestStepManyMatchesStep(t *testing.T) {
	ran := 0
	for _, dir := range fixtureDirs(t) {
		if _, err := os.Stat(filepath.Join(dir, StepFile)); err != nil {
			continue
		}
		ran++
		t.Run(filepath.Base(dir), func(t *testing.T) {
			ctx := context.Background()
			b, err := LoadBundle(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !b.stepBatches {
				t.Fatalf("fixture step form has a fixed batch of 1")
			}
			const users, clicks = 5, 6
			vocab := int64(b.Vocab().Len())
			page := func(u, c int) int64 { return 2 + int64(u*7+c*3)%(vocab-2) }
			single := make([][]float32, users) // states advanced by Step
			batch := make([][]float32, users)  // states advanced by StepMany
			for c := range clicks + users {
				var ids []int64
				var rows []int
				for u := range users {
					// User u clicks from round u on, for clicks rounds.
					if c >= u && c < u+clicks {
						ids = append(ids, page(u, c-u))
						rows = append(rows, u)
					}
				}
				states := make([][]float32, len(rows))
				for i, u := range rows {
					states[i] = batch[u]
				}
				probs := make([][]float32, len(rows))
				if err := b.StepMany(ctx, ids, states, probs); err != nil {
					t.Fatalf("round %d: StepMany: %v", c, err)
				}
				for i, u := range rows {
					var want []float32
					want, single[u], err = b.Step(ctx, ids[i], single[u], nil)
					if err != nil {
						t.Fatal(err)
					}
					if d := maxDiff(probs[i], want); d > 1e-5 {
						t.Fatalf("round %d user %d: probabilities differ by %g", c, u, d)
					}
					if d := maxDiff(states[i], single[u]); d > 1e-5 || len(states[i]) != b.StateSize() {
						t.Fatalf("round %d user %d: states differ by %g (len %d)", c, u, d, len(states[i]))
					}
					batch[u] = states[i]
				}
			}
			// Bad rows are refused and leave every state alone.
			states := [][]float32{append([]float32(nil), batch[0]...), make([]float32, 3)}
			before := append([]float32(nil), states[0]...)
			if err := b.StepMany(ctx, []int64{2, 2}, states, make([][]float32, 2)); !errors.Is(err, ErrBadInput) {
				t.Fatalf("short state: %v, want ErrBadInput", err)
			}
			if err := b.StepMany(ctx, []int64{2, vocab}, states[:1:1], make([][]float32, 1)); !errors.Is(err, ErrBadInput) {
				t.Fatalf("mismatched lengths: %v, want ErrBadInput", err)
			}
			if err := b.StepMany(ctx, []int64{2, vocab}, [][]float32{states[0], nil}, make([][]float32, 2)); !errors.Is(err, ErrBadInput) {
				t.Fatalf("page outside the vocabulary: %v, want ErrBadInput", err)
			}
			if maxDiff(states[0], before) != 0 {
				t.Fatal("a refused StepMany changed a state")
			}
		})
	}
	if ran < 2 {
		t.Fatalf("only %d fixtures with a step form", ran)
	}
}
