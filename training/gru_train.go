package training

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// GRUConfig sets the GRU's size and training. Zero fields take the
// defaults in brackets.
type GRUConfig struct {
	Embedding    int     // embedding size [48]
	Hidden       int     // recurrent state size [128]
	Epochs       int     // most passes over the training sessions [8]
	Patience     int     // epochs without a better validation MRR@20 before stopping [2]
	BatchSize    int     // sequences per step [64]
	LearningRate float64 // Adam step size of the first epoch [0.005]
	LRDecay      float64 // factor applied to the step size after each epoch [0.7]
	ClipNorm     float64 // global gradient norm clip [5]
	// Window is the longest training sequence: sessions are cut into
	// windows of Window inputs, matching the service's history length
	// [DefaultMaxSeqLen].
	Window int
	// ValidationFraction of the training sessions (the last ones) is kept
	// aside for early stopping [0.1].
	ValidationFraction float64
	// Sampled is the number of negative pages per step of the sampled
	// softmax (drawn by popularity^0.75 and shared by the batch, whose own
	// pages are candidates too, with the logQ correction) [512]. A
	// vocabulary no larger than Sampled uses the full softmax.
	Sampled int
	// SampleExponent is the exponent of the page frequencies the sampled
	// softmax draws its negatives by; nil means the default [0.75], 0
	// draws uniformly.
	SampleExponent *float64
	// FullSoftmax trains with the softmax over the whole vocabulary.
	FullSoftmax bool
	// Tied shares the embedding matrix with the output layer's weights
	// (Embedding must equal Hidden); the exported graph is unchanged.
	Tied bool
	// DropoutEmbedding and DropoutHidden are the dropout rates of the
	// embeddings fed to the GRU and of the states fed to the output layer,
	// during training only [0: none].
	DropoutEmbedding, DropoutHidden float64
	// Distill is the weight of the n-gram teacher's next-page distribution
	// in the training target (knowledge distillation), the rest going to
	// the observed next page; nil means the default [0.5], 0 none.
	Distill *float64
	// TeacherOrder and TeacherDiscount set the n-gram teacher, fitted on
	// the GRU's training sessions [5, 0.95; Run sets both to the ngram
	// baseline's tuned setting when both are 0]. A discount of 0 is not a
	// setting: the teacher needs its backoff.
	TeacherOrder    int
	TeacherDiscount float64
	// Skip adds the last-page skip term to the output layer: it reads
	// h + Skip[last page] (a learned vector per page, zero at the start)
	// instead of the state h alone; nil means the default [false].
	Skip *bool
	// Workers is the number of goroutines that share each batch's forward
	// and backward pass, each over a slice of its rows; the gradient is the
	// same for any number, up to rounding [GOMAXPROCS, at most 4].
	Workers int
	Seed    uint64
}

func (c GRUConfig) withDefaults() GRUConfig {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Embedding, 48)
	def(&c.Hidden, 128)
	def(&c.Epochs, 8)
	def(&c.Patience, 2)
	def(&c.BatchSize, 64)
	def(&c.Window, DefaultMaxSeqLen)
	def(&c.Sampled, 512)
	def(&c.Workers, min(runtime.GOMAXPROCS(0), 4))
	def(&c.TeacherOrder, ngramMaxOrder)
	if c.TeacherDiscount == 0 {
		c.TeacherDiscount = 0.95
	}
	if c.Distill == nil {
		c.Distill = new(float64(defaultDistill))
	}
	if c.SampleExponent == nil {
		c.SampleExponent = new(float64(defaultSampleExponent))
	}
	if c.Skip == nil {
		c.Skip = new(defaultSkip)
	}
	if c.LearningRate == 0 {
		c.LearningRate = 0.005
	}
	if c.LRDecay == 0 {
		c.LRDecay = 0.7
	}
	if c.ClipNorm == 0 {
		c.ClipNorm = 5
	}
	if c.ValidationFraction == 0 {
		c.ValidationFraction = 0.1
	}
	return c
}

