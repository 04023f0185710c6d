package training

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// TestDistillerSoftMatchesNGram checks the teacher's candidate-restricted
// distribution against the n-gram's own prediction, renormalized over the
// candidates.
func TestDistillerSoftMatchesNGram(t *testing.T) {
	const v = 9
	seqs := [][]int64{{2, 3, 4, 5, 6}, {2, 3, 4, 7}, {3, 4, 5, 8}, {8, 2, 3, 4, 5}, {6, 1, 2}}
	tests := []struct {
		history []int64
		cand    []int64
	}{
		{[]int64{2, 3, 4}, nil},
		{[]int64{2, 3, 4}, []int64{1, 5, 7, 8}},
		{[]int64{7}, []int64{2, 3, 6}},
		{[]int64{6, 1}, nil},
		{nil, []int64{4}},
	}
	for _, order := range []int{1, 2, 5} {
		d := newDistiller(seqs, v, order, 0.7, 0.5)
		for _, tc := range tests {
			t.Run(fmt.Sprintf("order %d after %v over %v", order, tc.history, tc.cand), func(t *testing.T) {
				full := d.m.Predict(tc.history, nil)
				cand, col := tc.cand, []int32(nil)
				if cand != nil {
					col = make([]int32, v)
					for i := range col {
						col[i] = -1
					}
					for c, id := range cand {
						col[id] = int32(c)
					}
				} else {
					for id := range v {
						cand = append(cand, int64(id))
					}
				}
				var sum float64
				for _, id := range cand {
					sum += float64(full[id])
				}
				q := make([]float32, len(cand))
				if tc.cand == nil {
					d.soft(tc.history, 0, nil, nil, q)
				} else {
					d.soft(tc.history, 0, tc.cand, col, q)
				}
				for c, id := range cand {
					if want := float64(full[id]) / sum; math.Abs(float64(q[c])-want) > 1e-6 {
						t.Errorf("page %d: teacher %v, n-gram renormalized %v", id, q[c], want)
					}
				}
			})
		}
	}
}

// TestSubtractTarget checks the gradient row p - y for the observed page
// alone and for a mixed target.
func TestSubtractTarget(t *testing.T) {
	d := newDistiller([][]int64{{2, 3, 2, 4}, {2, 3}}, 5, 2, 0.5, 0.25)
	history := []int64{2}
	q := make([]float32, 5)
	d.soft(history, 3, nil, nil, q)
	for _, tc := range []struct {
		name string
		d    *distiller
		want func(c int, p float32) float32
	}{
		{"no teacher", nil, func(c int, p float32) float32 { return p - float32(b2f(c == 3)) }},
		{"teacher weight 0.25", d, func(c int, p float32) float32 { return p - 0.75*float32(b2f(c == 3)) - 0.25*q[c] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := []float32{0, 0.1, 0.2, 0.3, 0.4}
			row := append([]float32(nil), p...)
			loss := tc.d.subtractTarget(row, 3, history, 3, nil, nil, make([]float32, 5), false)
			if math.Abs(loss+math.Log(0.3)) > 1e-6 {
				t.Errorf("loss %v, want -log 0.3 (the observed page's cross-entropy)", loss)
			}
			var sum float32
			for c := range row {
				sum += row[c]
				if w := tc.want(c, p[c]); math.Abs(float64(row[c]-w)) > 1e-6 {
					t.Errorf("gradient[%d] = %v, want %v", c, row[c], w)
				}
			}
			if math.Abs(float64(sum)) > 1e-6 {
				t.Errorf("gradient sums to %v, want 0 (both distributions sum to 1)", sum)
			}
		})
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// TestDistillerLeavesOccurrenceOut checks that the teacher's distribution
// at an occurrence it was fitted on equals that of a teacher fitted
// without the occurrence's last page.
func TestDistillerLeavesOccurrenceOut(t *testing.T) {
	const v = 9
	seqs := [][]int64{{2, 3, 4, 5, 6}, {2, 3, 4, 7}, {3, 4, 5, 8}, {8, 2, 3, 4, 5}, {6, 1, 2}, {7, 7, 2}}
	for _, tc := range []struct {
		history []int64
		next    int64
	}{{[]int64{2, 3, 4}, 5}, {[]int64{2, 3, 4}, 7}, {[]int64{7}, 7}, {[]int64{6, 1}, 2}, {[]int64{3, 4, 5, 8}, 2}, {[]int64{5}, 6}} {
		t.Run(fmt.Sprintf("%v then %d", tc.history, tc.next), func(t *testing.T) {
			with := newDistiller(append(seqs[:len(seqs):len(seqs)], append(tc.history[:len(tc.history):len(tc.history)], tc.next)), v, 5, 0.6, 0.5)
			without := newDistiller(append(seqs[:len(seqs):len(seqs)], tc.history), v, 5, 0.6, 0.5)
			got, want := make([]float32, v), make([]float32, v)
			with.soft(tc.history, tc.next, nil, nil, got)
			without.soft(tc.history, 0, nil, nil, want)
			if !closeTo(got, want, 1e-6) {
				t.Errorf("left out %v, fitted without it %v", got, want)
			}
		})
	}
}

// TestRunDistillsTunedNGram checks that the pipeline's GRU learns from the
// n-gram with the setting tuned on validation, with the default weight
// when none is given and none when the weight is 0.
func TestRunDistillsTunedNGram(t *testing.T) {
	sessions := synthSessions(200, 11)
	for _, tc := range []struct {
		name    string
		distill *float64
		want    float64
	}{{"default weight", nil, defaultDistill}, {"weight 0", new(0.0), 0}, {"weight 0.3", new(0.3), 0.3}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			rep, _, err := Run(ctx, nil, "synthetic", sessions, Config{Vocab: VocabConfig{MinCount: 1},
				GRU: GRUConfig{Embedding: 4, Hidden: 8, Epochs: 1, Distill: tc.distill}})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			ng := rep.Result(ModelNGram).Params
			wantOrder, wantDiscount := int(ng["order"]), ng["discount"]
			if tc.want == 0 {
				wantOrder, wantDiscount = 0, 0
			}
			if g := rep.GRU; g.Distill != tc.want || g.TeacherOrder != wantOrder || g.TeacherDiscount != wantDiscount {
				t.Errorf("gru distill %v from order %d discount %v, want %v from order %d discount %v (ngram %v)",
					g.Distill, g.TeacherOrder, g.TeacherDiscount, tc.want, wantOrder, wantDiscount, ng)
			}
			if got := strings.Contains(rep.GRU.Summary(), "n-gram teacher"); got != (tc.want > 0) {
				t.Errorf("summary %q names a teacher: %v, want %v", rep.GRU.Summary(), got, tc.want > 0)
			}
			// The training settings are in the report.
			if g := rep.GRU; g.LearningRate != 0.005 || g.LRDecay != 0.7 || g.BatchSize != 64 || g.SampleExponent != 0.75 || g.Tied {
				t.Errorf("gru settings in the report %+v, want the defaults (0.005, 0.7, 64, 0.75, untied)", g)
			}
			if !strings.Contains(rep.GRU.Summary(), "learning rate 0.005") {
				t.Errorf("summary %q does not name the learning rate", rep.GRU.Summary())
			}
		})
	}
}
