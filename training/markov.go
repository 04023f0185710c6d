package training

import (
	"fmt"
	"math"

	"github.com/prefetchd/prefetchd/internal/onnxenc"
	"github.com/prefetchd/prefetchd/model"
)

// CellMarkov is the manifest cell of a first-order Markov bundle.
const CellMarkov = "markov1"

// MarkovConfig sets the smoothing of a first-order Markov model.
type MarkovConfig struct {
	// Alpha is the add-alpha pseudo-count given to every (page, next page)
	// pair, so that rows sum to 1 and no page has probability 0. Default 0.01.
	Alpha float64
}

// Validate checks the configuration.
func (c MarkovConfig) Validate() error {
	if c.Alpha < 0 || math.IsNaN(c.Alpha) || math.IsInf(c.Alpha, 0) {
		return fmt.Errorf("markov alpha %v must be a finite non-negative number", c.Alpha)
	}
	return nil
}

// Markov is a first-order Markov model: the next page depends only on the
// last one. Row i of the transition matrix is the distribution of the page
// that follows index i. Row 0 (padding, an empty history) and rows of pages
// never seen followed by another are the popularity distribution. Column 0
// (padding) is always 0; column 1 is the probability that the next page is
// outside the vocabulary.
type Markov struct {
	vocab int
	probs []float32 // vocab x vocab, row-major
}

// TrainMarkov counts transitions in seqs (vocabulary indices) and smooths
// each row with add-alpha. The unknown index takes part like any page.
func TrainMarkov(seqs [][]int64, vocabSize int, cfg MarkovConfig) (*Markov, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if vocabSize < 3 {
		return nil, fmt.Errorf("markov: vocabulary of %d has no pages", vocabSize)
	}
	alpha := cfg.Alpha
	if alpha == 0 {
		alpha = 0.01
	}
	v := vocabSize
	counts := make([]float64, v*v)
	pop := make([]float64, v)
	for _, seq := range seqs {
		for t, p := range seq {
			if p <= 0 || p >= int64(v) {
				return nil, fmt.Errorf("markov: page index %d outside 1..%d", p, v-1)
			}
			pop[p]++
			if t > 0 {
				counts[seq[t-1]*int64(v)+p]++
			}
		}
	}
	m := &Markov{vocab: v, probs: make([]float32, v*v)}
	popRow := smoothRow(pop, alpha)
	copy(m.probs[:v], popRow)
	for i := 1; i < v; i++ {
		row := counts[i*v : (i+1)*v]
		var n float64
		for _, c := range row {
			n += c
		}
		if n == 0 {
			copy(m.probs[i*v:(i+1)*v], popRow)
			continue
		}
		copy(m.probs[i*v:(i+1)*v], smoothRow(row, alpha))
	}
	return m, nil
}

// smoothRow returns (c_j + alpha) / (sum c + alpha (V-1)) for j >= 1 and 0
// for the padding column.
func smoothRow(counts []float64, alpha float64) []float32 {
	var n float64
	for _, c := range counts[1:] {
		n += c
	}
	den := n + alpha*float64(len(counts)-1)
	out := make([]float32, len(counts))
	for j := 1; j < len(counts); j++ {
		out[j] = float32((counts[j] + alpha) / den)
	}
	return out
}

// VocabSize is the number of indices the model scores.
func (m *Markov) VocabSize() int { return m.vocab }

// Row returns the distribution that follows index i (shared, do not modify).
func (m *Markov) Row(i int64) []float32 {
	if i < 0 || i >= int64(m.vocab) {
		i = model.UnknownIndex
	}
	return m.probs[i*int64(m.vocab) : (i+1)*int64(m.vocab)]
}

// Predict writes into dst (grown as needed) the distribution of the page
// that follows history, exactly as the exported graph computes it: the row
// of the last element, or row 0 for an empty history.
func (m *Markov) Predict(history []int64, dst []float32) []float32 {
	last := int64(model.PadIndex)
	if len(history) > 0 {
		last = history[len(history)-1]
	}
	if cap(dst) < m.vocab {
		dst = make([]float32, m.vocab)
	}
	dst = dst[:m.vocab]
	copy(dst, m.Row(last))
	return dst
}

// ONNX returns the model as an ONNX graph in the sequence form:
// page_ids int64 [batch, seq] -> Gather(axis 1, index -1) -> last page
// [batch] -> Gather(T, axis 0) -> probs float32 [batch, vocab].
func (m *Markov) ONNX() ([]byte, error) {
	v := int64(m.vocab)
	om := &onnxenc.Model{
		ProducerName:    "prefetchd-train",
		ProducerVersion: "1",
		Opset:           13,
		DocString:       "first-order Markov model: probs = T[page_ids[:, -1]]",
		Metadata:        []onnxenc.KeyValue{{Key: "cell", Value: CellMarkov}},
		Graph: onnxenc.Graph{
			Name: "markov1",
			Nodes: []onnxenc.Node{
				{Name: "last_page", OpType: "Gather", Inputs: []string{"page_ids", "last_position"}, Outputs: []string{"last_page"},
					Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 1)}},
				{Name: "transition_row", OpType: "Gather", Inputs: []string{"transitions", "last_page"}, Outputs: []string{model.OutputProbs},
					Attributes: []onnxenc.Attribute{onnxenc.Int("axis", 0)}},
			},
			Initializers: []onnxenc.Tensor{
				onnxenc.Int64Tensor("last_position", []int64{-1}),
				onnxenc.FloatTensor("transitions", m.probs, v, v),
			},
			Inputs: []onnxenc.ValueInfo{{Name: "page_ids", ElemType: onnxenc.Int64,
				Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Symbolic("seq")}}},
			Outputs: []onnxenc.ValueInfo{{Name: model.OutputProbs, ElemType: onnxenc.Float32,
				Dims: []onnxenc.Dim{onnxenc.Symbolic("batch"), onnxenc.Fixed(v)}}},
		},
	}
	b, err := om.Marshal()
	if err != nil {
		return nil, fmt.Errorf("export markov model: %w", err)
	}
	return b, nil
}
