package training

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestBatchGradSplitMatchesWhole checks that splitting a batch's rows
// between workers gives the loss and gradient of one pass over the whole
// batch, for the full and the sampled softmax, with and without a teacher.
func TestBatchGradSplitMatchesWhole(t *testing.T) {
	const v, d, h = 11, 3, 5
	rng := rand.New(rand.NewPCG(5, 6))
	rows := randomRows(rng, 7, 2, 6, v)
	batch := packBatch(rows)
	sampler := newNegSampler(rows, v)
	p := tinyGRU(t, v, d, h)
	cand := sampler.draw(rng, 4, batch)
	teacher := newDistiller(rows, v, 3, 0.7, 0.6)
	for _, kd := range []*distiller{nil, teacher} {
		for _, sampled := range []bool{false, true} {
			for _, workers := range []int{1, 2, 3, 7, 9} {
				t.Run(fmt.Sprintf("teacher=%v/sampled=%v/workers=%d", kd != nil, sampled, workers), func(t *testing.T) {
					testSplitBatch(t, p, batch, sampler, cand, kd, sampled, workers, rng)
				})
			}
		}
	}
}

// testSplitBatch compares batchGrad over workers with one pass.
func testSplitBatch(t *testing.T, p gruParams, batch gruBatch, sampler *negSampler, cand []int64, kd *distiller, sampled bool, workers int, rng *rand.Rand) {
	t.Helper()
	var head *sampledHead
	whole := newGRUParams(p.V, p.D, p.H)
	var wantLoss float64
	var wantN int
	if sampled {
		head = p.newSampledHead(batch, sampler, 4, cand)
		wantLoss, wantN = p.lossAndGradHead(batch, &whole, &gruWork{kd: kd}, head)
	} else {
		wantLoss, wantN = p.lossAndGrad(batch, &whole, &gruWork{kd: kd})
	}
	ws := newGradWorkers(&p, workers, rng, 0, 0)
	for _, w := range ws {
		w.work.kd = kd
	}
	loss, n := p.batchGrad(batch, ws, head)
	if n != wantN || math.Abs(loss-wantLoss) > 1e-5 {
		t.Fatalf("split batch: loss %v over %d positions, whole batch %v over %d", loss, n, wantLoss, wantN)
	}
	got := ws[0].grad.tensors()
	for k, want := range whole.tensors() {
		for i := range want {
			if math.Abs(float64(got[k][i]-want[i])) > 1e-5 {
				t.Fatalf("tensor %d [%d]: split gradient %v, whole %v", k, i, got[k][i], want[i])
			}
		}
	}
}

// randomRows returns n rows of minLen to maxLen pages drawn uniformly from
// 2..v-1.
func randomRows(rng *rand.Rand, n, minLen, maxLen, v int) [][]int64 {
	rows := make([][]int64, n)
	for i := range rows {
		rows[i] = make([]int64, minLen+rng.IntN(maxLen-minLen+1))
		for j := range rows[i] {
			rows[i][j] = 2 + rng.Int64N(int64(v-2))
		}
	}
	return rows
}
