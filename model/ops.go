package model

import (
	"errors"
	"fmt"
	"strings"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// supportedOps lists the ONNX operators (default domain) the runtime executes.
var supportedOps = []string{
	"Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Div", "Flatten", "GRU", "Gather",
	"Gemm", "Identity", "LSTM", "LogSoftmax", "MatMul", "Mul", "RNN", "Relu", "Reshape", "Shape",
	"Sigmoid", "Slice", "Softmax", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
}

// SupportedOps returns the ONNX operators the runtime can execute.
func SupportedOps() []string { return append([]string(nil), supportedOps...) }

// buildKernel compiles one node. nin counts declared inputs (absent
// optional ones included).
func buildKernel(op string, opset int64, a *attrs, nin, nout int) (kernel, error) {
	arity := func(minIn, maxIn, minOut, maxOut int) error {
		if nin < minIn || nin > maxIn {
			return fmt.Errorf("%d inputs, want %d to %d", nin, minIn, maxIn)
		}
		if nout < minOut || nout > maxOut {
			return fmt.Errorf("%d outputs, want %d to %d", nout, minOut, maxOut)
		}
		return nil
	}
	var k kernel
	var err error
	switch op {
	case "Identity":
		if err = arity(1, 1, 1, 1); err == nil {
			k = identityK{}
		}
	case "Constant":
		if err = arity(0, 0, 1, 1); err == nil {
			k, err = newConstant(a)
		}
	case "ConstantOfShape":
		if err = arity(1, 1, 1, 1); err == nil {
			k, err = newConstantOfShape(a)
		}
	case "Shape":
		if err = arity(1, 1, 1, 1); err == nil {
			var s shapeK
			s.start, err = a.int("start", 0)
			if err == nil {
				s.end, err = a.int("end", 1<<62)
			}
			if opset < 15 && (a.has("start") || a.has("end")) {
				err = errors.New("start/end attributes need opset 15")
			}
			k = s
		}
	case "Gather":
		if err = arity(2, 2, 1, 1); err == nil {
			var g gatherK
			g.axis, err = a.int("axis", 0)
			k = g
		}
	case "Unsqueeze", "Squeeze":
		if err = arity(1, 2, 1, 1); err == nil {
			var s squeezeK
			s.unsqueeze = op == "Unsqueeze"
			if opset < 13 {
				s.axes, s.hasAxes, err = a.ints("axes")
				if nin != 1 {
					err = fmt.Errorf("axes input needs opset 13")
				}
			}
			if err == nil && s.unsqueeze && opset < 13 && !s.hasAxes {
				err = errors.New("missing axes attribute")
			}
			if err == nil && s.unsqueeze && opset >= 13 && nin < 2 {
				err = errors.New("missing axes input")
			}
			k = s
		}
	case "Concat":
		if err = arity(1, 64, 1, 1); err == nil {
			var c concatK
			c.axis, err = a.int("axis", 1<<62)
			if err == nil && c.axis == 1<<62 {
				err = errors.New("missing axis attribute")
			}
			k = c
		}
	case "Transpose":
		if err = arity(1, 1, 1, 1); err == nil {
			var t transposeK
			t.perm, t.hasPerm, err = a.ints("perm")
			k = t
		}
	case "Gemm":
		if err = arity(2, 3, 1, 1); err == nil {
			k, err = newGemm(a)
		}
	case "MatMul":
		if err = arity(2, 2, 1, 1); err == nil {
			k = matmulK{}
		}
	case "Add", "Sub", "Mul", "Div":
		if err = arity(2, 2, 1, 1); err == nil {
			if opset < 7 {
				err = errors.New("legacy broadcast attribute (opset < 7) not supported")
			}
			k = binaryK{op: op[0]}
		}
	case "Relu", "Sigmoid", "Tanh":
		if err = arity(1, 1, 1, 1); err == nil {
			k = unaryK{op: op}
		}
	case "Softmax", "LogSoftmax":
		if err = arity(1, 1, 1, 1); err == nil {
			var s softmaxK
			s.log = op == "LogSoftmax"
			s.coerce = opset < 13
			def := int64(-1)
			if s.coerce {
				def = 1
			}
			s.axis, err = a.int("axis", def)
			k = s
		}
	case "Slice":
		if opset < 10 {
			if err = arity(1, 1, 1, 1); err == nil {
				var s sliceK
				s.legacy = true
				s.starts, _, err = a.ints("starts")
				if err == nil {
					s.ends, _, err = a.ints("ends")
				}
				if err == nil {
					s.axes, _, err = a.ints("axes")
				}
				k = s
			}
		} else if err = arity(3, 5, 1, 1); err == nil {
			k = sliceK{}
		}
	case "Reshape":
		if err = arity(2, 2, 1, 1); err == nil {
			var r reshapeK
			r.allowZero, err = a.int("allowzero", 0)
			k = r
		}
	case "Flatten":
		if err = arity(1, 1, 1, 1); err == nil {
			var f flattenK
			f.axis, err = a.int("axis", 1)
			k = f
		}
	case "Cast":
		if err = arity(1, 1, 1, 1); err == nil {
			var to int64
			to, err = a.int("to", 0)
			switch to {
			case onnxFloat, onnxDouble:
				k = castK{to: dtFloat}
			case onnxInt64, onnxInt32:
				k = castK{to: dtInt}
			default:
				if err == nil {
					err = fmt.Errorf("%w cast target %s", ErrUnsupported, dtypeName(to))
				}
			}
		}
	case "GRU", "LSTM", "RNN":
		k, err = newRecurrent(op, a, nin, nout)
	default:
		return nil, fmt.Errorf("%w operator", ErrUnsupported)
	}
	if err != nil {
		return nil, err
	}
	if u := a.unused(); len(u) > 0 {
		return nil, fmt.Errorf("%w attribute(s) %s", ErrUnsupported, joinNames(u))
	}
	return k, nil
}

// --- simple kernels ---

type identityK struct{}

func (identityK) run(in, out []*tens, _ *[]float32) error { return copyInto(out[0], in[0]) }

func copyInto(dst, src *tens) error {
	if err := dst.reshape(src.dt, src.shape...); err != nil {
		return err
	}
	copy(dst.f, src.f)
	copy(dst.i, src.i)
	return nil
}

type constK struct{ v *tens }

func newConstant(a *attrs) (kernel, error) {
	var v *tens
	set := func(t *tens) error {
		if v != nil {
			return errors.New("more than one value attribute")
		}
		v = t
		return nil
	}
	if t, ok, err := a.tensor("value"); err != nil {
		return nil, err
	} else if ok {
		if err := set(t); err != nil {
			return nil, err
		}
	}
	if a.has("value_float") {
		x, err := a.float("value_float", 0)
		if err != nil {
			return nil, err
		}
		if err := set(&tens{dt: dtFloat, shape: []int{}, f: []float32{x}}); err != nil {
			return nil, err
		}
	}
	if xs, ok, err := a.floats("value_floats"); err != nil {
		return nil, err
	} else if ok {
		if err := set(&tens{dt: dtFloat, shape: []int{len(xs)}, f: xs}); err != nil {
			return nil, err
		}
	}
	if a.has("value_int") {
		x, err := a.int("value_int", 0)
		if err != nil {
			return nil, err
		}
		if err := set(&tens{dt: dtInt, shape: []int{}, i: []int64{x}}); err != nil {
			return nil, err
		}
	}
	if xs, ok, err := a.ints("value_ints"); err != nil {
		return nil, err
	} else if ok {
		if err := set(&tens{dt: dtInt, shape: []int{len(xs)}, i: xs}); err != nil {
			return nil, err
		}
	}
	if v == nil {
		return nil, errors.New("no supported value attribute")
	}
	return constK{v: v}, nil
}

func (c constK) run(_, out []*tens, _ *[]float32) error { return copyInto(out[0], c.v) }

type constOfShapeK struct{ v tens }

func newConstantOfShape(a *attrs) (kernel, error) {
	k := constOfShapeK{v: tens{dt: dtFloat, f: []float32{0}}}
	t, ok, err := a.tensor("value")
	if err != nil {
		return nil, err
	}
	if ok {
		if t.size() != 1 {
			return nil, fmt.Errorf("value has %d elements, want 1", t.size())
		}
		k.v = *t
	}
	return k, nil
}

func (c constOfShapeK) run(in, out []*tens, _ *[]float32) error {
	dims, err := in[0].ints()
	if err != nil {
		return err
	}
	if len(dims) > MaxRank {
		return fmt.Errorf("rank %d exceeds %d", len(dims), MaxRank)
	}
	var shape [MaxRank]int
	for i, d := range dims {
		if d < 0 || d > MaxTensorElems {
			return fmt.Errorf("dimension %d out of range", d)
		}
		shape[i] = int(d)
	}
	o := out[0]
	if err := o.reshape(c.v.dt, shape[:len(dims)]...); err != nil {
		return err
	}
	if c.v.dt == dtFloat {
		x := c.v.f[0]
		for i := range o.f {
			o.f[i] = x
		}
	} else {
		x := c.v.i[0]
		for i := range o.i {
			o.i[i] = x
		}
	}
	return nil
}

type shapeK struct{ start, end int64 }

func (s shapeK) run(in, out []*tens, _ *[]float32) error {
	r := int64(in[0].rank())
	clamp := func(x int64) int64 {
		if x < 0 {
			x += r
		}
		if x < 0 {
			return 0
		}
		if x > r {
			return r
		}
		return x
	}
	lo, hi := clamp(s.start), clamp(s.end)
	if hi < lo {
		hi = lo
	}
	o := out[0]
	if err := o.reshape(dtInt, int(hi-lo)); err != nil {
		return err
	}
	for i := lo; i < hi; i++ {
		o.i[i-lo] = int64(in[0].shape[i])
	}
	return nil
}

type gatherK struct{ axis int64 }

func (g gatherK) run(in, out []*tens, _ *[]float32) error {
	data, idx := in[0], in[1]
	if idx.dt != dtInt {
		return fmt.Errorf("indices must be integers, got %s", idx.dt)
	}
	axis, err := normAxis(g.axis, data.rank())
	if err != nil {
		return err
	}
	if data.rank()+idx.rank()-1 > MaxRank {
		return fmt.Errorf("result rank exceeds %d", MaxRank)
	}
	var shape [2 * MaxRank]int
	ns := 0
	for _, d := range data.shape[:axis] {
		shape[ns] = d
		ns++
	}
	for _, d := range idx.shape {
		shape[ns] = d
		ns++
	}
	for _, d := range data.shape[axis+1:] {
		shape[ns] = d
		ns++
	}
	o := out[0]
	if err := o.reshape(data.dt, shape[:ns]...); err != nil {
		return err
	}
	outer := size(data.shape[:axis])
	inner := size(data.shape[axis+1:])
	n := data.shape[axis]
	ni := len(idx.i)
	for o0 := 0; o0 < outer; o0++ {
		for j, x := range idx.i {
			if x < 0 {
				x += int64(n)
			}
			if x < 0 || x >= int64(n) {
				return fmt.Errorf("%w: index %d out of range [%d, %d)", ErrBadInput, idx.i[j], -n, n)
			}
			src := (o0*n + int(x)) * inner
			dst := (o0*ni + j) * inner
			if data.dt == dtFloat {
				copy(o.f[dst:dst+inner], data.f[src:src+inner])
			} else {
				copy(o.i[dst:dst+inner], data.i[src:src+inner])
			}
		}
	}
	return nil
}

type squeezeK struct {
	unsqueeze bool
	axes      []int64
	hasAxes   bool
}

func (s squeezeK) run(in, out []*tens, _ *[]float32) error {
	x := in[0]
	axes := s.axes
	has := s.hasAxes
	if len(in) > 1 && in[1] != nil {
		var err error
		if axes, err = in[1].ints(); err != nil {
			return err
		}
		has = true
	}
	var shape [MaxRank]int
	var mark [MaxRank + 1]bool
	if s.unsqueeze {
		if !has {
			return errors.New("missing axes")
		}
		r := x.rank() + len(axes)
		if r > MaxRank {
			return fmt.Errorf("rank %d exceeds %d", r, MaxRank)
		}
		for _, a := range axes {
			ax, err := normAxis(a, r)
			if err != nil {
				return err
			}
			if mark[ax] {
				return fmt.Errorf("axis %d repeated", a)
			}
			mark[ax] = true
		}
		j := 0
		for i := 0; i < r; i++ {
			if mark[i] {
				shape[i] = 1
			} else {
				shape[i] = x.shape[j]
				j++
			}
		}
		return copyReshaped(out[0], x, shape[:r])
	}
	if has {
		for _, a := range axes {
			ax, err := normAxis(a, x.rank())
			if err != nil {
				return err
			}
			if x.shape[ax] != 1 {
				return fmt.Errorf("cannot squeeze axis %d of size %d", a, x.shape[ax])
			}
			mark[ax] = true
		}
	} else {
		for i, d := range x.shape {
			mark[i] = d == 1
		}
	}
	n := 0
	for i, d := range x.shape {
		if !mark[i] {
			shape[n] = d
			n++
		}
	}
	return copyReshaped(out[0], x, shape[:n])
}

func copyReshaped(dst, src *tens, shape []int) error {
	if n := size(shape); n != src.size() {
		return fmt.Errorf("cannot reshape %d elements to %d", src.size(), n)
	}
	if err := dst.reshape(src.dt, shape...); err != nil {
		return err
	}
	copy(dst.f, src.f)
	copy(dst.i, src.i)
	return nil
}

type concatK struct{ axis int64 }

func (c concatK) run(in, out []*tens, _ *[]float32) error {
	first := in[0]
	if first == nil {
		return errors.New("missing input")
	}
	r := first.rank()
	axis, err := normAxis(c.axis, r)
	if err != nil {
		return err
	}
	var shape [MaxRank]int
	copy(shape[:], first.shape)
	total := 0
	for _, t := range in {
		if t == nil || t.rank() != r || t.dt != first.dt {
			return errors.New("inputs differ in rank or type")
		}
		for i := range r {
			if i != axis && t.shape[i] != first.shape[i] {
				return fmt.Errorf("shapes %v and %v differ off axis %d", first.shape, t.shape, axis)
			}
		}
		total += t.shape[axis]
	}
	shape[axis] = total
	o := out[0]
	if err := o.reshape(first.dt, shape[:r]...); err != nil {
		return err
	}
	outer := size(first.shape[:axis])
	inner := size(first.shape[axis+1:])
	off := 0
	for o0 := 0; o0 < outer; o0++ {
		for _, t := range in {
			n := t.shape[axis] * inner
			src := o0 * n
			if first.dt == dtFloat {
				copy(o.f[off:off+n], t.f[src:src+n])
			} else {
				copy(o.i[off:off+n], t.i[src:src+n])
			}
			off += n
		}
	}
	return nil
}

type transposeK struct {
	perm    []int64
	hasPerm bool
}

func (k transposeK) run(in, out []*tens, _ *[]float32) error {
	x := in[0]
	r := x.rank()
	var perm [MaxRank]int
	if k.hasPerm {
		if len(k.perm) != r {
			return fmt.Errorf("perm %v for rank %d", k.perm, r)
		}
		var seen [MaxRank]bool
		for i, p := range k.perm {
			if p < 0 || p >= int64(r) || seen[p] {
				return fmt.Errorf("bad perm %v", k.perm)
			}
			seen[p] = true
			perm[i] = int(p)
		}
	} else {
		for i := range r {
			perm[i] = r - 1 - i
		}
	}
	var shape, stride, ostride [MaxRank]int
	s := 1
	for i := r - 1; i >= 0; i-- {
		stride[i] = s
		s *= x.shape[i]
	}
	for i := range r {
		shape[i] = x.shape[perm[i]]
	}
	o := out[0]
	if err := o.reshape(x.dt, shape[:r]...); err != nil {
		return err
	}
	for i := range r {
		ostride[i] = stride[perm[i]]
	}
	// When only axes of size 1 move, the data order is unchanged.
	last, ordered := -1, true
	for i := range r {
		if x.shape[perm[i]] != 1 {
			ordered = ordered && perm[i] > last
			last = perm[i]
		}
	}
	if ordered {
		copy(o.f, x.f)
		copy(o.i, x.i)
		return nil
	}
	// When the last axis stays last, move whole rows.
	if r >= 2 && perm[r-1] == r-1 && x.dt == dtFloat {
		w := x.shape[r-1]
		var idx [MaxRank]int
		src := 0
		for j := 0; j < len(o.f); j += w {
			copy(o.f[j:j+w], x.f[src:src+w])
			for d := r - 2; d >= 0; d-- {
				idx[d]++
				src += ostride[d]
				if idx[d] < shape[d] {
					break
				}
				src -= ostride[d] * shape[d]
				idx[d] = 0
			}
		}
		return nil
	}
	// Walk the output in order with an odometer over its index.
	var idx [MaxRank]int
	n := o.size()
	src := 0
	for j := 0; j < n; j++ {
		if x.dt == dtFloat {
			o.f[j] = x.f[src]
		} else {
			o.i[j] = x.i[src]
		}
		for d := r - 1; d >= 0; d-- {
			idx[d]++
			src += ostride[d]
			if idx[d] < shape[d] {
				break
			}
			src -= ostride[d] * shape[d]
			idx[d] = 0
		}
	}
	return nil
}

// --- linear algebra ---

type gemmK struct {
	alpha, beta    float32
	transA, transB bool
	pb             *packedT // B packed in panels, when B is a constant
}

func newGemm(a *attrs) (kernel, error) {
	alpha, err := a.float("alpha", 1)
	if err != nil {
		return nil, err
	}
	beta, err := a.float("beta", 1)
	if err != nil {
		return nil, err
	}
	ta, err := a.int("transA", 0)
	if err != nil {
		return nil, err
	}
	tb, err := a.int("transB", 0)
	if err != nil {
		return nil, err
	}
	if a.has("broadcast") {
		return nil, errors.New("legacy broadcast attribute (opset < 7) not supported")
	}
	return &gemmK{alpha: alpha, beta: beta, transA: ta != 0, transB: tb != 0}, nil
}

// pack keeps a panel-packed copy of a constant B for the batched Linear
// layer path (transB, several rows).
func (g *gemmK) pack(consts []*tens) {
	if len(consts) > 1 && consts[1] != nil && consts[1].dt == dtFloat && consts[1].rank() == 2 && g.transB && !g.transA {
		g.pb = packT(consts[1].f, consts[1].shape[0], consts[1].shape[1])
	}
}

func (g *gemmK) run(in, out []*tens, sc *[]float32) error {
	A, B := in[0], in[1]
	if A.dt != dtFloat || B.dt != dtFloat || A.rank() != 2 || B.rank() != 2 {
		return fmt.Errorf("want float32 matrices, got %v and %v", A, B)
	}
	m, k := A.shape[0], A.shape[1]
	if g.transA {
		m, k = k, m
	}
	k2, n := B.shape[0], B.shape[1]
	if g.transB {
		k2, n = n, k2
	}
	if k != k2 {
		return fmt.Errorf("inner dimensions %d and %d differ", k, k2)
	}
	if overWork(m, n, k) {
		return fmt.Errorf("%d×%d×%d product exceeds the work limit", m, n, k)
	}
	o := out[0]
	if err := o.reshape(dtFloat, m, n); err != nil {
		return err
	}
	beta := g.beta
	if len(in) > 2 && in[2] != nil && beta != 0 {
		if err := broadcastTo(o, in[2]); err != nil {
			return fmt.Errorf("bias: %w", err)
		}
	} else {
		clear(o.f)
		beta = 0
	}
	ta, tb := blas.NoTrans, blas.NoTrans
	if g.transA {
		ta = blas.Trans
	}
	if g.transB {
		tb = blas.Trans
	}
	if m == 0 || n == 0 {
		return nil
	}
	if k == 0 {
		for i := range o.f {
			o.f[i] *= beta
		}
		return nil
	}
	if g.transB && !g.transA {
		// Row i of the result is B·A[i]: one matrix-vector product per row,
		// the case of every Linear layer PyTorch exports.
		prod := growF(sc, m*n)
		gemvRowsPacked(m, n, k, g.pb, B.f, A.f, k, prod, n)
		for i := range m {
			tmp := prod[i*n : (i+1)*n]
			row := o.f[i*n : (i+1)*n]
			switch {
			case beta == 0 && g.alpha == 1:
				copy(row, tmp)
			case beta == 1 && g.alpha == 1:
				if !addAsm(row, tmp) {
					for j, v := range tmp {
						row[j] += v
					}
				}
			default:
				for j, v := range tmp {
					row[j] = g.alpha*v + beta*row[j]
				}
			}
		}
		return nil
	}
	impl := gonum.Implementation{}
	if m == 1 && !g.transA {
		impl.Sgemv(blas.Trans, B.shape[0], B.shape[1], g.alpha, B.f, B.shape[1], A.f, 1, beta, o.f, 1)
		return nil
	}
	impl.Sgemm(ta, tb, m, n, k, g.alpha, A.f, A.shape[1], B.f, B.shape[1], beta, o.f, n)
	return nil
}

// broadcastTo fills dst (already shaped) with src broadcast to its shape
// (unidirectional numpy broadcasting).
func broadcastTo(dst, src *tens) error {
	if src.dt != dst.dt {
		return fmt.Errorf("type %s does not match %s", src.dt, dst.dt)
	}
	r := dst.rank()
	if src.rank() > r {
		return fmt.Errorf("cannot broadcast %v to %v", src.shape, dst.shape)
	}
	if src.size() == dst.size() {
		same := true
		for i, d := range src.shape {
			same = same && d == dst.shape[i+r-src.rank()]
		}
		if same {
			copy(dst.f, src.f)
			copy(dst.i, src.i)
			return nil
		}
	}
	var sstride [MaxRank]int
	s := 1
	off := r - src.rank()
	for i := src.rank() - 1; i >= 0; i-- {
		d := src.shape[i]
		switch d {
		case dst.shape[i+off]:
			sstride[i+off] = s
		case 1:
			sstride[i+off] = 0
		default:
			return fmt.Errorf("cannot broadcast %v to %v", src.shape, dst.shape)
		}
		s *= d
	}
	total := dst.size()
	// The common case (a bias row over a batch): src is dst's trailing
	// dimensions, repeated whole.
	if n := src.size(); n > 0 && total%n == 0 {
		tail := true
		for i := range src.shape {
			tail = tail && sstride[i+off] != 0
		}
		if tail {
			for k := 0; k < total; k += n {
				if dst.dt == dtFloat {
					copy(dst.f[k:k+n], src.f)
				} else {
					copy(dst.i[k:k+n], src.i)
				}
			}
			return nil
		}
	}
	var idx [MaxRank]int
	j := 0
	for k := 0; k < total; k++ {
		if dst.dt == dtFloat {
			dst.f[k] = src.f[j]
		} else {
			dst.i[k] = src.i[j]
		}
		for d := r - 1; d >= 0; d-- {
			idx[d]++
			j += sstride[d]
			if idx[d] < dst.shape[d] {
				break
			}
			j -= sstride[d] * dst.shape[d]
			idx[d] = 0
		}
	}
	return nil
}

type matmulK struct{}

func (matmulK) run(in, out []*tens, _ *[]float32) error {
	A, B := in[0], in[1]
	if A.dt != dtFloat || B.dt != dtFloat || A.rank() == 0 || B.rank() == 0 {
		return fmt.Errorf("want float32 tensors of rank >= 1, got %v and %v", A, B)
	}
	// Promote vectors to matrices as numpy does.
	var as, bs [MaxRank]int
	ar, br := A.rank(), B.rank()
	copy(as[:], A.shape)
	copy(bs[:], B.shape)
	vecA, vecB := ar == 1, br == 1
	if vecA {
		as[0], as[1], ar = 1, A.shape[0], 2
	}
	if vecB {
		bs[0], bs[1], br = B.shape[0], 1, 2
	}
	m, k := as[ar-2], as[ar-1]
	k2, n := bs[br-2], bs[br-1]
	if k != k2 {
		return fmt.Errorf("inner dimensions %d and %d differ", k, k2)
	}
	// Batch dimensions broadcast.
	ab, bb := as[:ar-2], bs[:br-2]
	r := max(len(ab), len(bb))
	var batch [MaxRank]int
	for i := range r {
		da, db := 1, 1
		if j := i - (r - len(ab)); j >= 0 {
			da = ab[j]
		}
		if j := i - (r - len(bb)); j >= 0 {
			db = bb[j]
		}
		switch {
		case da == db, db == 1:
			batch[i] = da
		case da == 1:
			batch[i] = db
		default:
			return fmt.Errorf("batch dimensions of %v and %v do not broadcast", A.shape, B.shape)
		}
	}
	var oshape [MaxRank + 2]int
	copy(oshape[:], batch[:r])
	no := r
	if !vecA {
		oshape[no] = m
		no++
	}
	if !vecB {
		oshape[no] = n
		no++
	}
	if no > MaxRank {
		return fmt.Errorf("rank exceeds %d", MaxRank)
	}
	o := out[0]
	if err := o.reshape(dtFloat, oshape[:no]...); err != nil {
		return err
	}
	nb := size(batch[:r])
	if overWork(nb, m, n, k) {
		return fmt.Errorf("batched %d×%d×%d product exceeds the work limit", m, n, k)
	}
	impl := gonum.Implementation{}
	var idx [MaxRank]int
	for b := 0; b < nb; b++ {
		// Offsets of this batch in A and B (broadcast dims repeat).
		rem := b
		for i := r - 1; i >= 0; i-- {
			idx[i] = rem % batch[i]
			rem /= batch[i]
		}
		offA, offB := 0, 0
		sa, sb := m*k, k*n
		for i := r - 1; i >= 0; i-- {
			if j := i - (r - len(ab)); j >= 0 {
				if ab[j] != 1 {
					offA += idx[i] * sa
				}
				sa *= ab[j]
			}
			if j := i - (r - len(bb)); j >= 0 {
				if bb[j] != 1 {
					offB += idx[i] * sb
				}
				sb *= bb[j]
			}
		}
		c := o.f[b*m*n : (b+1)*m*n]
		if m == 0 || n == 0 {
			continue
		}
		if k == 0 {
			clear(c)
			continue
		}
		impl.Sgemm(blas.NoTrans, blas.NoTrans, m, n, k, 1, A.f[offA:offA+m*k], k, B.f[offB:offB+k*n], n, 0, c, n)
	}
	return nil
}

// --- elementwise ---

type binaryK struct{ op byte }

func (k binaryK) run(in, out []*tens, _ *[]float32) error {
	A, B := in[0], in[1]
	if A.dt != B.dt {
		return fmt.Errorf("types %s and %s differ", A.dt, B.dt)
	}
	r := max(A.rank(), B.rank())
	var shape, sa, sb [MaxRank]int
	for i := range r {
		da, db := 1, 1
		if j := i - (r - A.rank()); j >= 0 {
			da = A.shape[j]
		}
		if j := i - (r - B.rank()); j >= 0 {
			db = B.shape[j]
		}
		switch {
		case da == db, db == 1:
			shape[i] = da
		case da == 1:
			shape[i] = db
		default:
			return fmt.Errorf("shapes %v and %v do not broadcast", A.shape, B.shape)
		}
	}
	// Strides (0 on broadcast dims).
	s1, s2 := 1, 1
	for i := r - 1; i >= 0; i-- {
		if j := i - (r - A.rank()); j >= 0 {
			if A.shape[j] != 1 {
				sa[i] = s1
			}
			s1 *= A.shape[j]
		}
		if j := i - (r - B.rank()); j >= 0 {
			if B.shape[j] != 1 {
				sb[i] = s2
			}
			s2 *= B.shape[j]
		}
	}
	o := out[0]
	if err := o.reshape(A.dt, shape[:r]...); err != nil {
		return err
	}
	var idx [MaxRank]int
	ia, ib := 0, 0
	n := o.size()
	for j := 0; j < n; j++ {
		if A.dt == dtFloat {
			x, y := A.f[ia], B.f[ib]
			var z float32
			switch k.op {
			case 'A':
				z = x + y
			case 'S':
				z = x - y
			case 'M':
				z = x * y
			case 'D':
				z = x / y
			}
			o.f[j] = z
		} else {
			x, y := A.i[ia], B.i[ib]
			var z int64
			switch k.op {
			case 'A':
				z = x + y
			case 'S':
				z = x - y
			case 'M':
				z = x * y
			case 'D':
				if y == 0 {
					return errors.New("integer division by zero")
				}
				z = x / y
			}
			o.i[j] = z
		}
		for d := r - 1; d >= 0; d-- {
			idx[d]++
			ia += sa[d]
			ib += sb[d]
			if idx[d] < shape[d] {
				break
			}
			ia -= sa[d] * shape[d]
			ib -= sb[d] * shape[d]
			idx[d] = 0
		}
	}
	return nil
}

type unaryK struct{ op string }

func (k unaryK) run(in, out []*tens, _ *[]float32) error {
	x := in[0]
	if x.dt != dtFloat {
		return fmt.Errorf("want float32, got %s", x.dt)
	}
	o := out[0]
	if err := o.reshape(dtFloat, x.shape...); err != nil {
		return err
	}
	f := activation(k.op)
	for i, v := range x.f {
		o.f[i] = f(v)
	}
	return nil
}

func activation(name string) func(float32) float32 {
	switch strings.ToLower(name) {
	case "sigmoid":
		return sigmoidf
	case "tanh":
		return tanhf
	case "relu":
		return reluf
	}
	return nil
}

type softmaxK struct {
	axis   int64
	coerce bool // opset < 13: flatten to 2-D at axis
	log    bool
}

func (s softmaxK) run(in, out []*tens, sc *[]float32) error {
	x := in[0]
	if x.dt != dtFloat {
		return fmt.Errorf("want float32, got %s", x.dt)
	}
	axis, err := normAxis(s.axis, max(x.rank(), 1))
	if err != nil {
		return err
	}
	o := out[0]
	if err := o.reshape(dtFloat, x.shape...); err != nil {
		return err
	}
	if x.rank() == 0 {
		o.f[0] = 1
		if s.log {
			o.f[0] = 0
		}
		return nil
	}
	if s.coerce || axis == x.rank()-1 {
		n := size(x.shape[axis:])
		if s.coerce && axis == 0 {
			n = x.size()
		}
		for off := 0; off+n <= len(x.f) && n > 0; off += n {
			if s.log {
				logSoftmaxRow(o.f[off:off+n], x.f[off:off+n])
			} else {
				softmaxRow(o.f[off:off+n], x.f[off:off+n])
			}
		}
		return nil
	}
	// Softmax along an inner axis: gather each strided line into scratch.
	outer := size(x.shape[:axis])
	n := x.shape[axis]
	inner := size(x.shape[axis+1:])
	line := growF(sc, 2*n)
	buf, res := line[:n], line[n:]
	for a := 0; a < outer; a++ {
		for b := 0; b < inner; b++ {
			base := a*n*inner + b
			for j := 0; j < n; j++ {
				buf[j] = x.f[base+j*inner]
			}
			if s.log {
				logSoftmaxRow(res, buf)
			} else {
				softmaxRow(res, buf)
			}
			for j := 0; j < n; j++ {
				o.f[base+j*inner] = res[j]
			}
		}
	}
	return nil
}

type sliceK struct {
	legacy             bool
	starts, ends, axes []int64
}

func (s sliceK) run(in, out []*tens, _ *[]float32) error {
	x := in[0]
	starts, ends, axes := s.starts, s.ends, s.axes
	var steps []int64
	var err error
	if !s.legacy {
		if starts, err = in[1].ints(); err != nil {
			return err
		}
		if ends, err = in[2].ints(); err != nil {
			return err
		}
		if len(in) > 3 && in[3] != nil {
			if axes, err = in[3].ints(); err != nil {
				return err
			}
		} else {
			axes = nil
		}
		if len(in) > 4 && in[4] != nil {
			if steps, err = in[4].ints(); err != nil {
				return err
			}
		}
	}
	if len(starts) != len(ends) || (axes != nil && len(axes) != len(starts)) || (steps != nil && len(steps) != len(starts)) {
		return errors.New("starts, ends, axes and steps differ in length")
	}
	r := x.rank()
	var lo, st, shape [MaxRank]int
	for i := range r {
		lo[i], st[i], shape[i] = 0, 1, x.shape[i]
	}
	var seen [MaxRank]bool
	for i := range starts {
		ax := int64(i)
		if axes != nil {
			ax = axes[i]
		}
		a, err := normAxis(ax, r)
		if err != nil {
			return err
		}
		if seen[a] {
			return fmt.Errorf("axis %d repeated", ax)
		}
		seen[a] = true
		step := int64(1)
		if steps != nil {
			step = steps[i]
		}
		if step == 0 {
			return errors.New("step 0")
		}
		d := int64(x.shape[a])
		b, e := starts[i], ends[i]
		if b < 0 {
			b += d
		}
		if e < 0 {
			e += d
		}
		var n int64
		if step > 0 {
			b, e = min(max(b, 0), d), min(max(e, 0), d)
			if e > b {
				n = (e - b + step - 1) / step
			}
		} else {
			b, e = min(max(b, -1), d-1), min(max(e, -1), d-1)
			if b > e {
				n = (b - e - step - 1) / -step
			}
		}
		lo[a], st[a], shape[a] = int(b), int(step), int(n)
	}
	o := out[0]
	if err := o.reshape(x.dt, shape[:r]...); err != nil {
		return err
	}
	var stride [MaxRank]int
	sz := 1
	for i := r - 1; i >= 0; i-- {
		stride[i] = sz
		sz *= x.shape[i]
	}
	n := o.size()
	if n == 0 {
		return nil
	}
	var idx [MaxRank]int
	for j := 0; j < n; j++ {
		src := 0
		for d := range r {
			src += (lo[d] + idx[d]*st[d]) * stride[d]
		}
		if x.dt == dtFloat {
			o.f[j] = x.f[src]
		} else {
			o.i[j] = x.i[src]
		}
		for d := r - 1; d >= 0; d-- {
			idx[d]++
			if idx[d] < shape[d] {
				break
			}
			idx[d] = 0
		}
	}
	return nil
}

type reshapeK struct{ allowZero int64 }

func (k reshapeK) run(in, out []*tens, _ *[]float32) error {
	x := in[0]
	spec, err := in[1].ints()
	if err != nil {
		return err
	}
	if len(spec) > MaxRank {
		return fmt.Errorf("rank %d exceeds %d", len(spec), MaxRank)
	}
	var shape [MaxRank]int
	infer := -1
	known := 1
	for i, d := range spec {
		switch {
		case d == 0 && k.allowZero == 0:
			if i >= x.rank() {
				return fmt.Errorf("shape %v copies a missing dimension", spec)
			}
			shape[i] = x.shape[i]
		case d == -1:
			if infer >= 0 {
				return fmt.Errorf("shape %v has two -1", spec)
			}
			infer = i
			continue
		case d < 0 || d > MaxTensorElems:
			return fmt.Errorf("bad dimension %d", d)
		default:
			shape[i] = int(d)
		}
		known *= shape[i]
		if known > MaxTensorElems {
			return fmt.Errorf("shape %v too large", spec)
		}
	}
	if infer >= 0 {
		if known == 0 || x.size()%known != 0 {
			return fmt.Errorf("cannot infer a dimension of %v for %d elements", spec, x.size())
		}
		shape[infer] = x.size() / known
	}
	return copyReshaped(out[0], x, shape[:len(spec)])
}

type flattenK struct{ axis int64 }

func (k flattenK) run(in, out []*tens, _ *[]float32) error {
	x := in[0]
	a := k.axis
	if a < 0 {
		a += int64(x.rank())
	}
	if a < 0 || a > int64(x.rank()) {
		return fmt.Errorf("axis %d out of range", k.axis)
	}
	return copyReshaped(out[0], x, []int{size(x.shape[:a]), size(x.shape[a:])})
}

type castK struct{ to dtype }

func (k castK) run(in, out []*tens, _ *[]float32) error {
	x := in[0]
	o := out[0]
	if err := o.reshape(k.to, x.shape...); err != nil {
		return err
	}
	switch {
	case x.dt == k.to:
		copy(o.f, x.f)
		copy(o.i, x.i)
	case k.to == dtFloat:
		for i, v := range x.i {
			o.f[i] = float32(v)
		}
	default:
		for i, v := range x.f {
			if v != v || v > 9.2e18 || v < -9.2e18 {
				return fmt.Errorf("cannot cast %v to int64", v)
			}
			o.i[i] = int64(v)
		}
	}
	return nil
}

// overWork reports whether the product of dims exceeds maxWork, without
// overflowing.
func overWork(dims ...int) bool {
	w := int64(1)
	for _, d := range dims {
		if d == 0 {
			return false
		}
	}
	for _, d := range dims {
		if int64(d) > maxWork/w {
			return true
		}
		w *= int64(d)
	}
	return false
}
