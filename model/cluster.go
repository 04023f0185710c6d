package model

import (
	"math"
	"slices"
	"sync"
)

// Clustered scoring of a large output layer.
//
// Exact scoring computes every logit w_i·h + b_i of a V-row output layer and
// normalises them: at V = 100,000 and H = 128 that is 12.8 million
// multiply-adds and 51 MB of weights per click. The clustered scorer groups
// the rows by k-means at load (then splits, by 2-means, clusters whose rows
// spread far more than the median cluster's, then moves each cluster's
// most popular quarter, by bias, to a cluster of its own), keeps per
// cluster the log of
// its bias mass log Σ exp(b_i), the bias-weighted mean row μ and the
// spread of its rows around μ, and per click:
//
//  1. estimates every cluster's part of the softmax normaliser,
//     log Σ_i exp(w_i·h + b_i) ≈ log Σ exp(b_i) + μ·h + ½λ(v·h)² +
//     ½σ²(‖h‖² − (v·h)²), the second-order term of exp(δ·h) with the
//     deviations δ of the rows from μ spread λ along their main direction v
//     (by power iteration at load) and σ² per dimension across it, and
//     the estimate's relative error u = uncBase + uncSpread·s², where s² =
//     λ(v·h)² + σ²(‖h‖² − (v·h)²) is the variance of the deviations'
//     logits: the expansion is worse the wider they spread;
//  2. scores the rows of the clusters, in int8 (each row's deviation from
//     its cluster's mean quantized at load with one scale per row, h to
//     int16, μ·h from step 1 added back), largest estimate first, until no
//     cluster left could hold a hint (its estimated share is below
//     1/hintMargin of the threshold and of the k-th hint so far) and the
//     error of the estimate of the clusters left would move no hint's
//     probability by more than probTol. That error is taken as uncZ
//     standard deviations of a sum of independent errors, uncZ·√Σ(u·e)²
//     over the clusters left (e their estimates): the clusters' errors
//     are measured to be about independent, so a rest spread over many
//     clusters is known far better than each of them;
//  3. scores the clusterRescore (or k+clusterRescoreExtra) best rows again
//     in float32, takes the top k and normalises them by the mass of the
//     scored clusters plus the estimate of the rest.
//
// Both the estimate's error model and the hints it could miss are
// measured, not proven: see TestTopKAgreement and TestClusterEstimateError.
// The work per click follows how spread the next-page distribution is: a
// peaked one is settled by a few clusters, a flat one scores most of them
// (and is then exact).

const (
	// clusterMinVocab is the smallest vocabulary that gets a clustered
	// scorer; below it exact scoring is cheap enough.
	clusterMinVocab = 16384
	// clusterSize is the mean number of rows per cluster of k-means
	// (before splitWide and splitHeads: about 90 rows per cluster at the
	// end on TestTopKAgreement's model).
	clusterSize = 256
	// clusterHeadShare is the share of each cluster's rows, those of the
	// largest biases, that splitHeads moves to a cluster of their own.
	clusterHeadShare = 0.25
	// clusterHintMargin: a cluster is scored when its estimated share of
	// the normaliser could hold a hint were the estimate 1.2 times too low.
	clusterHintMargin = 1.2
	// clusterUncBase and clusterUncSpread give the relative error of a
	// cluster's normaliser estimate, uncBase + uncSpread·s² (s² the
	// variance of its rows' deviation logits, step 1 above), and
	// clusterUncZ how many standard deviations of the rest's error the
	// stopping rule allows for. Fitted on TestClusterEstimateError's
	// model with the clusters of 128 rows this scorer had before
	// splitHeads (the root mean square of log(actual/estimate) was 0.024
	// at s² below 0.25, 0.038 from 0.25 to 0.75, 0.061 from 0.5 to 1.25,
	// 0.11 above; the rest's error within 3 standard deviations for 99%
	// of cuts). With the clusters it has now, that test finds the rest's
	// error beyond 5 standard deviations at 1 of 800 cuts (5.3 at most);
	// a reported probability moves by more than 1e-3 only beyond
	// uncZ·1e-3/probTol = 8.3.
	clusterUncBase   = 0.015
	clusterUncSpread = 0.055
	clusterUncZ      = 5
	// clusterProbTol is the largest change of a reported probability the
	// estimate's error may cause.
	clusterProbTol = 6e-4
	// clusterNeglect: clusters whose estimates, all together wrong by
	// this share, would move no probability by more than clusterProbTol
	// are never scored (they stay in the estimate of the rest).
	clusterNeglect = 0.03
	// clusterFirstShare: clusters whose estimated share of the normaliser
	// is at least this go on topK's heap first; the smaller ones are
	// ordered only when those run out.
	clusterFirstShare = 1e-3
	// clusterRescore and clusterRescoreExtra: the candidates, by
	// quantized logit, scored again in float32 are the best
	// max(clusterRescore, k+clusterRescoreExtra) rows. Int8 rows put
	// logits off by a few hundredths, which matters for the order of
	// near ties at the k-th hint and for the mass of the likeliest pages;
	// TestTopKAgreement's worst probability error is the same with 8 as
	// with 16, and with k alone 1% of its clicks order the k-th hint
	// wrongly.
	clusterRescore      = 8
	clusterRescoreExtra = 4
	// kmeansIters and kmeansSample: Lloyd iterations on a sample of rows,
	// then one assignment of every row.
	kmeansIters  = 6
	kmeansSample = 64
)

