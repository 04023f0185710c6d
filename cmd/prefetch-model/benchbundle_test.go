package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/onnxenc"
	"github.com/prefetchd/prefetchd/model"
)

// writeEmbeddingBundle writes a bundle folder whose model scores the next
// page from the last page's embedding (hidden width h): Gather -> last
// position -> Gemm -> Softmax, in sequence and step form (the step form's
// state is the embedding). The output rows are grouped in topics with Zipf
// biases, so that the next-page distribution is peaked; at 16,384 pages or
// more the runtime scores it approximately.
func writeEmbeddingBundle(t *testing.T, vocab, h int) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	topics := max(1, vocab/200)
	u := make([]float32, topics*h)
	for i := range u {
		u[i] = float32(rng.NormFloat64() * 1.2)
	}
	emb := make([]float32, vocab*h)
	w := make([]float32, vocab*h)
	bias := make([]float32, vocab)
	for i := range vocab {
		t := rng.IntN(topics)
		for d := range h {
			emb[i*h+d] = float32(rng.NormFloat64() * 0.3)
			w[i*h+d] = u[t*h+d] + float32(rng.NormFloat64()*0.15)
		}
	}
	for i, r := range rng.Perm(vocab) {
		bias[i] = -float32(math.Log(float64(r + 1)))
	}
	v, hh := int64(vocab), int64(h)
	inits := []onnxenc.Tensor{
		onnxenc.FloatTensor("emb", emb, v, hh),
		onnxenc.FloatTensor("out.weight", w, v, hh),
		onnxenc.FloatTensor("out.bias", bias, v),
		onnxenc.Int64Tensor("minus_one", []int64{-1}),
		onnxenc.Int64Tensor("zero", []int64{0}, 1),
	}
	head := []onnxenc.Node{
		{Name: "last", OpType: "Gather", Inputs: []string{"x", "minus_one"}, Outputs: []string{"hl"}, Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 1)}},
		{Name: "out", OpType: "Gemm", Inputs: []string{"hl", "out.weight", "out.bias"}, Outputs: []string{"logits"}, Attributes: []onnxenc.Attribute{onnxenc.Int("transB", 1)}},
		{Name: "softmax", OpType: "Softmax", Inputs: []string{"logits"}, Outputs: []string{"probs"}, Attributes: []onnxenc.Attribute{onnxenc.Int("axis", -1)}},
	}
	probs := onnxenc.ValueInfo{Name: model.OutputProbs, ElemType: onnxenc.Float32, Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Fixed(v)}}
	state := []onnxenc.Dim{onnxenc.Fixed(1), onnxenc.Symbolic("batch"), onnxenc.Fixed(hh)}
	seq := onnxenc.Graph{Name: "seq", Initializers: inits,
		Nodes: append([]onnxenc.Node{{Name: "embed", OpType: "Gather", Inputs: []string{"emb", model.InputPageIDs}, Outputs: []string{"x"}}}, head...),
		Inputs: []onnxenc.ValueInfo{{Name: model.InputPageIDs, ElemType: onnxenc.Int64,
			Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Symbolic("seq")}}},
		Outputs: []onnxenc.ValueInfo{probs},
	}
	step := onnxenc.Graph{Name: "step", Initializers: inits,
		Nodes: append(append([]onnxenc.Node{
			{Name: "embed", OpType: "Gather", Inputs: []string{"emb", model.InputPageID}, Outputs: []string{"x"}}}, head...),
			onnxenc.Node{Name: "state", OpType: "Unsqueeze", Inputs: []string{"hl", "zero"}, Outputs: []string{model.OutputStateOut}}),
		Inputs: []onnxenc.ValueInfo{
			{Name: model.InputPageID, ElemType: onnxenc.Int64, Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Fixed(1)}},
			{Name: model.InputStateIn, ElemType: onnxenc.Float32, Dims: state},
		},
		Outputs: []onnxenc.ValueInfo{probs, {Name: model.OutputStateOut, ElemType: onnxenc.Float32, Dims: state}},
	}
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, g := range map[string]onnxenc.Graph{model.ModelFile: seq, model.StepFile: step} {
		data, err := (&onnxenc.Model{Graph: g}).Marshal()
		if err != nil {
			t.Fatalf("marshal %s: %v", file, err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var keys strings.Builder
	keys.WriteString(model.PadKey + "\n" + model.UnknownKey + "\n")
	for i := 2; i < vocab; i++ {
		fmt.Fprintf(&keys, "/p/%d\n", i)
	}
	if err := os.WriteFile(filepath.Join(dir, model.VocabFile), []byte(keys.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBenchBundle(t *testing.T) {
	large := writeEmbeddingBundle(t, 20_000, 16)
	small := writeEmbeddingBundle(t, 500, 16)
	agreement := regexp.MustCompile(`exact agreement\s+([0-9.]+)`)
	tests := []struct {
		name      string
		args      []string
		wantErr   string // part of the error's message; "" for success
		want      []string
		agreement bool // an "exact agreement" line with a fraction above 0.9
	}{
		{"step approximate", []string{"bench", "--form", "step", "--duration", "300ms", large}, "",
			[]string{"p50 / p99", "scoring", "approximate", "exact scoring p50 / p99", "20000 pages"}, true},
		{"sequence approximate", []string{"bench", large, "--form", "sequence", "--len", "5", "--k", "3", "--threshold", "0.05", "--duration", "300ms"}, "",
			[]string{"p50 / p99", "sequence", "top 3 at or above 0.05"}, true},
		{"step exact", []string{"bench", "--form", "step", "--duration", "100ms", small}, "",
			[]string{"p50 / p99", "exact"}, false},
		{"bad form", []string{"bench", "--form", "batch", large}, `invalid value "batch" for flag -form`, nil, false},
		{"bad k", []string{"bench", "--k", "0", large}, `invalid value "0" for flag -k`, nil, false},
		{"bad duration", []string{"bench", "--duration", "0s", large}, "must be positive", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, tt.args, &out)
			if tt.wantErr != "" {
				// A usage error, whichever way the command reports those.
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run error %v, want one saying %q\n%s", err, tt.wantErr, out.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			want := tt.want
			if _, release, ok := threadCPU(); ok && tt.wantErr == "" {
				release()
				want = append(want, "cpu p50 / p99")
			}
			for _, w := range want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			m := agreement.FindStringSubmatch(out.String())
			switch {
			case tt.agreement && m == nil:
				t.Fatalf("no exact agreement line:\n%s", out.String())
			case !tt.agreement && m != nil:
				t.Fatalf("exact agreement line for exact scoring:\n%s", out.String())
			case m != nil:
				f, err := strconv.ParseFloat(m[1], 64)
				if err != nil || f < 0.9 || f > 1 {
					t.Errorf("exact agreement %q, want a fraction above 0.9", m[1])
				}
			}
		})
	}
}
