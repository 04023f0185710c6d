package training

import "math"

// Weightings of the sequential rules by the distance between the two
// pages of a rule (Ludewig and Jannach 2018).
const (
	SRLinear    = 0 // 1 - 0.1 d, 0 beyond 10
	SRSame      = 1 // 1
	SRDiv       = 2 // 1 / d
	SRLog       = 3 // 1 / log10(d + 1.7)
	SRQuadratic = 4 // 1 / d²
)

func srWeight(weighting int, d int) float64 {
	switch weighting {
	case SRLinear:
		return max(1-0.1*float64(d), 0)
	case SRSame:
		return 1
	case SRLog:
		return 1 / math.Log10(float64(d)+1.7)
	case SRQuadratic:
		return 1 / float64(d*d)
	default:
		return 1 / float64(d)
	}
}

// SR is the sequential-rules model: every time page b follows page a
// within Steps clicks of the same session, the rule a -> b gains the weight
// of their distance. The next page after a history scores the weights of
// the rules from its last page, normalized; a page with no rules falls back
// to popularity.
type SR struct {
	vocab int
	rules []map[int32]float32 // by source page
	pop   *Popularity
}

// TrainSR collects the rules of seqs with steps and weighting (SRLinear,
// SRSame, SRDiv, SRLog or SRQuadratic).
func TrainSR(seqs [][]int64, vocabSize, steps, weighting int, pop *Popularity) *SR {
	m := &SR{vocab: vocabSize, rules: make([]map[int32]float32, vocabSize), pop: pop}
	for _, s := range seqs {
		for j := 1; j < len(s); j++ {
			b := int32(s[j])
			for i := j - 1; i >= max(0, j-steps); i-- {
				a := s[i]
				if m.rules[a] == nil {
					m.rules[a] = make(map[int32]float32)
				}
				m.rules[a][b] += float32(srWeight(weighting, j-i))
			}
		}
	}
	return m
}

// Predict writes the next-page distribution after history into dst.
func (m *SR) Predict(history []int64, dst []float32) []float32 {
	dst = grow(dst, m.vocab)
	if len(history) > 0 {
		if last := history[len(history)-1]; last > 0 && last < int64(m.vocab) {
			for b, w := range m.rules[last] {
				dst[b] += w
			}
		}
	}
	if !normalize(dst) {
		return m.pop.Predict(history, dst)
	}
	return dst
}
