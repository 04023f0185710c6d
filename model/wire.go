package model

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Limits that bound what a model file can make the loader allocate. They are
// checked on the raw protobuf before anything is decoded into tensors.
const (
	// MaxTensorElems bounds the elements of any tensor, stored or computed.
	MaxTensorElems = 1 << 26
	// MaxRank bounds the rank of any tensor.
	MaxRank = 8
	// MaxNodes bounds the operators of a graph.
	MaxNodes = 1 << 16
	// MaxModelBytes bounds the size of a model file.
	MaxModelBytes = 1 << 30
	// maxWork bounds the multiply-adds of one matrix or recurrent operator
	// (about a second of work), so that a hostile file cannot stall a load
	// (constant folding) or a call.
	maxWork = 1 << 32
	// maxDeclaredElems bounds the static elements of all declared graph
	// values together (onnx-go allocates a placeholder tensor for each).
	maxDeclaredElems = 1 << 24
)

// ErrBadModel is returned (wrapped) when a model file is truncated, corrupt or
// breaks a limit of the loader.
var ErrBadModel = errors.New("bad model")

// ONNX TensorProto.DataType values the runtime knows.
const (
	onnxFloat   = 1
	onnxUint8   = 2
	onnxInt8    = 3
	onnxInt32   = 6
	onnxInt64   = 7
	onnxBool    = 9
	onnxFloat16 = 10
	onnxDouble  = 11
)

// ONNX AttributeProto.AttributeType values.
const (
	attrFloat   = 1
	attrInt     = 2
	attrString  = 3
	attrTensor  = 4
	attrGraph   = 5
	attrFloats  = 6
	attrInts    = 7
	attrStrings = 8
)

// wireModel is the structure of an ONNX file as read directly from its
// protobuf encoding: the facts onnx-go does not pass to a backend (opset,
// ordered node inputs and outputs, declared value types).
type wireModel struct {
	irVersion   int64
	opset       int64 // default domain
	producer    string
	graphName   string
	nodes       []wireNode
	inputs      []wireValue
	outputs     []wireValue
	initializer map[string]wireTensor
	initOrder   []string
	declared    int64 // static elements of all declared values
}

type wireNode struct {
	name, opType, domain string
	inputs, outputs      []string
	attrs                []wireAttr
}

type wireAttr struct {
	name   string
	typ    int64
	tensor *wireTensor // for tensor attributes
	ints   int         // element count of ints / floats lists
}

type wireValue struct {
	name     string
	elemType int64
	dims     []int64  // -1 for a symbolic or missing dimension
	params   []string // symbolic names, "" for fixed dims
	hasShape bool
}

type wireTensor struct {
	name     string
	dataType int64
	dims     []int64
	elems    int64
	external bool
	segment  bool
	rawLen   int
	nFloat   int
	nInt32   int
	nInt64   int
	nDouble  int
	nString  int
}

// wireReader walks one protobuf message.
type wireReader struct{ b []byte }

func (r *wireReader) next() (num protowire.Number, typ protowire.Type, val []byte, v uint64, err error) {
	num, typ, n := protowire.ConsumeTag(r.b)
	if n < 0 {
		return 0, 0, nil, 0, protowire.ParseError(n)
	}
	r.b = r.b[n:]
	switch typ {
	case protowire.VarintType:
		v, n = protowire.ConsumeVarint(r.b)
	case protowire.Fixed32Type:
		var x uint32
		x, n = protowire.ConsumeFixed32(r.b)
		v = uint64(x)
	case protowire.Fixed64Type:
		v, n = protowire.ConsumeFixed64(r.b)
	case protowire.BytesType:
		val, n = protowire.ConsumeBytes(r.b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, r.b)
	}
	if n < 0 {
		return 0, 0, nil, 0, protowire.ParseError(n)
	}
	r.b = r.b[n:]
	return num, typ, val, v, nil
}

