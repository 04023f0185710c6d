package model

import (
	"context"
	"fmt"
)

// kernel is one compiled operator. run reads in (nil for an absent optional
// input), writes out, and may keep per-call working memory in *sc. A kernel
// holds no mutable state: everything that changes lives in the exec.
type kernel interface {
	run(in, out []*tens, sc *[]float32) error
}

// packer is a kernel that prepares its constant inputs once, at compile
// time (weights laid out for the batched path). consts[i] is input i when
// it is a constant of the plan, nil otherwise; the kernel may keep what it
// derives, which is immutable from then on.
type packer interface {
	pack(consts []*tens)
}

// step is a node of the execution plan.
type step struct {
	node, op string
	k        kernel
	in, out  []int // value slots; -1 marks an absent optional input
}

// plan is a compiled graph: a topologically ordered list of steps over
// numbered value slots. It is immutable after compilation.
type plan struct {
	nslots  int
	consts  []*tens // by slot; nil when the slot is computed at run time
	steps   []step
	inputs  []ioSpec
	outputs []ioSpec
	maxArgs int
}

// ioSpec is a graph input or output: its name, slot, type and declared
// shape (-1 for a dynamic dimension).
type ioSpec struct {
	Name   string
	slot   int
	DType  string
	Dims   []int64
	ranked bool
}

// exec is the mutable working memory of one run. Each goroutine takes its
// own from the model's pool, so runs never share buffers.
type exec struct {
	vals    []tens
	cur     []*tens
	scratch [][]float32
	in, out []*tens
	// inputs the caller binds, owned by the exec for the hot paths.
	feed []tens
}

func (p *plan) newExec() *exec {
	return &exec{
		vals:    make([]tens, p.nslots),
		cur:     make([]*tens, p.nslots),
		scratch: make([][]float32, len(p.steps)),
		in:      make([]*tens, 0, p.maxArgs),
		out:     make([]*tens, 0, p.maxArgs),
		feed:    make([]tens, len(p.inputs)),
	}
}

// run executes the plan with ex.feed bound to the graph inputs. Results are
// left in ex.cur at the output slots.
func (p *plan) run(ctx context.Context, ex *exec) error {
	copy(ex.cur, p.consts)
	for i, in := range p.inputs {
		f := &ex.feed[i]
		if f.dt == dtUndef {
			return fmt.Errorf("%w: input %q not provided", ErrBadInput, in.Name)
		}
		ex.cur[in.slot] = f
	}
	for si := range p.steps {
		st := &p.steps[si]
		if si&7 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		ex.in = ex.in[:0]
		for _, s := range st.in {
			if s < 0 {
				ex.in = append(ex.in, nil)
				continue
			}
			t := ex.cur[s]
			if t == nil {
				return fmt.Errorf("node %q (%s): input not computed", st.node, st.op)
			}
			ex.in = append(ex.in, t)
		}
		ex.out = ex.out[:0]
		for _, s := range st.out {
			ex.out = append(ex.out, &ex.vals[s])
		}
		if err := st.k.run(ex.in, ex.out, &ex.scratch[si]); err != nil {
			return fmt.Errorf("node %q (%s): %w", st.node, st.op, err)
		}
		for _, s := range st.out {
			ex.cur[s] = &ex.vals[s]
		}
	}
	return nil
}

// growF returns a float32 buffer of length n from *buf, growing it if needed.
func growF(buf *[]float32, n int) []float32 {
	if cap(*buf) < n {
		*buf = make([]float32, n)
	}
	*buf = (*buf)[:n]
	return *buf
}
