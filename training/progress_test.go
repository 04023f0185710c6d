package training

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestEpochProgress(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		epoch    int
		batch    int
		after    time.Duration
		wantLine []string // empty: no line
	}{
		{"too soon", 1, 9, 5 * time.Second, nil},
		// 10 of 40 batches in 20 s: 60 s left in the epoch, 80 s per epoch,
		// two more epochs of four.
		{"quarter of epoch 2", 2, 9, 20 * time.Second, []string{"epoch=2", "batch=10", "percent=25", "epoch_eta=1m0s", "run_eta_max=3m40s"}},
		{"end of last epoch", 4, 39, 40 * time.Second, []string{"percent=100", "epoch_eta=0s", "run_eta_max=0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&buf, nil))
			p := newEpochProgress(logger, tc.epoch, 4, t0)
			p.step(tc.batch, 40, t0.Add(tc.after))
			out := buf.String()
			if len(tc.wantLine) == 0 && out != "" {
				t.Errorf("logged %q, want nothing", out)
			}
			for _, w := range tc.wantLine {
				if !strings.Contains(out, w) {
					t.Errorf("logged %q, want %s", out, w)
				}
			}
		})
	}
}
