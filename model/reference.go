package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
)

// Graph input and output names of the model contract (see CONTRACT.md).
const (
	InputPageIDs   = "page_ids"  // sequence form: int64 [batch, seq]
	InputPageID    = "page_id"   // step form: int64 [batch, 1]
	InputStateIn   = "state_in"  // step form: float32 [layers, batch, hidden]
	OutputStateOut = "state_out" // step form: float32 [layers, batch, hidden]
)

// Reference is a file of framework-computed outputs for a model, in the
// format of the exported fixtures' reference.json: cases for the sequence
// form and, optionally, a session fed click by click to the step form.
type Reference struct {
	Exporter  string          `json:"exporter,omitempty"`
	Opset     int             `json:"opset,omitempty"`
	Cell      string          `json:"cell,omitempty"`
	Layers    int             `json:"layers,omitempty"`
	Vocab     int             `json:"vocab,omitempty"`
	Embedding int             `json:"embedding,omitempty"`
	Hidden    int             `json:"hidden,omitempty"`
	Output    string          `json:"output,omitempty"`
	Input     string          `json:"input,omitempty"`
	Cases     []ReferenceCase `json:"cases"`
	StepCheck *StepCheck      `json:"step_check,omitempty"`
}

// ReferenceCase is one batch of histories and the expected graph output.
type ReferenceCase struct {
	PageIDs [][]int64   `json:"page_ids"`
	Output  [][]float32 `json:"output"`
}

// StepCheck is one session fed to the step form click by click from a zero
// state, with the expected final output and state.
type StepCheck struct {
	PageIDs [][]int64     `json:"page_ids"`
	Output  [][]float32   `json:"output"`
	State   [][][]float32 `json:"state"`
}

// ReadReference decodes a reference file.
func ReadReference(r io.Reader) (*Reference, error) {
	var ref Reference
	if err := json.NewDecoder(io.LimitReader(r, 1<<30)).Decode(&ref); err != nil {
		return nil, fmt.Errorf("decode reference: %w", err)
	}
	if len(ref.Cases) == 0 && ref.StepCheck == nil {
		return nil, errors.New("decode reference: no cases")
	}
	return &ref, nil
}

// VerifyReport holds the maximum absolute error per reference case.
type VerifyReport struct {
	Cases []float64
	// Step is the error of the step check (final output and state), or -1
	// when none was run.
	Step float64
	Max  float64
}

// Verify runs every case of ref through seq (the sequence form, compared on
// its "probs" or "logits" output; a graph without the contract's input and
// output names and shapes is an ErrContract error) and, when step is not nil and ref has a step check,
// feeds that session click by click through step. It reports the maximum
// absolute error per case; deciding on a tolerance is up to the caller.
func Verify(ctx context.Context, seq, step *Model, ref *Reference) (VerifyReport, error) {
	rep := VerifyReport{Step: -1}
	// The graph is held to the names and shapes the service reads (a
	// bundle with another layout is refused at load, so it must not pass
	// here either).
	if len(seq.plan.inputs) != 1 || seq.plan.inputs[0].Name != InputPageIDs {
		return rep, fmt.Errorf("%w: the graph must have one input named %q, has %v", ErrContract, InputPageIDs, seq.Info().Inputs)
	}
	out := ""
	for _, o := range seq.plan.outputs {
		if o.Name == OutputProbs || o.Name == OutputLogits {
			if o.DType != "float32" || len(o.Dims) != 2 {
				return rep, fmt.Errorf("%w: output %q is %s %v; it must be float32 [batch, vocab]", ErrContract, o.Name, o.DType, o.Dims)
			}
			out = o.Name
			break
		}
	}
	if out == "" {
		return rep, fmt.Errorf("%w: no output named %q or %q (the service reads the scores by name), has %v", ErrContract, OutputProbs, OutputLogits, seq.Info().Outputs)
	}
	for i, c := range ref.Cases {
		in, err := batchTensor(c.PageIDs)
		if err != nil {
			return rep, fmt.Errorf("case %d: %w", i, err)
		}
		res, err := seq.Run(ctx, map[string]Tensor{InputPageIDs: in})
		if err != nil {
			return rep, fmt.Errorf("case %d: %w", i, err)
		}
		e, err := maxAbsDiff(res[out], c.Output)
		if err != nil {
			return rep, fmt.Errorf("case %d: %w", i, err)
		}
		rep.Cases = append(rep.Cases, e)
		rep.Max = math.Max(rep.Max, e)
	}
	if step != nil && ref.StepCheck != nil {
		e, err := verifyStep(ctx, step, ref.StepCheck)
		if err != nil {
			return rep, fmt.Errorf("step check: %w", err)
		}
		rep.Step = e
		rep.Max = math.Max(rep.Max, e)
	}
	return rep, nil
}

