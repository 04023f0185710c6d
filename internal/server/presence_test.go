package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// presenceWatcher is a Watcher that also tells presence: the pages in warm
// are warm for every user.
type presenceWatcher struct {
	*servertest.Watcher
	mu   sync.Mutex
	warm map[string]bool
	asks int
}

func (w *presenceWatcher) WarmNow(_ context.Context, _ string, hints []hint.Hint) []bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.asks++
	out := make([]bool, len(hints))
	for i, h := range hints {
		out[i] = w.warm[h.Page]
	}
	return out
}

// TestWatchHintsWarmNow checks that a watcher with presence has each
// update's warm flags filled in from the cache when it is sent, on the
// stream's copy only (the update is shared between subscribers).
func TestWatchHintsWarmNow(t *testing.T) {
	watcher := &presenceWatcher{Watcher: servertest.NewWatcher(), warm: map[string]bool{"/hot": true}}
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Watcher: watcher})
	w, err := h.hints.WatchHints(testCtx(t), &prefetchv1.WatchHintsRequest{UserIds: []string{"alice"}})
	if err != nil {
		t.Fatalf("WatchHints: %v", err)
	}
	if _, err := w.Header(); err != nil {
		t.Fatalf("Header: %v", err)
	}
	sub := <-watcher.Subs
	hints := []hint.Hint{{Page: "/hot", Probability: 0.6}, {Page: "/cold", Probability: 0.3, Warm: true}}
	sub.Updates <- hint.Update{UserID: "alice", At: time.Now(), Result: hint.Result{ModelVersion: "v1", Hints: hints}}
	got, err := w.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if hs := got.GetHints(); len(hs) != 2 || !hs[0].GetWarm() || hs[1].GetWarm() {
		t.Errorf("hints %v, want /hot warm and /cold cold (as the cache says now)", hs)
	}
	if hints[0].Warm || !hints[1].Warm {
		t.Errorf("the shared update's hints were changed: %+v", hints)
	}
	watcher.mu.Lock()
	defer watcher.mu.Unlock()
	if watcher.asks != 1 {
		t.Errorf("presence asked %d times for one update, want 1", watcher.asks)
	}
}
