package model

import (
	"context"
	"fmt"
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
	var xx float32
	for _, v := range x {
		xx += v * v
	}
	xq, inv := ix.quantizeX(x, s)
	ix.estimate(s, xq, inv, xx)
	logits := make([]float32, ix.v)
	gemv(ix.v, ix.h, ix.w, ix.h, x, logits)
	top := math.Inf(-1)
	for c := range nc {
		top = max(top, float64(s.est[c]))
	}
	for c := range nc {
		est = append(est, float64(s.est[c]))
		unc = append(unc, float64(s.unc[c]))
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

// TestEstimate checks step 1 of the clustered scorer (the int16 and int8
// products,
// then the estimates and their errors, in blocks of eight and the rest)
// against the formula in float64, for cluster counts with and without a
// remainder.
func TestEstimate(t *testing.T) {
	const h = 32
	for _, nc := range []int{8, 13, 24} {
		t.Run(fmt.Sprint(nc), func(t *testing.T) {
			w := lcgWeights(2*nc*h+3*nc+h, uint64(nc), 1)
			ix := &clusterIndex{
				h: h, hp: h, uncBase: 0.015, uncSpread: 0.055,
				means:     make([]int16, nc*h),
				meanScale: make([]float32, nc),
				dirs:      make([]int8, nc*h),
				dirScale:  make([]float32, nc),
				lam:       make([]float32, nc),
				spread:    make([]float32, nc),
				logMass:   w[2*nc*h+2*nc : 2*nc*h+3*nc],
			}
			for c := range nc {
				ix.meanScale[c] = quantizeRowTo(ix.means[c*h:(c+1)*h], w[c*h:(c+1)*h], meanTop(h))
				ix.dirScale[c] = quantizeRow(ix.dirs[c*h:(c+1)*h], w[(nc+c)*h:(nc+c+1)*h])
			}
			for c := range nc {
				ix.lam[c] = w[2*nc*h+c] * w[2*nc*h+c]
				ix.spread[c] = w[2*nc*h+nc+c] * w[2*nc*h+nc+c] / 10
			}
			x := w[len(w)-h:]
			var xx float32
			for _, v := range x {
				xx += v * v
			}
			s := &clusterScratch{est: make([]float32, nc), unc: make([]float32, nc), dots: make([]float32, 2*nc), xq: make([]int16, h), acc: make([]int32, 4)}
			xq, inv := ix.quantizeX(x, s)
			top := ix.estimate(s, xq, inv, xx)
			wantTop := math.Inf(-1)
			for c := range nc {
				var mh, p float64
				for j := range h {
					mh += float64(ix.means[c*h+j]) * float64(ix.meanScale[c]) * float64(x[j])
					p += float64(ix.dirs[c*h+j]) * float64(ix.dirScale[c]) * float64(x[j])
				}
				q := float64(ix.lam[c])*p*p + float64(ix.spread[c])*(float64(xx)-p*p)
				est := mh + float64(ix.logMass[c]) + q
				unc := ix.uncBase + 2*ix.uncSpread*q
				wantTop = max(wantTop, est)
				if d := math.Abs(float64(s.est[c]) - est); d > 1e-4*(1+math.Abs(est)) {
					t.Errorf("cluster %d: estimate %v, want %v", c, s.est[c], est)
				}
				if d := math.Abs(float64(s.unc[c]) - unc); d > 1e-4*(1+unc) {
					t.Errorf("cluster %d: error %v, want %v", c, s.unc[c], unc)
				}
			}
			if d := math.Abs(float64(top) - wantTop); d > 1e-3 {
				t.Errorf("largest estimate %v, want %v", top, wantTop)
			}
		})
	}
}

// TestSplitHeads checks that each cluster of at least 8 rows gives its
// rows of the largest biases (a quarter, ties to the lower row) to a new
// cluster, and that smaller clusters and bundles without biases stay.
func TestSplitHeads(t *testing.T) {
	bias := []float32{0, 5, 1, 4, 2, 3, 9, 7, 3, -1, 6, 8, 2}
	tests := []struct {
		name   string
		bias   []float32
		assign []int32
		want   []int32
		nc     int
	}{
		{"one cluster of 12, one of 1", bias, []int32{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, []int32{0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 2, 1}, 3},
		{"two clusters of 8 and 5", bias, []int32{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, []int32{0, 0, 0, 0, 0, 0, 2, 2, 1, 1, 1, 1, 1}, 3},
		{"ties to the lower row", make([]float32, 13), make([]int32, 13), []int32{1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 2},
		{"no biases", nil, make([]int32, 13), make([]int32, 13), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assign := slices.Clone(tt.assign)
			nc := 0
			for _, c := range assign {
				nc = max(nc, int(c)+1)
			}
			if got := splitHeads(tt.bias, assign, nc); got != tt.nc || !slices.Equal(assign, tt.want) {
				t.Errorf("splitHeads = %d clusters, %v; want %d, %v", got, assign, tt.nc, tt.want)
			}
		})
	}
}

// TestAppendAbove checks the keys of the clusters whose estimates lie in
// [lo, hi) against a plain loop, for counts with and without a remainder
// past the kernel's blocks of eight, with bounds equal to some estimates
// and a NaN among them, appended after keys already there.
func TestAppendAbove(t *testing.T) {
	for _, n := range []int{0, 5, 8, 13, 64, 1095} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			est := lcgWeights(n, uint64(n)+1, 1)
			for i := range est {
				est[i] = est[i] * est[i] // shares are not negative
			}
			if n > 3 {
				est[3] = float32(math.NaN())
			}
			lo, hi := float32(0.1), float32(0.6)
			if n > 5 {
				est[1], est[5] = lo, hi
			}
			var want []uint64
			want = append(want, 7)
			for c, e := range est {
				if e >= lo && e < hi {
					want = append(want, clusterKey(e, c))
				}
			}
			got := appendAbove(make([]uint64, 1, n+1), est, lo, hi)
			got[0] = 7
			if !slices.Equal(got, want) {
				t.Errorf("appendAbove = %v, want %v", got, want)
			}
			if n > 5 && !slices.Contains(got, clusterKey(lo, 1)) {
				t.Errorf("estimate equal to lo left out")
			}
		})
	}
}
