package model

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"
)

// hiddenStates runs the clicks (a new session where fresh) through the
// step form and returns the hidden vector the output layer reads at each.
func hiddenStates(ctx context.Context, t *testing.T, b *Bundle, pages []int64, fresh []bool) [][]float32 {
	t.Helper()
	hd := b.stepHead
	var state []float32
	var xs [][]float32
	for i, p := range pages {
		if fresh[i] {
			state = state[:0]
		}
		var err error
		if state, err = b.stepState(ctx, p, state); err != nil {
			t.Fatal(err)
		}
		ex := hd.pool.Get().(*exec)
		if err := b.runStep(ctx, hd.trunk, ex, p, state); err != nil {
			t.Fatal(err)
		}
		xs = append(xs, slices.Clone(ex.cur[hd.hidden].f))
		copy(state, ex.cur[b.stepStateOut].f)
		hd.pool.Put(ex)
	}
	return xs
}

// clusterMasses returns, for the hidden vector x, each cluster's exact
// share of the normaliser (float32 logits of all its rows), its estimated
// share and the relative error the estimate is given (topK's step 1), all
// relative to one common factor.
func clusterMasses(ix *clusterIndex, x []float32) (exact, est, unc []float64) {
	nc := ix.clusters()
	s := ix.scratch.Get().(*clusterScratch)
	defer ix.scratch.Put(s)
	copy(s.xf, x)
	gemvI16(2*nc, ix.h8, ix.dirs, ix.dirScale, s.xf, s.dots)
	var xx float32
	for _, v := range x {
		xx += v * v
	}
	logits := make([]float32, ix.v)
	gemv(ix.v, ix.h, ix.w, ix.h, x, logits)
	top := math.Inf(-1)
	for c := range nc {
		p2 := s.dots[2*c+1] * s.dots[2*c+1]
		q := ix.lam[c]*p2 + ix.spread[c]*(xx-p2)
		e := float64(s.dots[2*c] + ix.logMass[c] + q)
		top = max(top, e)
		est = append(est, e)
		unc = append(unc, ix.uncBase+ix.uncSpread*2*float64(q))
	}
	exact = make([]float64, nc)
	for c := range nc {
		est[c] = math.Exp(est[c] - top)
		for j := ix.start[c]; j < ix.start[c+1]; j++ {
			exact[c] += math.Exp(float64(logits[ix.page[j]]+ix.bias[j]) - top)
		}
	}
	return exact, est, unc
}

// TestClusterEstimateError checks the error model the clustered scorer's
// stopping rule rests on, on TestTopKAgreement's model: for the clusters
// left after scoring the likeliest ones until the estimate of the rest is
// half, 30%, 10% or 3% of the estimated normaliser, the estimate of their
// total mass must be within uncZ standard deviations (√Σ(u·e)², the
// clusters' errors taken as independent) of their exact total for 99% of
// these cuts, and for all of them within the uncZ·1e-3/probTol standard
// deviations at which a reported probability could be off by more than
// 1e-3.
func TestClusterEstimateError(t *testing.T) {
	const vocab, hidden, clicks = 100_000, 128, 200
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b := topicBundle(t, vocab, hidden)
	ix := b.index
	if ix == nil {
		t.Fatalf("no clustered scorer at vocabulary %d", vocab)
	}
	pages, fresh := sessionClicks(vocab, clicks, 6)
	var worst float64 // largest |error| in standard deviations
	cuts, over := 0, 0
	limit := ix.uncZ * 1e-3 / ix.probTol
	var sumLog2 float64
	var nLog int
	for i, x := range hiddenStates(ctx, t, b, pages, fresh) {
		exact, est, unc := clusterMasses(ix, x)
		var total float64
		order := make([]int, len(est))
		for c := range order {
			order[c] = c
			total += est[c]
		}
		slices.SortFunc(order, func(a, b int) int { return cmpDesc(est[a], est[b]) })
		for c := range est {
			if est[c] > 1e-4*total {
				l := math.Log(exact[c] / est[c])
				sumLog2 += l * l
				nLog++
			}
		}
		for _, frac := range []float64{0.5, 0.3, 0.1, 0.03} {
			var restExact, restEst, restVar, cum float64
			for _, c := range order {
				if cum >= (1-frac)*total {
					restExact += exact[c]
					restEst += est[c]
					restVar += unc[c] * unc[c] * est[c] * est[c]
				}
				cum += est[c]
			}
			if restVar == 0 {
				continue
			}
			z := math.Abs(restExact-restEst) / math.Sqrt(restVar)
			worst = max(worst, z)
			cuts++
			if z > ix.uncZ {
				over++
			}
			if z > limit {
				t.Errorf("click %d, rest %.0f%% of the estimate: exact %.4g, estimate %.4g, off by %.2f standard deviations, want at most %.2f", i, 100*frac, restExact, restEst, z, limit)
			}
		}
	}
	t.Logf("root mean square of log(exact/estimate) per cluster %.3f; rest off by more than %g standard deviations at %d of %d cuts, at most by %.2f", math.Sqrt(sumLog2/float64(nLog)), ix.uncZ, over, cuts, worst)
	if over*100 > cuts {
		t.Errorf("rest off by more than %g standard deviations at %d of %d cuts, want at most 1%%", ix.uncZ, over, cuts)
	}
}

// cmpDesc orders larger values first.
func cmpDesc(a, b float64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}
