package prefetch

import (
	"strconv"
	"testing"
	"time"
)

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name  string
		rate  float64
		burst int
		at    []time.Duration // offsets of attempts
		want  []bool
	}{
		{"unlimited", 0, 0, []time.Duration{0, 0, 0}, []bool{true, true, true}},
		{"burst then refusal", 1, 2, []time.Duration{0, 0, 0}, []bool{true, true, false}},
		{"refills at the rate", 2, 1, []time.Duration{0, 0, 400 * time.Millisecond, 500 * time.Millisecond}, []bool{true, false, false, true}},
		{"refill capped at burst", 10, 2, []time.Duration{0, 0, time.Hour, time.Hour, time.Hour}, []bool{true, true, true, true, false}},
		{"default burst is the rate", 3, 0, []time.Duration{0, 0, 0, 0}, []bool{true, true, true, false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newTokenBucket(tc.rate, tc.burst)
			for i, d := range tc.at {
				if got := b.allow(t0.Add(d)); got != tc.want[i] {
					t.Fatalf("attempt %d at +%v: allow = %v, want %v", i, d, got, tc.want[i])
				}
			}
		})
	}
}

func TestUserLimiterBounded(t *testing.T) {
	l := newUserLimiter(1, 1, 100)
	t0 := time.Unix(1000, 0)
	for i := range 10_000 {
		if !l.allow("u"+strconv.Itoa(i), t0) {
			t.Fatalf("first prefetch of user %d refused", i)
		}
		if len(l.buckets) > 100 {
			t.Fatalf("%d buckets held, want at most 100", len(l.buckets))
		}
	}
	if l.allow("u9999", t0) {
		t.Fatalf("second prefetch of a limited user allowed")
	}
}

func TestBudget(t *testing.T) {
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name string
		b    budget
		try  []int64 // bytes per attempt, all at t0 except the last at t0+window
		want []bool
	}{
		{"unlimited", budget{window: time.Minute}, []int64{100, 100, 100}, []bool{true, true, true}},
		{"keys", budget{window: time.Minute, maxKeys: 2}, []int64{1, 1, 1, 1}, []bool{true, true, false, true}},
		{"bytes", budget{window: time.Minute, maxBytes: 10}, []int64{6, 6, 4, 10}, []bool{true, false, true, true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i, n := range tc.try {
				at := t0
				if i == len(tc.try)-1 {
					at = t0.Add(time.Minute)
				}
				if got := tc.b.take(n, at); got != tc.want[i] {
					t.Fatalf("attempt %d (%d bytes): take = %v, want %v", i, n, got, tc.want[i])
				}
			}
		})
	}
}

func TestBreaker(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var states []BreakerState
	b := &breaker{failures: 2, cooldown: time.Second, probes: 1, onChange: func(s BreakerState) { states = append(states, s) }}
	step := func(at time.Duration, wantAllow bool, ok bool) {
		t.Helper()
		if got := b.allow(t0.Add(at)); got != wantAllow {
			t.Fatalf("at +%v: allow = %v, want %v (state %v)", at, got, wantAllow, b.current())
		}
		if wantAllow {
			b.done(ok, t0.Add(at))
		}
	}
	step(0, true, false)
	step(0, true, true) // a success resets the count
	step(0, true, false)
	step(0, true, false) // second consecutive failure: open
	step(500*time.Millisecond, false, false)
	// Half-open: one probe at a time.
	if !b.allow(t0.Add(time.Second)) {
		t.Fatal("no trial after the cooldown")
	}
	if b.allow(t0.Add(time.Second)) {
		t.Fatal("a second trial while the first is in flight")
	}
	b.release() // a trial without a verdict changes nothing
	if b.current() != BreakerHalfOpen || !b.allow(t0.Add(time.Second)) {
		t.Fatalf("after a released trial: state %v, want half-open with a trial free", b.current())
	}
	b.done(false, t0.Add(time.Second)) // failed trial: open again
	step(1500*time.Millisecond, false, false)
	step(2*time.Second, true, true) // good trial: closed
	step(2*time.Second, true, true)
	want := []BreakerState{BreakerOpen, BreakerHalfOpen, BreakerOpen, BreakerHalfOpen, BreakerClosed}
	if len(states) != len(want) {
		t.Fatalf("transitions %v, want %v", states, want)
	}
	for i := range want {
		if states[i] != want[i] {
			t.Fatalf("transitions %v, want %v", states, want)
		}
	}
}

