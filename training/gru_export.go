package training

import (
	"fmt"

	"github.com/prefetchd/prefetchd/internal/onnxenc"
	"github.com/prefetchd/prefetchd/model"
)

// Input and output names of the step form.
const (
	StepInput     = "page_id"
	StateInput    = "state_in"
	StateOutput   = "state_out"
	SequenceInput = "page_ids"
)

// weights returns the initializers shared by both forms, in ONNX layouts:
// W [1, 3H, D], R [1, 3H, H], B [1, 6H] (Wb then Rb), gates z, r, h.
func (g *GRU) weights() []onnxenc.Tensor {
	p := &g.p
	v, d, h := int64(p.V), int64(p.D), int64(p.H)
	b := append(append([]float32(nil), p.BW...), p.BR...)
	t := []onnxenc.Tensor{
		onnxenc.FloatTensor("embedding", p.Emb, v, d),
		onnxenc.FloatTensor("gru_W", p.Wx, 1, 3*h, d),
		onnxenc.FloatTensor("gru_R", p.Rh, 1, 3*h, h),
		onnxenc.FloatTensor("gru_B", b, 1, 6*h),
		onnxenc.FloatTensor("out_W", p.Wo, v, h),
		onnxenc.FloatTensor("out_b", p.Bo, v),
		onnxenc.Int64Tensor("axes0", []int64{0}, 1),
		onnxenc.Int64Tensor("axes01", []int64{0, 1}, 2),
	}
	if p.Skip != nil {
		t = append(t, onnxenc.FloatTensor("skip", p.Skip, v, h), onnxenc.Int64Tensor("last_position", []int64{-1}))
	}
	return t
}

func gruNode(x, initial, y, yh string, hidden int) onnxenc.Node {
	return onnxenc.Node{
		Name: "gru", OpType: "GRU",
		Inputs:  []string{x, "gru_W", "gru_R", "gru_B", "", initial},
		Outputs: []string{y, yh},
		Attributes: []onnxenc.Attribute{
			onnxenc.Int("hidden_size", int64(hidden)),
			onnxenc.Int("linear_before_reset", 1),
		},
	}
}

// headNodes map the state to probs; with a skip term (skip true) the
// output layer reads state + skip[ids[:, -1]], ids the graph's page input
// ([batch, seq] or [batch, 1]).
func headNodes(state, ids string, skip bool) []onnxenc.Node {
	var nodes []onnxenc.Node
	if skip {
		nodes = []onnxenc.Node{
			{Name: "last_page", OpType: "Gather", Inputs: []string{ids, "last_position"}, Outputs: []string{"last_page"},
				Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 1)}},
			{Name: "skip_row", OpType: "Gather", Inputs: []string{"skip", "last_page"}, Outputs: []string{"skip_row"},
				Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 0)}},
			{Name: "skip_add", OpType: "Add", Inputs: []string{state, "skip_row"}, Outputs: []string{"head_in"}},
		}
		state = "head_in"
	}
	return append(nodes, []onnxenc.Node{
		{Name: "out_linear", OpType: "Gemm", Inputs: []string{state, "out_W", "out_b"}, Outputs: []string{"logits"},
			Attributes: []onnxenc.Attribute{onnxenc.Float("alpha", 1), onnxenc.Float("beta", 1), onnxenc.Int("transB", 1)}},
		{Name: "softmax", OpType: "Softmax", Inputs: []string{"logits"}, Outputs: []string{model.OutputProbs},
			Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 1)}},
	}...)
}

func (g *GRU) onnxModel(doc string, graph onnxenc.Graph) ([]byte, error) {
	m := &onnxenc.Model{
		ProducerName: "prefetchd-train", ProducerVersion: "1", Opset: 13, DocString: doc,
		Metadata: []onnxenc.KeyValue{{Key: "cell", Value: CellGRU}},
		Graph:    graph,
	}
	b, err := m.Marshal()
	if err != nil {
		return nil, fmt.Errorf("export gru: %w", err)
	}
	return b, nil
}