// clusterIndex is the clustered scorer of one output layer. It is immutable
// after newClusterIndex and safe for concurrent use.
type clusterIndex struct {
	h, v int
	// Stopping rule of topK (see enough): clusterHintMargin,
	// clusterUncBase, clusterUncSpread, clusterUncZ, clusterProbTol.
	hintMargin, uncBase, uncSpread, uncZ, probTol float64
	hp                                            int       // H rounded up to 16
	extraBytes                                    int64     // of w, when it is a copy
	w                                             []float32 // [V, H] the rows in vocabulary order (the graph's own when it can)
	q                                             []int8    // [V, hp] the rows in cluster order, quantized
	qscale                                        []float32 // per row of q: the value of 1
	bias                                          []float32 // [V] in cluster order
	vbias                                         []float32 // [V] in vocabulary order (the graph's own), or nil
	page                                          []int32   // cluster order -> vocabulary index
	start                                         []int32   // cluster c holds rows start[c] to start[c+1]
	// means holds the C clusters' bias-weighted mean rows μ, hp int16
	// each (within ±meanTop(hp)) with one scale (meanScale), rounded so:
	// the rows' deviations in
	// q are from the rounded μ, so that μ·h read from here is their
	// logits' offset. dirs holds their main directions v of the
	// deviations, hp int8 each with one scale (dirScale): v·h only weighs
	// the spread along v.
	means     []int16
	meanScale []float32
	dirs      []int8
	dirScale  []float32
	logMass   []float32 // log Σ exp(b_i) over the cluster
	spread    []float32 // ½ · mean squared deviation per dimension, off dir
	lam       []float32 // ½ · variance along dir
	scratch   sync.Pool // *clusterScratch
}

// clusterScratch is the per-call working memory of a clustered scoring.
type clusterScratch struct {
	est   []float32 // per cluster: estimated log mass, then exp(est - max)
	unc   []float32 // per cluster: relative error of est
	dots  []float32 // μ·x of each cluster (the offset of its rows' logits), then v·x
	logit []float32 // logits of one cluster's rows
	ex    []float32 // exp of one cluster's logits
	order []uint64  // clusters to consider (clusterKey), a max-heap
	cands []scored  // top candidates so far, by quantized logit
	xq    []int16   // the hidden vector, quantized
	acc   []int32   // int32 dot products of one cluster's rows
	one   [1]float32
}

// scored is a row's logit and vocabulary index.
type scored struct {
	logit float32
	pos   int32 // row in cluster order
}

