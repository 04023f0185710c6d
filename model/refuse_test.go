package model

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestLoadRefusesBrokenBundles covers the load checks that guard against
// bundles which run but would serve wrong hints: NaN weights, a step form
// with other weights than the sequence form, a vocabulary whose first lines
// are not the padding and unknown entries.
func TestLoadRefusesBrokenBundles(t *testing.T) {
	const vocab, hidden = 40, 8
	outW := lcgWeights(vocab*hidden, 7, 0.5)
	outB := lcgWeights(vocab, 8, 0.1)
	nanW := append([]float32(nil), outW...)
	nanW[3*hidden+1] = float32(math.NaN())
	otherW := lcgWeights(vocab*hidden, 9, 0.5)
	good, goodStep := gruGraphsOut(vocab, 8, hidden, outW, outB)
	nanSeq, nanStep := gruGraphsOut(vocab, 8, hidden, nanW, outB)
	_, otherStep := gruGraphsOut(vocab, 8, hidden, otherW, outB)
	tests := []struct {
		name      string
		seq, step tGraph
		want      string // in the error; "" loads
	}{
		{"consistent", good, goodStep, ""},
		{"NaN in both forms", nanSeq, nanStep, "holds NaN"},
		{"NaN in the step form", good, nanStep, "step.onnx: constant"},
		{"step form of other weights", good, otherStep, "disagree on history"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadBundleFS(graphsFS(vocab, tt.seq, tt.step), "b")
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("LoadBundleFS: %v", err)
			case tt.want != "" && (!errors.Is(err, ErrContract) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("LoadBundleFS error %v, want ErrContract with %q", err, tt.want)
			}
		})
	}

	t.Run("vocabulary lines swapped", func(t *testing.T) {
		fsys := graphsFS(vocab, good, goodStep)
		lines := strings.Split(string(fsys["b/vocab.txt"].Data), "\n")
		lines[0], lines[2] = lines[2], lines[0]
		fsys["b/vocab.txt"].Data = []byte(strings.Join(lines, "\n"))
		_, err := LoadBundleFS(fsys, "b")
		if !errors.Is(err, ErrBadVocab) || !strings.Contains(err.Error(), `lines 0 and 1 must be "<pad>" and "<unk>"`) {
			t.Fatalf("LoadBundleFS error %v, want ErrBadVocab naming lines 0 and 1", err)
		}
	})
}

// TestOversizedModelRefusedBeforeReading: a model file over MaxModelBytes
// (sparse here: 1 GiB of nothing on disk) is refused from its size, at once
// and without reading it into memory, as a bundle's model or step file and
// through LoadModel.
func TestOversizedModelRefusedBeforeReading(t *testing.T) {
	for _, name := range []string{ModelFile, StepFile} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if name == StepFile {
				src := filepath.Join("testdata", "gru-probs-opset13")
				for _, f := range []string{ModelFile, VocabFile} {
					data, err := os.ReadFile(filepath.Join(src, f))
					if err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			} else if err := os.WriteFile(filepath.Join(dir, VocabFile), []byte("<pad>\n<unk>\n/a\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			big := filepath.Join(dir, name)
			f, err := os.Create(big)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(MaxModelBytes + 1); err != nil {
				t.Fatal(err)
			}
			f.Close()
			check := func(what string, load func() error) {
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				start := time.Now()
				err := load()
				took := time.Since(start)
				runtime.ReadMemStats(&after)
				if !errors.Is(err, ErrBadModel) || !strings.Contains(err.Error(), "exceeds the limit") {
					t.Fatalf("%s: %v, want ErrBadModel over the size limit", what, err)
				}
				if took > time.Second {
					t.Errorf("%s: refused after %v, want at once", what, took)
				}
				if grown := after.TotalAlloc - before.TotalAlloc; grown > 16<<20 {
					t.Errorf("%s: allocated %d MB to refuse it", what, grown>>20)
				}
			}
			check("LoadBundle", func() error { _, err := LoadBundle(dir); return err })
			check("LoadModel", func() error { _, err := LoadModel(big); return err })
		})
	}
}