// Validate checks the configuration.
func (c GRUConfig) Validate() error {
	switch {
	case c.Embedding < 0 || c.Embedding > 4096, c.Hidden < 0 || c.Hidden > 4096:
		return fmt.Errorf("gru sizes embedding %d, hidden %d outside 1..4096", c.Embedding, c.Hidden)
	case c.Epochs < 0 || c.Patience < 0 || c.BatchSize < 0 || c.Window < 0 || c.Sampled < 0 || c.Workers < 0:
		return fmt.Errorf("gru epochs, patience, batch size, window, sampled and workers must not be negative")
	case c.LRDecay < 0 || c.LRDecay > 1:
		return fmt.Errorf("gru learning rate decay %v outside [0, 1]", c.LRDecay)
	case c.LearningRate < 0 || math.IsNaN(c.LearningRate) || c.ClipNorm < 0:
		return fmt.Errorf("gru learning rate %v and clip norm %v must not be negative", c.LearningRate, c.ClipNorm)
	case c.DropoutEmbedding < 0 || c.DropoutEmbedding >= 1 || c.DropoutHidden < 0 || c.DropoutHidden >= 1:
		return fmt.Errorf("gru dropout %v, %v outside [0, 1)", c.DropoutEmbedding, c.DropoutHidden)
	case c.Tied && c.withDefaults().Embedding != c.withDefaults().Hidden:
		d := c.withDefaults()
		return fmt.Errorf("gru tied embeddings need embedding %d equal to hidden %d", d.Embedding, d.Hidden)
	case c.Distill != nil && (*c.Distill < 0 || *c.Distill > 1 || math.IsNaN(*c.Distill)):
		return fmt.Errorf("gru distillation weight %v outside [0, 1]", *c.Distill)
	case c.TeacherOrder < 0 || c.TeacherOrder > ngramMaxOrder || c.TeacherDiscount < 0 || c.TeacherDiscount > 1:
		return fmt.Errorf("gru teacher order %d outside 0..%d or discount %v outside [0, 1]", c.TeacherOrder, ngramMaxOrder, c.TeacherDiscount)
	case c.SampleExponent != nil && (*c.SampleExponent < 0 || *c.SampleExponent > 2 || math.IsNaN(*c.SampleExponent)):
		return fmt.Errorf("gru sampling exponent %v outside [0, 2]", *c.SampleExponent)
	case c.ValidationFraction < 0 || c.ValidationFraction >= 1:
		return fmt.Errorf("gru validation fraction %v outside [0, 1)", c.ValidationFraction)
	}
	return nil
}

// defaultDistill is the teacher's default weight in the training target.
const defaultDistill = 0.5

// defaultSampleExponent is the sampled softmax's default exponent.
const defaultSampleExponent = 0.75

// defaultSkip says whether the GRU has the last-page skip term by default.
const defaultSkip = false

// maxValidation caps the sessions scored after every epoch.
const maxValidation = 4000

// GRUStats describes a GRU training run.
type GRUStats struct {
	Embedding      int `json:"embedding"`
	Hidden         int `json:"hidden"`
	Epochs         int `json:"epochs"`
	BestEpoch      int `json:"best_epoch"`
	TrainSequences int `json:"train_sequences"` // windows per epoch
	// Distill is the n-gram teacher's weight in the training target, and
	// TeacherOrder and TeacherDiscount its settings (unset without one).
	Distill         float64 `json:"distill"`
	TeacherOrder    int     `json:"teacher_order,omitempty"`
	TeacherDiscount float64 `json:"teacher_discount,omitempty"`
	Skip            bool    `json:"skip"` // the output layer reads h + Skip[last page]
	// The training settings: learning rate and its decay, batch size,
	// negatives per step of the sampled softmax (0 with the full softmax)
	// and their sampling exponent, tied embeddings, dropout rates.
	LearningRate       float64     `json:"learning_rate"`
	LRDecay            float64     `json:"lr_decay"`
	BatchSize          int         `json:"batch_size"`
	Negatives          int         `json:"negatives"`
	SampleExponent     float64     `json:"sample_exponent"`
	Tied               bool        `json:"tied"`
	DropoutEmbedding   float64     `json:"dropout_embedding"`
	DropoutHidden      float64     `json:"dropout_hidden"`
	Seconds            float64     `json:"seconds"`
	SequencesPerSecond float64     `json:"sequences_per_second"`
	PeakMemoryBytes    uint64      `json:"peak_memory_bytes"`
	History            []EpochStat `json:"history"`
}

