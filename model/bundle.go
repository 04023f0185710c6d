package model

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"
)

// Files of a bundle folder.
const (
	ModelFile = "model.onnx"
	StepFile  = "step.onnx"
	VocabFile = "vocab.txt"
)

// DefaultMaxSeqLen is the history length used when a bundle has no manifest.
const DefaultMaxSeqLen = 50

// DefaultTolerance is the golden-case tolerance when a manifest sets none.
const DefaultTolerance = 1e-5

var (
	// ErrContract is returned (wrapped) when a bundle's graphs do not follow
	// the model contract (names, types and shapes of inputs and outputs).
	ErrContract = errors.New("model contract violated")
	// ErrGolden is returned (wrapped) when a golden case of the manifest is
	// not reproduced within tolerance.
	ErrGolden = errors.New("golden case mismatch")
)

// Bundle is a loaded model bundle: the sequence form, the optional step
// form, the vocabulary and the manifest. It is immutable and safe for
// concurrent use.
type Bundle struct {
	manifest *Manifest
	vocab    *Vocab
	seq      *Model
	step     *Model
	logits   bool // graphs output logits; the runtime applies softmax
	vsize    int

	seqIn, seqOut int // input index, output slot
	stepIn        int // page_id input index
	stepStateIn   int // state_in input index
	stepOut       int // scores output slot
	stepStateOut  int // state_out output slot
	stateDims     [3]int
	stepBatches   bool // the step form takes more than one row per run

	// Clustered scoring of large vocabularies (nil when not used): the
	// forms' output layers split off and one index of their weights.
	seqHead, stepHead *head
	index             *clusterIndex
	// indexOff says why a clustered scorer built for the bundle is not
	// used (verifyIndex), or "".
	indexOff  string
	probsPool sync.Pool // *[]float32 of vsize, for exact TopK
}

// LoadBundle loads a bundle folder from disk. See LoadBundleFS.
func LoadBundle(dir string) (*Bundle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", dir, err)
	}
	b, err := loadBundle(os.DirFS(filepath.Dir(abs)), filepath.Base(abs))
	if err != nil {
		// Named by its absolute path: the folder's own name alone does
		// not say which of several it was.
		return nil, fmt.Errorf("load bundle %s: %w", abs, err)
	}
	return b, nil
}

// LoadBundleFS loads the bundle folder dir of fsys: model.onnx, optional
// step.onnx, vocab.txt and manifest.json. When manifest.json is missing a
// default one is derived from the files (name from the folder, version from
// the model's SHA-256, max_seq_len DefaultMaxSeqLen). The graphs are checked
// against the model contract (ErrContract) and the manifest's golden cases
// are run (ErrGolden) before the bundle is returned. A bundle of 16,384
// pages or more whose output layer is a constant Gemm also gets a clustered
// scorer for StepTopK and PredictTopK (see Scoring), built from its weights
// at load: a few seconds at 100,000 pages.
func LoadBundleFS(fsys fs.FS, dir string) (*Bundle, error) {
	b, err := loadBundle(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", dir, err)
	}
	return b, nil
}

