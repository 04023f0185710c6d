package prefetch

import (
	"sync"
	"time"
)

// BreakerState is the state of the origin circuit breaker.
type BreakerState int

// Circuit breaker states.
const (
	// BreakerClosed lets every request through and counts consecutive failures.
	BreakerClosed BreakerState = iota
	// BreakerOpen refuses every request until the cooldown has passed.
	BreakerOpen
	// BreakerHalfOpen lets a limited number of trial requests through; a
	// success closes the breaker, a failure opens it again.
	BreakerHalfOpen
)

// String names the state.
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// breaker is a consecutive-failure circuit breaker. Safe for concurrent use.
type breaker struct {
	failures int           // consecutive failures that open it
	cooldown time.Duration // open -> half-open
	probes   int           // trial requests allowed while half-open
	onChange func(BreakerState)

	mu       sync.Mutex
	state    BreakerState
	fails    int
	openedAt time.Time
	inTrial  int
}

// allow reports whether a request may go to the origin at now. A true answer
// must be followed by exactly one done call.
func (b *breaker) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerOpen:
		if now.Sub(b.openedAt) < b.cooldown {
			return false
		}
		b.set(BreakerHalfOpen)
		b.inTrial = 0
		fallthrough
	case BreakerHalfOpen:
		if b.inTrial >= b.probes {
			return false
		}
		b.inTrial++
		return true
	}
	return true
}

// done records the outcome of an allowed request.
func (b *breaker) done(ok bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerHalfOpen:
		b.inTrial--
		if ok {
			b.fails = 0
			b.set(BreakerClosed)
		} else {
			b.openedAt = now
			b.set(BreakerOpen)
		}
	case BreakerClosed:
		if ok {
			b.fails = 0
			return
		}
		b.fails++
		if b.fails >= b.failures {
			b.openedAt = now
			b.set(BreakerOpen)
		}
	case BreakerOpen:
		// A request allowed before the breaker opened; the breaker already
		// knows the origin is failing.
	}
}

// release ends an allowed request without a verdict on the origin (our own
// error, or shutdown).
func (b *breaker) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == BreakerHalfOpen && b.inTrial > 0 {
		b.inTrial--
	}
}

func (b *breaker) current() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *breaker) set(s BreakerState) {
	if b.state == s {
		return
	}
	b.state = s
	if b.onChange != nil {
		b.onChange(s)
	}
}