// EpochStat is one epoch of training.
type EpochStat struct {
	Epoch      int     `json:"epoch"`
	TrainLoss  float64 `json:"train_loss"`
	ValMRR20   float64 `json:"val_mrr_at_20"`
	ValRecall5 float64 `json:"val_recall_at_5"`
	Seconds    float64 `json:"seconds"`
}

// Summary is a one-line description of the run.
func (s *GRUStats) Summary() string {
	teacher := ""
	if s.Distill > 0 {
		teacher = fmt.Sprintf(", n-gram teacher weight %g (order %d, discount %g)", s.Distill, s.TeacherOrder, s.TeacherDiscount)
	}
	if s.Skip {
		teacher = ", last-page skip" + teacher
	}
	if s.Tied {
		teacher = ", tied embeddings" + teacher
	}
	if s.DropoutEmbedding > 0 || s.DropoutHidden > 0 {
		teacher += fmt.Sprintf(", dropout %g/%g", s.DropoutEmbedding, s.DropoutHidden)
	}
	softmax := "full softmax"
	if s.Negatives > 0 {
		softmax = fmt.Sprintf("%d negatives (exponent %g)", s.Negatives, s.SampleExponent)
	}
	return fmt.Sprintf("embedding %d, hidden %d%s, %s, batch %d, learning rate %g (decay %g), %d epochs (best %d), %.1f s, %.0f sequences/s, peak memory %.0f MiB",
		s.Embedding, s.Hidden, teacher, softmax, s.BatchSize, s.LearningRate, s.LRDecay, s.Epochs, s.BestEpoch, s.Seconds, s.SequencesPerSecond, float64(s.PeakMemoryBytes)/(1<<20))
}

