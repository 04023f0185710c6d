// Package onnxenc writes ONNX model files. It is the last hop of training:
// the trainers in training/ describe their graphs with the small types here
// and Marshal turns them into the ModelProto bytes that the model runtime
// (model/) decodes with onnx-go.
//
// Only the subset of the ONNX IR that prefetchd's graphs need is covered:
// a model with opset imports and metadata, one graph with nodes, attributes
// (scalars, lists, tensors), initializers (float32, int64, int32) and typed
// inputs and outputs whose dimensions may be symbolic. Tensor data is written
// as little-endian raw_data, as PyTorch's exporter does.
package onnxenc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// DataType is an ONNX TensorProto.DataType.
type DataType int32

// Element types supported by this writer.
const (
	Float32 DataType = 1
	Int32   DataType = 6
	Int64   DataType = 7
)

// AttrType is an ONNX AttributeProto.AttributeType.
type AttrType int32

// Attribute kinds supported by this writer.
const (
	AttrFloat   AttrType = 1
	AttrInt     AttrType = 2
	AttrString  AttrType = 3
	AttrTensor  AttrType = 4
	AttrFloats  AttrType = 6
	AttrInts    AttrType = 7
	AttrStrings AttrType = 8
)

// Defaults used when a Model leaves them zero.
const (
	// DefaultIRVersion is IR version 8 (ONNX 1.10 to 1.12), enough for
	// initializers that are not graph inputs and for opsets up to 17.
	DefaultIRVersion = 8
	// DefaultOpset is the default ai.onnx opset version.
	DefaultOpset = 13
)

// ErrInvalid is returned (wrapped) by Marshal when the model is malformed.
var ErrInvalid = errors.New("invalid onnx model")

// Model is an ONNX ModelProto.
type Model struct {
	IRVersion       int64 // 0 means DefaultIRVersion
	Opset           int64 // ai.onnx opset; 0 means DefaultOpset
	ProducerName    string
	ProducerVersion string
	ModelVersion    int64
	DocString       string
	Metadata        []KeyValue // metadata_props, written in order
	Graph           Graph
}

// KeyValue is one metadata_props entry.
type KeyValue struct{ Key, Value string }

// Graph is an ONNX GraphProto.
type Graph struct {
	Name         string
	Nodes        []Node // in topological order
	Initializers []Tensor
	Inputs       []ValueInfo // graph inputs; initializers need not be listed
	Outputs      []ValueInfo
}

// Node is an ONNX NodeProto. An empty input name marks an omitted optional
// input, as the ONNX spec allows.
type Node struct {
	Name       string
	OpType     string
	Domain     string
	Inputs     []string
	Outputs    []string
	Attributes []Attribute
}

// Attribute is an ONNX AttributeProto; build one with Int, Float, String,
// Ints, Floats, Strings or TensorAttr.
type Attribute struct {
	Name    string
	Type    AttrType
	F       float32
	I       int64
	S       []byte
	T       *Tensor
	Floats  []float32
	Ints    []int64
	Strings [][]byte
}

// Int returns an INT attribute.
func Int(name string, v int64) Attribute { return Attribute{Name: name, Type: AttrInt, I: v} }

// Float returns a FLOAT attribute.
func Float(name string, v float32) Attribute { return Attribute{Name: name, Type: AttrFloat, F: v} }

// String returns a STRING attribute.
func String(name, v string) Attribute { return Attribute{Name: name, Type: AttrString, S: []byte(v)} }

// Ints returns an INTS attribute.
func Ints(name string, v ...int64) Attribute { return Attribute{Name: name, Type: AttrInts, Ints: v} }

// Floats returns a FLOATS attribute.
func Floats(name string, v ...float32) Attribute {
	return Attribute{Name: name, Type: AttrFloats, Floats: v}
}

// Strings returns a STRINGS attribute.
func Strings(name string, v ...string) Attribute {
	a := Attribute{Name: name, Type: AttrStrings}
	for _, s := range v {
		a.Strings = append(a.Strings, []byte(s))
	}
	return a
}

