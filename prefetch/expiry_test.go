package prefetch

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"
)

// heapSet is the expiry set the Evaluator used before expirySet: one binary
// heap over all entries. It is the reference expirySet must agree with, and
// the baseline of BenchmarkExpirySet.
type heapSet[V any] struct {
	max   int
	byKey map[string]*heapEntry[V]
	order heapOrder[V]
}

type heapEntry[V any] struct {
	key   string
	at    int64
	value V
	index int
}

func newHeapSet[V any](max int) *heapSet[V] {
	return &heapSet[V]{max: max, byKey: make(map[string]*heapEntry[V])}
}

func (s *heapSet[V]) Len() int { return len(s.byKey) }

func (s *heapSet[V]) get(key string) (*heapEntry[V], bool) {
	e, ok := s.byKey[key]
	return e, ok
}

func (s *heapSet[V]) put(key string, v V, at int64, evicted func(*heapEntry[V])) {
	if e, ok := s.byKey[key]; ok {
		e.value, e.at = v, at
		heap.Fix(&s.order, e.index)
		return
	}
	for s.max > 0 && len(s.byKey) >= s.max {
		s.popMin(evicted)
	}
	e := &heapEntry[V]{key: key, value: v, at: at}
	s.byKey[key] = e
	heap.Push(&s.order, e)
}

func (s *heapSet[V]) expire(now int64, fn func(*heapEntry[V])) {
	for len(s.order) > 0 && s.order[0].at <= now {
		s.popMin(fn)
	}
}

func (s *heapSet[V]) drain(fn func(*heapEntry[V])) {
	for len(s.order) > 0 {
		s.popMin(fn)
	}
}

func (s *heapSet[V]) popMin(fn func(*heapEntry[V])) {
	e := heap.Pop(&s.order).(*heapEntry[V])
	delete(s.byKey, e.key)
	if fn != nil {
		fn(e)
	}
}

type heapOrder[V any] []*heapEntry[V]

func (h heapOrder[V]) Len() int           { return len(h) }
func (h heapOrder[V]) Less(i, j int) bool { return h[i].at < h[j].at }
func (h heapOrder[V]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *heapOrder[V]) Push(x any) {
	e := x.(*heapEntry[V])
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *heapOrder[V]) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	e.index = -1
	return e
}

// expiryOp is one operation of an expiry set script: a put of key (or, with
// put false, a get of key) after an expire at now.
type expiryOp struct {
	now int64
	key string
	put bool
	at  int64
	val int
}

// expiryScript generates n operations: event time moves forward by step
// with jitter (events up to jitter late), puts expire ttl after their event
// time (ttls picks one per put), keys come from a pool of keys names.
func expiryScript(seed uint64, n, keys int, step, jitter time.Duration, ttls []time.Duration) []expiryOp {
	rng := rand.New(rand.NewPCG(seed, 1))
	ops := make([]expiryOp, n)
	clock := int64(1_000_000_000_000_000_000)
	for i := range ops {
		clock += int64(step)
		ev := clock
		if jitter > 0 {
			ev -= rng.Int64N(int64(jitter))
		}
		op := expiryOp{now: ev, key: "k" + strconv.Itoa(rng.IntN(keys)), put: rng.IntN(3) > 0, val: i}
		// Odd nanoseconds make every expiry distinct, so that "the entry
		// expiring first" names one entry.
		op.at = ev + int64(ttls[rng.IntN(len(ttls))]) + int64(2*i+1)
		ops[i] = op
	}
	return ops
}