// TestSoftmaxNonFinite: as in ONNX, a softmax row holding NaN or +Inf, or
// only -Inf, comes out NaN, on the vector kernels' path as on the scalar
// one; -Inf entries beside finite ones come out (nearly) 0.
func TestSoftmaxNonFinite(t *testing.T) {
	inf, nan := float32(math.Inf(1)), float32(math.NaN())
	for _, n := range []int{3, 37, 1000} {
		for _, tc := range []struct {
			name    string
			set     func(row []float32)
			wantNaN bool
		}{
			{"finite", func([]float32) {}, false},
			{"a NaN", func(r []float32) { r[len(r)/2] = nan }, true},
			{"a NaN first", func(r []float32) { r[0] = nan }, true},
			{"+Inf", func(r []float32) { r[len(r)-1] = inf }, true},
			{"-Inf beside finite", func(r []float32) { r[1] = -inf }, false},
			{"only -Inf", func(r []float32) {
				for i := range r {
					r[i] = -inf
				}
			}, true},
		} {
			row := lcgWeights(n, 3, 4)
			tc.set(row)
			dst := make([]float32, n)
			softmaxRow(dst, row)
			sum, nans := 0.0, 0
			for _, p := range dst {
				if p != p {
					nans++
				}
				sum += float64(p)
			}
			if tc.wantNaN && nans != n {
				t.Errorf("n=%d %s: %d of %d outputs NaN, want all", n, tc.name, nans, n)
			}
			if !tc.wantNaN && (nans != 0 || math.Abs(sum-1) > 1e-5) {
				t.Errorf("n=%d %s: %d NaN, sum %v; want a distribution", n, tc.name, nans, sum)
			}
			if tc.name == "-Inf beside finite" && dst[1] > 1e-30 {
				t.Errorf("n=%d: -Inf entry came out %v, want about 0", n, dst[1])
			}
		}
	}
}

// TestDivergedModelScoresNaN: a GRU whose output weights hold +Inf (a
// diverged training run) scores NaN, not a plausible distribution, so the
// probe check of a model version (finite probabilities summing to 1)
// refuses it.
func TestDivergedModelScoresNaN(t *testing.T) {
	const vocab, hidden = 40, 8
	outW := lcgWeights(vocab*hidden, 7, 0.5)
	outB := lcgWeights(vocab, 8, 0.1)
	outW[5*hidden+2] = float32(math.Inf(1))
	seq, step := gruGraphsOut(vocab, 8, hidden, outW, outB)
	b, err := LoadBundleFS(graphsFS(vocab, seq, step), "b")
	if err != nil {
		if !errors.Is(err, ErrContract) {
			t.Fatalf("LoadBundleFS: %v, want a load or a contract refusal", err)
		}
		return // refused at load: fine too
	}
	out, err := b.Predict(context.Background(), [][]int64{{2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	finite := 0
	for _, p := range out[0] {
		if p == p {
			finite++
		}
	}
	if finite != 0 {
		t.Fatalf("%d of %d probabilities finite, want every one NaN", finite, len(out[0]))
	}
}

// TestStepStateLayoutRefused: a PyTorch step form that returns its state
// batch first ([batch, layers, hidden]) while it takes it layer first
// agrees with the sequence form one user at a time, but mixes users up
// when the engine steps several in one call; the load steps its probes
// together too and refuses it, while the same model with a right step
// form loads.
func TestStepStateLayoutRefused(t *testing.T) {
	_, err := LoadBundle("testdata/bad-gru2-state-batch-major")
	if !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), "stepped for") || !strings.Contains(err.Error(), "state_out") {
		t.Fatalf("LoadBundle of a batch-major state_out: %v, want a contract error naming state_out", err)
	}
	if _, err := LoadBundle("testdata/gru2-probs-opset11"); err != nil {
		t.Fatalf("LoadBundle of a 2-layer GRU with a right step form: %v", err)
	}
}