// TensorAttr returns a TENSOR attribute (the "value" of a Constant node).
func TensorAttr(name string, t Tensor) Attribute {
	return Attribute{Name: name, Type: AttrTensor, T: &t}
}

// Tensor is an ONNX TensorProto. Exactly one of the data slices matching
// DataType is used; its length must be the product of Dims (1 for a scalar,
// which has no dims).
type Tensor struct {
	Name     string
	DataType DataType
	Dims     []int64
	Float32  []float32
	Int64    []int64
	Int32    []int32
}

// FloatTensor returns a float32 tensor.
func FloatTensor(name string, data []float32, dims ...int64) Tensor {
	return Tensor{Name: name, DataType: Float32, Dims: dims, Float32: data}
}

// Int64Tensor returns an int64 tensor; with no dims it is a scalar.
func Int64Tensor(name string, data []int64, dims ...int64) Tensor {
	return Tensor{Name: name, DataType: Int64, Dims: dims, Int64: data}
}

// ValueInfo is an ONNX ValueInfoProto for a tensor-typed value.
type ValueInfo struct {
	Name     string
	ElemType DataType
	Dims     []Dim
}

// Dim is a tensor dimension: a fixed size, or a symbolic name such as
// "batch" when Param is set.
type Dim struct {
	Value int64
	Param string
}

// Fixed returns a dimension of size n.
func Fixed(n int64) Dim { return Dim{Value: n} }

// Symbolic returns a named dynamic dimension.
func Symbolic(name string) Dim { return Dim{Param: name} }

// Field numbers of onnx.proto.
const (
	modelIRVersion       = 1
	modelProducerName    = 2
	modelProducerVersion = 3
	modelModelVersion    = 5
	modelDocString       = 6
	modelGraph           = 7
	modelOpsetImport     = 8
	modelMetadataProps   = 14

	opsetDomain  = 1
	opsetVersion = 2

	kvKey   = 1
	kvValue = 2

	graphNode        = 1
	graphName        = 2
	graphInitializer = 5
	graphInput       = 11
	graphOutput      = 12

	nodeInput     = 1
	nodeOutput    = 2
	nodeName      = 3
	nodeOpType    = 4
	nodeAttribute = 5
	nodeDomain    = 7

	attrName    = 1
	attrF       = 2
	attrI       = 3
	attrS       = 4
	attrT       = 5
	attrFloats  = 7
	attrInts    = 8
	attrStrings = 9
	attrType    = 20

	tensorDims     = 1
	tensorDataType = 2
	tensorName     = 8
	tensorRawData  = 9

	valueName = 1
	valueType = 2

	typeTensor     = 1
	tensorElemType = 1
	tensorShape    = 2
	shapeDim       = 1
	dimValue       = 1
	dimParam       = 2
)

// Marshal validates the model and encodes it as ONNX protobuf bytes.
func (m *Model) Marshal() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	ir := m.IRVersion
	if ir == 0 {
		ir = DefaultIRVersion
	}
	opset := m.Opset
	if opset == 0 {
		opset = DefaultOpset
	}
	var b []byte
	b = appendVarint(b, modelIRVersion, uint64(ir))
	b = appendString(b, modelProducerName, m.ProducerName)
	b = appendString(b, modelProducerVersion, m.ProducerVersion)
	if m.ModelVersion != 0 {
		b = appendVarint(b, modelModelVersion, uint64(m.ModelVersion))
	}
	b = appendString(b, modelDocString, m.DocString)
	b = appendMessage(b, modelGraph, m.Graph.encode(nil))
	var os []byte
	os = protowire.AppendTag(os, opsetDomain, protowire.BytesType)
	os = protowire.AppendString(os, "")
	os = appendVarint(os, opsetVersion, uint64(opset))
	b = appendMessage(b, modelOpsetImport, os)
	for _, kv := range m.Metadata {
		var e []byte
		e = appendString(e, kvKey, kv.Key)
		e = appendString(e, kvValue, kv.Value)
		b = appendMessage(b, modelMetadataProps, e)
	}
	return b, nil
}