// SequenceONNX exports the sequence form, laid out like a PyTorch export:
// page_ids int64 [batch, seq] -> Gather(embedding) -> Transpose to
// [seq, batch, emb] -> GRU (zero initial state) -> Y_h [1, batch, hidden]
// -> Squeeze -> Gemm -> Softmax -> probs float32 [batch, vocab]. With the
// skip term, Gather(page_ids, -1 on axis 1) -> Gather(skip) is added to the
// state before the Gemm.
func (g *GRU) SequenceONNX() ([]byte, error) {
	v := int64(g.p.V)
	nodes := []onnxenc.Node{
		{Name: "embed", OpType: "Gather", Inputs: []string{"embedding", SequenceInput}, Outputs: []string{"emb"},
			Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 0)}},
		{Name: "time_major", OpType: "Transpose", Inputs: []string{"emb"}, Outputs: []string{"x"},
			Attributes: []onnxenc.Attribute{onnxenc.Ints("perm", 1, 0, 2)}},
		gruNode("x", "", "y", "y_h", g.p.H),
		{Name: "last_state", OpType: "Squeeze", Inputs: []string{"y_h", "axes0"}, Outputs: []string{"h"}},
	}
	nodes = append(nodes, headNodes("h", SequenceInput, g.p.Skip != nil)...)
	return g.onnxModel("GRU next-page model, sequence form", onnxenc.Graph{
		Name: "gru_sequence", Nodes: nodes, Initializers: g.weights(),
		Inputs: []onnxenc.ValueInfo{{Name: SequenceInput, ElemType: onnxenc.Int64,
			Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Symbolic("seq")}}},
		Outputs: []onnxenc.ValueInfo{{Name: model.OutputProbs, ElemType: onnxenc.Float32,
			Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Fixed(v)}}},
	})
}

// StepONNX exports the step form: page_id int64 [batch, 1] and state_in
// float32 [1, batch, hidden] -> probs [batch, vocab] and state_out
// [1, batch, hidden]. The output head reads the GRU's Y so that state_out
// is a graph output no node consumes.
func (g *GRU) StepONNX() ([]byte, error) {
	v, h := int64(g.p.V), int64(g.p.H)
	nodes := []onnxenc.Node{
		{Name: "embed", OpType: "Gather", Inputs: []string{"embedding", StepInput}, Outputs: []string{"emb"},
			Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 0)}},
		{Name: "time_major", OpType: "Transpose", Inputs: []string{"emb"}, Outputs: []string{"x"},
			Attributes: []onnxenc.Attribute{onnxenc.Ints("perm", 1, 0, 2)}},
		gruNode("x", StateInput, "y", StateOutput, g.p.H),
		{Name: "last_state", OpType: "Squeeze", Inputs: []string{"y", "axes01"}, Outputs: []string{"h"}},
	}
	nodes = append(nodes, headNodes("h", StepInput, g.p.Skip != nil)...)
	return g.onnxModel("GRU next-page model, step form", onnxenc.Graph{
		Name: "gru_step", Nodes: nodes, Initializers: g.weights(),
		Inputs: []onnxenc.ValueInfo{
			{Name: StepInput, ElemType: onnxenc.Int64, Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Fixed(1)}},
			{Name: StateInput, ElemType: onnxenc.Float32, Dims: []onnxenc.Dim{onnxenc.Fixed(1), onnxenc.Symbolic("batch"), onnxenc.Fixed(h)}},
		},
		Outputs: []onnxenc.ValueInfo{
			{Name: model.OutputProbs, ElemType: onnxenc.Float32, Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Fixed(v)}},
			{Name: StateOutput, ElemType: onnxenc.Float32, Dims: []onnxenc.Dim{onnxenc.Fixed(1), onnxenc.Symbolic("batch"), onnxenc.Fixed(h)}},
		},
	})
}

// GRUBundle exports g in both forms with its vocabulary, golden cases and
// manifest.
func GRUBundle(g *GRU, v *model.Vocab, cfg ManifestConfig) (*Bundle, error) {
	if v.Len() != g.VocabSize() {
		return nil, fmt.Errorf("gru bundle: vocabulary has %d entries, model %d", v.Len(), g.VocabSize())
	}
	seq, err := g.SequenceONNX()
	if err != nil {
		return nil, err
	}
	step, err := g.StepONNX()
	if err != nil {
		return nil, err
	}
	man := newManifest(cfg, v.Len())
	man.Cell = CellGRU
	man.Layers = 1
	man.Hidden = g.Hidden()
	man.Output = model.OutputProbs
	man.Forms = []string{model.FormSequence, model.FormStep}
	man.Golden = GoldenCases(g, DefaultGoldenInputs(v.Len(), man.MaxSeqLen))
	return &Bundle{Model: seq, Step: step, Vocab: v, Manifest: man}, nil
}