// newClusterIndex clusters the rows of w ([v, h], bias b or nil). It
// returns nil when the vocabulary is below clusterMinVocab.
func newClusterIndex(w, b []float32, v, h int) *clusterIndex {
	if v < clusterMinVocab || h == 0 {
		return nil
	}
	nc := max(1, v/clusterSize)
	assign := kmeans(w, v, h, nc)
	nc = splitWide(w, h, assign, nc)
	nc = splitHeads(b, assign, nc)
	count := make([]int32, nc)
	for _, c := range assign {
		count[c]++
	}
	// Drop empty clusters, renumbering the others.
	renum := make([]int32, nc)
	k := int32(0)
	for c, n := range count {
		renum[c] = k
		if n > 0 {
			count[k] = n
			k++
		}
	}
	nc = int(k)
	ix := &clusterIndex{
		h: h, v: v,
		hintMargin: clusterHintMargin, probTol: clusterProbTol,
		uncBase: clusterUncBase, uncSpread: clusterUncSpread, uncZ: clusterUncZ,
		hp:      (h + 15) &^ 15,
		w:       w,
		bias:    make([]float32, v),
		vbias:   b,
		page:    make([]int32, v),
		start:   make([]int32, nc+1),
		logMass: make([]float32, nc),
		spread:  make([]float32, nc),
		lam:     make([]float32, nc),
	}
	for c := range nc {
		ix.start[c+1] = ix.start[c] + count[c]
	}
	next := slices.Clone(ix.start[:nc])
	for i, c := range assign {
		c = renum[c]
		j := next[c]
		next[c]++
		ix.page[j] = int32(i)
		if b != nil {
			ix.bias[j] = b[i]
		}
	}
	mu := make([]float64, h)
	dv := make([]float64, h)
	mean := make([]float32, nc*h) // then rounded as stored in means
	dir := make([]float32, h)
	ix.means = make([]int16, nc*ix.hp)
	ix.meanScale = make([]float32, nc)
	ix.dirs = make([]int8, nc*ix.hp)
	ix.dirScale = make([]float32, nc)
	for c := range nc {
		lo, hi := int(ix.start[c]), int(ix.start[c+1])
		// Bias weights relative to the cluster's largest bias.
		bmax := ix.bias[lo]
		for j := lo; j < hi; j++ {
			bmax = max(bmax, ix.bias[j])
		}
		clear(mu)
		var mass float64
		for j := lo; j < hi; j++ {
			wt := math.Exp(float64(ix.bias[j] - bmax))
			mass += wt
			for d, x := range ix.row(j) {
				mu[d] += wt * float64(x)
			}
		}
		var dev float64
		for j := lo; j < hi; j++ {
			wt := math.Exp(float64(ix.bias[j] - bmax))
			for d, x := range ix.row(j) {
				e := float64(x) - mu[d]/mass
				dev += wt * e * e
			}
		}
		for d := range h {
			mean[c*h+d] = float32(mu[d] / mass)
		}
		ix.logMass[c] = bmax + float32(math.Log(mass))
		// The deviations' main direction v and its variance λ, by power
		// iteration on their weighted covariance; the rest isotropic.
		mc := mean[c*h : (c+1)*h]
		lam := ix.principal(lo, hi, bmax, mass, mc, dir, dv)
		ix.lam[c] = float32(0.5 * lam)
		ix.spread[c] = float32(0.5 * max(dev/mass-lam, 0) / float64(max(h-1, 1)))
		m16 := ix.means[c*ix.hp : c*ix.hp+h]
		ix.meanScale[c] = quantizeRowTo(m16, mc, meanTop(ix.hp))
		ix.dirScale[c] = quantizeRow(ix.dirs[c*ix.hp:c*ix.hp+h], dir)
		for d, q := range m16 {
			mc[d] = float32(q) * ix.meanScale[c]
		}
	}
	ix.quantize(mean)
	maxSize := 0
	for c := range nc {
		maxSize = max(maxSize, int(ix.start[c+1]-ix.start[c]))
	}
	ix.scratch.New = func() any {
		return &clusterScratch{
			est:   make([]float32, nc),
			unc:   make([]float32, nc),
			dots:  make([]float32, 2*nc),
			order: make([]uint64, 0, nc),
			xq:    make([]int16, ix.hp),
			acc:   make([]int32, maxSize),
			cands: make([]scored, 0, clusterRescore+1),
		}
	}
	return ix
}