// TestExpirySetMatchesHeap runs the same scripts through expirySet and the
// heap it replaced and checks that they hold the same entries and remove
// the same ones, in the same order, at every step.
func TestExpirySetMatchesHeap(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		name   string
		max    int
		keys   int
		step   time.Duration
		jitter time.Duration
		ttls   []time.Duration
		// replace puts keys that are present; otherwise puts skip them,
		// as the Evaluator does for a key still warm.
		replace bool
	}{
		{name: "in order", keys: 5000, step: 50 * time.Microsecond, ttls: []time.Duration{time.Second}},
		{name: "late events", keys: 5000, step: 50 * time.Microsecond, jitter: 20 * ms, ttls: []time.Duration{time.Second}},
		{name: "late beyond a bucket", keys: 2000, step: 3 * ms, jitter: 500 * ms, ttls: []time.Duration{time.Second}},
		{name: "mixed ttls", keys: 5000, step: 100 * time.Microsecond, jitter: 5 * ms, ttls: []time.Duration{ms, time.Second, time.Hour}},
		{name: "sparse", keys: 500, step: 10 * time.Second, jitter: 3 * time.Second, ttls: []time.Duration{time.Minute}},
		{name: "full set evicts the first to expire", max: 300, keys: 5000, step: 50 * time.Microsecond, jitter: 10 * ms, ttls: []time.Duration{time.Second, 3 * time.Second}},
		{name: "replaced entries", keys: 300, step: 200 * time.Microsecond, jitter: 10 * ms, ttls: []time.Duration{time.Second, 2 * time.Second}, replace: true},
		{name: "replaced entries in a full set", max: 100, keys: 300, step: 200 * time.Microsecond, ttls: []time.Duration{time.Second}, replace: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ops := expiryScript(uint64(len(tc.name)), 20000, tc.keys, tc.step, tc.jitter, tc.ttls)
			got, want := newExpirySet[int](tc.max), newHeapSet[int](tc.max)
			var gotOut, wantOut []string
			gotFn := func(e *expiryEntry[int]) { gotOut = append(gotOut, e.key+"="+strconv.Itoa(e.value)) }
			wantFn := func(e *heapEntry[int]) { wantOut = append(wantOut, e.key+"="+strconv.Itoa(e.value)) }
			now := int64(math.MinInt64)
			for i, op := range ops {
				now = max(now, op.now)
				got.expire(now, gotFn)
				want.expire(now, wantFn)
				g, gok := got.get(op.key)
				w, wok := want.get(op.key)
				if gok != wok || gok && (g.at != w.at || g.value != w.value) {
					t.Fatalf("op %d: get(%s) = %v %+v, heap has %v %+v", i, op.key, gok, g, wok, w)
				}
				if op.put && (!gok || tc.replace) {
					got.put(op.key, op.val, op.at, gotFn)
					want.put(op.key, op.val, op.at, wantFn)
				}
				if !slices.Equal(gotOut, wantOut) || got.Len() != want.Len() {
					t.Fatalf("op %d: removed %v (len %d), heap removed %v (len %d)", i, gotOut, got.Len(), wantOut, want.Len())
				}
				gotOut, wantOut = gotOut[:0], wantOut[:0]
			}
			got.drain(gotFn)
			want.drain(wantFn)
			if !slices.Equal(gotOut, wantOut) || got.Len() != 0 {
				t.Fatalf("drain removed %d entries (len after %d), heap %d", len(gotOut), got.Len(), len(wantOut))
			}
			if len(got.buckets) != 0 || len(got.order) != 0 || len(got.index) != 0 {
				t.Fatalf("drained set keeps %d buckets, %d in order, %d keys", len(got.buckets), len(got.order), len(got.index))
			}
		})
	}
}

// TestExpirySetFarTimes checks the times at the ends of the int64 range.
func TestExpirySetFarTimes(t *testing.T) {
	s := newExpirySet[int](0)
	ats := []int64{math.MaxInt64, math.MinInt64, 0, -1, 1, math.MaxInt64 - 1, math.MinInt64 + 1}
	for i, at := range ats {
		s.put("k"+strconv.Itoa(i), i, at, nil)
	}
	var order []int64
	s.expire(0, func(e *expiryEntry[int]) { order = append(order, e.at) })
	if want := []int64{math.MinInt64, math.MinInt64 + 1, -1, 0}; !slices.Equal(order, want) {
		t.Fatalf("expire(0) removed %v, want %v", order, want)
	}
	order = order[:0]
	s.drain(func(e *expiryEntry[int]) { order = append(order, e.at) })
	if want := []int64{1, math.MaxInt64 - 1, math.MaxInt64}; !slices.Equal(order, want) {
		t.Fatalf("drain removed %v, want %v", order, want)
	}
	for _, tc := range []struct {
		t    time.Time
		want int64
	}{
		{time.Time{}, math.MinInt64},
		{time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), math.MaxInt64},
		{time.Unix(0, 42), 42},
	} {
		if got := unixNanos(tc.t); got != tc.want {
			t.Errorf("unixNanos(%v) = %d, want %d", tc.t, got, tc.want)
		}
	}
	if got := addNanos(math.MaxInt64-1, time.Hour); got != math.MaxInt64 {
		t.Errorf("addNanos overflowed to %d", got)
	}
}

// heapEvaluator is the Evaluator's rules over the heap it used before, with
// plain counters: the reference for TestEvaluatorMatchesHeap.
type heapEvaluator struct {
	perUser bool
	now     int64
	active  string
	set     *heapSet[*heapEval]
	stats   map[string]*VersionStats
}

type heapEval struct {
	s     *VersionStats
	bytes int64
	used  bool
	from  int64 // event time of the click the prefetch was made for
}

func (h *heapEvaluator) version(v string) *VersionStats {
	if h.stats[v] == nil {
		h.stats[v] = &VersionStats{ModelVersion: v}
	}
	return h.stats[v]
}

