package training

import (
	"cmp"
	"fmt"
	"math"
	"slices"

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
// last one. Row i is the distribution of the page that follows index i.
// Row 0 (padding, an empty history) and rows of pages never seen followed by
// another are the popularity distribution. Column 0 (padding) is always 0;
// column 1 is the probability that the next page is outside the vocabulary.
//
// Rows are kept sparse (the counted next pages of each page, plus the
// add-alpha share every other page gets), so memory grows with the
// transitions seen, not with the square of the vocabulary: a catalog of
// 200,000 pages would need 160 GB as a dense table.
type Markov struct {
	vocab int
	alpha float64
	pop   []float32   // the popularity row, smoothed
	rows  []markovRow // by source index; a row with no next pages is pop
}

// markovRow is one source page's counted next pages and their total.
type markovRow struct {
	next  []int32
	count []float32
	total float64
}

// maxMarkovExport is the most table entries (vocab²) Markov.ONNX writes:
// 1 GiB of float32.
const maxMarkovExport = 1 << 28

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
	pop := make([]float64, v)
	pairs := make(map[[2]int32]float32)
	for _, seq := range seqs {
		for t, p := range seq {
			if p <= 0 || p >= int64(v) {
				return nil, fmt.Errorf("markov: page index %d outside 1..%d", p, v-1)
			}
			pop[p]++
			if t > 0 {
				pairs[[2]int32{int32(seq[t-1]), int32(p)}]++
			}
		}
	}
	m := &Markov{vocab: v, alpha: alpha, pop: smoothRow(pop, alpha), rows: make([]markovRow, v)}
	keys := make([][2]int32, 0, len(pairs))
	for k := range pairs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]int32) int {
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		return cmp.Compare(a[1], b[1])
	})
	for _, k := range keys {
		r := &m.rows[k[0]]
		c := pairs[k]
		r.next = append(r.next, k[1])
		r.count = append(r.count, c)
		r.total += float64(c)
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

// Row returns a new slice holding the distribution that follows index i.
func (m *Markov) Row(i int64) []float32 {
	return m.fillRow(i, make([]float32, m.vocab))
}

// fillRow writes the distribution that follows index i into dst (of length
// vocab): the smoothed counts of its next pages, or the popularity row.
func (m *Markov) fillRow(i int64, dst []float32) []float32 {
	if i < 0 || i >= int64(m.vocab) {
		i = model.UnknownIndex
	}
	r := m.rows[i]
	if i == model.PadIndex || len(r.next) == 0 {
		copy(dst, m.pop)
		return dst
	}
	den := r.total + m.alpha*float64(m.vocab-1)
	base := float32(m.alpha / den)
	dst[0] = 0
	for j := 1; j < len(dst); j++ {
		dst[j] = base
	}
	for k, j := range r.next {
		dst[j] = float32((float64(r.count[k]) + m.alpha) / den)
	}
	return dst
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
	return m.fillRow(last, dst[:m.vocab])
}

// ONNX returns the model as an ONNX graph in the sequence form:
// page_ids int64 [batch, seq] -> Gather(axis 1, index -1) -> last page
// [batch] -> Gather(T, axis 0) -> probs float32 [batch, vocab].
func (m *Markov) ONNX() ([]byte, error) {
	v := int64(m.vocab)
	if err := checkMarkovExport(m.vocab); err != nil {
		return nil, err
	}
	table := make([]float32, v*v)
	for i := range v {
		m.fillRow(i, table[i*v:(i+1)*v])
	}
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
				onnxenc.FloatTensor("transitions", table, v, v),
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

// checkMarkovExport refuses a vocabulary too large for the dense table of an
// exported first-order Markov model.
func checkMarkovExport(vocab int) error {
	if v := int64(vocab); v*v > maxMarkovExport {
		return fmt.Errorf("export markov model: a vocabulary of %d pages needs a dense table of %d entries, more than %d; export the GRU instead", v, v*v, maxMarkovExport)
	}
	return nil
}