// principal returns the largest eigenvalue of the weighted covariance of
// rows lo to hi around mean (weights exp(bias - bmax), summing to mass)
// and leaves its unit eigenvector in v; dv is scratch of length H.
func (ix *clusterIndex) principal(lo, hi int, bmax float32, mass float64, mean, v []float32, dv []float64) float64 {
	h := ix.h
	for d := range v {
		v[d] = float32(1 / math.Sqrt(float64(h)))
	}
	v[0] += 0.5 // not orthogonal to the main direction by symmetry
	var lam float64
	for range 12 {
		clear(dv)
		for j := lo; j < hi; j++ {
			wt := math.Exp(float64(ix.bias[j] - bmax))
			var p float64
			row := ix.row(j)
			for d, x := range row {
				p += float64(x-mean[d]) * float64(v[d])
			}
			for d, x := range row {
				dv[d] += wt * p * float64(x-mean[d])
			}
		}
		var n float64
		for _, x := range dv {
			n += x * x
		}
		n = math.Sqrt(n)
		if n == 0 {
			return 0
		}
		var vn float64
		for _, x := range v {
			vn += float64(x) * float64(x)
		}
		lam = n / mass / math.Sqrt(vn)
		for d := range v {
			v[d] = float32(dv[d] / n)
		}
	}
	return lam
}

// row returns row j (in cluster order) in float32.
func (ix *clusterIndex) row(j int) []float32 {
	i := int(ix.page[j])
	return ix.w[i*ix.h : (i+1)*ix.h]
}

// quantize fills q and qscale: each row's deviation from its cluster's
// mean (means, [C, H]), scaled so that its largest magnitude is 127, rounded to int8,
// zero-padded to hp. Rows lie close to their cluster's mean, so the
// deviations quantize far finer than the rows would.
func (ix *clusterIndex) quantize(means []float32) {
	ix.q = make([]int8, ix.v*ix.hp)
	ix.qscale = make([]float32, ix.v)
	dev := make([]float32, ix.h)
	for c := range ix.clusters() {
		mean := means[c*ix.h : (c+1)*ix.h]
		for j := int(ix.start[c]); j < int(ix.start[c+1]); j++ {
			for d, x := range ix.row(j) {
				dev[d] = x - mean[d]
			}
			ix.qscale[j] = quantizeRow(ix.q[j*ix.hp:j*ix.hp+ix.h], dev)
		}
	}
}

// kmeans assigns each of the v rows of w to one of nc clusters by Lloyd's
// algorithm (squared Euclidean distance), started from evenly spaced rows
// and iterated on an evenly spaced sample of about kmeansSample rows per
// cluster. It is deterministic.
func kmeans(w []float32, v, h, nc int) []int32 {
	cent := make([]float32, nc*h)
	for c := range nc {
		i := int(int64(c) * int64(v) / int64(nc))
		copy(cent[c*h:(c+1)*h], w[i*h:(i+1)*h])
	}
	sample := make([]int, 0, min(v, nc*kmeansSample))
	for i := range cap(sample) {
		sample = append(sample, int(int64(i)*int64(v)/int64(cap(sample))))
	}
	sums := make([]float64, nc*h)
	counts := make([]int, nc)
	norms := make([]float32, nc)
	dots := make([]float32, nc)
	nearest := func(row []float32) int32 {
		gemv(nc, h, cent, h, row, dots)
		best, bd := int32(0), float32(math.Inf(1))
		for c, d := range dots {
			if dist := norms[c] - 2*d; dist < bd {
				best, bd = int32(c), dist
			}
		}
		return best
	}
	setNorms := func() {
		for c := range nc {
			var s float32
			for _, x := range cent[c*h : (c+1)*h] {
				s += x * x
			}
			norms[c] = s
		}
	}
	for range kmeansIters {
		setNorms()
		clear(sums)
		clear(counts)
		for _, i := range sample {
			row := w[i*h : (i+1)*h]
			c := int(nearest(row))
			counts[c]++
			for d, x := range row {
				sums[c*h+d] += float64(x)
			}
		}
		for c := range nc {
			if counts[c] == 0 {
				continue // keep the old centre
			}
			for d := range h {
				cent[c*h+d] = float32(sums[c*h+d] / float64(counts[c]))
			}
		}
	}
	setNorms()
	assign := make([]int32, v)
	for i := range v {
		assign[i] = nearest(w[i*h : (i+1)*h])
	}
	return assign
}

