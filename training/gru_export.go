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
	return []onnxenc.Tensor{
		onnxenc.FloatTensor("embedding", p.Emb, v, d),
		onnxenc.FloatTensor("gru_W", p.Wx, 1, 3*h, d),
		onnxenc.FloatTensor("gru_R", p.Rh, 1, 3*h, h),
		onnxenc.FloatTensor("gru_B", b, 1, 6*h),
		onnxenc.FloatTensor("out_W", p.Wo, v, h),
		onnxenc.FloatTensor("out_b", p.Bo, v),
		onnxenc.Int64Tensor("axes0", []int64{0}, 1),
		onnxenc.Int64Tensor("axes01", []int64{0, 1}, 2),
	}
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

func headNodes(state string) []onnxenc.Node {
	return []onnxenc.Node{
		{Name: "out_linear", OpType: "Gemm", Inputs: []string{state, "out_W", "out_b"}, Outputs: []string{"logits"},
			Attributes: []onnxenc.Attribute{onnxenc.Float("alpha", 1), onnxenc.Float("beta", 1), onnxenc.Int("transB", 1)}},
		{Name: "softmax", OpType: "Softmax", Inputs: []string{"logits"}, Outputs: []string{model.OutputProbs},
			Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 1)}},
	}
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
// -> Squeeze -> Gemm -> Softmax -> probs float32 [batch, vocab].
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
	nodes = append(nodes, headNodes("h")...)
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
	nodes = append(nodes, headNodes("h")...)
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
	man.Golden = GoldenCases(g, DefaultGoldenInputs(v.Len()))
	return &Bundle{Model: seq, Step: step, Vocab: v, Manifest: man}, nil
}