// packedCount counts the values of a repeated scalar field that may be
// packed (bytes) or not (one value per tag).
func packedCount(typ protowire.Type, val []byte, elemSize int) (int, error) {
	if typ != protowire.BytesType {
		return 1, nil
	}
	if elemSize > 0 {
		if len(val)%elemSize != 0 {
			return 0, errors.New("packed field length is not a multiple of its element size")
		}
		return len(val) / elemSize, nil
	}
	n := 0
	for len(val) > 0 {
		_, k := protowire.ConsumeVarint(val)
		if k < 0 {
			return 0, protowire.ParseError(k)
		}
		val = val[k:]
		n++
	}
	return n, nil
}

// packedInts decodes a repeated int64 field occurrence.
func packedInts(dst []int64, typ protowire.Type, val []byte, v uint64) ([]int64, error) {
	if typ == protowire.VarintType {
		return append(dst, int64(v)), nil
	}
	if typ != protowire.BytesType {
		return dst, errors.New("bad wire type for repeated int64")
	}
	for len(val) > 0 {
		x, k := protowire.ConsumeVarint(val)
		if k < 0 {
			return dst, protowire.ParseError(k)
		}
		val = val[k:]
		dst = append(dst, int64(x))
		if len(dst) > MaxRank*4 {
			return dst, errors.New("too many dimensions")
		}
	}
	return dst, nil
}

// parseWire reads the structure of an ONNX ModelProto and enforces the
// loader's limits. It never allocates more than a small multiple of len(data).
func parseWire(data []byte) (*wireModel, error) {
	if len(data) > MaxModelBytes {
		return nil, fmt.Errorf("%w: %d bytes exceeds the limit of %d", ErrBadModel, len(data), MaxModelBytes)
	}
	m := &wireModel{opset: -1, initializer: map[string]wireTensor{}}
	r := wireReader{data}
	var graph []byte
	sawGraph := false
	for len(r.b) > 0 {
		num, typ, val, v, err := r.next()
		if err != nil {
			return nil, fmt.Errorf("%w: model: %w", ErrBadModel, err)
		}
		switch {
		case num == 1 && typ == protowire.VarintType:
			m.irVersion = int64(v)
		case num == 2 && typ == protowire.BytesType:
			m.producer = string(val)
		case num == 7 && typ == protowire.BytesType:
			graph, sawGraph = val, true
		case num == 8 && typ == protowire.BytesType:
			domain, version, err := parseOpset(val)
			if err != nil {
				return nil, fmt.Errorf("%w: opset_import: %w", ErrBadModel, err)
			}
			if domain == "" || domain == "ai.onnx" {
				m.opset = version
			}
		}
	}
	if !sawGraph {
		return nil, fmt.Errorf("%w: no graph", ErrBadModel)
	}
	if m.opset < 0 {
		return nil, fmt.Errorf("%w: no opset_import for the default domain", ErrBadModel)
	}
	if err := m.parseGraph(graph); err != nil {
		return nil, fmt.Errorf("%w: graph: %w", ErrBadModel, err)
	}
	return m, nil
}

func parseOpset(b []byte) (domain string, version int64, err error) {
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, v, err := r.next()
		if err != nil {
			return "", 0, err
		}
		switch {
		case num == 1 && typ == protowire.BytesType:
			domain = string(val)
		case num == 2 && typ == protowire.VarintType:
			version = int64(v)
		}
	}
	return domain, version, nil
}

func (m *wireModel) parseGraph(b []byte) error {
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, _, err := r.next()
		if err != nil {
			return err
		}
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			if len(m.nodes) >= MaxNodes {
				return fmt.Errorf("more than %d nodes", MaxNodes)
			}
			n, err := parseNode(val)
			if err != nil {
				return fmt.Errorf("node %d: %w", len(m.nodes), err)
			}
			m.nodes = append(m.nodes, n)
		case 2:
			m.graphName = string(val)
		case 5:
			t, err := parseTensor(val)
			if err != nil {
				return fmt.Errorf("initializer %d: %w", len(m.initOrder), err)
			}
			if t.name == "" {
				return fmt.Errorf("initializer %d has no name", len(m.initOrder))
			}
			if _, dup := m.initializer[t.name]; dup {
				return fmt.Errorf("initializer %q appears twice", t.name)
			}
			m.initializer[t.name] = t
			m.initOrder = append(m.initOrder, t.name)
		case 11, 12, 13:
			v, err := parseValue(val)
			if err != nil {
				return fmt.Errorf("value %q: %w", v.name, err)
			}
			m.declared += v.staticElems()
			if m.declared > maxDeclaredElems {
				return fmt.Errorf("declared values exceed %d elements", maxDeclaredElems)
			}
			switch num {
			case 11:
				m.inputs = append(m.inputs, v)
			case 12:
				m.outputs = append(m.outputs, v)
			}
		case 15:
			return errors.New("sparse initializers are not supported")
		}
	}
	return nil
}