func verifyStep(ctx context.Context, step *Model, sc *StepCheck) (float64, error) {
	if len(sc.State) == 0 || len(sc.State[0]) == 0 {
		return 0, errors.New("no expected state")
	}
	layers, batch, hidden := len(sc.State), len(sc.State[0]), len(sc.State[0][0])
	if batch != len(sc.PageIDs) {
		return 0, fmt.Errorf("state batch %d, %d sessions", batch, len(sc.PageIDs))
	}
	state := Tensor{Shape: []int{layers, batch, hidden}, Float32: make([]float32, layers*batch*hidden)}
	var res map[string]Tensor
	for t := 0; t < len(sc.PageIDs[0]); t++ {
		ids := Tensor{Shape: []int{batch, 1}}
		for b := range sc.PageIDs {
			if len(sc.PageIDs[b]) != len(sc.PageIDs[0]) {
				return 0, errors.New("sessions differ in length")
			}
			ids.Int64 = append(ids.Int64, sc.PageIDs[b][t])
		}
		var err error
		res, err = step.Run(ctx, map[string]Tensor{InputPageID: ids, InputStateIn: state})
		if err != nil {
			return 0, fmt.Errorf("click %d: %w", t, err)
		}
		var ok bool
		if state, ok = res[OutputStateOut]; !ok {
			return 0, fmt.Errorf("step graph has no %q output", OutputStateOut)
		}
	}
	if res == nil {
		return 0, errors.New("empty session")
	}
	var scores Tensor
	for _, o := range step.plan.outputs {
		if o.Name != OutputStateOut {
			scores = res[o.Name]
			break
		}
	}
	e1, err := maxAbsDiff(scores, sc.Output)
	if err != nil {
		return 0, fmt.Errorf("output: %w", err)
	}
	var flat [][]float32
	for _, l := range sc.State {
		flat = append(flat, l...)
	}
	e2, err := maxAbsDiff(state, flat)
	if err != nil {
		return 0, fmt.Errorf("state: %w", err)
	}
	return math.Max(e1, e2), nil
}

// batchTensor packs equal-length rows into an int64 [batch, seq] tensor.
func batchTensor(rows [][]int64) (Tensor, error) {
	if len(rows) == 0 {
		return Tensor{}, errors.New("empty batch")
	}
	n := len(rows[0])
	t := Tensor{Shape: []int{len(rows), n}}
	for _, r := range rows {
		if len(r) != n {
			return Tensor{}, errors.New("rows differ in length")
		}
		t.Int64 = append(t.Int64, r...)
	}
	return t, nil
}

// maxAbsDiff compares a float tensor with expected rows (flattened).
func maxAbsDiff(got Tensor, want [][]float32) (float64, error) {
	n := 0
	for _, r := range want {
		n += len(r)
	}
	if len(got.Float32) != n {
		return 0, fmt.Errorf("got %d values (shape %v), want %d", len(got.Float32), got.Shape, n)
	}
	var m float64
	i := 0
	for _, r := range want {
		for _, w := range r {
			d := math.Abs(float64(got.Float32[i]) - float64(w))
			if d > m || math.IsNaN(d) {
				m = d
				if math.IsNaN(d) {
					m = math.Inf(1)
				}
			}
			i++
		}
	}
	return m, nil
}
