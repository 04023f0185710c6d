package training

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkGRUTrainStep measures one forward and backward pass of a batch
// of 64 windows of 20 pages, full softmax against sampled softmax, at
// vocabulary 2,000, embedding 48, hidden 128, and the sampled pass split
// between one and two workers.
func BenchmarkGRUTrainStep(b *testing.B) {
	const v, d, h = 2000, 48, 128
	rng := rand.New(rand.NewPCG(1, 1))
	p := newGRUParams(v, d, h)
	p.init(rng)
	rows := randomRows(rng, 64, 21, 21, v)
	batch := packBatch(rows)
	sampler := newNegSampler(rows, v)
	grad := newGRUParams(v, d, h)
	w := &gruWork{}
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p.lossAndGrad(batch, &grad, w)
		}
	})
	b.Run("sampled512", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p.lossAndGradSampled(batch, &grad, w, sampler, 512, sampler.draw(rng, 512, batch))
		}
	})
	for _, workers := range []int{1, 2} {
		ws := newGradWorkers(&p, workers, rng, 0, 0)
		b.Run(fmt.Sprintf("sampled512/workers%d", workers), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.batchGrad(batch, ws, p.newSampledHead(batch, sampler, 512, sampler.draw(rng, 512, batch)))
			}
		})
	}
}

// BenchmarkGRUPredictSession measures the evaluation path: scoring every
// prefix of a 20-page session with a running state.
func BenchmarkGRUPredictSession(b *testing.B) {
	p := newGRUParams(2000, 48, 128)
	p.init(rand.New(rand.NewPCG(1, 1)))
	g := &GRU{p: p}
	seq := make([]int64, 20)
	for i := range seq {
		seq[i] = int64(2 + i*7)
	}
	b.ReportAllocs()
	for b.Loop() {
		g.PredictSession(seq, 20, func(int, []float32) {})
	}
}

// BenchmarkGRUTrain200kPages trains one short epoch over synthetic
// sessions on a vocabulary of 200,000 pages (Zipf-distributed visits,
// sampled softmax, embedding 16, hidden 32) and reports the seconds per
// epoch, the process's peak resident memory, the training loss and the
// validation MRR@20.
func BenchmarkGRUTrain200kPages(b *testing.B) {
	const pages, sessions = 200_000, 20_000
	rng := rand.New(rand.NewPCG(7, 8))
	zipf := rand.NewZipf(rng, 1.1, 1, pages-3)
	seqs := make([][]int64, sessions)
	for i := range seqs {
		seqs[i] = make([]int64, 2+rng.IntN(9))
		for j := range seqs[i] {
			seqs[i][j] = 2 + int64(zipf.Uint64())
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		_, stats, err := TrainGRU(b.Context(), nil, seqs, pages, GRUConfig{Embedding: 16, Hidden: 32, Epochs: 1,
			ValidationFraction: 0.01, Seed: 1})
		if err != nil {
			b.Fatalf("TrainGRU: %v", err)
		}
		b.ReportMetric(stats.Seconds, "s/epoch")
		b.ReportMetric(float64(stats.PeakMemoryBytes)/(1<<20), "peak-MiB")
		b.ReportMetric(stats.History[0].TrainLoss, "train-loss")
		b.ReportMetric(stats.History[0].ValMRR20, "val-MRR@20")
	}
}