func parseNode(b []byte) (wireNode, error) {
	var n wireNode
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, _, err := r.next()
		if err != nil {
			return n, err
		}
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			n.inputs = append(n.inputs, string(val))
		case 2:
			n.outputs = append(n.outputs, string(val))
		case 3:
			n.name = string(val)
		case 4:
			n.opType = string(val)
		case 7:
			n.domain = string(val)
		case 5:
			a, err := parseAttr(val)
			if err != nil {
				return n, fmt.Errorf("attribute %q: %w", a.name, err)
			}
			n.attrs = append(n.attrs, a)
		}
	}
	if len(n.inputs) > 64 || len(n.outputs) > 64 {
		return n, errors.New("too many inputs or outputs")
	}
	return n, nil
}

func parseAttr(b []byte) (wireAttr, error) {
	var a wireAttr
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, v, err := r.next()
		if err != nil {
			return a, err
		}
		switch {
		case num == 1 && typ == protowire.BytesType:
			a.name = string(val)
		case num == 20 && typ == protowire.VarintType:
			a.typ = int64(v)
		case num == 5 && typ == protowire.BytesType:
			t, err := parseTensor(val)
			if err != nil {
				return a, err
			}
			a.tensor = &t
		case num == 7:
			k, err := packedCount(typ, val, 4)
			if err != nil {
				return a, err
			}
			a.ints += k
		case num == 8:
			k, err := packedCount(typ, val, 0)
			if err != nil {
				return a, err
			}
			a.ints += k
		case num == 21 && typ == protowire.BytesType:
			return a, errors.New("attribute references (ref_attr_name) are not supported")
		}
	}
	return a, nil
}

func parseTensor(b []byte) (wireTensor, error) {
	var t wireTensor
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, v, err := r.next()
		if err != nil {
			return t, err
		}
		switch num {
		case 1:
			t.dims, err = packedInts(t.dims, typ, val, v)
			if err != nil {
				return t, err
			}
		case 2:
			t.dataType = int64(v)
		case 3:
			t.segment = true
		case 4:
			k, err := packedCount(typ, val, 4)
			if err != nil {
				return t, err
			}
			t.nFloat += k
		case 5:
			k, err := packedCount(typ, val, 0)
			if err != nil {
				return t, err
			}
			t.nInt32 += k
		case 6:
			t.nString++
		case 7:
			k, err := packedCount(typ, val, 0)
			if err != nil {
				return t, err
			}
			t.nInt64 += k
		case 8:
			t.name = string(val)
		case 9:
			t.rawLen += len(val)
		case 10:
			k, err := packedCount(typ, val, 8)
			if err != nil {
				return t, err
			}
			t.nDouble += k
		case 13:
			t.external = true
		case 14:
			if v == 1 {
				t.external = true
			}
		}
	}
	if len(t.dims) > MaxRank {
		return t, fmt.Errorf("tensor %q: rank %d exceeds %d", t.name, len(t.dims), MaxRank)
	}
	elems := int64(1)
	for _, d := range t.dims {
		if d < 0 || d > MaxTensorElems {
			return t, fmt.Errorf("tensor %q: dimension %d out of range", t.name, d)
		}
		elems *= d
		if elems > MaxTensorElems {
			return t, fmt.Errorf("tensor %q: more than %d elements", t.name, MaxTensorElems)
		}
	}
	t.elems = elems
	if t.external {
		return t, fmt.Errorf("tensor %q: external data is not supported", t.name)
	}
	if t.segment {
		return t, fmt.Errorf("tensor %q: segmented tensors are not supported", t.name)
	}
	// Elements come either as typed values or as raw little-endian bytes.
	var n, width int
	switch t.dataType {
	case onnxFloat:
		n, width = t.nFloat, 4
	case onnxInt64:
		n, width = t.nInt64, 8
	case onnxInt32:
		n, width = t.nInt32, 4
	case onnxDouble:
		n, width = t.nDouble, 8
	default:
		return t, fmt.Errorf("tensor %q: %w %s", t.name, ErrUnsupported, dtypeName(t.dataType))
	}
	have := int64(n)
	if t.rawLen > 0 || n == 0 {
		if t.rawLen%width != 0 {
			return t, fmt.Errorf("tensor %q: raw data of %d bytes is not a multiple of %d", t.name, t.rawLen, width)
		}
		have = int64(t.rawLen / width)
	}
	if have != elems {
		return t, fmt.Errorf("tensor %q: %d elements stored for shape %v", t.name, have, t.dims)
	}
	if elems == 0 {
		return t, fmt.Errorf("tensor %q: empty tensors are not supported", t.name)
	}
	return t, nil
}

