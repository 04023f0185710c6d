package onnxenc

import (
	"errors"
	"reflect"
	"testing"

	"github.com/owulveryck/onnx-go"
	"gonum.org/v1/gonum/graph"
	"gonum.org/v1/gonum/graph/simple"
	"google.golang.org/protobuf/encoding/protowire"
	"gorgonia.org/tensor"
)

// recorder is an onnx-go backend that remembers what the decoder hands it.
type recorder struct {
	*simple.WeightedDirectedGraph
	ops []onnx.Operation
}

type recNode struct {
	id   int64
	name string
	t    tensor.Tensor
}

func (n *recNode) ID() int64                       { return n.id }
func (n *recNode) SetName(s string)                { n.name = s }
func (n *recNode) GetName() string                 { return n.name }
func (n *recNode) SetTensor(t tensor.Tensor) error { n.t = t; return nil }
func (n *recNode) GetTensor() tensor.Tensor        { return n.t }

func (r *recorder) NewNode() graph.Node { return &recNode{id: r.WeightedDirectedGraph.NewNode().ID()} }
func (r *recorder) ApplyOperation(op onnx.Operation, _ ...graph.Node) error {
	r.ops = append(r.ops, op)
	return nil
}

func (r *recorder) byName(name string) *recNode {
	nodes := r.Nodes()
	for nodes.Next() {
		if n := nodes.Node().(*recNode); n.name == name {
			return n
		}
	}
	return nil
}

func markovLike() *Model {
	return &Model{
		ProducerName: "test",
		Opset:        13,
		Metadata:     []KeyValue{{"cell", "markov1"}},
		Graph: Graph{
			Name: "g",
			Nodes: []Node{
				{Name: "last", OpType: "Gather", Inputs: []string{"page_ids", "minus_one"}, Outputs: []string{"last"}, Attributes: []Attribute{Int("axis", 1)}},
				{Name: "rows", OpType: "Gather", Inputs: []string{"T", "last"}, Outputs: []string{"probs"}, Attributes: []Attribute{
					Int("axis", 0), Float("f", 0.5), String("s", "x"), Ints("is", 1, -2), Floats("fs", 1.5, -2),
					Strings("ss", "a", "b"), TensorAttr("t", Int64Tensor("", []int64{7}, 1)),
				}},
			},
			Initializers: []Tensor{
				Int64Tensor("minus_one", []int64{-1}),
				FloatTensor("T", []float32{0.25, 0.75, 1, 0, 0.5, 0.5}, 3, 2),
			},
			Inputs:  []ValueInfo{{Name: "page_ids", ElemType: Int64, Dims: []Dim{Symbolic("batch"), Symbolic("seq")}}},
			Outputs: []ValueInfo{{Name: "probs", ElemType: Float32, Dims: []Dim{Symbolic("batch"), Fixed(2)}}},
		},
	}
}

func TestMarshalDecodesWithOnnxGo(t *testing.T) {
	b, err := markovLike().Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	rec := &recorder{WeightedDirectedGraph: simple.NewWeightedDirectedGraph(0, 0)}
	m := onnx.NewModel(rec)
	if err := m.UnmarshalBinary(b); err != nil {
		t.Fatalf("onnx-go UnmarshalBinary: %v", err)
	}
	if len(m.Input) != 1 || len(m.Output) != 1 {
		t.Fatalf("inputs/outputs = %d/%d, want 1/1", len(m.Input), len(m.Output))
	}
	if len(rec.ops) != 2 || rec.ops[0].Name != "Gather" || rec.ops[1].Name != "Gather" {
		t.Fatalf("ops = %+v, want two Gathers", rec.ops)
	}
	if got := rec.ops[0].Attributes["axis"]; got != int64(1) {
		t.Errorf("first Gather axis = %v, want 1", got)
	}
	attrs := rec.ops[1].Attributes
	want := map[string]any{
		"axis": int64(0), "f": float32(0.5), "s": "x", "is": []int64{1, -2},
		"fs": []float32{1.5, -2}, "ss": []string{"a", "b"},
	}
	for k, w := range want {
		if !reflect.DeepEqual(attrs[k], w) {
			t.Errorf("attribute %s = %#v, want %#v", k, attrs[k], w)
		}
	}
	if tt, ok := attrs["t"].(tensor.Tensor); !ok || !reflect.DeepEqual(tt.Data(), []int64{7}) {
		t.Errorf("tensor attribute = %#v, want [7]", attrs["t"])
	}
	tn := rec.byName("T")
	if tn == nil || tn.t == nil {
		t.Fatalf("initializer T not decoded")
	}
	if !reflect.DeepEqual(tn.t.Shape(), tensor.Shape{3, 2}) || !reflect.DeepEqual(tn.t.Data(), []float32{0.25, 0.75, 1, 0, 0.5, 0.5}) {
		t.Errorf("T = %v %v, want [3 2] data", tn.t.Shape(), tn.t.Data())
	}
	mo := rec.byName("minus_one")
	if mo == nil || mo.t == nil || !reflect.DeepEqual(mo.t.Data(), []int64{-1}) && mo.t.Data() != int64(-1) {
		t.Errorf("minus_one = %#v, want scalar -1", mo)
	}
}

