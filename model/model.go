package model

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	onnx "github.com/owulveryck/onnx-go"
	// gorgonia's tensor package refuses to start on Go versions it does not
	// know unless this assertion is linked in.
	_ "go4.org/unsafe/assume-no-moving-gc"
	"gonum.org/v1/gonum/graph"
	"gonum.org/v1/gonum/graph/simple"
	gtensor "gorgonia.org/tensor"
)

// Opset range the runtime accepts for the default ONNX domain.
const (
	MinOpset = 7
	MaxOpset = 18
)

var (
	// ErrUnsupported is returned (wrapped) when a graph uses an operator,
	// dtype or attribute the runtime does not implement.
	ErrUnsupported = errors.New("unsupported")
	// ErrBadInput is returned (wrapped) when inputs do not fit the graph,
	// for example a page index outside the vocabulary.
	ErrBadInput = errors.New("bad input")
)

// Model is an ONNX graph compiled for the pure-Go runtime. It is immutable
// and safe for concurrent use: each call takes its own working memory from a
// pool, so no buffers are shared between calls and no graph is rebuilt.
type Model struct {
	plan *plan
	info Info
	pool sync.Pool
}

// Info describes a loaded model.
type Info struct {
	IRVersion int64
	Opset     int64
	Producer  string
	Graph     string
	Inputs    []ValueInfo
	Outputs   []ValueInfo
	// Ops counts the graph's nodes by operator, before constant folding.
	Ops map[string]int
	// Nodes is the number of graph nodes; Steps the number left to run per
	// call after constant folding.
	Nodes, Steps int
	// Params is the number of stored weights (initializer elements).
	Params int64
	// Bytes is the size of the file.
	Bytes int
}

// ValueInfo is a graph input or output: name, element type and declared
// dimensions (-1 for a dynamic one).
type ValueInfo struct {
	Name  string
	DType string
	Dims  []int64
}

// Tensor is a dense row-major tensor passed to or returned by Run. Exactly
// one of Float32 and Int64 holds the values.
type Tensor struct {
	Shape   []int
	Float32 []float32
	Int64   []int64
}

// LoadModel reads and compiles an ONNX file. See ParseModel.
func LoadModel(path string) (*Model, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	defer f.Close()
	data, err := readModel(f, path)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	m, err := ParseModel(data)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	return m, nil
}

// ParseModel decodes an ONNX file with onnx-go into the runtime's own
// backend and compiles it. Every node is checked at load: an unsupported
// operator, dtype or attribute is refused with an error (wrapping
// ErrUnsupported) that names each offending node and operator; a truncated,
// corrupt or oversized file gets an error wrapping ErrBadModel.
func ParseModel(data []byte) (*Model, error) {
	w, err := parseWire(data)
	if err != nil {
		return nil, err
	}
	if err := w.check(); err != nil {
		return nil, err
	}
	dec, err := decode(data)
	if err != nil {
		return nil, err
	}
	p, err := compile(w, dec)
	if err != nil {
		return nil, err
	}
	m := &Model{plan: p}
	m.pool.New = func() any { return p.newExec() }
	m.info = Info{
		IRVersion: w.irVersion,
		Opset:     w.opset,
		Producer:  w.producer,
		Graph:     w.graphName,
		Ops:       map[string]int{},
		Nodes:     len(w.nodes),
		Steps:     len(p.steps),
		Bytes:     len(data),
	}
	for _, n := range w.nodes {
		m.info.Ops[n.opType]++
	}
	for _, t := range w.initializer {
		m.info.Params += t.elems
	}
	for _, s := range p.inputs {
		m.info.Inputs = append(m.info.Inputs, ValueInfo{Name: s.Name, DType: s.DType, Dims: s.Dims})
	}
	for _, s := range p.outputs {
		m.info.Outputs = append(m.info.Outputs, ValueInfo{Name: s.Name, DType: s.DType, Dims: s.Dims})
	}
	return m, nil
}

// Info returns facts about the model. The caller must not modify the slices
// and maps it holds.
func (m *Model) Info() Info { return m.info }