func (m *Model) validate() error {
	g := &m.Graph
	if len(g.Nodes) == 0 {
		return fmt.Errorf("%w: graph has no nodes", ErrInvalid)
	}
	if len(g.Outputs) == 0 {
		return fmt.Errorf("%w: graph has no outputs", ErrInvalid)
	}
	defined := make(map[string]bool)
	for _, in := range g.Inputs {
		if in.Name == "" || defined[in.Name] {
			return fmt.Errorf("%w: graph input %q is empty or duplicated", ErrInvalid, in.Name)
		}
		defined[in.Name] = true
	}
	for i := range g.Initializers {
		t := &g.Initializers[i]
		if t.Name == "" || defined[t.Name] {
			return fmt.Errorf("%w: initializer %q is unnamed or duplicated", ErrInvalid, t.Name)
		}
		if err := t.validate(); err != nil {
			return err
		}
		defined[t.Name] = true
	}
	for i, n := range g.Nodes {
		if n.OpType == "" {
			return fmt.Errorf("%w: node %d (%q) has no op type", ErrInvalid, i, n.Name)
		}
		for _, in := range n.Inputs {
			if in != "" && !defined[in] {
				return fmt.Errorf("%w: node %q (%s) reads %q before it is defined", ErrInvalid, n.Name, n.OpType, in)
			}
		}
		for _, a := range n.Attributes {
			if a.Name == "" {
				return fmt.Errorf("%w: node %q (%s) has an unnamed attribute", ErrInvalid, n.Name, n.OpType)
			}
			if a.Type == AttrTensor {
				if a.T == nil {
					return fmt.Errorf("%w: node %q attribute %q has no tensor", ErrInvalid, n.Name, a.Name)
				}
				if err := a.T.validate(); err != nil {
					return err
				}
			}
		}
		for _, out := range n.Outputs {
			if out == "" {
				continue
			}
			if defined[out] {
				return fmt.Errorf("%w: node %q (%s) redefines %q", ErrInvalid, n.Name, n.OpType, out)
			}
			defined[out] = true
		}
	}
	for _, out := range g.Outputs {
		if !defined[out.Name] {
			return fmt.Errorf("%w: graph output %q is never computed", ErrInvalid, out.Name)
		}
	}
	return nil
}

func (t *Tensor) validate() error {
	want := int64(1)
	for _, d := range t.Dims {
		if d < 0 {
			return fmt.Errorf("%w: tensor %q has negative dimension %d", ErrInvalid, t.Name, d)
		}
		want *= d
	}
	var got int
	switch t.DataType {
	case Float32:
		got = len(t.Float32)
	case Int64:
		got = len(t.Int64)
	case Int32:
		got = len(t.Int32)
	default:
		return fmt.Errorf("%w: tensor %q has unsupported data type %d", ErrInvalid, t.Name, t.DataType)
	}
	if int64(got) != want {
		return fmt.Errorf("%w: tensor %q has %d elements, dims %v need %d", ErrInvalid, t.Name, got, t.Dims, want)
	}
	return nil
}

func (g *Graph) encode(b []byte) []byte {
	for i := range g.Nodes {
		b = appendMessage(b, graphNode, g.Nodes[i].encode(nil))
	}
	b = appendString(b, graphName, g.Name)
	for i := range g.Initializers {
		b = appendMessage(b, graphInitializer, g.Initializers[i].encode(nil))
	}
	for i := range g.Inputs {
		b = appendMessage(b, graphInput, g.Inputs[i].encode(nil))
	}
	for i := range g.Outputs {
		b = appendMessage(b, graphOutput, g.Outputs[i].encode(nil))
	}
	return b
}

