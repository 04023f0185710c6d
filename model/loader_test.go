package model

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseModelRefuses(t *testing.T) {
	emb := tFloatTensor("emb", []int64{4, 2}, []float32{0, 0, 1, 1, 2, 2, 3, 3})
	in := []tValue{{name: "page_ids", elem: onnxInt64, dims: []any{"batch", "seq"}}}
	out := []tValue{{name: "y", elem: onnxFloat}}
	gather := tNode{op: "Gather", name: "embed", in: []string{"emb", "page_ids"}, out: []string{"e"}}
	tests := []struct {
		name    string
		graph   tGraph
		wantErr error
		want    []string // substrings of the error
	}{
		{
			name: "unsupported ops named",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, inputs: in, outputs: out, nodes: []tNode{
				gather,
				{op: "Conv", name: "conv1", in: []string{"e"}, out: []string{"c"}},
				{op: "Erf", name: "erf1", in: []string{"c"}, out: []string{"y"}},
			}},
			wantErr: ErrUnsupported,
			want:    []string{`"conv1" (Conv)`, `"erf1" (Erf)`},
		},
		{
			name: "unknown attribute",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, inputs: in, outputs: out, nodes: []tNode{
				gather,
				{op: "Softmax", name: "sm", in: []string{"e"}, out: []string{"y"}, attrs: [][]byte{tAttrInt("axis", -1), tAttrInt("frobnicate", 1)}},
			}},
			wantErr: ErrUnsupported,
			want:    []string{`"sm" (Softmax)`, "frobnicate"},
		},
		{
			name: "unsupported attribute value",
			graph: tGraph{opset: 13, inits: [][]byte{emb, tFloatTensor("W", []int64{1, 3, 2}, make([]float32, 6)), tFloatTensor("R", []int64{1, 3, 1}, make([]float32, 3))}, inputs: in, outputs: out, nodes: []tNode{
				gather,
				{op: "GRU", name: "gru", in: []string{"e", "W", "R"}, out: []string{"y"}, attrs: [][]byte{tAttrInt("hidden_size", 1), tAttrInt("layout", 1)}},
			}},
			wantErr: ErrUnsupported,
			want:    []string{`"gru" (GRU)`, "layout"},
		},
		{
			name: "unsupported initializer dtype",
			graph: tGraph{opset: 13, inputs: in, outputs: out, nodes: []tNode{gather},
				inits: [][]byte{append(bytesField(varintField(varintField(nil, 1, 2), 2, onnxFloat16), 8, []byte("emb")), bytesField(nil, 9, make([]byte, 4))...)}},
			wantErr: ErrUnsupported,
			want:    []string{"float16"},
		},
		{
			name: "fixed shapes told to export with dynamic axes",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, outputs: out, nodes: []tNode{
				gather,
				{op: "Expand", name: "/rnn/Expand", in: []string{"e"}, out: []string{"y"}},
			}, inputs: []tValue{{name: "page_ids", elem: onnxInt64, dims: []any{int64(2), int64(5)}}}},
			wantErr: ErrUnsupported,
			want:    []string{`"/rnn/Expand" (Expand)`, `"page_ids" has the fixed shape [2 5]: export with dynamic_axes`},
		},
		{
			name: "int32 ids told to use int64",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, outputs: out, nodes: []tNode{gather},
				inputs: []tValue{{name: "page_ids", elem: onnxInt32, dims: []any{"batch", "seq"}}}},
			wantErr: ErrUnsupported,
			want:    []string{"page_ids", "int32", "torch.long"},
		},
		{
			name: "unsupported input dtype",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, outputs: out, nodes: []tNode{gather},
				inputs: []tValue{{name: "page_ids", elem: onnxDouble, dims: []any{"batch", "seq"}}}},
			wantErr: ErrUnsupported,
			want:    []string{"page_ids", "float64"},
		},
		{
			name:    "opset too old",
			graph:   tGraph{opset: 5, inits: [][]byte{emb}, inputs: in, outputs: out, nodes: []tNode{gather}},
			wantErr: ErrUnsupported,
			want:    []string{"opset 5"},
		},
		{
			name: "huge declared value",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, outputs: out, nodes: []tNode{gather},
				inputs: []tValue{{name: "page_ids", elem: onnxInt64, dims: []any{int64(1 << 20), int64(1 << 20)}}}},
			wantErr: ErrBadModel,
		},
		{
			name: "initializer shorter than its shape",
			graph: tGraph{opset: 13, inputs: in, outputs: out, nodes: []tNode{gather},
				inits: [][]byte{tFloatTensor("emb", []int64{1 << 20, 1 << 10}, []float32{1, 2})}},
			wantErr: ErrBadModel,
		},
		{
			name: "node reads its own output",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, inputs: in, outputs: out, nodes: []tNode{
				gather,
				{op: "Add", name: "loop", in: []string{"e", "y"}, out: []string{"y"}},
			}},
			wantErr: ErrBadModel,
			want:    []string{`"loop" (Add)`},
		},
		{
			name: "input used before it is computed",
			graph: tGraph{opset: 13, inits: [][]byte{emb}, inputs: in, outputs: out, nodes: []tNode{
				{op: "Identity", name: "early", in: []string{"e"}, out: []string{"y"}},
				gather,
			}},
			wantErr: ErrBadModel,
			want:    []string{`"early" (Identity)`},
		},
		{
			name: "constant folding error",
			graph: tGraph{opset: 13, inputs: in, outputs: out, nodes: []tNode{
				{op: "Constant", name: "shape", out: []string{"s"}, attrs: [][]byte{tAttrTensor("value", tIntTensor("", []int64{2}, []int64{1 << 30, 1 << 30}))}},
				{op: "ConstantOfShape", name: "big", in: []string{"s"}, out: []string{"y"}},
			}},
			want: []string{`"big" (ConstantOfShape)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseModel(tt.graph.encode())
			if err == nil {
				t.Fatal("ParseModel: no error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %q does not wrap %v", err, tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestParseModelCorrupt(t *testing.T) {
	data, err := os.ReadFile("testdata/gru-probs-opset13/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 7, 100, len(data) / 3, len(data) / 2, len(data) - 1} {
		if _, err := ParseModel(data[:n]); err == nil {
			t.Errorf("ParseModel of the first %d of %d bytes: no error", n, len(data))
		}
	}
	garbage := []byte(strings.Repeat("\xff\x01", 300))
	if _, err := ParseModel(garbage); !errors.Is(err, ErrBadModel) {
		t.Errorf("ParseModel(garbage): %v, want ErrBadModel", err)
	}
}

// TestTensorUsedTwice covers a node that reads one value at two inputs,
// which onnx-go reports as a single graph edge, and a graph output that is
// also an input of another node.
func TestTensorUsedTwice(t *testing.T) {
	g := tGraph{opset: 13,
		inits:  [][]byte{tFloatTensor("emb", []int64{3, 2}, []float32{0, 0, 1, 2, 3, 4}), tFloatTensor("w", []int64{2}, []float32{10, 100})},
		inputs: []tValue{{name: "page_ids", elem: onnxInt64, dims: []any{"batch", "seq"}}},
		// "m" is a graph output that is also consumed inside the graph.
		outputs: []tValue{{name: "y", elem: onnxFloat}, {name: "m", elem: onnxFloat}},
		nodes: []tNode{
			{op: "Gather", name: "embed", in: []string{"emb", "page_ids"}, out: []string{"e"}},
			{op: "Sub", name: "twice", in: []string{"e", "e"}, out: []string{"z"}},
			{op: "Mul", name: "scale", in: []string{"e", "w"}, out: []string{"m"}},
			{op: "Add", name: "sum", in: []string{"m", "z"}, out: []string{"y"}},
		},
	}
	m, err := ParseModel(g.encode())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := m.Run(ctx, map[string]Tensor{"page_ids": {Shape: []int{1, 2}, Int64: []int64{1, 2}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{10, 200, 30, 400}
	if d := maxDiff(res["y"].Float32, want); d != 0 {
		t.Fatalf("y = %v, want %v", res["y"].Float32, want)
	}
	if d := maxDiff(res["m"].Float32, want); d != 0 {
		t.Fatalf("m = %v, want %v", res["m"].Float32, want)
	}
}

func FuzzParseModel(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.onnx")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(markovGraph(3, make([]float32, 9)).encode())
	seq, step := gruGraphs(6, 3, 2)
	f.Add(seq.encode())
	f.Add(step.encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseModel(data)
		if err != nil {
			return
		}
		// A model that loads must also run (or fail cleanly) on a small input.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		in := map[string]Tensor{}
		for _, v := range m.Info().Inputs {
			shape := make([]int, len(v.Dims))
			for i, d := range v.Dims {
				shape[i] = 1
				if d > 0 && d < 64 {
					shape[i] = int(d)
				}
			}
			tt := Tensor{Shape: shape}
			if v.DType == "int64" {
				tt.Int64 = make([]int64, size(shape))
			} else {
				tt.Float32 = make([]float32, size(shape))
			}
			in[v.Name] = tt
		}
		_, _ = m.Run(ctx, in)
	})
}
