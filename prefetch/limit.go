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

// roll starts a new window at now when the current one has ended.
func (b *budget) roll(now time.Time) {
	if b.start.IsZero() || now.Sub(b.start) >= b.window {
		b.start, b.keys, b.bytes = now, 0, 0
	}
}

// reserveKeys reserves up to n keys of the window at now, before their
// values are known (origin mode fetches only those). It returns how many
// it reserved (n without a key cap; 0 once either cap is reached) and the
// window's start, which releaseKeys and takeBytes are given.
func (b *budget) reserveKeys(n int, now time.Time) (int, time.Time) {
	b.roll(now)
	if b.maxBytes > 0 && b.bytes >= b.maxBytes {
		return 0, b.start
	}
	if b.maxKeys > 0 {
		n = min(n, max(b.maxKeys-b.keys, 0))
	}
	b.keys += n
	return n, b.start
}

// releaseKeys gives back k keys reserved in the window that started at
// start and not written, unless that window has ended.
func (b *budget) releaseKeys(k int, start time.Time) {
	if b.start.Equal(start) {
		b.keys = max(b.keys-k, 0)
	}
}

// giveBack returns a key of n bytes taken in the window that started at
// start and not written after all (found existing, or the write failed),
// unless that window has ended.
func (b *budget) giveBack(n int64, start time.Time) {
	if b.start.Equal(start) {
		b.releaseKeys(1, start)
		b.bytes = max(b.bytes-n, 0)
	}
}

// takeBytes takes n bytes for a key reserved in the window that started at
// start, or reports false (the key's reservation then released) when the
// byte cap has no room. A key whose window has ended since is taken anew.
func (b *budget) takeBytes(n int64, now, start time.Time) bool {
	b.roll(now)
	if !b.start.Equal(start) {
		return b.take(n, now)
	}
	if b.maxBytes > 0 && b.bytes+n > b.maxBytes {
		b.releaseKeys(1, start)
		return false
	}
	b.bytes += n
	return true
}

// take reserves one key of n bytes at now, or reports false when that would
// exceed a cap in the current window.
func (b *budget) take(n int64, now time.Time) bool {
	if b.maxKeys <= 0 && b.maxBytes <= 0 {
		return true
	}
	b.roll(now)
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
