package prefetch

import (
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestEvaluatorConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  EvaluatorConfig
		ok   bool
	}{
		{"zero", EvaluatorConfig{}, true},
		{"per user", EvaluatorConfig{KeyTemplate: "user:{user}:page:{page}", MaxEntries: 10}, true},
		{"no page", EvaluatorConfig{KeyTemplate: "x:{user}"}, false},
		{"negative cap", EvaluatorConfig{MaxEntries: -1}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// evStep is one event of an evaluator script: a prefetch (version set) or a
// click, at t0 plus a number of seconds.
type evStep struct {
	sec     int
	user    string
	page    string
	version string // prefetch by this version; "" means a click
	bytes   int64
}

func TestEvaluator(t *testing.T) {
	const ttl = 60 * time.Second
	cases := []struct {
		name     string
		template string
		max      int
		steps    []evStep
		advance  int
		want     map[string]VersionStats
	}{
		{
			name: "shared key is warm for everyone",
			steps: []evStep{
				{0, "alice", "/a", "v1", 100},
				{0, "alice", "/b", "v1", 50},
				{10, "bob", "/a", "", 0},   // warm, used
				{20, "alice", "/a", "", 0}, // warm again, already used
				{61, "carol", "/a", "", 0}, // expired: cold
				{30, "alice", "/c", "", 0}, // never warmed: cold
			},
			advance: 200,
			want: map[string]VersionStats{"v1": {Issued: 2, Used: 1, Clicks: 4, WarmClicks: 2, Wasted: 1, WastedBytes: 50,
				Precision: 0.5, Coverage: 0.5}},
		},
		{
			name:     "per-user key is warm only for its user",
			template: "user:{user}:page:{page}",
			steps: []evStep{
				{0, "alice", "/a", "v1", 100},
				{10, "bob", "/a", "", 0},   // cold for bob
				{20, "alice", "/a", "", 0}, // warm for alice
			},
			advance: 200,
			want:    map[string]VersionStats{"v1": {Issued: 1, Used: 1, Clicks: 2, WarmClicks: 1, Precision: 1, Coverage: 0.5}},
		},
		{
			name: "a prefetch of a warm key is ignored like SET NX",
			steps: []evStep{
				{0, "alice", "/a", "v1", 100},
				{30, "bob", "/a", "v2", 100}, // still warm from v1
				{50, "bob", "/a", "", 0},     // counts for v1
				{70, "bob", "/a", "v2", 100}, // expired: v2 issues it
			},
			advance: 200,
			want: map[string]VersionStats{
				"v1": {Issued: 1, Used: 1, Clicks: 1, WarmClicks: 1, Precision: 1, Coverage: 1},
				"v2": {Issued: 1, Wasted: 1, WastedBytes: 100},
			},
		},
		{
			name: "cold clicks count for the active version",
			steps: []evStep{
				{0, "alice", "/x", "", 0}, // before any model
				{1, "alice", "/a", "v1", 10},
				{2, "alice", "/y", "", 0},
				{3, "alice", "/b", "v2", 10},
				{4, "alice", "/a", "", 0}, // warm by v1
				{5, "alice", "/z", "", 0}, // cold, v2 is active
			},
			advance: 4, // nothing expired yet
			want: map[string]VersionStats{
				NoVersion: {Clicks: 1},
				"v1":      {Issued: 1, Used: 1, Clicks: 2, WarmClicks: 1, Precision: 1, Coverage: 0.5},
				"v2":      {Issued: 1, Clicks: 1},
			},
		},
		{
			name: "a full evaluator evicts the entry expiring first as wasted",
			max:  2,
			steps: []evStep{
				{0, "u", "/a", "v1", 1},
				{1, "u", "/b", "v1", 2},
				{2, "u", "/c", "v1", 4}, // evicts /a
				{3, "u", "/a", "", 0},   // cold
				{3, "u", "/b", "", 0},   // warm
			},
			advance: 3,
			want:    map[string]VersionStats{"v1": {Issued: 3, Used: 1, Clicks: 2, WarmClicks: 1, Wasted: 1, WastedBytes: 1, Precision: 1.0 / 3, Coverage: 0.5}},
		},
	}
	t0 := time.Date(1995, 7, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			ev, err := NewEvaluator(EvaluatorConfig{KeyTemplate: tc.template, MaxEntries: tc.max}, reg)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.steps {
				at := t0.Add(time.Duration(s.sec) * time.Second)
				if s.version != "" {
					ev.ObservePrefetchBytes(s.user, s.page, s.version, at, ttl, s.bytes)
				} else {
					ev.ObserveClick(s.user, s.page, at)
				}
			}
			ev.Advance(t0.Add(time.Duration(tc.advance) * time.Second))
			got := ev.Stats()
			if len(got) != len(tc.want) {
				t.Fatalf("Stats() = %+v, want %d versions", got, len(tc.want))
			}
			for _, g := range got {
				w := tc.want[g.ModelVersion]
				w.ModelVersion = g.ModelVersion
				if g != w {
					t.Errorf("Stats()[%s] = %+v, want %+v", g.ModelVersion, g, w)
				}
				checkMetrics(t, reg, g)
			}
		})
	}
}

