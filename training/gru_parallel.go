package training

import (
	"math/rand/v2"
	"sync"
)

// gradWorker holds one goroutine's share of a batch's gradient.
type gradWorker struct {
	grad sparseGrad
	work *gruWork
	loss float64 // mean over the worker's positions
	n    int     // predicting positions in the worker's rows
}

// newGradWorkers makes n workers for p's sizes, each with its own dropout
// stream drawn from rng.
func newGradWorkers(p *gruParams, n int, rng *rand.Rand, dropEmb, dropHid float64) []*gradWorker {
	ws := make([]*gradWorker, n)
	for k := range ws {
		ws[k] = &gradWorker{
			grad: newSparseGrad(p),
			work: &gruWork{rng: rand.New(rand.NewPCG(rng.Uint64(), uint64(k))), dropEmb: float32(dropEmb), dropHid: float32(dropHid)},
		}
	}
	return ws
}

// batchGrad computes the mean loss over the predicting positions of batch
// b and its gradient, which it leaves in ws[0].grad with the rows it
// reaches. The rows of b are
// split between the workers, which run in parallel; the result is the same
// as one pass over the whole batch, up to rounding. head is the sampled
// softmax's output layer for b, nil for the full softmax. It returns the
// loss and the number of positions.
func (p *gruParams) batchGrad(b gruBatch, ws []*gradWorker, head *sampledHead) (float64, int) {
	parts := max(1, min(len(ws), b.B))
	run := func(k int) {
		lo, hi := k*b.B/parts, (k+1)*b.B/parts
		sub := gruBatch{B: hi - lo, S: b.S, ids: b.ids[lo*b.S : hi*b.S]}
		w := ws[k]
		w.grad.zero()
		w.grad.touch(sub, head)
		if head != nil {
			w.loss, w.n = p.lossAndGradHead(sub, &w.grad.gruParams, w.work, head)
		} else {
			w.loss, w.n = p.lossAndGrad(sub, &w.grad.gruParams, w.work)
		}
	}
	var wg sync.WaitGroup
	for k := 1; k < parts; k++ {
		wg.Go(func() { run(k) })
	}
	run(0)
	wg.Wait()
	return combineGrads(ws[:parts])
}

// combineGrads weights each worker's mean gradient by its share of the
// positions and sums them into ws[0].grad, visiting only the rows each
// worker's batch reached; it returns the mean loss and the number of
// positions.
func combineGrads(ws []*gradWorker) (float64, int) {
	n := 0
	for _, w := range ws {
		n += w.n
	}
	if n == 0 || len(ws) == 1 {
		return ws[0].loss, n
	}
	var loss float64
	for k, w := range ws {
		loss += w.loss * float64(w.n)
		share := float32(float64(w.n) / float64(n))
		switch {
		case k == 0:
			w.grad.scale(share)
		case w.n > 0:
			ws[0].grad.addScaled(&w.grad, share)
		}
	}
	return loss / float64(n), n
}