// fields decodes one protobuf message level into field number -> raw values.
func fields(t *testing.T, b []byte) map[protowire.Number][]any {
	t.Helper()
	out := make(map[protowire.Number][]any)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		var v any
		switch typ {
		case protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			v, n = x, m
		case protowire.BytesType:
			x, m := protowire.ConsumeBytes(b)
			v, n = x, m
		case protowire.Fixed32Type:
			x, m := protowire.ConsumeFixed32(b)
			v, n = x, m
		default:
			t.Fatalf("unexpected wire type %d", typ)
		}
		if n < 0 {
			t.Fatalf("bad value: %v", protowire.ParseError(n))
		}
		b = b[n:]
		out[num] = append(out[num], v)
	}
	return out
}

func TestMarshalHeaderAndSymbolicDims(t *testing.T) {
	b, err := markovLike().Marshal()
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	top := fields(t, b)
	if got := top[1][0].(uint64); got != DefaultIRVersion {
		t.Errorf("ir_version = %d, want %d", got, DefaultIRVersion)
	}
	opset := fields(t, top[8][0].([]byte))
	if opset[2][0].(uint64) != 13 || len(opset[1][0].([]byte)) != 0 {
		t.Errorf("opset_import = %v, want domain \"\" version 13", opset)
	}
	g := fields(t, top[7][0].([]byte))
	in := fields(t, g[11][0].([]byte))
	typ := fields(t, in[2][0].([]byte))
	tt := fields(t, typ[1][0].([]byte))
	if tt[1][0].(uint64) != uint64(Int64) {
		t.Errorf("input elem_type = %v, want int64", tt[1][0])
	}
	shape := fields(t, tt[2][0].([]byte))
	var params []string
	for _, d := range shape[1] {
		df := fields(t, d.([]byte))
		params = append(params, string(df[2][0].([]byte)))
	}
	if !reflect.DeepEqual(params, []string{"batch", "seq"}) {
		t.Errorf("input dims = %v, want [batch seq]", params)
	}
}

func TestMarshalRejectsMalformed(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(m *Model)
	}{
		{"no nodes", func(m *Model) { m.Graph.Nodes = nil }},
		{"no outputs", func(m *Model) { m.Graph.Outputs = nil }},
		{"undefined input", func(m *Model) { m.Graph.Nodes[0].Inputs[1] = "nope" }},
		{"wrong element count", func(m *Model) { m.Graph.Initializers[1].Dims = []int64{4, 2} }},
		{"unnamed initializer", func(m *Model) { m.Graph.Initializers[0].Name = "" }},
		{"output never computed", func(m *Model) { m.Graph.Outputs[0].Name = "other" }},
		{"redefined value", func(m *Model) { m.Graph.Nodes[1].Outputs[0] = "last" }},
		{"unsupported dtype", func(m *Model) { m.Graph.Initializers[0].DataType = 11 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := markovLike()
			tc.mutate(m)
			if _, err := m.Marshal(); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Marshal error = %v, want ErrInvalid", err)
			}
		})
	}
}