// splitWide splits, by 2-means, the clusters of assign whose rows spread
// more than splitSpread times the median cluster's (mean squared distance
// to the centre), a few passes over, so that no cluster mixes two groups of
// rows: the normaliser estimate assumes a cluster's rows lie close around
// its mean. It returns the number of clusters.
func splitWide(w []float32, h int, assign []int32, nc int) int {
	for range splitPasses {
		members := make([][]int32, nc)
		for i, c := range assign {
			members[c] = append(members[c], int32(i))
		}
		msd := make([]float64, nc)
		for c, rows := range members {
			msd[c] = spreadOf(w, h, rows, nil)
		}
		sorted := slices.Clone(msd)
		slices.Sort(sorted)
		limit := splitSpread * sorted[len(sorted)/2]
		split := false
		for c, rows := range members {
			if msd[c] <= limit || len(rows) < 4 {
				continue
			}
			half := bisect(w, h, rows)
			for _, i := range half {
				assign[i] = int32(nc)
			}
			nc++
			split = true
		}
		if !split {
			break
		}
	}
	return nc
}

const (
	splitSpread = 2.5
	splitPasses = 6
)

// spreadOf returns the mean squared distance of rows to their mean, which
// it leaves in mean when mean is not nil.
func spreadOf(w []float32, h int, rows []int32, mean []float64) float64 {
	if len(rows) == 0 {
		return 0
	}
	if mean == nil {
		mean = make([]float64, h)
	}
	clear(mean)
	for _, i := range rows {
		for d, x := range w[int(i)*h : int(i+1)*h] {
			mean[d] += float64(x)
		}
	}
	for d := range mean {
		mean[d] /= float64(len(rows))
	}
	var ss float64
	for _, i := range rows {
		for d, x := range w[int(i)*h : int(i+1)*h] {
			e := float64(x) - mean[d]
			ss += e * e
		}
	}
	return ss / float64(len(rows))
}

// bisect splits rows in two by 2-means started from the row farthest from
// their mean and the row farthest from that one, and returns the second
// group.
func bisect(w []float32, h int, rows []int32) []int32 {
	mean := make([]float64, h)
	spreadOf(w, h, rows, mean)
	dist := func(i int32, c []float64) float64 {
		var s float64
		for d, x := range w[int(i)*h : int(i+1)*h] {
			e := float64(x) - c[d]
			s += e * e
		}
		return s
	}
	far := func(c []float64) int32 {
		best, bd := rows[0], -1.0
		for _, i := range rows {
			if d := dist(i, c); d > bd {
				best, bd = i, d
			}
		}
		return best
	}
	row := func(i int32) []float64 {
		c := make([]float64, h)
		for d, x := range w[int(i)*h : int(i+1)*h] {
			c[d] = float64(x)
		}
		return c
	}
	a := row(far(mean))
	b := row(far(a))
	var ga, gb []int32
	for range 4 {
		ga, gb = ga[:0], gb[:0]
		for _, i := range rows {
			if dist(i, a) <= dist(i, b) {
				ga = append(ga, i)
			} else {
				gb = append(gb, i)
			}
		}
		if len(ga) == 0 || len(gb) == 0 {
			break
		}
		spreadOf(w, h, ga, a)
		spreadOf(w, h, gb, b)
	}
	if len(gb) == 0 {
		return rows[len(rows)/2:]
	}
	return gb
}

// bytes is the memory the index holds.
func (ix *clusterIndex) bytes() int64 {
	return ix.extraBytes + int64(len(ix.q)) + 4*int64(len(ix.qscale)+len(ix.bias)+len(ix.page)+len(ix.start)+len(ix.meanScale)+len(ix.dirScale)+len(ix.logMass)+len(ix.spread)+len(ix.lam)) + 2*int64(len(ix.means)) + int64(len(ix.dirs))
}

// clusters is the number of clusters.
func (ix *clusterIndex) clusters() int { return len(ix.logMass) }

