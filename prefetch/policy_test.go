package prefetch

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

func TestPolicyConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  PolicyConfig
		ok   bool
	}{
		{"zero", PolicyConfig{}, true},
		{"full", PolicyConfig{K: 5, Threshold: 0.2, CostWeights: map[string]float64{"/a": 2}, UseExpectedUtility: true}, true},
		{"negative k", PolicyConfig{K: -1}, false},
		{"threshold above 1", PolicyConfig{Threshold: 1.5}, false},
		{"negative threshold", PolicyConfig{Threshold: -0.1}, false},
		{"NaN threshold", PolicyConfig{Threshold: math.NaN()}, false},
		{"negative weight", PolicyConfig{CostWeights: map[string]float64{"/a": -1}}, false},
		{"infinite weight", PolicyConfig{CostWeights: map[string]float64{"/a": math.Inf(1)}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate() = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

type pageList []string

func (p pageList) Len() int            { return len(p) }
func (p pageList) Page(i int64) string { return p[i] }

func TestPolicySelect(t *testing.T) {
	// Pages 7 to 10 hold what a broken model row may: never selected.
	//                 pad  unk   2    3    4    5    6    7                   8                      9    10
	probs := []float32{0.9, 0.9, 0.1, 0.6, 0.55, 0.7, 0.5, float32(math.NaN()), float32(math.Inf(1)), 1.5, -0.5}
	cases := []struct {
		name      string
		cfg       PolicyConfig
		current   int64
		k         int
		threshold float64
		want      []int64
	}{
		{"defaults: top 3 at or above 0.5", PolicyConfig{}, 2, 0, -1, []int64{5, 3, 4}},
		{"never the current page", PolicyConfig{}, 5, 0, -1, []int64{3, 4, 6}},
		{"k override", PolicyConfig{}, 2, 1, -1, []int64{5}},
		{"threshold override", PolicyConfig{}, 2, 10, 0.58, []int64{5, 3}},
		{"threshold zero accepts all", PolicyConfig{}, 0, 10, 0, []int64{5, 3, 4, 6, 2}},
		{"configured k and threshold", PolicyConfig{K: 2, Threshold: 0.05}, 5, 0, -1, []int64{3, 4}},
		{"nothing passes", PolicyConfig{}, 2, 0, 0.95, nil},
		{"configured threshold zero admits every page, top k", PolicyConfig{Threshold: 0, ThresholdSet: true}, 0, 0, -1, []int64{5, 3, 4}},
		{"configured threshold zero with a large k", PolicyConfig{K: 10, Threshold: 0, ThresholdSet: true}, 0, 0, -1, []int64{5, 3, 4, 6, 2}},
		{"configured k zero selects nothing", PolicyConfig{K: 0, KSet: true, Threshold: 0, ThresholdSet: true}, 0, 0, -1, nil},
		{"configured k zero, request k", PolicyConfig{K: 0, KSet: true}, 0, 1, -1, []int64{5}},
		{"expected utility reorders", PolicyConfig{UseExpectedUtility: true, CostWeights: map[string]float64{"p2": 10, "p5": 0.5}}, 0, 0, -1, []int64{2, 3, 4}},
	}
	vocab := pageList{"<pad>", "<unk>", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPolicy(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			p = p.ForVocab(vocab)
			got := p.Select(probs, tc.current, tc.k, tc.threshold, nil)
			var idx []int64
			for _, c := range got {
				idx = append(idx, c.Index)
				if c.Probability != probs[c.Index] {
					t.Errorf("candidate %d probability %v, want %v", c.Index, c.Probability, probs[c.Index])
				}
			}
			if !slices.Equal(idx, tc.want) {
				t.Fatalf("Select = %v, want %v", idx, tc.want)
			}
		})
	}
}

// TestPolicyZeroIsAValue checks each PolicyConfig field that accepts 0:
// unset takes the default, 0 with its Set flag is honoured, and a non-zero
// value is used as given with or without the flag.
func TestPolicyZeroIsAValue(t *testing.T) {
	cases := []struct {
		name          string
		cfg           PolicyConfig
		wantK         int
		wantThreshold float64
	}{
		{"k unset", PolicyConfig{}, DefaultK, DefaultThreshold},
		{"k zero", PolicyConfig{KSet: true}, 0, DefaultThreshold},
		{"k two", PolicyConfig{K: 2}, 2, DefaultThreshold},
		{"k two, set", PolicyConfig{K: 2, KSet: true}, 2, DefaultThreshold},
		{"threshold unset", PolicyConfig{K: 1}, 1, DefaultThreshold},
		{"threshold zero", PolicyConfig{ThresholdSet: true}, DefaultK, 0},
		{"threshold 0.2", PolicyConfig{Threshold: 0.2}, DefaultK, 0.2},
		{"threshold 0.2, set", PolicyConfig{Threshold: 0.2, ThresholdSet: true}, DefaultK, 0.2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPolicy(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if p.K() != tc.wantK || p.Threshold() != tc.wantThreshold {
				t.Errorf("K %d threshold %v, want %d and %v", p.K(), p.Threshold(), tc.wantK, tc.wantThreshold)
			}
		})
	}
}

// TestPolicySelectMatchesSort checks Select against sorting on random
// vectors, with and without expected utility.
func TestPolicySelectMatchesSort(t *testing.T) {
	for _, utility := range []bool{false, true} {
		t.Run("utility="+strconv.FormatBool(utility), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			const n = 300
			names := make(pageList, n)
			weights := map[string]float64{}
			for i := range names {
				names[i] = "p" + strconv.Itoa(i)
				if i%3 == 0 {
					weights[names[i]] = float64(rng.IntN(5)) / 2 // 0 to 2
				}
			}
			p, err := NewPolicy(PolicyConfig{UseExpectedUtility: utility, CostWeights: weights})
			if err != nil {
				t.Fatal(err)
			}
			p = p.ForVocab(names)
			score := func(i int64, pr float32) float32 {
				if w, ok := weights[names[i]]; ok && utility {
					return pr * float32(w)
				}
				return pr
			}
			probs := make([]float32, n)
			var dst []Candidate
			for trial := range 200 {
				for i := range probs {
					probs[i] = float32(rng.IntN(50)) / 50 // many ties
				}
				current := int64(rng.IntN(n))
				k, thr := 1+rng.IntN(10), rng.Float64()
				dst = p.Select(probs, current, k, thr, dst)
				var want []int64
				for i := int64(2); i < n; i++ {
					if i != current && float64(score(i, probs[i])) >= thr {
						want = append(want, i)
					}
				}
				slices.SortStableFunc(want, func(a, b int64) int {
					sa, sb := score(a, probs[a]), score(b, probs[b])
					switch {
					case sa > sb:
						return -1
					case sa < sb:
						return 1
					}
					return 0
				})
				if len(want) > k {
					want = want[:k]
				}
				got := make([]int64, len(dst))
				for i, c := range dst {
					got[i] = c.Index
				}
				if !slices.Equal(got, want) {
					t.Fatalf("trial %d (k=%d thr=%v current=%d): Select = %v, want %v", trial, k, thr, current, got, want)
				}
			}
		})
	}
}

func TestPolicySelectAllocs(t *testing.T) {
	for _, utility := range []bool{false, true} {
		t.Run("utility="+strconv.FormatBool(utility), func(t *testing.T) {
			p, err := NewPolicy(PolicyConfig{UseExpectedUtility: utility, Threshold: 0.01})
			if err != nil {
				t.Fatal(err)
			}
			probs := randomProbs(1000)
			dst := make([]Candidate, 0, DefaultK)
			allocs := testing.AllocsPerRun(100, func() { dst = p.Select(probs, 7, 0, -1, dst) })
			if allocs != 0 {
				t.Fatalf("Select allocates %v times per call, want 0", allocs)
			}
		})
	}
}

// randomProbs is a softmax-like vector: a few large values and a long tail.
func randomProbs(n int) []float32 {
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	probs := make([]float32, n)
	var sum float32
	for i := range probs {
		v := float32(rng.ExpFloat64())
		v *= v * v
		probs[i] = v
		sum += v
	}
	for i := range probs {
		probs[i] /= sum
	}
	probs[n/2] += 0.6
	return probs
}

// BenchmarkPolicySelect measures the prefetch decision per event.
func BenchmarkPolicySelect(b *testing.B) {
	for _, vocab := range []int{1000, 5000} {
		for _, utility := range []bool{false, true} {
			b.Run("vocab="+strconv.Itoa(vocab)+"/utility="+strconv.FormatBool(utility), func(b *testing.B) {
				p, err := NewPolicy(PolicyConfig{UseExpectedUtility: utility})
				if err != nil {
					b.Fatal(err)
				}
				names := make(pageList, vocab)
				for i := range names {
					names[i] = "/page/" + strconv.Itoa(i)
				}
				p = p.ForVocab(names)
				probs := randomProbs(vocab)
				dst := make([]Candidate, 0, DefaultK)
				b.ReportAllocs()
				for b.Loop() {
					dst = p.Select(probs, 3, 0, -1, dst)
				}
				if len(dst) == 0 {
					b.Fatal("no candidate selected")
				}
			})
		}
	}
}