func TestKeyTable(t *testing.T) {
	kt := newKeyTable(3)
	// start and done as the Warmer calls them.
	write := func(key string, at int64) {
		t.Helper()
		slot, _, flying := kt.lookup(key)
		if flying {
			t.Fatalf("%s already in flight", key)
		}
		slot = kt.start(key, slot)
		if _, _, flying := kt.lookup(key); !flying {
			t.Fatalf("%s not in flight after start", key)
		}
		kt.done(slot, at, 0)
	}
	write("a", 10)
	write("b", 20)
	slot, _, _ := kt.lookup("c")
	kt.abort(kt.start("c", slot))
	if slot, exp, flying := kt.lookup("c"); slot != noSlot || exp != 0 || flying {
		t.Fatalf("aborted key: slot %d expiry %d flying %v", slot, exp, flying)
	}
	kt.expire(10)
	if _, exp, _ := kt.lookup("a"); exp != 0 {
		t.Fatalf("a still remembered until %d after expiring", exp)
	}
	write("a", 30)
	write("d", 40)
	write("e", 50) // over max 3: b (oldest) is forgotten
	if _, exp, _ := kt.lookup("b"); exp != 0 {
		t.Fatalf("b remembered past the cap")
	}
	if kt.Len() != 3 || kt.flying() != 0 {
		t.Fatalf("Len %d flying %d, want 3 and 0", kt.Len(), kt.flying())
	}
	for key, want := range map[string]int64{"a": 30, "d": 40, "e": 50} {
		if _, exp, _ := kt.lookup(key); exp != want {
			t.Errorf("%s expires %d, want %d", key, exp, want)
		}
	}
	kt.expire(100)
	if kt.Len() != 0 || len(kt.index) != 0 || len(kt.ring) != 0 {
		t.Fatalf("after everything expired: Len %d index %d ring %d", kt.Len(), len(kt.index), len(kt.ring))
	}
	if len(kt.slots) > 4 {
		t.Fatalf("%d slots for at most 4 keys at once; slots are not reused", len(kt.slots))
	}
}

func TestKeyTableRewriteExpired(t *testing.T) {
	kt := newKeyTable(10)
	kt.done(kt.start("x", noSlot), 5, 0)
	slot, exp, _ := kt.lookup("x") // expired at 10 but still remembered
	if exp != 5 {
		t.Fatalf("x expires %d, want 5", exp)
	}
	slot = kt.start("x", slot)
	if kt.Len() != 0 || kt.flying() != 1 {
		t.Fatalf("rewriting: Len %d flying %d, want 0 and 1", kt.Len(), kt.flying())
	}
	kt.done(slot, 20, 0)
	kt.expire(10) // pops the stale entry of the first write only
	if _, exp, _ := kt.lookup("x"); exp != 20 || kt.Len() != 1 {
		t.Fatalf("after expiring the first write: x expires %d, Len %d; want 20 and 1", exp, kt.Len())
	}
	kt.expire(20)
	if kt.Len() != 0 || len(kt.index) != 0 {
		t.Fatalf("after the second write expired: Len %d, index %d", kt.Len(), len(kt.index))
	}
}

func TestKeyTableForgetWritten(t *testing.T) {
	kt := newKeyTable(10)
	kt.done(kt.start("a", noSlot), 5, 0)
	kt.done(kt.start("b", noSlot), 6, 0)
	c := kt.start("c", noSlot)
	kt.forgetWritten()
	if kt.Len() != 0 || kt.flying() != 1 || len(kt.ring) != 0 {
		t.Fatalf("Len %d flying %d ring %d, want 0, 1, 0", kt.Len(), kt.flying(), len(kt.ring))
	}
	if _, exp, _ := kt.lookup("a"); exp != 0 {
		t.Fatalf("a still remembered")
	}
	kt.done(c, 7, 0)
	if _, exp, _ := kt.lookup("c"); exp != 7 || kt.Len() != 1 {
		t.Fatalf("c expires %d, Len %d; want 7 and 1", exp, kt.Len())
	}
}

// handBucket is the token bucket this package wrote itself before it used
// golang.org/x/time/rate, kept as the baseline of BenchmarkTokenBucket.
type handBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newHandBucket(rate float64, burst int) *handBucket {
	b := float64(burst)
	if b < 1 {
		b = max(1, rate)
	}
	return &handBucket{rate: rate, burst: b, tokens: b}
}

func (b *handBucket) allow(now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// TestHandBucketAgrees checks that the baseline answers as the library-backed
// bucket does, so the benchmark compares like with like.
func TestHandBucketAgrees(t *testing.T) {
	t0 := time.Unix(1000, 0)
	lib, hand := newTokenBucket(1000, 5), newHandBucket(1000, 5)
	for i := range 10_000 {
		now := t0.Add(time.Duration(i) * 700 * time.Microsecond / 1000)
		if a, b := lib.allow(now), hand.allow(now); a != b {
			t.Fatalf("attempt %d at %v: rate allows %v, hand-written %v", i, now.Sub(t0), a, b)
		}
	}
}

// BenchmarkTokenBucket compares the x/time/rate bucket with the hand-written
// one it replaced, on the warmer's two uses: one global bucket taking a
// token per prefetch (refused about a third of the time), and a new user's
// bucket (created, then one token). The sub-benchmarks alternate with
// -count.
func BenchmarkTokenBucket(b *testing.B) {
	t0 := time.Unix(1000, 0)
	step := 15 * time.Microsecond // 66,667 attempts/s against 50,000/s
	steady := func(b *testing.B, allow func(time.Time) bool) {
		b.ReportAllocs()
		n := 0
		for i := range b.N {
			if allow(t0.Add(time.Duration(i) * step)) {
				n++
			}
		}
		b.ReportMetric(float64(n)/float64(b.N), "allowed/op")
	}
	b.Run("steady/rate", func(b *testing.B) { steady(b, newTokenBucket(50_000, 100).allow) })
	b.Run("steady/hand", func(b *testing.B) { steady(b, newHandBucket(50_000, 100).allow) })
	b.Run("new-user/rate", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if !newTokenBucket(2, 0).allow(t0) {
				b.Fatal("first token refused")
			}
		}
	})
	b.Run("new-user/hand", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if !newHandBucket(2, 0).allow(t0) {
				b.Fatal("first token refused")
			}
		}
	})
}
