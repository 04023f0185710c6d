package prefetch

import (
	"time"
)

// tokenBucket allows rate events per second with bursts of up to burst
// events. A rate of 0 means unlimited. Not safe for concurrent use.
type tokenBucket struct {
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int) tokenBucket {
	b := float64(burst)
	if b < 1 {
		b = max(1, rate)
	}
	return tokenBucket{rate: rate, burst: b, tokens: b}
}

// allow takes one token at now if one is available.
func (b *tokenBucket) allow(now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	b.refill(now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (b *tokenBucket) refill(now time.Time) {
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
}

// full reports whether the bucket has refilled completely at now, that is
// whether forgetting it would change nothing.
func (b *tokenBucket) full(now time.Time) bool {
	b.refill(now)
	return b.tokens >= b.burst
}

// userLimiter is a token bucket per user with a bounded number of users.
// Not safe for concurrent use.
type userLimiter struct {
	rate    float64
	burst   int
	max     int
	buckets map[string]*tokenBucket
}

func newUserLimiter(rate float64, burst, maxUsers int) *userLimiter {
	return &userLimiter{rate: rate, burst: burst, max: maxUsers, buckets: make(map[string]*tokenBucket)}
}

// allow takes one token from user's bucket at now.
func (l *userLimiter) allow(user string, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	b, ok := l.buckets[user]
	if !ok {
		if len(l.buckets) >= l.max {
			l.sweep(now)
		}
		nb := newTokenBucket(l.rate, l.burst)
		b = &nb
		l.buckets[user] = b
	}
	return b.allow(now)
}

// sweep forgets users whose bucket is full again; if every user is still
// limited it forgets them all, which errs on the side of allowing prefetches
// and keeps memory bounded.
func (l *userLimiter) sweep(now time.Time) {
	for u, b := range l.buckets {
		if b.full(now) {
			delete(l.buckets, u)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}

// budget caps the keys and bytes written per fixed window. Zero caps mean
// unlimited. Not safe for concurrent use.
type budget struct {
	window   time.Duration
	maxKeys  int
	maxBytes int64
	start    time.Time
	keys     int
	bytes    int64
}

// take reserves one key of n bytes at now, or reports false when that would
// exceed a cap in the current window.
func (b *budget) take(n int64, now time.Time) bool {
	if b.maxKeys <= 0 && b.maxBytes <= 0 {
		return true
	}
	if b.start.IsZero() || now.Sub(b.start) >= b.window {
		b.start, b.keys, b.bytes = now, 0, 0
	}
	if b.maxKeys > 0 && b.keys+1 > b.maxKeys {
		return false
	}
	if b.maxBytes > 0 && b.bytes+n > b.maxBytes {
		return false
	}
	b.keys++
	b.bytes += n
	return true
}