// topK scores the hidden vector x (length H) and writes into dst the k
// pages with the highest probabilities at or above threshold, highest
// first, and returns it with the number of rows it scored exactly and the
// log of the normaliser (NaN when k <= 0: nothing is scored). It does not
// allocate in steady state.
func (ix *clusterIndex) topK(x []float32, k int, threshold float32, dst []Hint) ([]Hint, int, float64) {
	dst = dst[:0]
	if k <= 0 {
		return dst, 0, math.NaN()
	}
	s := ix.scratch.Get().(*clusterScratch)
	defer ix.scratch.Put(s)
	h, nc := ix.h, len(ix.logMass)
	var xx float32
	for _, v := range x {
		xx += v * v
	}
	// x quantized to int16 for the int16 means and directions and the
	// int8 rows.
	xq, inv := ix.quantizeX(x, s)
	est := s.est
	top := ix.estimate(s, xq, inv, xx)
	// Shares of the estimated normaliser, relative to the largest cluster.
	// Clusters below probTol/(clusterNeglect·nc) of it are never scored:
	// an error of clusterNeglect in their total moves no probability by
	// more than probTol, and none could hold a hint.
	sum := expSum(est, est, top)
	rest := float64(sum)                          // estimated mass of the clusters not scored
	restVar := float64(sumSqMul(s.unc[:nc], est)) // variance of its error
	cut := float32(ix.probTol / (clusterNeglect * float64(nc)))
	// Clusters come off a max-heap of their estimates, in two tiers: those
	// above clusterFirstShare of the estimated normaliser first, the rest
	// only if they run out. Only the few scored are ordered, and the many
	// small clusters are not even put on the heap on most clicks.
	high := max(cut, sum*clusterFirstShare)
	s.order = appendAbove(s.order[:0], est, high, float32(math.Inf(1)))
	heapInit(s.order)
	lowDone := high <= cut
	m := max(k+clusterRescoreExtra, clusterRescore)
	var mass float64 // mass of the scored clusters, relative to exp(top)
	s.cands = s.cands[:0]
	rows := 0
	for {
		if len(s.order) == 0 {
			if lowDone {
				break
			}
			lowDone = true
			s.order = appendAbove(s.order, est, cut, high)
			heapInit(s.order)
			continue
		}
		c := keyCluster(s.order[0])
		if ix.enough(s.cands, k, threshold, top, mass, rest, restVar, est[c]) {
			break
		}
		s.order = heapPop(s.order)
		rest -= float64(est[c])
		u := float64(s.unc[c] * est[c])
		restVar = max(0, restVar-u*u)
		lo, hi := int(ix.start[c]), int(ix.start[c+1])
		n := hi - lo
		rows += n
		logit := growF(&s.logit, n)
		mx := logitsI8(ix.q[lo*ix.hp:hi*ix.hp], n, ix.hp, xq, ix.qscale[lo:hi], ix.bias[lo:hi], inv, s.dots[c], logit, s.acc)
		sum := expSum(growF(&s.ex, n), logit, mx)
		mass += float64(sum) * math.Exp(float64(mx-top))
		if len(s.cands) == m && mx < s.cands[m-1].logit {
			continue
		}
		for j, l := range logit {
			if len(s.cands) < m || l >= s.cands[m-1].logit {
				s.cands = keepTop(s.cands, m, scored{logit: l, pos: int32(lo + j)})
			}
		}
	}
	// Re-score the candidates in float32 and put their exact mass in place
	// of the quantized one. Their rows are touched first, one load per
	// cache line, so that the misses overlap.
	var sink float32
	for _, c := range s.cands {
		row := ix.row(int(c.pos))
		for d := 0; d < len(row); d += 16 {
			sink += row[d]
		}
	}
	s.one[0] = sink
	for i := range s.cands {
		c := &s.cands[i]
		gemv(1, h, ix.row(int(c.pos)), h, x, s.one[:])
		l := s.one[0] + ix.bias[c.pos]
		mass += math.Exp(float64(l-top)) - math.Exp(float64(c.logit-top))
		c.logit = l
	}
	// Insertion sort of the few candidates by exact logit, ties to the
	// lower page as SelectTopK.
	for i := 1; i < len(s.cands); i++ {
		c := s.cands[i]
		j := i
		for ; j > 0; j-- {
			p := s.cands[j-1]
			if p.logit > c.logit || p.logit == c.logit && ix.page[p.pos] < ix.page[c.pos] {
				break
			}
			s.cands[j] = p
		}
		s.cands[j] = c
	}
	logZ := float64(top) + math.Log(max(mass, 0)+max(rest, 0))
	for _, sc := range s.cands[:min(k, len(s.cands))] {
		p := float32(math.Exp(float64(sc.logit) - logZ))
		if p < threshold {
			break
		}
		dst = append(dst, Hint{Page: int64(ix.page[sc.pos]), Prob: p})
	}
	return dst, rows, logZ
}