// TrainGRU trains a GRU on seqs (vocabulary indices) with backpropagation
// through time, Adam and softmax cross-entropy on every next page, keeping
// the weights of the epoch with the best validation MRR@20. It returns
// ctx.Err() (wrapped) when ctx ends.
func TrainGRU(ctx context.Context, logger *slog.Logger, seqs [][]int64, vocabSize int, cfg GRUConfig) (*GRU, *GRUStats, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if vocabSize < 3 {
		return nil, nil, fmt.Errorf("gru: vocabulary of %d has no pages", vocabSize)
	}
	for _, s := range seqs {
		for _, id := range s {
			if id <= 0 || id >= int64(vocabSize) {
				return nil, nil, fmt.Errorf("gru: page index %d outside 1..%d", id, vocabSize-1)
			}
		}
	}
	start := time.Now()
	nVal := int(float64(len(seqs)) * cfg.ValidationFraction)
	trainSeqs, valSeqs := seqs[:len(seqs)-nVal], seqs[len(seqs)-nVal:]
	if len(valSeqs) > maxValidation {
		valSeqs = valSeqs[len(valSeqs)-maxValidation:] // enough to rank epochs, cheap to score
	}
	windows := windowed(trainSeqs, cfg.Window)
	if len(windows) == 0 {
		return nil, nil, fmt.Errorf("gru: no training sequence has two pages")
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	p := newGRUParams(vocabSize, cfg.Embedding, cfg.Hidden)
	p.init(rng)
	if *cfg.Skip {
		p.Skip = make([]float32, vocabSize*cfg.Hidden)
	}
	opt := newAdam(&p, cfg.LearningRate, cfg.Tied)
	if cfg.Tied {
		copy(p.Wo, p.Emb)
		p.Wo = p.Emb // one matrix; its gradient is the sum of both uses
	}
	workers := newGradWorkers(&p, cfg.Workers, rng, cfg.DropoutEmbedding, cfg.DropoutHidden)
	stats := &GRUStats{Embedding: cfg.Embedding, Hidden: cfg.Hidden, TrainSequences: len(windows), Distill: *cfg.Distill,
		Skip: *cfg.Skip, LearningRate: cfg.LearningRate, LRDecay: cfg.LRDecay, BatchSize: cfg.BatchSize,
		SampleExponent: *cfg.SampleExponent, Tied: cfg.Tied, DropoutEmbedding: cfg.DropoutEmbedding, DropoutHidden: cfg.DropoutHidden}
	if !cfg.FullSoftmax && cfg.Sampled < vocabSize-1 {
		stats.Negatives = cfg.Sampled
	}
	if *cfg.Distill > 0 {
		stats.TeacherOrder, stats.TeacherDiscount = cfg.TeacherOrder, cfg.TeacherDiscount
		kd := newDistiller(trainSeqs, vocabSize, cfg.TeacherOrder, cfg.TeacherDiscount, *cfg.Distill)
		for _, w := range workers {
			w.work.kd = kd
		}
	}
	var sampler *negSampler
	if !cfg.FullSoftmax && cfg.Sampled < vocabSize-1 {
		sampler = newNegSamplerExp(seqs, vocabSize, *cfg.SampleExponent)
	}
	best, bestMRR, bad := p.clone(), -1.0, 0
	seen := 0
	for epoch := 1; epoch <= cfg.Epochs; epoch++ {
		epochStart := time.Now()
		lossSum, lossN, err := p.fitEpoch(ctx, makeBatches(windows, cfg.BatchSize, rng), workers, sampler, opt, cfg, rng,
			newEpochProgress(logger, epoch, cfg.Epochs, epochStart))
		if err != nil {
			return nil, nil, err
		}
		seen += len(windows)
		opt.lr *= cfg.LRDecay
		st := EpochStat{Epoch: epoch, TrainLoss: lossSum / float64(max(lossN, 1))}
		if len(valSeqs) > 0 {
			res, err := Evaluate(ctx, "validation", &GRU{p: p}, valSeqs, EvalConfig{MaxSeqLen: cfg.Window})
			if err != nil {
				return nil, nil, err
			}
			st.ValMRR20, st.ValRecall5 = res.MRRAt20, res.RecallAt5
		}
		st.Seconds = time.Since(epochStart).Seconds()
		stats.History = append(stats.History, st)
		stats.Epochs = epoch
		logger.Info("gru epoch", "epoch", epoch, "epochs", cfg.Epochs, "train_loss", st.TrainLoss, "val_mrr_at_20", st.ValMRR20,
			"val_recall_at_5", st.ValRecall5, "seconds", st.Seconds,
			"run_eta_max", (time.Duration(cfg.Epochs-epoch) * time.Since(start) / time.Duration(epoch)).Round(time.Second).String())
		if len(valSeqs) == 0 || st.ValMRR20 > bestMRR {
			best, bestMRR, bad = p.clone(), st.ValMRR20, 0
			stats.BestEpoch = epoch
			continue
		}
		if bad++; bad >= cfg.Patience {
			break
		}
	}
	stats.Seconds = time.Since(start).Seconds()
	stats.SequencesPerSecond = float64(seen) / stats.Seconds
	stats.PeakMemoryBytes = peakMemory()
	return &GRU{p: best}, stats, nil
}

// fitEpoch takes one Adam step per batch, brings every row of the
// weights up to date at the end (Adam is lazy on the rows of pages), and
// returns the summed loss of the batches' positions and their number.
func (p *gruParams) fitEpoch(ctx context.Context, batches []gruBatch, workers []*gradWorker, sampler *negSampler, opt *adam,
	cfg GRUConfig, rng *rand.Rand, prog *epochProgress) (lossSum float64, lossN int, err error) {
	for i, b := range batches {
		if i%16 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, 0, fmt.Errorf("train gru: %w", err)
			}
		}
		var head *sampledHead
		var cand []int64
		if sampler != nil {
			cand = sampler.draw(rng, cfg.Sampled, b)
		}
		opt.refresh(p, b, cand)
		if sampler != nil {
			head = p.newSampledHead(b, sampler, cfg.Sampled, cand)
		}
		loss, n := p.batchGrad(b, workers, head)
		if n == 0 {
			continue
		}
		grad := &workers[0].grad
		lossSum += loss * float64(n)
		lossN += n
		if cfg.Tied {
			grad.tie()
		}
		grad.clip(cfg.ClipNorm)
		opt.update(p, grad)
		prog.step(i, len(batches), time.Now())
	}
	opt.sync(p)
	return lossSum, lossN, nil
}

