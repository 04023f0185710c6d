package app

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/hint"
)

// AnyUser is the WatchHints user id that watches every user: the stream
// carries, for a sample of the clicks of all users (at most one per
// anyEvery), the clicking user's top K hints at any probability. It lets a
// demonstration show hints without knowing who is about to click.
const AnyUser = "*"

// anyEvery is the shortest time between two updates of an AnyUser watch.
const anyEvery = 100 * time.Millisecond

// anyHub serves AnyUser watches: the click tap offers it the users who just
// clicked, it keeps the latest one and, at most once per every, asks the
// predictor for that user's hints and sends them to every subscriber.
type anyHub struct {
	predict func(ctx context.Context, q hint.Query) (hint.Result, error)
	dropped func() // counts an update a slow watcher lost
	every   time.Duration
	latest  chan string // capacity 1: the newest click waiting

	// mu guards subs.
	mu   sync.Mutex
	subs map[chan hint.Update]struct{}
}

func newAnyHub(predict func(context.Context, hint.Query) (hint.Result, error), dropped func(), every time.Duration) *anyHub {
	return &anyHub{predict: predict, dropped: dropped, every: every, latest: make(chan string, 1), subs: map[chan hint.Update]struct{}{}}
}

// clicked offers a user who just clicked; it never blocks, and costs a lock
// only while someone watches.
func (h *anyHub) clicked(user string) {
	h.mu.Lock()
	watched := len(h.subs) > 0
	h.mu.Unlock()
	if !watched {
		return
	}
	select {
	case h.latest <- user:
	default: // one waits already; this click is not sampled
	}
}

// subscribe implements hint.Watcher's Subscribe for AnyUser.
func (h *anyHub) subscribe(buffer int) (<-chan hint.Update, func()) {
	ch := make(chan hint.Update, max(buffer, 1))
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, ch)
			h.mu.Unlock()
			close(ch)
		})
	}
}

// run serves the sampled clicks until ctx ends.
func (h *anyHub) run(ctx context.Context) {
	// A timer from each update, not a ticker: a tick left over from a
	// quiet spell would let the next two updates out back to back.
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		var user string
		select {
		case <-ctx.Done():
			return
		case user = <-h.latest:
		}
		res, err := h.predict(ctx, hint.Query{UserID: user, Threshold: 0})
		if err == nil {
			now := time.Now()
			u := hint.Update{UserID: user, Result: res, At: now}
			h.mu.Lock()
			for ch := range h.subs {
				select {
				case ch <- u:
				default: // a slow watcher loses updates
					h.dropped()
				}
			}
			h.mu.Unlock()
			t.Reset(h.every - time.Since(now))
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
}

// clickTap is the consumer's handler: the engine, telling the AnyUser hub
// who clicked once an event is applied.
type clickTap struct {
	features.BatchHandler
	hub *anyHub
}

// HandleEvent implements features.Handler.
func (c clickTap) HandleEvent(ctx context.Context, ev features.Event, meta features.Meta) error {
	err := c.BatchHandler.HandleEvent(ctx, ev, meta)
	if err == nil {
		c.hub.clicked(ev.UserID)
	}
	return err
}

// HandleEvents implements features.BatchHandler.
func (c clickTap) HandleEvents(ctx context.Context, evs []features.Event, metas []features.Meta, errs []error) int {
	n := c.BatchHandler.HandleEvents(ctx, evs, metas, errs)
	for i := n - 1; i >= 0; i-- { // the newest applied click
		if errs[i] == nil {
			c.hub.clicked(evs[i].UserID)
			break
		}
	}
	return n
}

// watchesAny reports whether a WatchHints request asks for every user.
func watchesAny(users []string) bool { return slices.Contains(users, AnyUser) }