// topKWith is topK that also sets probs[i] to the probability of page
// pages[i] (probsOf), and returns the hints and the rows scored.
func (ix *clusterIndex) topKWith(x []float32, k int, threshold float32, dst []Hint, pages []int64, probs []float32) ([]Hint, int) {
	if len(pages) > 0 && k <= 0 {
		// The normaliser is needed all the same: score for a hint no page
		// can reach.
		k, threshold = 1, float32(math.Inf(1))
	}
	dst, rows, logZ := ix.topK(x, k, threshold, dst)
	if len(pages) > 0 {
		ix.probsOf(x, logZ, pages, probs)
	}
	return dst, rows
}

// probsOf sets probs[i] to the probability of page pages[i] for the
// hidden vector x, exactly in float32 against the normaliser logZ that
// topK returned for x; pages outside the vocabulary get 0.
func (ix *clusterIndex) probsOf(x []float32, logZ float64, pages []int64, probs []float32) {
	s := ix.scratch.Get().(*clusterScratch)
	defer ix.scratch.Put(s)
	for i, p := range pages {
		if p < 0 || p >= int64(ix.v) {
			probs[i] = 0
			continue
		}
		gemv(1, ix.h, ix.w[int(p)*ix.h:int(p+1)*ix.h], ix.h, x, s.one[:])
		l := float64(s.one[0])
		if ix.vbias != nil {
			l += float64(ix.vbias[p])
		}
		probs[i] = float32(math.Exp(l - logZ))
	}
}

// estimate is step 1 of topK for the hidden vector xq·inv (xx its
// squared norm): it sets s.dots, the estimated log mass of every cluster
// (s.est) and its relative error (s.unc), and returns the largest estimate.
func (ix *clusterIndex) estimate(s *clusterScratch, xq []int16, inv, xx float32) float32 {
	nc := len(ix.logMass)
	clusterDots(nc, ix.hp, ix.means, ix.dirs, xq, ix.meanScale, ix.dirScale, inv, s.dots[:nc], s.dots[nc:])
	ua, ub := float32(ix.uncBase), float32(2*ix.uncSpread)
	done, top := estAsm(nc, s.dots, ix.lam, ix.spread, ix.logMass, xx, ua, ub, s.est, s.unc)
	if done == 0 {
		top = float32(math.Inf(-1))
	}
	for c := done; c < nc; c++ {
		p2 := s.dots[nc+c] * s.dots[nc+c]
		q := ix.lam[c]*p2 + ix.spread[c]*(xx-p2) // ½s²
		s.unc[c] = ua + ub*q
		s.est[c] = s.dots[c] + ix.logMass[c] + q
		top = max(top, s.est[c])
	}
	return top
}

// quantizeX returns x scaled to int16 (zero-padded to hp, in s), its
// largest magnitude to xTop(hp), and the inverse of the scale.
func (ix *clusterIndex) quantizeX(x []float32, s *clusterScratch) ([]int16, float32) {
	var amax float32
	for _, v := range x {
		amax = max(amax, float32(math.Abs(float64(v))))
	}
	xq := s.xq
	clear(xq)
	if amax == 0 {
		return xq, 1
	}
	scale := float32(xTop(ix.hp)) / amax
	for d, v := range x {
		xq[d] = int16(math.RoundToEven(float64(v * scale))) // one instruction on amd64
	}
	return xq, 1 / scale
}

// enough reports whether the clusters scored so far settle the hints:
// no cluster left could hold a hint (its estimated share of the normaliser,
// next for the largest one, is below hintMargin times less than the
// threshold and the k-th hint), and the error of the estimate of the rest,
// uncZ times its standard deviation √restVar, moves no hint's probability
// by more than probTol. Masses are relative to exp(top).
func (ix *clusterIndex) enough(hints []scored, k int, threshold, top float32, exact, rest, restVar float64, next float32) bool {
	z := exact + rest
	if len(hints) == 0 {
		return false
	}
	bar := float64(threshold)
	if len(hints) == k {
		bar = max(bar, math.Exp(float64(hints[k-1].logit-top))/z)
	}
	if float64(next)/z > bar/ix.hintMargin {
		return false
	}
	pTop := math.Exp(float64(hints[0].logit-top)) / z
	return ix.uncZ*math.Sqrt(restVar)*pTop <= ix.probTol*z
}