// windowed cuts sequences into windows of at most window inputs and their
// targets: window+1 pages, consecutive windows sharing one page.
func windowed(seqs [][]int64, window int) [][]int64 {
	var out [][]int64
	for _, s := range seqs {
		for i := 0; i+1 < len(s); i += window {
			out = append(out, s[i:min(len(s), i+window+1)])
		}
	}
	return out
}

// gruBatch is B rows of S page indices, row-major, left-padded with 0.
type gruBatch struct {
	B, S int
	ids  []int64
}

// makeBatches groups windows of equal length (so that no padding is
// needed), shuffles within and across groups, and packs them.
func makeBatches(windows [][]int64, size int, rng *rand.Rand) []gruBatch {
	byLen := make(map[int][][]int64)
	for _, w := range windows {
		byLen[len(w)] = append(byLen[len(w)], w)
	}
	lens := make([]int, 0, len(byLen))
	for l := range byLen {
		lens = append(lens, l)
	}
	slices.Sort(lens)
	var out []gruBatch
	for _, l := range lens {
		group := byLen[l]
		rng.Shuffle(len(group), func(i, j int) { group[i], group[j] = group[j], group[i] })
		for i := 0; i < len(group); i += size {
			out = append(out, packBatch(group[i:min(len(group), i+size)]))
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// packBatch left-pads rows to the longest one.
func packBatch(rows [][]int64) gruBatch {
	s := 0
	for _, r := range rows {
		s = max(s, len(r))
	}
	b := gruBatch{B: len(rows), S: s, ids: make([]int64, len(rows)*s)}
	for i, r := range rows {
		copy(b.ids[i*s+s-len(r):], r)
	}
	return b
}

// gruWork is reusable memory for one batch's forward and backward pass.
type gruWork struct {
	x, gx, gh, hs, z, r, n []float32
	dh, dgx, dgh, dhNext   []float32
	dx, hout, logits, dwc  []float32
	q                      []float32 // the distillation target of one position
	kd                     *distiller
	exactLoss              bool      // the loss includes the distillation term (tests)
	maskX, maskH           []float32 // dropout: 0 or 1/(1-rate)
	rng                    *rand.Rand
	dropEmb, dropHid       float32
	pos                    []int
	tgt                    []int64
}

func grow(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// forward runs the recurrence over batch b and collects the states that
// predict a next page: position t of row i predicts ids[i][t+1] when both
// are real pages.
func (p *gruParams) forward(b gruBatch, w *gruWork) {
	B, S, D, H := b.B, b.S, p.D, p.H
	w.x = grow(w.x, S*B*D)
	w.gx = grow(w.gx, S*B*3*H)
	w.gh = grow(w.gh, S*B*3*H)
	w.hs = grow(w.hs, (S+1)*B*H)
	w.z, w.r, w.n = grow(w.z, S*B*H), grow(w.r, S*B*H), grow(w.n, S*B*H)
	for t := 0; t < S; t++ {
		for i := 0; i < B; i++ {
			id := b.ids[i*S+t]
			copy(w.x[(t*B+i)*D:(t*B+i+1)*D], p.Emb[int(id)*D:int(id+1)*D])
		}
	}
	w.maskX = dropout(w.x, w.maskX, w.dropEmb, w.rng)
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, general(S*B, D, w.x), general(3*H, D, p.Wx), 0, general(S*B, 3*H, w.gx))
	for row := 0; row < S*B; row++ {
		g := w.gx[row*3*H : (row+1)*3*H]
		for j, v := range p.BW {
			g[j] += v
		}
	}
	for t := 0; t < S; t++ {
		hprev := w.hs[t*B*H : (t+1)*B*H]
		gh := w.gh[t*B*3*H : (t+1)*B*3*H]
		for i := 0; i < B; i++ {
			copy(gh[i*3*H:(i+1)*3*H], p.BR)
		}
		blas32.Gemm(blas.NoTrans, blas.Trans, 1, general(B, H, hprev), general(3*H, H, p.Rh), 1, general(B, 3*H, gh))
		hnew := w.hs[(t+1)*B*H : (t+2)*B*H]
		for i := 0; i < B; i++ {
			row := t*B + i
			gx := w.gx[row*3*H : (row+1)*3*H]
			g := gh[i*3*H : (i+1)*3*H]
			for j := 0; j < H; j++ {
				z := sigmoid(gx[j] + g[j])
				r := sigmoid(gx[H+j] + g[H+j])
				n := tanh32(gx[2*H+j] + r*g[2*H+j])
				w.z[row*H+j], w.r[row*H+j], w.n[row*H+j] = z, r, n
				hnew[i*H+j] = (1-z)*n + z*hprev[i*H+j]
			}
		}
	}
	w.pos, w.tgt = w.pos[:0], w.tgt[:0]
	for t := 0; t+1 < S; t++ {
		for i := 0; i < B; i++ {
			if b.ids[i*S+t] != 0 && b.ids[i*S+t+1] != 0 {
				w.pos = append(w.pos, t*B+i)
				w.tgt = append(w.tgt, b.ids[i*S+t+1])
			}
		}
	}
	w.hout = grow(w.hout, len(w.pos)*H)
	for k, row := range w.pos {
		copy(w.hout[k*H:(k+1)*H], w.hs[(B+row)*H:(B+row+1)*H])
	}
	p.addSkip(b, w)
	w.maskH = dropout(w.hout, w.maskH, w.dropHid, w.rng)
}

// lossAndGrad computes the mean cross-entropy over the batch's predicting
// positions (full softmax) and adds its gradient to grad. It returns the
// loss and the number of positions.
func (p *gruParams) lossAndGrad(b gruBatch, grad *gruParams, w *gruWork) (float64, int) {
	p.forward(b, w)
	N, V, H := len(w.pos), p.V, p.H
	if N == 0 {
		return 0, 0
	}
	w.logits = grow(w.logits, N*V)
	for k := 0; k < N; k++ {
		copy(w.logits[k*V:(k+1)*V], p.Bo)
	}
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, general(N, H, w.hout), general(V, H, p.Wo), 1, general(N, V, w.logits))
	var loss float64
	inv := float32(1 / float64(N))
	w.q = grow(w.q, V)
	for k := 0; k < N; k++ {
		row := w.logits[k*V : (k+1)*V]
		softmaxTrain(row)
		tg := w.tgt[k]
		loss += w.kd.subtractTarget(row, int(tg), historyAt(b, w.pos[k]), tg, nil, nil, w.q, w.exactLoss)
		for j := range row {
			row[j] *= inv
		}
		for j, v := range row {
			grad.Bo[j] += v
		}
	}
	blas32.Gemm(blas.Trans, blas.NoTrans, 1, general(N, V, w.logits), general(N, H, w.hout), 1, general(V, H, grad.Wo))
	dhout := grow(w.dx, N*H) // borrow dx as scratch; backward regrows it
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, general(N, V, w.logits), general(V, H, p.Wo), 0, general(N, H, dhout))
	p.backward(b, grad, w, dhout)
	return loss / float64(N), N
}

// backward propagates dhout (gradients of the collected states) through
// time and adds the parameter gradients to grad.
func (p *gruParams) backward(b gruBatch, grad *gruParams, w *gruWork, dhout []float32) {
	B, S, D, H := b.B, b.S, p.D, p.H
	applyMask(dhout, w.maskH)
	p.skipGrad(b, grad, w, dhout)
	w.dh = grow(w.dh, S*B*H)
	for k, row := range w.pos {
		d := w.dh[row*H : (row+1)*H]
		for j := range d {
			d[j] += dhout[k*H+j]
		}
	}
	w.dgx = grow(w.dgx, S*B*3*H)
	w.dgh = grow(w.dgh, B*3*H)
	w.dhNext = grow(w.dhNext, B*H)
	for t := S - 1; t >= 0; t-- {
		hprev := w.hs[t*B*H : (t+1)*B*H]
		for i := 0; i < B; i++ {
			row := t*B + i
			gh := w.gh[row*3*H : (row+1)*3*H]
			dgx := w.dgx[row*3*H : (row+1)*3*H]
			dgh := w.dgh[i*3*H : (i+1)*3*H]
			for j := 0; j < H; j++ {
				dht := w.dh[row*H+j] + w.dhNext[i*H+j]
				z, r, n := w.z[row*H+j], w.r[row*H+j], w.n[row*H+j]
				dz := dht * (hprev[i*H+j] - n)
				dan := dht * (1 - z) * (1 - n*n)
				dr := dan * gh[2*H+j]
				daz := dz * z * (1 - z)
				dar := dr * r * (1 - r)
				dgx[j], dgx[H+j], dgx[2*H+j] = daz, dar, dan
				dgh[j], dgh[H+j], dgh[2*H+j] = daz, dar, dan*r
				w.dhNext[i*H+j] = dht * z
			}
			for j, v := range dgh {
				grad.BR[j] += v
			}
		}
		blas32.Gemm(blas.Trans, blas.NoTrans, 1, general(B, 3*H, w.dgh), general(B, H, hprev), 1, general(3*H, H, grad.Rh))
		blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, general(B, 3*H, w.dgh), general(3*H, H, p.Rh), 1, general(B, H, w.dhNext))
	}
	blas32.Gemm(blas.Trans, blas.NoTrans, 1, general(S*B, 3*H, w.dgx), general(S*B, D, w.x), 1, general(3*H, D, grad.Wx))
	for row := 0; row < S*B; row++ {
		for j, v := range w.dgx[row*3*H : (row+1)*3*H] {
			grad.BW[j] += v
		}
	}
	w.dx = grow(w.dx, S*B*D)
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, general(S*B, 3*H, w.dgx), general(3*H, D, p.Wx), 0, general(S*B, D, w.dx))
	applyMask(w.dx, w.maskX)
	for t := 0; t < S; t++ {
		for i := 0; i < B; i++ {
			id := b.ids[i*S+t]
			if id == 0 {
				continue // the padding row stays zero
			}
			g := grad.Emb[int(id)*D : int(id+1)*D]
			for j, v := range w.dx[(t*B+i)*D : (t*B+i+1)*D] {
				g[j] += v
			}
		}
	}
}

// dropout zeroes each element of x with probability rate and scales the
// others by 1/(1-rate); it returns the mask applied (nil when rate is 0).
func dropout(x, mask []float32, rate float32, rng *rand.Rand) []float32 {
	if rate <= 0 || rng == nil {
		return nil
	}
	mask = grow(mask, len(x))
	keep := 1 / (1 - rate)
	for i := range x {
		if rng.Float32() >= rate {
			mask[i] = keep
		}
		x[i] *= mask[i]
	}
	return mask
}

// applyMask multiplies g by mask element-wise; a nil mask leaves g alone.
func applyMask(g, mask []float32) {
	for i := range mask {
		g[i] *= mask[i]
	}
}

// peakMemory returns the process's peak resident set (VmHWM) on Linux, or
// the Go runtime's memory obtained from the OS elsewhere.
func peakMemory() uint64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				f := strings.Fields(rest)
				if len(f) == 2 && f[1] == "kB" {
					if kb, err := strconv.ParseUint(f[0], 10, 64); err == nil {
						return kb << 10
					}
				}
			}
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Sys
}