func loadBundle(fsys fs.FS, dir string) (*Bundle, error) {
	data, err := readModelFile(fsys, path.Join(dir, ModelFile))
	if err != nil {
		return nil, err
	}
	seq, err := ParseModel(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ModelFile, err)
	}
	var step *Model
	stepData, err := readModelFile(fsys, path.Join(dir, StepFile))
	switch {
	case err == nil:
		if step, err = ParseModel(stepData); err != nil {
			return nil, fmt.Errorf("%s: %w", StepFile, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	vocab, err := LoadVocabFS(fsys, path.Join(dir, VocabFile))
	if err != nil {
		return nil, err
	}
	var man *Manifest
	f, err := fsys.Open(path.Join(dir, ManifestFile))
	switch {
	case err == nil:
		man, err = ReadManifest(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ManifestFile, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		man = defaultManifest(fsys, dir, data, seq, step, vocab)
	default:
		return nil, err
	}
	b := &Bundle{manifest: man, vocab: vocab, seq: seq, step: step, vsize: vocab.Len()}
	if err := b.checkContract(); err != nil {
		return nil, err
	}
	if err := b.checkWeights(); err != nil {
		return nil, err
	}
	if err := b.runGolden(); err != nil {
		return nil, err
	}
	if err := b.checkForms(); err != nil {
		return nil, err
	}
	b.attachIndex()
	b.verifyIndex()
	return b, nil
}

func defaultManifest(fsys fs.FS, dir string, data []byte, seq, step *Model, vocab *Vocab) *Manifest {
	sum := sha256.Sum256(data)
	m := &Manifest{
		Name:      path.Base(dir),
		Version:   hex.EncodeToString(sum[:6]),
		Forms:     []string{FormSequence},
		Output:    OutputProbs,
		MaxSeqLen: DefaultMaxSeqLen,
		VocabSize: vocab.Len(),
	}
	if m.Name == "." || m.Name == "/" || m.Name == "" {
		m.Name = "model"
	}
	if step != nil {
		m.Forms = append(m.Forms, FormStep)
	}
	if outs := seq.plan.outputs; len(outs) > 0 && outs[0].Name == OutputLogits {
		m.Output = OutputLogits
	}
	if st, err := fs.Stat(fsys, path.Join(dir, ModelFile)); err == nil {
		m.Created = st.ModTime().UTC().Truncate(time.Second)
	}
	if info := seq.Info(); info.Ops["GRU"] > 0 {
		m.Cell, m.Layers = "gru", info.Ops["GRU"]
	} else if info.Ops["LSTM"] > 0 {
		m.Cell, m.Layers = "lstm", info.Ops["LSTM"]
	} else if info.Ops["RNN"] > 0 {
		m.Cell, m.Layers = "rnn", info.Ops["RNN"]
	}
	return m
}

// checkContract matches the graphs' inputs and outputs to the contract and
// to the manifest.
func (b *Bundle) checkContract() error {
	m := b.manifest
	if err := m.Validate(); err != nil {
		return err
	}
	if m.VocabSize != b.vsize {
		return fmt.Errorf("%w: manifest vocab_size %d, vocabulary has %d entries", ErrContract, m.VocabSize, b.vsize)
	}
	if m.HasForm(FormStep) != (b.step != nil) {
		return fmt.Errorf("%w: manifest forms %v, %s present: %t", ErrContract, m.Forms, StepFile, b.step != nil)
	}
	p := b.seq.plan
	if len(p.inputs) != 1 || p.inputs[0].Name != InputPageIDs || p.inputs[0].DType != "int64" || (p.inputs[0].ranked && len(p.inputs[0].Dims) != 2) {
		return fmt.Errorf("%w: %s must have exactly one input %q int64 [batch, seq], has %v", ErrContract, ModelFile, InputPageIDs, b.seq.Info().Inputs)
	}
	if d := p.inputs[0].Dims; len(d) == 2 && (d[0] >= 0 || d[1] >= 0) {
		return fmt.Errorf("%w: %s input %q has fixed shape %v; batch and seq must be dynamic (export with dynamic_axes)", ErrContract, ModelFile, InputPageIDs, d)
	}
	out, err := b.scoresOutput(p, ModelFile)
	if err != nil {
		return err
	}
	b.seqIn, b.seqOut = 0, p.outputs[out].slot
	b.logits = p.outputs[out].Name == OutputLogits
	if b.logits != (m.Output == OutputLogits) {
		return fmt.Errorf("%w: manifest output %q, graph output %q", ErrContract, m.Output, p.outputs[out].Name)
	}
	if b.step == nil {
		return nil
	}
	sp := b.step.plan
	b.stepIn, b.stepStateIn = -1, -1
	for i, in := range sp.inputs {
		switch {
		case in.Name == InputPageID && in.DType == "int64":
			b.stepIn = i
			b.stepBatches = len(in.Dims) == 2 && in.Dims[0] != 1
		case in.Name == InputStateIn && in.DType == "float32" && len(in.Dims) == 3 && in.Dims[0] > 0 && in.Dims[2] > 0:
			b.stepStateIn = i
			b.stateDims = [3]int{int(in.Dims[0]), 1, int(in.Dims[2])}
		}
	}
	if len(sp.inputs) != 2 || b.stepIn < 0 || b.stepStateIn < 0 {
		return fmt.Errorf("%w: %s must have inputs %q int64 [batch, 1] and %q float32 [layers, batch, hidden] with fixed layers and hidden, has %v",
			ErrContract, StepFile, InputPageID, InputStateIn, b.step.Info().Inputs)
	}
	so, err := b.scoresOutput(sp, StepFile)
	if err != nil {
		return err
	}
	if (sp.outputs[so].Name == OutputLogits) != b.logits {
		return fmt.Errorf("%w: %s and %s differ in output kind", ErrContract, ModelFile, StepFile)
	}
	b.stepOut = sp.outputs[so].slot
	b.stepStateOut = -1
	for _, o := range sp.outputs {
		if o.Name == OutputStateOut && o.DType == "float32" {
			b.stepStateOut = o.slot
		}
	}
	if b.stepStateOut < 0 {
		return fmt.Errorf("%w: %s has no float32 output %q", ErrContract, StepFile, OutputStateOut)
	}
	return nil
}

// checkWeights refuses graphs whose float initializers hold NaN: a
// corrupted or diverged model would score some pages NaN and serve them
// silently wrong.
func (b *Bundle) checkWeights() error {
	for _, g := range []struct {
		file string
		m    *Model
	}{{ModelFile, b.seq}, {StepFile, b.step}} {
		if g.m == nil {
			continue
		}
		for slot, t := range g.m.plan.consts {
			if t == nil {
				continue
			}
			for j, x := range t.f {
				if x != x {
					return fmt.Errorf("%w: %s: constant %d (shape %v) holds NaN at element %d", ErrContract, g.file, slot, t.shape, j)
				}
			}
		}
	}
	return nil
}

// formsProbes is how many histories checkForms steps through: the golden
// cases' first rows, then probes of growing length.
const formsProbes = 4

// checkForms checks that the step form scores like the sequence form (the
// contract: same weights): for a few histories, stepping click by click
// from the zero state must give Predict's probabilities within the
// manifest's tolerance. A step.onnx from another training run would warm
// other pages than the hints served.
func (b *Bundle) checkForms() error {
	if b.step == nil {
		return nil
	}
	tol := b.manifest.Tolerance
	if tol <= 0 {
		tol = DefaultTolerance
	}
	var hs [][]int64
	for _, g := range b.manifest.Golden {
		if len(hs) < formsProbes/2 && len(g.PageIDs) > 0 && len(g.PageIDs[0]) > 0 {
			hs = append(hs, g.PageIDs[0])
		}
	}
	width := int64(b.vsize)
	maxLen := max(1, min(b.manifest.MaxSeqLen, 8))
	for i := 0; len(hs) < formsProbes; i++ {
		h := make([]int64, 1+i*(maxLen-1)/(formsProbes-1))
		for j := range h {
			h[j] = 2 + int64(i*31+j*17)%max(1, width-2)
			if h[j] >= width {
				h[j] = width - 1
			}
		}
		hs = append(hs, h)
	}
	ctx := context.Background()
	wants := make([][]float32, len(hs))
	for i, h := range hs {
		want, err := b.Predict(ctx, [][]int64{h})
		if err != nil {
			return fmt.Errorf("%w: comparing the forms, history %d: %w", ErrContract, i, err)
		}
		wants[i] = want[0]
		var state, got []float32
		for _, id := range h {
			if got, state, err = b.Step(ctx, id, state, got); err != nil {
				return fmt.Errorf("%w: comparing the forms, history %d: %w", ErrContract, i, err)
			}
		}
		for j := range got {
			if d := math.Abs(float64(got[j]) - float64(want[0][j])); !(d <= tol) {
				return fmt.Errorf("%w: %s and %s disagree on history %v: index %d %g stepped, %g in sequence (tolerance %g)",
					ErrContract, StepFile, ModelFile, h, j, got[j], want[0][j], tol)
			}
		}
	}
	return b.checkStepBatch(ctx, hs, wants, tol)
}

// checkStepBatch steps the histories hs together, one StepMany per click
// (the rows of those still going), as the engine steps a wave of users,
// and compares each with wants, Predict's scores of each history: a step form whose state_out is laid out
// unlike state_in (batch first, say) agrees with the sequence form one user
// at a time and mixes users up in a batch.
func (b *Bundle) checkStepBatch(ctx context.Context, hs [][]int64, wants [][]float32, tol float64) error {
	if !b.stepBatches || len(hs) < 2 {
		return nil
	}
	states := make([][]float32, len(hs))
	probs := make([][]float32, len(hs))
	for t := 0; ; t++ {
		var ids []int64
		var rows []int
		for i, h := range hs {
			if t < len(h) {
				ids, rows = append(ids, h[t]), append(rows, i)
			}
		}
		if len(rows) == 0 {
			break
		}
		st, pr := make([][]float32, len(rows)), make([][]float32, len(rows))
		for j, i := range rows {
			st[j], pr[j] = states[i], probs[i]
		}
		if err := b.StepMany(ctx, ids, st, pr); err != nil {
			return fmt.Errorf("%w: stepping %d histories together: %w", ErrContract, len(rows), err)
		}
		for j, i := range rows {
			states[i], probs[i] = st[j], pr[j]
		}
	}
	for i, h := range hs {
		for j := range probs[i] {
			if d := math.Abs(float64(probs[i][j]) - float64(wants[i][j])); !(d <= tol) {
				return fmt.Errorf("%w: %s stepped for %d users at once disagrees with %s on history %v: index %d %g against %g (tolerance %g); "+
					"is %q laid out [layers, batch, hidden] like %q?",
					ErrContract, StepFile, len(hs), ModelFile, h, j, probs[i][j], wants[i][j], tol, OutputStateOut, InputStateIn)
			}
		}
	}
	return nil
}

// scoresOutput finds the probs or logits output of a graph.
func (b *Bundle) scoresOutput(p *plan, file string) (int, error) {
	for i, o := range p.outputs {
		if o.Name != OutputProbs && o.Name != OutputLogits {
			continue
		}
		if o.DType != "float32" || len(o.Dims) != 2 {
			return 0, fmt.Errorf("%w: %s output %q is %s %v; it must be float32 [batch, vocab] (the scores after the last click only)", ErrContract, file, o.Name, o.DType, o.Dims)
		}
		if o.Dims[1] > 0 && int(o.Dims[1]) != b.vsize {
			return 0, fmt.Errorf("%w: %s output %q has %d scores, vocabulary has %d entries", ErrContract, file, o.Name, o.Dims[1], b.vsize)
		}
		return i, nil
	}
	return 0, fmt.Errorf("%w: %s has no output named %q or %q", ErrContract, file, OutputProbs, OutputLogits)
}

func (b *Bundle) runGolden() error {
	tol := b.manifest.Tolerance
	if tol <= 0 {
		tol = DefaultTolerance
	}
	ctx := context.Background()
	for i, g := range b.manifest.Golden {
		got, err := b.Predict(ctx, g.PageIDs)
		if err != nil {
			return fmt.Errorf("%w: case %d: %w", ErrGolden, i, err)
		}
		for r := range got {
			if len(got[r]) != len(g.Probs[r]) {
				return fmt.Errorf("%w: case %d row %d: %d probabilities, want %d", ErrGolden, i, r, len(got[r]), len(g.Probs[r]))
			}
			for j, p := range got[r] {
				if d := math.Abs(float64(p) - float64(g.Probs[r][j])); !(d <= tol) {
					return fmt.Errorf("%w: case %d row %d index %d: %g, want %g (tolerance %g)", ErrGolden, i, r, j, p, g.Probs[r][j], tol)
				}
			}
		}
	}
	return nil
}

// Manifest returns the bundle's manifest. The caller must not modify it.
func (b *Bundle) Manifest() *Manifest { return b.manifest }

// Vocab returns the bundle's vocabulary.
func (b *Bundle) Vocab() *Vocab { return b.vocab }

// HasStep reports whether the bundle has a step form.
func (b *Bundle) HasStep() bool { return b.step != nil }

// StateSize is the length of the recurrent state Step takes and returns
// (layers × hidden), or 0 when the bundle has no step form.
func (b *Bundle) StateSize() int {
	if b.step == nil {
		return 0
	}
	return b.stateDims[0] * b.stateDims[2]
}

// prepare cuts a history to MaxSeqLen, checks its indices and returns the
// part to feed (a single PadIndex for an empty history).
func (b *Bundle) prepare(h []int64) ([]int64, error) {
	if n := b.manifest.MaxSeqLen; len(h) > n {
		h = h[len(h)-n:]
	}
	for _, x := range h {
		if x < 0 || x >= int64(b.vsize) {
			return nil, fmt.Errorf("%w: page index %d outside the vocabulary of %d", ErrBadInput, x, b.vsize)
		}
	}
	return h, nil
}

// Predict returns next-page probabilities [len(histories)][vocab] for
// histories of page indices (oldest first). Histories may differ in length;
// each is cut to its last MaxSeqLen pages, an empty one is a single padding
// index, and histories of equal length run together as one batch, so a
// history's scores never depend on the others in the call. It returns
// ctx.Err() when ctx ends first and an error wrapping ErrBadInput for an
// index outside the vocabulary.
func (b *Bundle) Predict(ctx context.Context, histories [][]int64) ([][]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(histories) == 0 {
		return nil, nil
	}
	if len(histories) > MaxTensorElems/b.vsize {
		return nil, fmt.Errorf("%w: batch of %d too large", ErrBadInput, len(histories))
	}
	var pad [1]int64
	rows := make([][]int64, len(histories))
	groups := map[int][]int{}
	for i, h := range histories {
		h, err := b.prepare(h)
		if err != nil {
			return nil, fmt.Errorf("history %d: %w", i, err)
		}
		if len(h) == 0 {
			h = pad[:]
		}
		rows[i] = h
		groups[len(h)] = append(groups[len(h)], i)
	}
	backing := make([]float32, len(histories)*b.vsize)
	out := make([][]float32, len(histories))
	for i := range out {
		out[i] = backing[i*b.vsize : (i+1)*b.vsize : (i+1)*b.vsize]
	}
	ex := b.seq.pool.Get().(*exec)
	defer b.seq.pool.Put(ex)
	for n, idx := range groups {
		feed := &ex.feed[b.seqIn]
		if err := feed.reshape(dtInt, len(idx), n); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		for j, i := range idx {
			copy(feed.i[j*n:(j+1)*n], rows[i])
		}
		if err := b.seq.plan.run(ctx, ex); err != nil {
			return nil, fmt.Errorf("predict: %w", err)
		}
		res := ex.cur[b.seqOut]
		if len(res.f) != len(idx)*b.vsize {
			return nil, fmt.Errorf("%w: output shape %v, want [%d %d]", ErrContract, res.shape, len(idx), b.vsize)
		}
		for j, i := range idx {
			b.finish(out[i], res.f[j*b.vsize:(j+1)*b.vsize])
		}
	}
	return out, nil
}

// finish copies scores into dst, turning logits into probabilities.
func (b *Bundle) finish(dst, scores []float32) {
	if b.logits {
		softmaxRow(dst, scores)
		return
	}
	copy(dst, scores)
}

// PredictOne is Predict for a single history, writing the probabilities
// into dst (grown when shorter than the vocabulary) and returning it. It
// does not allocate in steady state and is safe for concurrent use.
func (b *Bundle) PredictOne(ctx context.Context, history []int64, dst []float32) ([]float32, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	h, err := b.prepare(history)
	if err != nil {
		return dst, err
	}
	dst = sized(dst, b.vsize)
	ex := b.seq.pool.Get().(*exec)
	defer b.seq.pool.Put(ex)
	if err := b.runSeq(ctx, b.seq.plan, ex, h); err != nil {
		return dst, err
	}
	res := ex.cur[b.seqOut]
	if len(res.f) != b.vsize {
		return dst, fmt.Errorf("%w: output shape %v, want [1 %d]", ErrContract, res.shape, b.vsize)
	}
	b.finish(dst, res.f)
	return dst, nil
}

// runSeq runs p (the sequence form or its trunk) on one prepared history.
func (b *Bundle) runSeq(ctx context.Context, p *plan, ex *exec, h []int64) error {
	feed := &ex.feed[b.seqIn]
	if err := feed.reshape(dtInt, 1, max(len(h), 1)); err != nil {
		return err
	}
	feed.i[0] = PadIndex // an empty history is one padding index
	copy(feed.i, h)
	if err := p.run(ctx, ex); err != nil {
		return fmt.Errorf("predict: %w", err)
	}
	return nil
}

// Step feeds one click to the step form. state is the user's recurrent
// state from the previous Step, or empty for a new session (the zero state).
// A state of StateSize elements is updated in place and returned as
// newState; an empty one is grown within its capacity when it can be, else
// newly allocated. Probabilities go
// to dst (grown when needed). A session fed click by click from the zero
// state scores like Predict on the whole history (up to MaxSeqLen). It
// returns an error wrapping ErrUnsupported when the bundle has no step form.
func (b *Bundle) Step(ctx context.Context, pageID int64, state []float32, dst []float32) (probs, newState []float32, err error) {
	if state, err = b.stepState(ctx, pageID, state); err != nil {
		return dst, state, err
	}
	dst = sized(dst, b.vsize)
	ex := b.step.pool.Get().(*exec)
	defer b.step.pool.Put(ex)
	if err := b.runStep(ctx, b.step.plan, ex, pageID, state); err != nil {
		return dst, state, err
	}
	res, so := ex.cur[b.stepOut], ex.cur[b.stepStateOut]
	if len(res.f) != b.vsize || len(so.f) != len(state) {
		return dst, state, fmt.Errorf("step: %w: outputs %v and %v", ErrContract, res.shape, so.shape)
	}
	b.finish(dst, res.f)
	copy(state, so.f)
	return dst, state, nil
}

// stepState checks a click for the step form and returns the state it
// updates: state itself when it has StateSize elements, a zero state
// (within state's capacity when it can be) when it is empty.
func (b *Bundle) stepState(ctx context.Context, pageID int64, state []float32) ([]float32, error) {
	if b.step == nil {
		return state, fmt.Errorf("step: %w: bundle has no step form", ErrUnsupported)
	}
	if err := ctx.Err(); err != nil {
		return state, err
	}
	if pageID < 0 || pageID >= int64(b.vsize) {
		return state, fmt.Errorf("step: %w: page index %d outside the vocabulary of %d", ErrBadInput, pageID, b.vsize)
	}
	n := b.StateSize()
	switch {
	case len(state) == n:
	case len(state) == 0 && cap(state) >= n:
		state = state[:n]
		clear(state)
	case len(state) == 0:
		state = make([]float32, n)
	default:
		return state, fmt.Errorf("step: %w: state has %d values, want %d", ErrBadInput, len(state), n)
	}
	return state, nil
}

// runStep runs p (the step form or its trunk) on one click.
func (b *Bundle) runStep(ctx context.Context, p *plan, ex *exec, pageID int64, state []float32) error {
	id := &ex.feed[b.stepIn]
	if err := id.reshape(dtInt, 1, 1); err != nil {
		return err
	}
	id.i[0] = pageID
	st := &ex.feed[b.stepStateIn]
	if err := st.reshape(dtFloat, b.stateDims[:]...); err != nil {
		return err
	}
	copy(st.f, state)
	if err := p.run(ctx, ex); err != nil {
		return fmt.Errorf("step: %w", err)
	}
	return nil
}

// StepMany is Step for several users at once: row i advances states[i] by
// the click pageIDs[i] and writes its probabilities into probs[i]. The rows
// go through the step form in one run, which shares the per-call work of
// the graph among them; results equal Step's row by row (within float32
// rounding). states[i] is the state Step takes (empty for a new session)
// and is replaced by the new state; probs[i] is grown when shorter than the
// vocabulary. The three slices have the same length; every row must belong
// to a different user (rows are independent). A step form whose batch
// dimension is fixed at 1 runs the rows one by one. On error no state is
// changed.
func (b *Bundle) StepMany(ctx context.Context, pageIDs []int64, states, probs [][]float32) error {
	n := len(pageIDs)
	if b.step == nil {
		return fmt.Errorf("step: %w: bundle has no step form", ErrUnsupported)
	}
	if len(states) != n || len(probs) != n {
		return fmt.Errorf("step: %w: %d page ids, %d states, %d outputs", ErrBadInput, n, len(states), len(probs))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	size := b.StateSize()
	for i, id := range pageIDs {
		if id < 0 || id >= int64(b.vsize) {
			return fmt.Errorf("step: %w: page index %d outside the vocabulary of %d", ErrBadInput, id, b.vsize)
		}
		if l := len(states[i]); l != 0 && l != size {
			return fmt.Errorf("step: %w: state %d has %d values, want %d", ErrBadInput, i, l, size)
		}
	}
	if n == 0 {
		return nil
	}
	if n == 1 || !b.stepBatches {
		// Step leaves a state alone on error, but earlier rows would already
		// have advanced: work on copies and commit at the end.
		tmp := make([][]float32, n)
		for i := range pageIDs {
			var err error
			if probs[i], tmp[i], err = b.Step(ctx, pageIDs[i], append([]float32(nil), states[i]...), probs[i]); err != nil {
				return err
			}
		}
		for i := range states {
			states[i] = append(states[i][:0], tmp[i]...)
		}
		return nil
	}
	layers, hidden := b.stateDims[0], b.stateDims[2]
	ex := b.step.pool.Get().(*exec)
	defer b.step.pool.Put(ex)
	id := &ex.feed[b.stepIn]
	if err := id.reshape(dtInt, n, 1); err != nil {
		return err
	}
	copy(id.i, pageIDs)
	st := &ex.feed[b.stepStateIn]
	if err := st.reshape(dtFloat, layers, n, hidden); err != nil {
		return err
	}
	// state_in is [layers, batch, hidden]; a user's state is its column.
	for i, s := range states {
		for l := range layers {
			row := st.f[(l*n+i)*hidden : (l*n+i+1)*hidden]
			if len(s) == 0 {
				clear(row)
			} else {
				copy(row, s[l*hidden:(l+1)*hidden])
			}
		}
	}
	if err := b.step.plan.run(ctx, ex); err != nil {
		return fmt.Errorf("step: %w", err)
	}
	res, so := ex.cur[b.stepOut], ex.cur[b.stepStateOut]
	if len(res.f) != n*b.vsize || len(so.f) != n*size {
		return fmt.Errorf("step: %w: outputs %v and %v for %d rows", ErrContract, res.shape, so.shape, n)
	}
	for i := range states {
		probs[i] = sized(probs[i], b.vsize)
		b.finish(probs[i], res.f[i*b.vsize:(i+1)*b.vsize])
		s := states[i]
		if cap(s) < size {
			s = make([]float32, size)
		}
		s = s[:size]
		for l := range layers {
			copy(s[l*hidden:(l+1)*hidden], so.f[(l*n+i)*hidden:(l*n+i+1)*hidden])
		}
		states[i] = s
	}
	return nil
}

func sized(dst []float32, n int) []float32 {
	if cap(dst) < n {
		return make([]float32, n)
	}
	return dst[:n]
}

// readModelFile reads an ONNX file of fsys (see readModel).
func readModelFile(fsys fs.FS, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readModel(f, path.Base(name))
}

// readModel reads an ONNX file of at most MaxModelBytes: a larger one is
// refused from its size, before anything is read (a file of many GB
// published by mistake must not take the process's memory), and one that
// grows past the limit while being read is refused at the limit.
func readModel(f fs.File, name string) ([]byte, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	tooLarge := func(n int64) error {
		return fmt.Errorf("%s: %w: %d bytes exceeds the limit of %d", name, ErrBadModel, n, MaxModelBytes)
	}
	if info.Size() > MaxModelBytes {
		return nil, tooLarge(info.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxModelBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > MaxModelBytes {
		return nil, tooLarge(int64(len(data)))
	}
	return data, nil
}