// check refuses, before decoding, what the runtime cannot run, naming every
// offending node.
func (w *wireModel) check() error {
	if w.opset < MinOpset || w.opset > MaxOpset {
		return fmt.Errorf("%w opset %d (want %d to %d)", ErrUnsupported, w.opset, MinOpset, MaxOpset)
	}
	if len(w.nodes) == 0 {
		return fmt.Errorf("%w: empty graph", ErrBadModel)
	}
	if len(w.outputs) == 0 {
		return fmt.Errorf("%w: graph has no outputs", ErrBadModel)
	}
	supported := map[string]bool{}
	for _, op := range supportedOps {
		supported[op] = true
	}
	var errs []error
	for i, n := range w.nodes {
		name := nodeName(n, i)
		if n.domain != "" && n.domain != "ai.onnx" {
			errs = append(errs, fmt.Errorf("node %q (%s): %w operator domain %q", name, n.opType, ErrUnsupported, n.domain))
			continue
		}
		if !supported[n.opType] {
			errs = append(errs, fmt.Errorf("node %q (%s): %w operator", name, n.opType, ErrUnsupported))
		}
		for _, a := range n.attrs {
			switch a.typ {
			case attrGraph, 9, 10, 11, 12, 13, 14:
				errs = append(errs, fmt.Errorf("node %q (%s): %w attribute %q of type %d", name, n.opType, ErrUnsupported, a.name, a.typ))
			}
		}
		if len(n.outputs) == 0 {
			errs = append(errs, fmt.Errorf("node %q (%s): %w: no outputs", name, n.opType, ErrBadModel))
		}
		for _, o := range n.outputs {
			for _, in := range n.inputs {
				if o != "" && in == o {
					errs = append(errs, fmt.Errorf("node %q (%s): %w: output %q is also an input", name, n.opType, ErrBadModel, o))
				}
			}
		}
	}
	for _, v := range w.inputs {
		if _, ok := w.initializer[v.name]; ok {
			continue
		}
		if v.elemType != onnxFloat && v.elemType != onnxInt64 {
			errs = append(errs, fmt.Errorf("graph input %q: %w dtype %s%s", v.name, ErrUnsupported, dtypeName(v.elemType), dtypeHint(v.elemType)))
		}
	}
	if len(errs) > 0 {
		// PyTorch exports without dynamic_axes bake the example's batch
		// and length in: a zero initial state becomes an Expand, reshapes
		// get constant sizes. Say so rather than leave the operator alone.
		for _, v := range w.inputs {
			if _, ok := w.initializer[v.name]; !ok && v.hasShape && len(v.dims) > 0 && !slices.Contains(v.dims, -1) {
				errs = append(errs, fmt.Errorf("graph input %q has the fixed shape %v: export with dynamic_axes (batch and seq of page_ids, batch of the state and the output) so that the graph does not bake the example's sizes in", v.name, v.dims))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// dtypeHint says how to export a tensor of a dtype the runtime does not
// take.
func dtypeHint(t int64) string {
	switch t {
	case onnxInt32:
		return " (export page ids as int64: torch.long)"
	case onnxDouble:
		return " (export in float32: call model.float() before torch.onnx.export)"
	}
	return ""
}

func nodeName(n wireNode, i int) string {
	if n.name != "" {
		return n.name
	}
	return fmt.Sprintf("#%d", i)
}

// decodedOp is one ApplyOperation call received from onnx-go.
type decodedOp struct {
	op   onnx.Operation
	outs []graph.Node
}

// decoder is the onnx.Backend that onnx-go fills: a gonum graph of named
// nodes carrying weights, plus the operations in file order.
type decoder struct {
	*simple.WeightedDirectedGraph
	byName map[string]*gnode
	ops    []decodedOp
}

// gnode is a graph node as onnx-go sees it: a name and, for weights and
// declared values, a gorgonia tensor.
type gnode struct {
	id   int64
	name string
	t    gtensor.Tensor
}

func (n *gnode) ID() int64                        { return n.id }
func (n *gnode) SetName(s string)                 { n.name = s }
func (n *gnode) GetName() string                  { return n.name }
func (n *gnode) SetTensor(t gtensor.Tensor) error { n.t = t; return nil }
func (n *gnode) GetTensor() gtensor.Tensor        { return n.t }
func (d *decoder) NewNode() graph.Node            { return &gnode{id: d.WeightedDirectedGraph.NewNode().ID()} }
func (d *decoder) AddNode(n graph.Node)           { d.WeightedDirectedGraph.AddNode(n); d.index(n) }
func (d *decoder) ApplyOperation(o onnx.Operation, outs ...graph.Node) error {
	d.ops = append(d.ops, decodedOp{op: o, outs: append([]graph.Node(nil), outs...)})
	return nil
}

func (d *decoder) index(n graph.Node) {
	if g, ok := n.(*gnode); ok && g.name != "" {
		d.byName[g.name] = g
	}
}

// decode runs onnx-go's decoder into a fresh backend. onnx-go and gorgonia
// may panic on inputs that passed the wire checks; that becomes an error.
func decode(data []byte) (dec *decoder, err error) {
	dec = &decoder{WeightedDirectedGraph: simple.NewWeightedDirectedGraph(0, 0), byName: map[string]*gnode{}}
	defer func() {
		if r := recover(); r != nil {
			dec, err = nil, fmt.Errorf("%w: decoder failed: %v", ErrBadModel, r)
		}
	}()
	if err := onnx.NewModel(dec).UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("%w: decode: %w", ErrBadModel, err)
	}
	return dec, nil
}

// compile turns the decoded graph into an execution plan, folding every
// node whose inputs are all constant.
func compile(w *wireModel, dec *decoder) (*plan, error) {
	if len(dec.ops) != len(w.nodes) {
		return nil, fmt.Errorf("%w: decoder saw %d operations, file has %d nodes", ErrBadModel, len(dec.ops), len(w.nodes))
	}
	p := &plan{}
	slots := map[string]int{}
	var consts []*tens
	newSlot := func(c *tens) int {
		consts = append(consts, c)
		return len(consts) - 1
	}
	for _, v := range w.inputs {
		if _, ok := w.initializer[v.name]; ok {
			continue
		}
		if _, dup := slots[v.name]; dup {
			return nil, fmt.Errorf("%w: input %q declared twice", ErrBadModel, v.name)
		}
		s := newSlot(nil)
		slots[v.name] = s
		p.inputs = append(p.inputs, ioSpec{Name: v.name, slot: s, DType: dtypeName(v.elemType), Dims: v.dims, ranked: v.hasShape})
	}
	for _, name := range w.initOrder {
		wt := w.initializer[name]
		n, ok := dec.byName[name]
		if !ok || n.t == nil {
			return nil, fmt.Errorf("%w: initializer %q not decoded", ErrBadModel, name)
		}
		t, err := fromGorgonia(n.t, wt.dims)
		if err != nil {
			return nil, fmt.Errorf("initializer %q: %w", name, err)
		}
		slots[name] = newSlot(t)
	}
	var errs []error
	for i, n := range w.nodes {
		name := nodeName(n, i)
		op := dec.ops[i].op
		if op.Name != n.opType || len(dec.ops[i].outs) != len(n.outputs) {
			return nil, fmt.Errorf("%w: node %q: decoder order differs from the file", ErrBadModel, name)
		}
		st := step{node: name, op: n.opType}
		allConst := true
		ok := true
		for _, in := range n.inputs {
			if in == "" {
				st.in = append(st.in, -1)
				continue
			}
			s, found := slots[in]
			if !found {
				errs = append(errs, fmt.Errorf("node %q (%s): %w: input %q is not computed before use", name, n.opType, ErrBadModel, in))
				ok = false
				break
			}
			st.in = append(st.in, s)
			allConst = allConst && consts[s] != nil
		}
		if !ok {
			continue
		}
		k, err := buildKernel(n.opType, w.opset, newAttrs(op.Attributes, n.attrs), len(n.inputs), len(n.outputs))
		if err != nil {
			errs = append(errs, fmt.Errorf("node %q (%s): %w", name, n.opType, err))
			continue
		}
		st.k = k
		if pk, ok := k.(packer); ok && !allConst {
			cs := make([]*tens, len(st.in))
			for j, s := range st.in {
				if s >= 0 {
					cs[j] = consts[s]
				}
			}
			pk.pack(cs)
		}
		var folded []*tens
		if allConst {
			// Evaluate now; the result becomes a constant of the plan.
			ins := make([]*tens, len(st.in))
			for j, s := range st.in {
				if s >= 0 {
					ins[j] = consts[s]
				}
			}
			outs := make([]*tens, len(n.outputs))
			for j := range outs {
				outs[j] = &tens{}
			}
			var sc []float32
			if err := k.run(ins, outs, &sc); err != nil {
				errs = append(errs, fmt.Errorf("node %q (%s): %w", name, n.opType, err))
				continue
			}
			folded = outs
		}
		for j, o := range n.outputs {
			var c *tens
			if folded != nil {
				c = folded[j]
			}
			if o != "" {
				if _, dup := slots[o]; dup {
					errs = append(errs, fmt.Errorf("node %q (%s): %w: value %q defined twice", name, n.opType, ErrBadModel, o))
					continue
				}
			}
			s := newSlot(c)
			if o != "" {
				slots[o] = s
			}
			st.out = append(st.out, s)
		}
		if folded == nil {
			p.steps = append(p.steps, st)
			p.maxArgs = max(p.maxArgs, len(st.in), len(st.out))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, v := range w.outputs {
		s, ok := slots[v.name]
		if !ok {
			return nil, fmt.Errorf("%w: graph output %q is never computed", ErrBadModel, v.name)
		}
		if v.elemType != onnxFloat && v.elemType != onnxInt64 {
			return nil, fmt.Errorf("graph output %q: %w dtype %s%s", v.name, ErrUnsupported, dtypeName(v.elemType), dtypeHint(v.elemType))
		}
		p.outputs = append(p.outputs, ioSpec{Name: v.name, slot: s, DType: dtypeName(v.elemType), Dims: v.dims})
	}
	p.nslots = len(consts)
	p.consts = consts
	return p, nil
}

// Run executes the model on named inputs and returns every graph output.
// Inputs are not modified. It returns ctx.Err() when ctx ends during the
// run, and an error wrapping ErrBadInput when inputs do not fit the graph.
func (m *Model) Run(ctx context.Context, inputs map[string]Tensor) (map[string]Tensor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ex := m.pool.Get().(*exec)
	defer m.pool.Put(ex)
	for i, spec := range m.plan.inputs {
		in, ok := inputs[spec.Name]
		if !ok {
			return nil, fmt.Errorf("%w: missing input %q", ErrBadInput, spec.Name)
		}
		if err := bindInput(&ex.feed[i], spec, in); err != nil {
			return nil, err
		}
	}
	if len(inputs) != len(m.plan.inputs) {
		return nil, fmt.Errorf("%w: %d inputs given, graph has %d", ErrBadInput, len(inputs), len(m.plan.inputs))
	}
	if err := m.plan.run(ctx, ex); err != nil {
		return nil, err
	}
	out := make(map[string]Tensor, len(m.plan.outputs))
	for _, spec := range m.plan.outputs {
		t := ex.cur[spec.slot]
		r := Tensor{Shape: append([]int{}, t.shape...)}
		if t.dt == dtFloat {
			r.Float32 = append([]float32{}, t.f...)
		} else {
			r.Int64 = append([]int64{}, t.i...)
		}
		out[spec.Name] = r
	}
	return out, nil
}

// bindInput copies a caller's tensor into an exec-owned input after checking
// it against the declared type and static dimensions.
func bindInput(dst *tens, spec ioSpec, in Tensor) error {
	var dt dtype
	switch spec.DType {
	case "float32":
		dt = dtFloat
	case "int64":
		dt = dtInt
	}
	if spec.ranked && len(in.Shape) != len(spec.Dims) {
		return fmt.Errorf("%w: input %q has rank %d, want %d", ErrBadInput, spec.Name, len(in.Shape), len(spec.Dims))
	}
	for i, d := range spec.Dims {
		if d >= 0 && int64(in.Shape[i]) != d {
			return fmt.Errorf("%w: input %q has shape %v, want %v", ErrBadInput, spec.Name, in.Shape, spec.Dims)
		}
	}
	if err := dst.reshape(dt, in.Shape...); err != nil {
		return fmt.Errorf("%w: input %q: %w", ErrBadInput, spec.Name, err)
	}
	switch {
	case dt == dtFloat && len(in.Float32) == len(dst.f):
		copy(dst.f, in.Float32)
	case dt == dtInt && len(in.Int64) == len(dst.i):
		copy(dst.i, in.Int64)
	default:
		return fmt.Errorf("%w: input %q wants %d %s values for shape %v", ErrBadInput, spec.Name, size(in.Shape), spec.DType, in.Shape)
	}
	return nil
}