// appendAbove appends to order the clusterKey of every cluster c with
// lo <= est[c] < hi, in order of c, and returns it.
func appendAbove(order []uint64, est []float32, lo, hi float32) []uint64 {
	order = slices.Grow(order, len(est))
	done, n := keysAboveAsm(order[len(order):cap(order)], est, lo, hi)
	order = order[:len(order)+n]
	for c, e := range est[done:] {
		if e >= lo && e < hi {
			order = append(order, clusterKey(e, done+c))
		}
	}
	return order
}

// sumSqMul returns the sum of (a[i]·b[i])² over a (b at least as long).
func sumSqMul(a, b []float32) float32 {
	b = b[:len(a)]
	done, sum := sumSqMulAsm(a, b)
	for i := done; i < len(a); i++ {
		p := a[i] * b[i]
		sum += p * p
	}
	return sum
}

// clusterKey orders cluster c by its estimate e (not negative) as an
// integer: larger e first, ties to the lower index. The bits of positive
// float32s order as the floats do.
func clusterKey(e float32, c int) uint64 {
	return uint64(math.Float32bits(e))<<32 | uint64(^uint32(c))
}

// keyCluster is the cluster of a clusterKey.
func keyCluster(key uint64) int32 { return int32(^uint32(key)) }

// heapInit orders h as a max-heap.
func heapInit(h []uint64) {
	for i := len(h)/2 - 1; i >= 0; i-- {
		siftDown(h, i)
	}
}

// heapPop removes the top of the max-heap h and returns the shorter heap.
func heapPop(h []uint64) []uint64 {
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	siftDown(h, 0)
	return h
}

func siftDown(h []uint64, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		c := l
		if r := l + 1; r < len(h) && h[r] > h[l] {
			c = r
		}
		if h[c] <= h[i] {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// keepTop inserts c into top (at most k entries, highest logit first, ties
// by lower page) when it belongs there.
func keepTop(top []scored, k int, c scored) []scored {
	n := len(top)
	if n == k && !better(c, top[n-1]) {
		return top
	}
	if n < k {
		top = append(top, c)
	}
	i := len(top) - 1
	for i > 0 && better(c, top[i-1]) {
		top[i] = top[i-1]
		i--
	}
	top[i] = c
	return top
}

func better(a, b scored) bool {
	return a.logit > b.logit || (a.logit == b.logit && a.pos < b.pos)
}

// expSum sets dst[i] = exp(src[i] - shift) and returns their sum; dst may
// be src.
func expSum(dst, src []float32, shift float32) float32 {
	if sum, ok := expAsm(dst, src, 1, shift); ok {
		return sum
	}
	var sum float32
	for i, v := range src {
		dst[i] = expf(v - shift)
		sum += dst[i]
	}
	return sum
}

// splitHeads moves, in each cluster of at least 8 rows, the rows of the
// largest biases (the first clusterHeadShare of them: the most popular
// pages) to a cluster of their own, and returns the number of clusters.
// Biases spread over several nats (popularity is Zipf-like), so a head
// holds most of its cluster's mass in a quarter of its rows: the few
// pages likely enough to be hints are scored without the many that are
// not, and the mass left unscored is spread over many small clusters.
func splitHeads(b []float32, assign []int32, nc int) int {
	if b == nil {
		return nc
	}
	members := make([][]int32, nc)
	for i, c := range assign {
		members[c] = append(members[c], int32(i))
	}
	for _, rows := range members {
		if len(rows) < 8 {
			continue
		}
		slices.SortFunc(rows, func(x, y int32) int {
			switch {
			case b[x] > b[y]:
				return -1
			case b[x] < b[y]:
				return 1
			}
			return int(x - y)
		})
		n := max(1, int(float64(len(rows))*clusterHeadShare))
		for _, i := range rows[:n] {
			assign[i] = int32(nc)
		}
		nc++
	}
	return nc
}
