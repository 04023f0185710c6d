package model

import (
	"fmt"
	"strings"
)

// dtype is the element type of a runtime tensor. The runtime computes in
// float32 and int64 only; other ONNX types are converted at load or refused.
type dtype uint8

const (
	dtUndef dtype = iota
	dtFloat
	dtInt
)

func (d dtype) String() string {
	switch d {
	case dtFloat:
		return "float32"
	case dtInt:
		return "int64"
	default:
		return "undefined"
	}
}

// tens is a dense row-major tensor. Exactly one of f and i is used, by dt.
// A tens owned by an execution state keeps its buffers between runs.
type tens struct {
	dt    dtype
	shape []int
	f     []float32
	i     []int64
}

// size is the number of elements of shape.
func size(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func (t *tens) size() int { return size(t.shape) }

func (t *tens) rank() int { return len(t.shape) }

// reshape sets the type and shape and sizes the buffer, reusing its capacity.
// Contents are not cleared.
func (t *tens) reshape(dt dtype, shape ...int) error {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return fmt.Errorf("negative dimension %d", d)
		}
		if d > 0 && n > MaxTensorElems/d {
			return fmt.Errorf("result exceeds %d elements", MaxTensorElems)
		}
		n *= d
	}
	if len(shape) > MaxRank {
		return fmt.Errorf("rank %d exceeds %d", len(shape), MaxRank)
	}
	t.dt = dt
	t.shape = append(t.shape[:0], shape...)
	switch dt {
	case dtFloat:
		if cap(t.f) < n {
			t.f = make([]float32, n)
		}
		t.f = t.f[:n]
	case dtInt:
		if cap(t.i) < n {
			t.i = make([]int64, n)
		}
		t.i = t.i[:n]
	}
	return nil
}

// ints returns the tensor's values as int64 (for shape-like inputs).
func (t *tens) ints() ([]int64, error) {
	if t.dt != dtInt {
		return nil, fmt.Errorf("want an int64 tensor, got %s", t.dt)
	}
	return t.i, nil
}

func (t *tens) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s%v", t.dt, t.shape)
	return b.String()
}

// normAxis maps a possibly negative axis into [0, rank).
func normAxis(axis int64, rank int) (int, error) {
	a := axis
	if a < 0 {
		a += int64(rank)
	}
	if a < 0 || a >= int64(rank) {
		return 0, fmt.Errorf("axis %d out of range for rank %d", axis, rank)
	}
	return int(a), nil
}
