package engine

import (
	"context"
	"time"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
)

type subscriber struct {
	ch chan hint.Update
}

// Subscribe implements hint.Watcher: every click of one of users produces an
// Update with the hints computed for it. A subscriber that falls behind loses
// updates (counted) instead of slowing ingestion. cancel releases the
// subscription and closes the channel.
func (e *Engine) Subscribe(users []string, buffer int) (<-chan hint.Update, func()) {
	if buffer < 1 {
		buffer = 1
	}
	s := &subscriber{ch: make(chan hint.Update, buffer)}
	e.subsMu.Lock()
	for _, u := range users {
		set := e.subs[u]
		if set == nil {
			set = make(map[*subscriber]struct{})
			e.subs[u] = set
		}
		set[s] = struct{}{}
	}
	e.nsubs.Add(1)
	e.subsMu.Unlock()

	done := false
	cancel := func() {
		e.subsMu.Lock()
		defer e.subsMu.Unlock()
		if done {
			return
		}
		done = true
		for _, u := range users {
			if set := e.subs[u]; set != nil {
				delete(set, s)
				if len(set) == 0 {
					delete(e.subs, u)
				}
			}
		}
		e.nsubs.Add(-1)
		close(s.ch)
	}
	return s.ch, cancel
}

// WarmNow implements hint.Presence with the warmer's presence check (one
// round trip), as Predict fills its warm flags.
func (e *Engine) WarmNow(ctx context.Context, user string, hints []hint.Hint) []bool {
	pages := make([]string, len(hints))
	for i, h := range hints {
		pages[i] = h.Page
	}
	return e.deps.Warmer.Present(ctx, user, pages, nil)
}

// publish sends the hints of one click to the user's subscribers without
// blocking.
func (e *Engine) publish(user string, l *lifecycle.Live, b *buffers, at time.Time) {
	e.subsMu.RLock()
	defer e.subsMu.RUnlock()
	set := e.subs[user]
	if len(set) == 0 {
		return
	}
	u := hint.Update{UserID: user, At: at, Result: hint.Result{ModelVersion: l.Version, Hints: make([]hint.Hint, len(b.cands))}}
	for i, c := range b.cands {
		u.Result.Hints[i] = hint.Hint{Page: b.page(l, c.Index), Probability: c.Probability}
	}
	for s := range set {
		select {
		case s.ch <- u:
		default:
			e.m.watchDropped.Inc()
		}
	}
}

// CountWatchDropped counts a hint update that a watcher served elsewhere
// (the AnyUser hub) lost by falling behind, in
// prefetchd_engine_watch_dropped_total.
func (e *Engine) CountWatchDropped() { e.m.watchDropped.Inc() }