func (n *Node) encode(b []byte) []byte {
	for _, in := range n.Inputs {
		b = protowire.AppendTag(b, nodeInput, protowire.BytesType)
		b = protowire.AppendString(b, in)
	}
	for _, out := range n.Outputs {
		b = protowire.AppendTag(b, nodeOutput, protowire.BytesType)
		b = protowire.AppendString(b, out)
	}
	b = appendString(b, nodeName, n.Name)
	b = appendString(b, nodeOpType, n.OpType)
	for i := range n.Attributes {
		b = appendMessage(b, nodeAttribute, n.Attributes[i].encode(nil))
	}
	b = appendString(b, nodeDomain, n.Domain)
	return b
}

func (a *Attribute) encode(b []byte) []byte {
	b = appendString(b, attrName, a.Name)
	switch a.Type {
	case AttrFloat:
		b = protowire.AppendTag(b, attrF, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(a.F))
	case AttrInt:
		b = protowire.AppendTag(b, attrI, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(a.I))
	case AttrString:
		b = protowire.AppendTag(b, attrS, protowire.BytesType)
		b = protowire.AppendBytes(b, a.S)
	case AttrTensor:
		b = appendMessage(b, attrT, a.T.encode(nil))
	case AttrFloats:
		var p []byte
		for _, f := range a.Floats {
			p = protowire.AppendFixed32(p, math.Float32bits(f))
		}
		b = appendPacked(b, attrFloats, p)
	case AttrInts:
		var p []byte
		for _, v := range a.Ints {
			p = protowire.AppendVarint(p, uint64(v))
		}
		b = appendPacked(b, attrInts, p)
	case AttrStrings:
		for _, s := range a.Strings {
			b = protowire.AppendTag(b, attrStrings, protowire.BytesType)
			b = protowire.AppendBytes(b, s)
		}
	}
	b = protowire.AppendTag(b, attrType, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(a.Type))
	return b
}

func (t *Tensor) encode(b []byte) []byte {
	if len(t.Dims) > 0 {
		var p []byte
		for _, d := range t.Dims {
			p = protowire.AppendVarint(p, uint64(d))
		}
		b = appendPacked(b, tensorDims, p)
	}
	b = protowire.AppendTag(b, tensorDataType, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(t.DataType))
	b = appendString(b, tensorName, t.Name)
	var raw []byte
	switch t.DataType {
	case Float32:
		raw = make([]byte, 4*len(t.Float32))
		for i, f := range t.Float32 {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
		}
	case Int64:
		raw = make([]byte, 8*len(t.Int64))
		for i, v := range t.Int64 {
			binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
		}
	case Int32:
		raw = make([]byte, 4*len(t.Int32))
		for i, v := range t.Int32 {
			binary.LittleEndian.PutUint32(raw[4*i:], uint32(v))
		}
	}
	b = protowire.AppendTag(b, tensorRawData, protowire.BytesType)
	b = protowire.AppendBytes(b, raw)
	return b
}

func (v *ValueInfo) encode(b []byte) []byte {
	b = appendString(b, valueName, v.Name)
	var shape []byte
	for _, d := range v.Dims {
		var e []byte
		if d.Param != "" {
			e = appendString(e, dimParam, d.Param)
		} else {
			e = protowire.AppendTag(e, dimValue, protowire.VarintType)
			e = protowire.AppendVarint(e, uint64(d.Value))
		}
		shape = appendMessage(shape, shapeDim, e)
	}
	var tt []byte
	tt = protowire.AppendTag(tt, tensorElemType, protowire.VarintType)
	tt = protowire.AppendVarint(tt, uint64(v.ElemType))
	tt = appendMessage(tt, tensorShape, shape)
	var typ []byte
	typ = appendMessage(typ, typeTensor, tt)
	b = appendMessage(b, valueType, typ)
	return b
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendString writes a string field, skipping it when empty (proto3
// default semantics; every string this package writes is optional).
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func appendPacked(b []byte, num protowire.Number, payload []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, payload)
}
