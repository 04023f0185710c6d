package model

import (
	"fmt"
	"sort"
	"strings"

	gtensor "gorgonia.org/tensor"
)

// attrs gives typed access to a node's attributes as onnx-go decoded them
// and remembers which were read, so that unknown ones are refused.
type attrs struct {
	m    map[string]interface{}
	wire map[string]wireAttr
	used map[string]bool
}

func newAttrs(m map[string]interface{}, w []wireAttr) *attrs {
	a := &attrs{m: m, wire: map[string]wireAttr{}, used: map[string]bool{}}
	for _, x := range w {
		a.wire[x.name] = x
	}
	return a
}

func (a *attrs) has(name string) bool {
	_, ok := a.m[name]
	return ok
}

func (a *attrs) int(name string, def int64) (int64, error) {
	v, ok := a.m[name]
	if !ok {
		return def, nil
	}
	a.used[name] = true
	x, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("attribute %q: want an int, got %T", name, v)
	}
	return x, nil
}

func (a *attrs) float(name string, def float32) (float32, error) {
	v, ok := a.m[name]
	if !ok {
		return def, nil
	}
	a.used[name] = true
	x, ok := v.(float32)
	if !ok {
		return 0, fmt.Errorf("attribute %q: want a float, got %T", name, v)
	}
	return x, nil
}

func (a *attrs) str(name, def string) (string, error) {
	v, ok := a.m[name]
	if !ok {
		return def, nil
	}
	a.used[name] = true
	x, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("attribute %q: want a string, got %T", name, v)
	}
	return x, nil
}

func (a *attrs) ints(name string) ([]int64, bool, error) {
	v, ok := a.m[name]
	if !ok {
		return nil, false, nil
	}
	a.used[name] = true
	x, ok := v.([]int64)
	if !ok {
		return nil, false, fmt.Errorf("attribute %q: want ints, got %T", name, v)
	}
	if len(x) > MaxTensorElems {
		return nil, false, fmt.Errorf("attribute %q: too many values", name)
	}
	return append([]int64(nil), x...), true, nil
}

func (a *attrs) floats(name string) ([]float32, bool, error) {
	v, ok := a.m[name]
	if !ok {
		return nil, false, nil
	}
	a.used[name] = true
	x, ok := v.([]float32)
	if !ok {
		return nil, false, fmt.Errorf("attribute %q: want floats, got %T", name, v)
	}
	return append([]float32(nil), x...), true, nil
}

func (a *attrs) strs(name string) ([]string, bool, error) {
	v, ok := a.m[name]
	if !ok {
		return nil, false, nil
	}
	a.used[name] = true
	x, ok := v.([]string)
	if !ok {
		return nil, false, fmt.Errorf("attribute %q: want strings, got %T", name, v)
	}
	return x, true, nil
}

// tensor converts a tensor attribute, using the shape read from the wire
// (onnx-go reports scalars inconsistently).
func (a *attrs) tensor(name string) (*tens, bool, error) {
	v, ok := a.m[name]
	if !ok {
		return nil, false, nil
	}
	a.used[name] = true
	gt, ok := v.(gtensor.Tensor)
	if !ok {
		return nil, false, fmt.Errorf("attribute %q: want a tensor, got %T", name, v)
	}
	w, ok := a.wire[name]
	if !ok || w.tensor == nil {
		return nil, false, fmt.Errorf("attribute %q: tensor not found in the file", name)
	}
	t, err := fromGorgonia(gt, w.tensor.dims)
	if err != nil {
		return nil, false, fmt.Errorf("attribute %q: %w", name, err)
	}
	return t, true, nil
}

// unused lists attributes present on the node that no kernel read.
func (a *attrs) unused() []string {
	var out []string
	for k := range a.m {
		if !a.used[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// fromGorgonia copies a gorgonia tensor decoded by onnx-go into a runtime
// tensor of the given shape, converting int32 to int64 and float64 to float32.
func fromGorgonia(gt gtensor.Tensor, dims []int64) (*tens, error) {
	shape := make([]int, len(dims))
	for i, d := range dims {
		shape[i] = int(d)
	}
	n := size(shape)
	t := &tens{shape: shape}
	switch d := gt.Data().(type) {
	case []float32:
		t.dt, t.f = dtFloat, append([]float32(nil), d...)
	case float32:
		t.dt, t.f = dtFloat, []float32{d}
	case []float64:
		t.dt, t.f = dtFloat, make([]float32, len(d))
		for i, x := range d {
			t.f[i] = float32(x)
		}
	case float64:
		t.dt, t.f = dtFloat, []float32{float32(d)}
	case []int64:
		t.dt, t.i = dtInt, append([]int64(nil), d...)
	case int64:
		t.dt, t.i = dtInt, []int64{d}
	case []int32:
		t.dt, t.i = dtInt, make([]int64, len(d))
		for i, x := range d {
			t.i[i] = int64(x)
		}
	case int32:
		t.dt, t.i = dtInt, []int64{int64(d)}
	default:
		return nil, fmt.Errorf("%w dtype %v", ErrUnsupported, gt.Dtype())
	}
	if got := len(t.f) + len(t.i); got != n {
		return nil, fmt.Errorf("%d values for shape %v", got, shape)
	}
	return t, nil
}

func joinNames(s []string) string { return strings.Join(s, ", ") }
