package prefetch

import (
	"time"

	"golang.org/x/time/rate"
)

// tokenBucket allows rate events per second with bursts of up to burst
// events (default max(1, rate)). A rate of 0 means unlimited. It wraps
// golang.org/x/time/rate; the zero value is unlimited.
type tokenBucket struct {
	lim *rate.Limiter // nil: unlimited
}

func newTokenBucket(r float64, burst int) tokenBucket {
	if r <= 0 {
		return tokenBucket{}
	}
	if burst < 1 {
		burst = max(1, int(r))
	}
	return tokenBucket{lim: rate.NewLimiter(rate.Limit(r), burst)}
}

// allow takes one token at now if one is available.
func (b tokenBucket) allow(now time.Time) bool {
	return b.lim == nil || b.lim.AllowN(now, 1)
}

// full reports whether the bucket has refilled completely at now, that is
// whether forgetting it would change nothing.
func (b tokenBucket) full(now time.Time) bool {
	return b.lim == nil || b.lim.TokensAt(now) >= float64(b.lim.Burst())
}

// userLimiter is a token bucket per user with a bounded number of users.
// Not safe for concurrent use.
type userLimiter struct {
	rate    float64
	burst   int
	max     int
	buckets map[string]tokenBucket
}

func newUserLimiter(rate float64, burst, maxUsers int) *userLimiter {
	return &userLimiter{rate: rate, burst: burst, max: maxUsers, buckets: make(map[string]tokenBucket)}
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
		b = newTokenBucket(l.rate, l.burst)
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

// keysLeft is how many more keys the current window takes at now: -1
// without a cap on keys, 0 once either cap is reached.
func (b *budget) keysLeft(now time.Time) int {
	if b.start.IsZero() || now.Sub(b.start) >= b.window {
		if b.maxKeys > 0 {
			return b.maxKeys
		}
		return -1
	}
	if (b.maxKeys > 0 && b.keys >= b.maxKeys) || (b.maxBytes > 0 && b.bytes >= b.maxBytes) {
		return 0
	}
	if b.maxKeys > 0 {
		return b.maxKeys - b.keys
	}
	return -1
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
