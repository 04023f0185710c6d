package training

import "fmt"

// Popularity is the baseline that ignores history: every page scores its
// share of views in the training sessions.
type Popularity struct {
	probs []float32
}

// TrainPopularity counts page views in seqs (vocabulary indices).
func TrainPopularity(seqs [][]int64, vocabSize int) (*Popularity, error) {
	if vocabSize < 3 {
		return nil, fmt.Errorf("popularity: vocabulary of %d has no pages", vocabSize)
	}
	counts := make([]float64, vocabSize)
	var n float64
	for _, seq := range seqs {
		for _, p := range seq {
			if p <= 0 || p >= int64(vocabSize) {
				return nil, fmt.Errorf("popularity: page index %d outside 1..%d", p, vocabSize-1)
			}
			counts[p]++
			n++
		}
	}
	probs := make([]float32, vocabSize)
	if n > 0 {
		for i, c := range counts {
			probs[i] = float32(c / n)
		}
	}
	return &Popularity{probs: probs}, nil
}

// Predict writes the popularity distribution into dst (grown as needed).
func (p *Popularity) Predict(_ []int64, dst []float32) []float32 {
	if cap(dst) < len(p.probs) {
		dst = make([]float32, len(p.probs))
	}
	dst = dst[:len(p.probs)]
	copy(dst, p.probs)
	return dst
}