func (h *heapEvaluator) key(user, page string) string {
	if h.perUser {
		return user + "\x00" + page
	}
	return page
}

func (h *heapEvaluator) retire(e *heapEntry[*heapEval]) {
	if !e.value.used {
		e.value.s.Wasted++
		e.value.s.WastedBytes += uint64(e.value.bytes)
	}
}

func (h *heapEvaluator) advance(at int64) {
	h.now = max(h.now, at)
	h.set.expire(h.now, h.retire)
}

func (h *heapEvaluator) prefetch(user, page, version string, at int64, ttl time.Duration, bytes int64) {
	h.advance(at)
	h.active = version
	k := h.key(user, page)
	if e, ok := h.set.get(k); ok && e.at > at {
		return
	}
	s := h.version(version)
	s.Issued++
	h.set.put(k, &heapEval{s: s, bytes: bytes, from: at}, at+int64(ttl), h.retire)
}

func (h *heapEvaluator) click(user, page string, at int64) {
	h.advance(at)
	if e, ok := h.set.get(h.key(user, page)); ok && e.at > at && e.value.from <= at {
		e.value.s.Clicks++
		e.value.s.WarmClicks++
		if !e.value.used {
			e.value.used = true
			e.value.s.Used++
		}
		return
	}
	h.version(h.active).Clicks++
}

// TestEvaluatorMatchesHeap drives the Evaluator and the rules over the
// former heap with the same streams of clicks and prefetches, late events
// and a swap of model version included, and checks that issued, used,
// clicks, warm clicks, wasted counts and bytes agree at every checkpoint.
func TestEvaluatorMatchesHeap(t *testing.T) {
	cases := []struct {
		name     string
		template string
		max      int
		users    int
		pages    int
		jitter   time.Duration
	}{
		{name: "shared key", pages: 400, users: 50},
		{name: "per-user key", template: "user:{user}:page:{page}", pages: 40, users: 50},
		{name: "per-user key, late events", template: "user:{user}:page:{page}", pages: 40, users: 50, jitter: 300 * time.Millisecond},
		{name: "shared key, bounded", max: 150, pages: 400, users: 50, jitter: 50 * time.Millisecond},
	}
	const ttl = time.Second
	t0 := time.Date(1995, 7, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := NewEvaluator(EvaluatorConfig{KeyTemplate: tc.template, MaxEntries: tc.max}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ref := &heapEvaluator{perUser: ev.PerUser(), now: math.MinInt64, active: NoVersion,
				set: newHeapSet[*heapEval](tc.max), stats: map[string]*VersionStats{}}
			ref.version(NoVersion)
			ev.version(NoVersion)
			rng := rand.New(rand.NewPCG(7, uint64(len(tc.name))))
			clock := t0
			for i := range 60000 {
				clock = clock.Add(100 * time.Microsecond)
				at := clock
				if tc.jitter > 0 {
					at = at.Add(-time.Duration(rng.Int64N(int64(tc.jitter))))
				}
				at = at.Add(time.Duration(2*i + 1)) // distinct expiries
				user := "u" + strconv.Itoa(rng.IntN(tc.users))
				page := "/p" + strconv.Itoa(rng.IntN(tc.pages))
				if rng.IntN(4) == 0 {
					ev.ObserveClick(user, page, at)
					ref.click(user, page, at.UnixNano())
				} else {
					version := "v1"
					if i > 30000 {
						version = "v2"
					}
					bytes := int64(1 + rng.IntN(100))
					ev.ObservePrefetchBytes(user, page, version, at, ttl, bytes)
					ref.prefetch(user, page, version, at.UnixNano(), ttl, bytes)
				}
				if i%5000 == 4999 {
					compareStats(t, fmt.Sprintf("event %d", i), ev, ref)
				}
			}
			end := clock.Add(2 * ttl)
			ev.Advance(end)
			ref.advance(end.UnixNano())
			compareStats(t, "end", ev, ref)
		})
	}
}

func compareStats(t *testing.T, when string, ev *Evaluator, ref *heapEvaluator) {
	t.Helper()
	got := ev.Stats()
	if len(got) != len(ref.stats) {
		t.Fatalf("%s: %d versions, heap has %d", when, len(got), len(ref.stats))
	}
	for _, g := range got {
		w := *ref.stats[g.ModelVersion]
		g.Precision, g.Coverage = 0, 0
		if g != w {
			t.Fatalf("%s: Stats()[%s] = %+v, heap %+v", when, g.ModelVersion, g, w)
		}
	}
	if ev.Tracked() != ref.set.Len() {
		t.Fatalf("%s: tracked %d, heap %d", when, ev.Tracked(), ref.set.Len())
	}
}

