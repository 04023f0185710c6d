package training

import (
	"log/slog"
	"time"
)

// progressEvery is the interval between progress lines within an epoch.
const progressEvery = 10 * time.Second

// epochProgress logs how far an epoch has gone, at most every
// progressEvery, with the time left in the epoch and in the whole run
// (all epochs, before early stopping).
type epochProgress struct {
	logger      *slog.Logger
	epoch       int
	epochs      int
	start, last time.Time
	done        float64 // share of the run's epochs finished before this one
}

func newEpochProgress(logger *slog.Logger, epoch, epochs int, now time.Time) *epochProgress {
	return &epochProgress{logger: logger, epoch: epoch, epochs: epochs, start: now, last: now,
		done: float64(epoch-1) / float64(epochs)}
}

// step reports that batch i (0-based) of n is done; it logs only when
// progressEvery has passed since the last line.
func (p *epochProgress) step(i, n int, now time.Time) {
	if now.Sub(p.last) < progressEvery || n == 0 {
		return
	}
	p.last = now
	frac := float64(i+1) / float64(n)
	elapsed := now.Sub(p.start)
	epochLeft := time.Duration(float64(elapsed) * (1 - frac) / frac)
	perEpoch := time.Duration(float64(elapsed) / frac)
	runLeft := epochLeft + time.Duration(p.epochs-p.epoch)*perEpoch
	p.logger.Info("gru progress", "epoch", p.epoch, "epochs", p.epochs, "batch", i+1, "batches", n,
		"percent", int(100*frac), "epoch_eta", epochLeft.Round(time.Second).String(),
		"run_eta_max", runLeft.Round(time.Second).String())
}