// checkMetrics compares the exported counters of one version with its Stats.
func checkMetrics(t *testing.T, reg *prometheus.Registry, s VersionStats) {
	t.Helper()
	want := map[string]float64{
		"prefetchd_prefetch_issued_total":       float64(s.Issued),
		"prefetchd_prefetch_used_total":         float64(s.Used),
		"prefetchd_clicks_total":                float64(s.Clicks),
		"prefetchd_clicks_warm_total":           float64(s.WarmClicks),
		"prefetchd_prefetch_wasted_total":       float64(s.Wasted),
		"prefetchd_prefetch_wasted_bytes_total": float64(s.WastedBytes),
	}
	got := gatherVersion(t, reg, s.ModelVersion)
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s{model_version=%q} = %v, want %v", name, s.ModelVersion, got[name], v)
		}
	}
}

// gatherVersion returns the counters labelled model_version=version.
func gatherVersion(t *testing.T, reg *prometheus.Registry, version string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "model_version" && l.GetValue() == version {
					out[mf.GetName()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

func TestEvaluatorIsWarm(t *testing.T) {
	ev, err := NewEvaluator(EvaluatorConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ev.ObservePrefetch("alice", "/a", "v1", t0, time.Minute)
	cases := []struct {
		name string
		user string
		page string
		at   time.Time
		want bool
	}{
		{"same user", "alice", "/a", t0.Add(time.Second), true},
		{"other user, shared key", "bob", "/a", t0.Add(59 * time.Second), true},
		{"expired", "alice", "/a", t0.Add(time.Minute), false},
		{"other page", "alice", "/b", t0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ev.IsWarm(tc.user, tc.page, tc.at); got != tc.want {
				t.Fatalf("IsWarm = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestEvaluatorBounded checks that memory follows the prefetches within one
// TTL: a long stream leaves only the recent entries.
func TestEvaluatorBounded(t *testing.T) {
	ev, err := NewEvaluator(EvaluatorConfig{KeyTemplate: "user:{user}:page:{page}", MaxEntries: 1000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Event times in the past, as a replay's: the wall clock caps later ones.
	t0 := time.Now().Add(-30 * time.Hour)
	for i := range 100_000 {
		ev.ObservePrefetch("u", "/p/"+string(rune('a'+i%26))+time.Duration(i).String(), "v1", t0.Add(time.Duration(i)*time.Second), 10*time.Second)
	}
	if n := ev.Tracked(); n > 10 {
		t.Fatalf("tracked %d entries after 100000 prefetches with a 10s TTL 1s apart, want at most 10", n)
	}
}

func BenchmarkEvaluatorClick(b *testing.B) {
	ev, err := NewEvaluator(EvaluatorConfig{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	pages := make([]string, 1000)
	for i := range pages {
		pages[i] = "/page/" + time.Duration(i).String()
		ev.ObservePrefetch("u", pages[i], "v1", t0, time.Hour)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ev.ObserveClick("u", pages[i%len(pages)], t0.Add(time.Duration(i)))
		i++
	}
}

// TestEvaluatorObserveWritten checks that a pipeline reported at once, more
// than one lock's worth with unwritten pages and repeated keys, leaves the
// same figures and warm keys as the pages reported one by one, whether the
// Warmer's keys are reused (same template) or spelled again.
func TestEvaluatorObserveWritten(t *testing.T) {
	cases := []struct {
		name, evalTemplate, warmTemplate string
	}{
		{"same per-user template", "user:{user}:page:{page}", "user:{user}:page:{page}"},
		{"other warmer template", "user:{user}:page:{page}", "u:{user}:p:{page}"},
		{"shared key", "page:{page}", "page:{page}"},
	}
	t0 := time.Date(1995, 7, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			batched, err := NewEvaluator(EvaluatorConfig{KeyTemplate: tc.evalTemplate}, nil)
			if err != nil {
				t.Fatal(err)
			}
			single, err := NewEvaluator(EvaluatorConfig{KeyTemplate: tc.evalTemplate}, nil)
			if err != nil {
				t.Fatal(err)
			}
			warm := parseTemplate(tc.warmTemplate)
			var batch []item
			var values [][]byte
			for i := range 3*observeChunk + 5 {
				user, page := "u"+strconv.Itoa(i%7), "/p"+strconv.Itoa(i%23)
				at := t0.Add(time.Duration(i) * time.Millisecond)
				batch = append(batch, item{key: warm.render(user, page), user: user, page: page, version: "v1", at: at, judged: at})
				v := make([]byte, 1+i%5)
				if i%4 == 3 {
					v = nil // not written
				}
				values = append(values, v)
				if v != nil {
					single.ObservePrefetchBytes(user, page, "v1", at, time.Minute, int64(len(v)))
				}
			}
			batched.observeWritten(batch, values, time.Time{}, time.Minute, tc.warmTemplate)
			end := t0.Add(time.Second)
			for _, it := range batch {
				if got, want := batched.IsWarm(it.user, it.page, end), single.IsWarm(it.user, it.page, end); got != want {
					t.Fatalf("IsWarm(%s, %s) = %v, one by one %v", it.user, it.page, got, want)
				}
			}
			for _, ev := range []*Evaluator{batched, single} {
				ev.ObserveClick("u1", "/p1", end)
				ev.ObserveClick("u2", "/p1", end)
				ev.Advance(end.Add(time.Hour))
			}
			if got, want := batched.Stats(), single.Stats(); !slices.Equal(got, want) {
				t.Fatalf("Stats() = %+v, one by one %+v", got, want)
			}
			if got := batched.Stats()[0].Issued; got == 0 {
				t.Fatal("nothing issued")
			}
		})
	}
}

// TestEvaluatorClickBeforePrefetch: a click whose event time comes before
// the click a prefetch was made for did not find the page warm, even when
// the Evaluator hears of it after the prefetch (workers and waves apply
// clicks out of time order); a click after it did.
func TestEvaluatorClickBeforePrefetch(t *testing.T) {
	for _, tmpl := range []string{"page:{page}", "user:{user}:page:{page}"} {
		t.Run(tmpl, func(t *testing.T) {
			e, err := NewEvaluator(EvaluatorConfig{KeyTemplate: tmpl}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
			e.ObservePrefetch("a", "/x", "v1", t0.Add(10*time.Second), time.Minute)
			if e.IsWarm("a", "/x", t0.Add(5*time.Second)) {
				t.Error("IsWarm before the prefetch's click = true")
			}
			e.ObserveClick("a", "/x", t0.Add(5*time.Second)) // earlier, heard later
			s := e.Stats()[0]
			if s.Clicks != 1 || s.WarmClicks != 0 || s.Used != 0 {
				t.Fatalf("after an earlier click: %+v, want 1 click, cold", s)
			}
			if !e.IsWarm("a", "/x", t0.Add(12*time.Second)) {
				t.Error("IsWarm after the prefetch's click = false")
			}
			e.ObserveClick("a", "/x", t0.Add(12*time.Second))
			s = e.Stats()[0]
			if s.Clicks != 2 || s.WarmClicks != 1 || s.Used != 1 {
				t.Fatalf("after a later click: %+v, want 2 clicks, 1 warm, 1 used", s)
			}
		})
	}
}

// TestEvaluatorTick checks that a quiet spell settles the prefetches that
// expire in it (wasted) tick by tick, that ticks while events move time
// change nothing, and that a click after the spell still counts.
func TestEvaluatorTick(t *testing.T) {
	e, err := NewEvaluator(EvaluatorConfig{KeyTemplate: "user:{user}:page:{page}"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	e.ObservePrefetch("a", "/x", "v1", t0, 3*time.Second)
	e.ObservePrefetch("a", "/y", "v1", t0, 10*time.Second)
	wasted := func() uint64 { return e.Stats()[0].Wasted }
	for i, want := range []uint64{0, 0, 0, 1, 1} {
		// Tick 0 only notes the event time; each later one, with no event
		// between, moves it a second: t0+1s, +2s, +3s (the /x expiry), +4s.
		e.Tick(time.Second)
		if got := wasted(); got != want {
			t.Fatalf("after tick %d: wasted %d, want %d", i, got, want)
		}
	}
	// Events move time again: a tick between two of them does not add its
	// second, so /y (expiring at t0+10s) is still warm at t0+5s.
	e.ObserveClick("b", "/z", t0.Add(5*time.Second))
	e.Tick(time.Second)
	e.ObserveClick("a", "/y", t0.Add(5*time.Second))
	if s := e.Stats()[0]; s.Wasted != 1 || s.WarmClicks != 1 || s.Used != 1 {
		t.Fatalf("after the spell: %+v, want 1 wasted, 1 warm click on /y", s)
	}
	// A replay's clock is not hurried: time stands at the last event until
	// a tick finds it unmoved.
	e.ObservePrefetch("a", "/w", "v1", t0.Add(6*time.Second), 2*time.Second)
	e.Tick(time.Second)
	if got := wasted(); got != 1 {
		t.Fatalf("after one tick past a prefetch: wasted %d, want 1", got)
	}
}

// TestEvaluatorFutureClick: a click stamped minutes ahead of the wall clock
// (a client's clock running ahead, within the skew limit) neither expires
// the other prefetches nor keeps later ones from counting; its own
// prefetch counts as made now; and the ticks after it do not run event
// time ahead of the wall clock, so later short-lived prefetches still count.
func TestEvaluatorFutureClick(t *testing.T) {
	for _, ahead := range []time.Duration{5 * time.Minute, time.Hour, 23 * time.Hour} {
		t.Run(ahead.String(), func(t *testing.T) {
			e, err := NewEvaluator(EvaluatorConfig{KeyTemplate: "user:{user}:page:{page}"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
			e.wall = func() time.Time { return now }
			ttl := 30 * time.Second
			users := []string{"c1", "c2", "c3"}
			for _, u := range users {
				e.ObservePrefetch(u, "/147", "v1", now, ttl)
			}
			e.ObserveClick("z1", "/50", now.Add(ahead))
			e.ObservePrefetch("z1", "/51", "v1", now.Add(ahead), ttl)
			now = now.Add(time.Second)
			for _, u := range users {
				e.ObservePrefetch(u, "/148", "v1", now, ttl)
			}
			now = now.Add(2 * time.Second)
			for _, u := range users {
				e.ObserveClick(u, "/147", now)
				e.ObserveClick(u, "/148", now)
			}
			e.ObserveClick("z1", "/51", now)
			s := e.Stats()[0]
			if s.Issued != 7 || s.Used != 7 || s.WarmClicks != 7 || s.Wasted != 0 {
				t.Fatalf("stats %+v, want 7 issued, 7 used, 7 warm clicks, 0 wasted", s)
			}
			// Time runs on from the wall clock: everything expires used.
			now = now.Add(ttl)
			e.Advance(now)
			if s := e.Stats()[0]; s.Wasted != 0 || e.Tracked() != 0 {
				t.Fatalf("after the TTL: %+v, %d tracked; want none wasted or tracked", s, e.Tracked())
			}
			// Another ahead click, then seconds of real-time clicks and
			// ticks (the live stream): event time must not run ahead of
			// the wall clock, so a 3 s prefetch is still warm 2.3 s after
			// it was made.
			e.ObserveClick("z1", "/52", now.Add(ahead))
			for range 8 {
				e.Tick(time.Second)
				now = now.Add(time.Second)
				e.ObserveClick("filler", "/x", now.Add(-time.Millisecond))
			}
			e.ObservePrefetch("d1", "/70", "v1", now, 3*time.Second)
			for range 2 {
				e.Tick(time.Second)
				now = now.Add(time.Second)
				e.ObserveClick("filler", "/x", now.Add(-time.Millisecond))
			}
			now = now.Add(300 * time.Millisecond)
			e.ObserveClick("d1", "/70", now)
			if s := e.Stats()[0]; s.Used != 8 || s.Wasted != 0 {
				t.Fatalf("short-lived prefetch after an ahead click: %+v, want it used, none wasted", s)
			}
		})
	}
}