// BenchmarkExpirySet runs the Evaluator's use of its expiry set at 20,000
// clicks/s with a 1 s TTL (per click: expire, look up the click's key, add
// three prefetches, ~60,000 entries held) through the heap it used before
// and through expirySet, in the same run, alternating which goes first.
func BenchmarkExpirySet(b *testing.B) {
	const (
		perClick = 3
		users    = 100_000
	)
	step := time.Second / 20_000
	ops := expiryScript(1, 1<<16, users, step/perClick, 2*time.Millisecond, []time.Duration{time.Second})
	warmup := 20_000 * perClick // one TTL of puts
	// run drives one set: visit expires at now, looks key up and, if
	// absent, puts it with expiry at.
	run := func(b *testing.B, visit func(now int64, key string, val int, at int64), size func() int) {
		i, now := 0, int64(math.MinInt64)
		next := func() {
			op := ops[i%len(ops)]
			lap := int64(i/len(ops)) * int64(len(ops)) * int64(step/perClick)
			now = max(now, op.now+lap)
			visit(now, op.key, op.val, op.at+lap)
			i++
		}
		for range warmup {
			next()
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			for range perClick {
				next()
			}
		}
		b.ReportMetric(float64(size()), "entries")
	}
	heapRun := func(b *testing.B) {
		s := newHeapSet[int](0)
		run(b, func(now int64, key string, val int, at int64) {
			s.expire(now, nil)
			if _, ok := s.get(key); !ok {
				s.put(key, val, at, nil)
			}
		}, s.Len)
	}
	bucketRun := func(b *testing.B) {
		s := newExpirySet[int](0)
		run(b, func(now int64, key string, val int, at int64) {
			s.expire(now, nil)
			if _, ok := s.get(key); !ok {
				s.put(key, val, at, nil)
			}
		}, s.Len)
	}
	for range 2 {
		b.Run("heap", heapRun)
		b.Run("buckets", bucketRun)
	}
}

// BenchmarkEvaluatorStream is the Evaluator at 20,000 clicks/s with a 1 s
// TTL and per-user keys: per click, ObserveClick and three prefetches
// reported with ObservePrefetchBytes, ~60,000 prefetches tracked.
func BenchmarkEvaluatorStream(b *testing.B) {
	benchEvaluatorStream(b, func(ev *Evaluator, user string, pages []string, at time.Time, _ []item, _ [][]byte) {
		for _, p := range pages {
			ev.ObservePrefetchBytes(user, p, "v1", at, time.Second, 100)
		}
	})
}

// BenchmarkEvaluatorWritten is BenchmarkEvaluatorStream with the three
// prefetches reported as the Warmer does, a written pipeline at once with
// its keys spelled.
func BenchmarkEvaluatorWritten(b *testing.B) {
	benchEvaluatorStream(b, func(ev *Evaluator, user string, pages []string, at time.Time, items []item, values [][]byte) {
		for i, p := range pages {
			items[i] = item{key: ev.tmpl.render(user, p), user: user, page: p, version: "v1", at: at, judged: at}
		}
		ev.observeWritten(items, values, time.Time{}, time.Second, ev.tmplStr)
	})
}

// benchEvaluatorStream feeds ev a click of a random user on a random page
// and reports three prefetches for it through report, per iteration.
func benchEvaluatorStream(b *testing.B, report func(ev *Evaluator, user string, pages []string, at time.Time, items []item, values [][]byte)) {
	ev, err := NewEvaluator(EvaluatorConfig{KeyTemplate: "user:{user}:page:{page}"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	const users, pages = 20_000, 200
	t0 := time.Date(1995, 7, 1, 0, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	userNames := make([]string, users)
	for i := range userNames {
		userNames[i] = "u" + strconv.Itoa(i)
	}
	pageNames := make([]string, pages)
	for i := range pageNames {
		pageNames[i] = "/p" + strconv.Itoa(i)
	}
	items, values := make([]item, 3), [][]byte{make([]byte, 100), make([]byte, 100), make([]byte, 100)}
	picked := make([]string, 3)
	i := 0
	click := func() {
		at := t0.Add(time.Duration(i) * (time.Second / 20_000))
		u := userNames[rng.IntN(users)]
		ev.ObserveClick(u, pageNames[rng.IntN(pages)], at)
		for j := range picked {
			picked[j] = pageNames[rng.IntN(pages)]
		}
		report(ev, u, picked, at, items, values)
		i++
	}
	for range 40_000 {
		click()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		click()
	}
	b.ReportMetric(float64(ev.Tracked()), "entries")
}
