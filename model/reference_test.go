package model

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReferenceFixtures(t *testing.T) {
	dirs, err := filepath.Glob("testdata/*/reference.json")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, refPath := range dirs {
		dir := filepath.Dir(refPath)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			seq, err := LoadModel(filepath.Join(dir, "model.onnx"))
			if err != nil {
				t.Fatalf("LoadModel: %v", err)
			}
			var step *Model
			if _, err := os.Stat(filepath.Join(dir, "step.onnx")); err == nil {
				if step, err = LoadModel(filepath.Join(dir, "step.onnx")); err != nil {
					t.Fatalf("LoadModel(step): %v", err)
				}
			}
			f, err := os.Open(refPath)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ref, err := ReadReference(f)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(ctx, seq, step, ref)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(rep.Cases) != len(ref.Cases) {
				t.Fatalf("verified %d cases, want %d", len(rep.Cases), len(ref.Cases))
			}
			for i, e := range rep.Cases {
				if e > 1e-5 {
					t.Errorf("case %d: max abs error %g, want <= 1e-5", i, e)
				}
			}
			if ref.StepCheck != nil {
				if step == nil {
					t.Fatalf("reference has a step check but no step.onnx")
				}
				if rep.Step < 0 || rep.Step > 1e-5 {
					t.Errorf("step check: max abs error %g, want <= 1e-5", rep.Step)
				}
			}
			t.Logf("max abs error %g (step %g)", rep.Max, rep.Step)
		})
	}
}

// TestVerifyReadsTheContractOutput: Verify compares the output the
// service reads ("probs" or "logits"), wherever it comes among the
// outputs, and refuses a graph without the contract's names, as loading
// it as a bundle would.
func TestVerifyReadsTheContractOutput(t *testing.T) {
	const vocab = 5
	trans := lcgWeights(vocab*vocab, 3, 1)
	g := markovGraph(vocab, trans)
	// Another output first: the row scaled, which is not the scores.
	g.inits = append(g.inits, tFloatTensor("two", nil, []float32{2}))
	g.nodes = append(g.nodes, tNode{op: "Mul", name: "scaled", in: []string{"probs", "two"}, out: []string{"hidden"}})
	g.outputs = append([]tValue{{name: "hidden", elem: onnxFloat, dims: []any{"batch", int64(vocab)}}}, g.outputs...)
	m, err := ParseModel(g.encode())
	if err != nil {
		t.Fatal(err)
	}
	ids := [][]int64{{2, 3}, {0, 4}}
	want := [][]float32{trans[3*vocab : 4*vocab], trans[4*vocab : 5*vocab]}
	rep, err := Verify(context.Background(), m, nil, &Reference{Cases: []ReferenceCase{{PageIDs: ids, Output: want}}})
	if err != nil || rep.Max > 1e-6 {
		t.Fatalf("Verify = %+v, %v; want the probs output compared, error 0", rep, err)
	}

	bare := markovGraph(vocab, trans)
	bare.nodes[1].out = []string{"output"}
	bare.outputs[0].name = "output"
	m, err = ParseModel(bare.encode())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(context.Background(), m, nil, &Reference{Cases: []ReferenceCase{{PageIDs: ids, Output: want}}}); !errors.Is(err, ErrContract) {
		t.Fatalf("Verify of an output named %q: %v, want a contract error", "output", err)
	}
}