func parseValue(b []byte) (wireValue, error) {
	var v wireValue
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, _, err := r.next()
		if err != nil {
			return v, err
		}
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			v.name = string(val)
		case 2:
			if err := v.parseType(val); err != nil {
				return v, err
			}
		}
	}
	return v, nil
}

func (v *wireValue) parseType(b []byte) error {
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, _, err := r.next()
		if err != nil {
			return err
		}
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1: // tensor_type
			tr := wireReader{val}
			for len(tr.b) > 0 {
				num, typ, val, x, err := tr.next()
				if err != nil {
					return err
				}
				switch {
				case num == 1 && typ == protowire.VarintType:
					v.elemType = int64(x)
				case num == 2 && typ == protowire.BytesType:
					if err := v.parseShape(val); err != nil {
						return err
					}
				}
			}
		case 4, 5, 8, 9:
			return errors.New("only tensor types are supported")
		}
	}
	return nil
}

func (v *wireValue) parseShape(b []byte) error {
	v.hasShape = true
	r := wireReader{b}
	for len(r.b) > 0 {
		num, typ, val, _, err := r.next()
		if err != nil {
			return err
		}
		if num != 1 || typ != protowire.BytesType {
			continue
		}
		if len(v.dims) >= MaxRank {
			return fmt.Errorf("rank exceeds %d", MaxRank)
		}
		d, param := int64(-1), ""
		dr := wireReader{val}
		for len(dr.b) > 0 {
			num, typ, val, x, err := dr.next()
			if err != nil {
				return err
			}
			switch {
			case num == 1 && typ == protowire.VarintType:
				d = int64(x)
				if d < 1 || d > MaxTensorElems {
					return fmt.Errorf("dimension %d out of range", d)
				}
			case num == 2 && typ == protowire.BytesType:
				param = string(val)
			}
		}
		v.dims = append(v.dims, d)
		v.params = append(v.params, param)
	}
	elems := int64(1)
	for _, d := range v.dims {
		if d > 0 {
			elems *= d
			if elems > MaxTensorElems {
				return fmt.Errorf("more than %d elements", MaxTensorElems)
			}
		}
	}
	return nil
}

// staticElems is the product of the fixed dimensions (what onnx-go
// allocates for the value).
func (v *wireValue) staticElems() int64 {
	n := int64(1)
	for _, d := range v.dims {
		if d > 0 {
			n *= d
		}
	}
	return n
}

func dtypeName(t int64) string {
	switch t {
	case onnxFloat:
		return "float32"
	case onnxUint8:
		return "uint8"
	case onnxInt8:
		return "int8"
	case onnxInt32:
		return "int32"
	case onnxInt64:
		return "int64"
	case onnxBool:
		return "bool"
	case onnxFloat16:
		return "float16"
	case onnxDouble:
		return "float64"
	case 8:
		return "string"
	default:
		return fmt.Sprintf("dtype(%d)", t)
	}
}
