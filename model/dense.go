package model

import (
	"context"
	"fmt"

	gtensor "gorgonia.org/tensor"
)

// RunDense is Run with gorgonia tensors at the edges, for callers that
// already hold their data as *tensor.Dense (float32 or int64, any shape).
// The inputs are not modified; the outputs are new tensors.
func (m *Model) RunDense(ctx context.Context, inputs map[string]*gtensor.Dense) (map[string]*gtensor.Dense, error) {
	in := make(map[string]Tensor, len(inputs))
	for name, d := range inputs {
		if d == nil {
			return nil, fmt.Errorf("%w: input %q is nil", ErrBadInput, name)
		}
		if d.RequiresIterator() {
			// A strided view: copy it into a dense layout first.
			md, ok := d.Materialize().(*gtensor.Dense)
			if !ok {
				return nil, fmt.Errorf("%w: input %q cannot be materialized", ErrBadInput, name)
			}
			d = md
		}
		t := Tensor{Shape: append([]int(nil), d.Shape()...)}
		switch v := d.Data().(type) {
		case []float32:
			t.Float32 = v
		case float32:
			t.Float32 = []float32{v}
		case []int64:
			t.Int64 = v
		case int64:
			t.Int64 = []int64{v}
		default:
			return nil, fmt.Errorf("%w: input %q has dtype %v, want float32 or int64", ErrBadInput, name, d.Dtype())
		}
		if d.IsScalar() {
			t.Shape = nil
		}
		in[name] = t
	}
	res, err := m.Run(ctx, in)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*gtensor.Dense, len(res))
	for name, t := range res {
		var backing any = t.Float32
		if t.Float32 == nil {
			backing = t.Int64
		}
		shape := t.Shape
		if len(shape) == 0 {
			shape = []int{1}
		}
		out[name] = gtensor.New(gtensor.WithShape(shape...), gtensor.WithBacking(backing))
	}
	return out, nil
}
