package model

import (
	"encoding/binary"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Test helpers that write small ONNX files with protowire, so that tests can
// build graphs the exporters never produce (hostile, unsupported, Markov).

type tNode struct {
	op, name string
	in, out  []string
	attrs    [][]byte
}

type tValue struct {
	name string
	elem int64
	dims []any // int64 or string
}

type tGraph struct {
	opset   int64
	nodes   []tNode
	inits   [][]byte
	inputs  []tValue
	outputs []tValue
}

func bytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func varintField(b []byte, num protowire.Number, v int64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

func tFloatTensor(name string, dims []int64, vals []float32) []byte {
	var b []byte
	for _, d := range dims {
		b = varintField(b, 1, d)
	}
	b = varintField(b, 2, onnxFloat)
	b = bytesField(b, 8, []byte(name))
	raw := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return bytesField(b, 9, raw)
}

func tIntTensor(name string, dims []int64, vals []int64) []byte {
	var b []byte
	for _, d := range dims {
		b = varintField(b, 1, d)
	}
	b = varintField(b, 2, onnxInt64)
	b = bytesField(b, 8, []byte(name))
	raw := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	return bytesField(b, 9, raw)
}

func tAttrInt(name string, v int64) []byte {
	b := bytesField(nil, 1, []byte(name))
	b = varintField(b, 3, v)
	return varintField(b, 20, attrInt)
}

func tAttrTensor(name string, t []byte) []byte {
	b := bytesField(nil, 1, []byte(name))
	b = bytesField(b, 5, t)
	return varintField(b, 20, attrTensor)
}

func tValueInfo(v tValue) []byte {
	var shape []byte
	for _, d := range v.dims {
		var dim []byte
		switch d := d.(type) {
		case int64:
			dim = varintField(nil, 1, d)
		case int:
			dim = varintField(nil, 1, int64(d))
		case string:
			dim = bytesField(nil, 2, []byte(d))
		}
		shape = bytesField(shape, 1, dim)
	}
	tt := varintField(nil, 1, v.elem)
	tt = bytesField(tt, 2, shape)
	typ := bytesField(nil, 1, tt)
	b := bytesField(nil, 1, []byte(v.name))
	return bytesField(b, 2, typ)
}

func (g tGraph) encode() []byte {
	var gb []byte
	for _, n := range g.nodes {
		var nb []byte
		for _, in := range n.in {
			nb = bytesField(nb, 1, []byte(in))
		}
		for _, out := range n.out {
			nb = bytesField(nb, 2, []byte(out))
		}
		nb = bytesField(nb, 3, []byte(n.name))
		nb = bytesField(nb, 4, []byte(n.op))
		for _, a := range n.attrs {
			nb = bytesField(nb, 5, a)
		}
		gb = bytesField(gb, 1, nb)
	}
	gb = bytesField(gb, 2, []byte("test"))
	for _, t := range g.inits {
		gb = bytesField(gb, 5, t)
	}
	for _, v := range g.inputs {
		gb = bytesField(gb, 11, tValueInfo(v))
	}
	for _, v := range g.outputs {
		gb = bytesField(gb, 12, tValueInfo(v))
	}
	b := varintField(nil, 1, 8)
	b = bytesField(b, 2, []byte("test"))
	b = bytesField(b, 7, gb)
	op := varintField(nil, 2, g.opset)
	return bytesField(b, 8, op)
}

// markovGraph is a first-order Markov model: the last page's row of a
// transition matrix, as the trainer writes it.
func markovGraph(vocab int, trans []float32) tGraph {
	return tGraph{
		opset: 13,
		nodes: []tNode{
			{op: "Gather", name: "last", in: []string{"page_ids", "minus_one"}, out: []string{"last_page"}, attrs: [][]byte{tAttrInt("axis", 1)}},
			{op: "Gather", name: "row", in: []string{"transitions", "last_page"}, out: []string{"probs"}, attrs: [][]byte{tAttrInt("axis", 0)}},
		},
		inits: [][]byte{
			tIntTensor("minus_one", nil, []int64{-1}),
			tFloatTensor("transitions", []int64{int64(vocab), int64(vocab)}, trans),
		},
		inputs:  []tValue{{name: "page_ids", elem: onnxInt64, dims: []any{"batch", "seq"}}},
		outputs: []tValue{{name: "probs", elem: onnxFloat, dims: []any{"batch", int64(vocab)}}},
	}
}

func tAttrInts(name string, v ...int64) []byte {
	b := bytesField(nil, 1, []byte(name))
	for _, x := range v {
		b = varintField(b, 8, x)
	}
	return varintField(b, 20, attrInts)
}

// lcg fills deterministic pseudo-random weights in [-scale, scale).
func lcgWeights(n int, seed uint64, scale float32) []float32 {
	out := make([]float32, n)
	s := seed
	for i := range out {
		s = s*6364136223846793005 + 1442695040888963407
		out[i] = (float32(s>>40)/float32(1<<24)*2 - 1) * scale
	}
	return out
}

// gruGraphs builds a GRU model shaped like a PyTorch export (Embedding ->
// GRU -> Linear on the last position -> Softmax) in sequence and step form.
func gruGraphs(vocab, emb, hidden int) (seq, step tGraph) {
	return gruGraphsOut(vocab, emb, hidden, lcgWeights(vocab*hidden, 5, 0.5), lcgWeights(vocab, 6, 0.1))
}

// gruGraphsOut is gruGraphs with the given output layer: outW [vocab,
// hidden] and outB [vocab].
func gruGraphsOut(vocab, emb, hidden int, outW, outB []float32) (seq, step tGraph) {
	v, e, h := int64(vocab), int64(emb), int64(hidden)
	inits := [][]byte{
		tFloatTensor("emb", []int64{v, e}, lcgWeights(vocab*emb, 1, 1)),
		tFloatTensor("W", []int64{1, 3 * h, e}, lcgWeights(3*hidden*emb, 2, 0.3)),
		tFloatTensor("R", []int64{1, 3 * h, h}, lcgWeights(3*hidden*hidden, 3, 0.3)),
		tFloatTensor("B", []int64{1, 6 * h}, lcgWeights(6*hidden, 4, 0.1)),
		tFloatTensor("out.weight", []int64{v, h}, outW),
		tFloatTensor("out.bias", []int64{v}, outB),
		tIntTensor("one", []int64{1}, []int64{1}),
		tIntTensor("minus_one", nil, []int64{-1}),
	}
	tail := []tNode{
		{op: "Squeeze", name: "squeeze", in: []string{"Y", "one"}, out: []string{"ys"}},
		{op: "Transpose", name: "t2", in: []string{"ys"}, out: []string{"yb"}, attrs: [][]byte{tAttrInts("perm", 1, 0, 2)}},
		{op: "Gather", name: "last", in: []string{"yb", "minus_one"}, out: []string{"hl"}, attrs: [][]byte{tAttrInt("axis", 1)}},
		{op: "Gemm", name: "out", in: []string{"hl", "out.weight", "out.bias"}, out: []string{"logits"}, attrs: [][]byte{tAttrInt("transB", 1)}},
		{op: "Softmax", name: "softmax", in: []string{"logits"}, out: []string{"probs"}, attrs: [][]byte{tAttrInt("axis", -1)}},
	}
	gruAttrs := [][]byte{tAttrInt("hidden_size", h), tAttrInt("linear_before_reset", 1)}
	seq = tGraph{opset: 13, inits: inits,
		inputs:  []tValue{{name: "page_ids", elem: onnxInt64, dims: []any{"batch", "seq"}}},
		outputs: []tValue{{name: "probs", elem: onnxFloat, dims: []any{"batch", v}}},
		nodes: append([]tNode{
			{op: "Gather", name: "embed", in: []string{"emb", "page_ids"}, out: []string{"x0"}},
			{op: "Transpose", name: "t1", in: []string{"x0"}, out: []string{"x"}, attrs: [][]byte{tAttrInts("perm", 1, 0, 2)}},
			{op: "GRU", name: "gru", in: []string{"x", "W", "R", "B"}, out: []string{"Y", "Yh"}, attrs: gruAttrs},
		}, tail...),
	}
	step = tGraph{opset: 13, inits: inits,
		inputs: []tValue{
			{name: "page_id", elem: onnxInt64, dims: []any{"batch", int64(1)}},
			{name: "state_in", elem: onnxFloat, dims: []any{int64(1), "batch", h}},
		},
		outputs: []tValue{
			{name: "probs", elem: onnxFloat, dims: []any{"batch", v}},
			{name: "state_out", elem: onnxFloat, dims: []any{int64(1), "batch", h}},
		},
		nodes: append([]tNode{
			{op: "Gather", name: "embed", in: []string{"emb", "page_id"}, out: []string{"x0"}},
			{op: "Transpose", name: "t1", in: []string{"x0"}, out: []string{"x"}, attrs: [][]byte{tAttrInts("perm", 1, 0, 2)}},
			{op: "GRU", name: "gru", in: []string{"x", "W", "R", "B", "", "state_in"}, out: []string{"Y", "state_out"}, attrs: gruAttrs},
		}, tail...),
	}
	return seq, step
}
