package transitions

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/redistest"
)

// backends builds the statistics on every backend: in process and in a
// real redis-server.
func backends(t *testing.T) map[string]func(Config, prometheus.Registerer) *Stats {
	srv := redistest.Start(t)
	mini := miniredis.RunT(t)
	n := 0
	return map[string]func(Config, prometheus.Registerer) *Stats{
		"memory": func(cfg Config, reg prometheus.Registerer) *Stats {
			s, err := NewMemory(cfg, reg)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		"redis": func(cfg Config, reg prometheus.Registerer) *Stats {
			return onRedis(t, srv.Addr(), &n, cfg, reg)
		},
		// miniredis: the in-process store of the service's embedded defaults.
		"miniredis": func(cfg Config, reg prometheus.Registerer) *Stats {
			return onRedis(t, mini.Addr(), &n, cfg, reg)
		},
	}
}

// onRedis builds the statistics on the Redis at addr, under a key prefix
// of their own (n counts them).
func onRedis(t *testing.T, addr string, n *int, cfg Config, reg prometheus.Registerer) *Stats {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	*n++
	cfg.KeyPrefix = fmt.Sprintf("t%d:", *n)
	s, err := NewRedis(cfg, c, reg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func lookup(ctx context.Context, t *testing.T, s *Stats, page string, at time.Time) Dist {
	t.Helper()
	d, err := s.Lookup(ctx, []string{page}, at, nil)
	if err != nil {
		t.Fatalf("lookup %s: %v", page, err)
	}
	return d[0]
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }

func TestNewPageBecomesLikeliest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for name, mk := range backends(t) {
		t.Run(name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			s := mk(Config{}, reg)
			// Earlier traffic: /home → /a 10 times.
			var ts []Transition
			for i := range 10 {
				ts = append(ts, Transition{From: "/home", To: "/a", At: t0.Add(time.Duration(i) * time.Second)})
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			// 30 users go from /home to a page nobody knew, in one wave.
			ts = ts[:0]
			for i := range 30 {
				ts = append(ts, Transition{From: "/home", To: "/news/new", ToUnknown: true, At: t0.Add(time.Minute + time.Duration(i)*time.Millisecond)})
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			d := lookup(ctx, t, s, "/home", t0.Add(time.Minute))
			if len(d.Next) != 2 || d.Next[0].Page != "/news/new" || d.Next[1].Page != "/a" {
				t.Fatalf("next of /home = %+v, want /news/new then /a", d.Next)
			}
			if !(d.N > 39 && d.N < 40.01) || !near(d.N, d.Next[0].Count+d.Next[1].Count) {
				t.Errorf("evidence %v, want about 40 (10 decayed a little, 30 now) = the sum of the counts %+v", d.N, d.Next)
			}
			if got := testutil.ToFloat64(s.m.onlineOnly); got != 1 {
				t.Errorf("online-only pages = %v, want 1", got)
			}
			if got := testutil.ToFloat64(s.m.observed); got != 40 {
				t.Errorf("observed = %v, want 40", got)
			}
			if d := lookup(ctx, t, s, "/nowhere", t0); d.N != 0 || len(d.Next) != 0 {
				t.Errorf("unknown page: %+v, want nothing", d)
			}
		})
	}
}

func TestDecay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	const hl = 10 * time.Minute
	for name, mk := range backends(t) {
		t.Run(name, func(t *testing.T) {
			s := mk(Config{HalfLife: hl}, nil)
			// /x at t0 (4 times), /y one half-life later (2 times).
			ts := []Transition{
				{From: "/s", To: "/x", At: t0}, {From: "/s", To: "/x", At: t0},
				{From: "/s", To: "/x", At: t0}, {From: "/s", To: "/x", At: t0},
				{From: "/s", To: "/y", At: t0.Add(hl)}, {From: "/s", To: "/y", At: t0.Add(hl)},
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				at   time.Duration
				x, y float64
			}{
				{hl, 2, 2},         // /x halved once
				{3 * hl, 0.5, 0.5}, // both halved twice more
				{hl * 5 / 2, 0.707106781, 0.707106781},
			} {
				d := lookup(ctx, t, s, "/s", t0.Add(c.at))
				got := map[string]float64{}
				for _, n := range d.Next {
					got[n.Page] = n.Count
				}
				if !near(got["/x"], c.x) || !near(got["/y"], c.y) || !near(d.N, c.x+c.y) {
					t.Errorf("at t0+%v: counts %v, N %v; want /x %v, /y %v, N %v", c.at, got, d.N, c.x, c.y, c.x+c.y)
				}
			}
			// Long after (past the rebase point), a new transition weighs 1
			// and the old ones nothing measurable.
			late := t0.Add(60 * hl)
			if err := s.Observe(ctx, []Transition{{From: "/s", To: "/z", At: late}}); err != nil {
				t.Fatal(err)
			}
			d := lookup(ctx, t, s, "/s", late)
			if len(d.Next) == 0 || d.Next[0].Page != "/z" || !near(d.Next[0].Count, 1) || !near(d.N, 1) {
				t.Errorf("after 60 half-lives: %+v, want /z first with count 1 and N 1", d)
			}
		})
	}
}

// TestBurstOfNewcomers: one batch of many next pages seen once each (unique
// URLs, a bot) pushes out at most one established next page, in both
// backends, as newcomers take the smallest one's place one at a time.
func TestBurstOfNewcomers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for name, mk := range backends(t) {
		t.Run(name, func(t *testing.T) {
			s := mk(Config{MaxNext: 4}, nil)
			var ts []Transition
			for i, to := range []string{"/a", "/b", "/c", "/d"} {
				for range 10 - i {
					ts = append(ts, Transition{From: "/s", To: to, At: t0})
				}
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			ts = ts[:0]
			for i := range 60 {
				ts = append(ts, Transition{From: "/s", To: fmt.Sprintf("/junk/%d", i), At: t0})
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			d := lookup(ctx, t, s, "/s", t0)
			kept := map[string]bool{}
			for _, n := range d.Next {
				kept[n.Page] = true
			}
			if !kept["/a"] || !kept["/b"] || !kept["/c"] || len(d.Next) > 4 {
				t.Errorf("next of /s after a burst of 60 newcomers = %+v, want /a, /b and /c kept, at most 4", d.Next)
			}
		})
	}
}

func TestBoundedMemory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for name, mk := range backends(t) {
		t.Run(name, func(t *testing.T) {
			s := mk(Config{MaxNext: 2, MaxPages: 3}, nil)
			// Next pages: /a 3 times, /b 2 times, then /c once: /c takes the
			// place of the smallest, /b.
			ts := []Transition{
				{From: "/s", To: "/a", At: t0}, {From: "/s", To: "/a", At: t0}, {From: "/s", To: "/a", At: t0},
				{From: "/s", To: "/b", At: t0}, {From: "/s", To: "/b", At: t0},
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			if err := s.Observe(ctx, []Transition{{From: "/s", To: "/c", At: t0}}); err != nil {
				t.Fatal(err)
			}
			d := lookup(ctx, t, s, "/s", t0)
			if len(d.Next) != 2 || d.Next[0].Page != "/a" || d.Next[1].Page != "/c" || !near(d.N, 6) {
				t.Errorf("next of /s = %+v (N %v), want /a then /c (the smallest, /b, dropped) and N 6", d.Next, d.N)
			}
			// Online-only pages: at most MaxPages remembered, newest kept.
			ts = ts[:0]
			for i := range 10 {
				ts = append(ts, Transition{From: "/s", To: fmt.Sprintf("/new/%d", i), ToUnknown: true, At: t0.Add(time.Duration(i) * time.Second)})
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			if got := testutil.ToFloat64(s.m.onlineOnly); got != 3 {
				t.Errorf("online-only pages = %v, want 3 (the max pages)", got)
			}
			// Past the retention the online-only pages are forgotten.
			late := t0.Add(11 * DefaultHalfLife)
			if err := s.Observe(ctx, []Transition{{From: "/s", To: "/a", At: late}}); err != nil {
				t.Fatal(err)
			}
			if got := testutil.ToFloat64(s.m.onlineOnly); got != 0 {
				t.Errorf("online-only pages after the retention = %v, want 0", got)
			}
		})
	}
}

// TestMemoryEvictsSources: the in-process store keeps MaxPages source
// pages, least recently updated evicted first, and its memory stays flat
// however many pages pass.
func TestMemoryEvictsSources(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	s, err := NewMemory(Config{MaxPages: 100}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		ts := []Transition{{From: fmt.Sprintf("/p/%d", i), To: "/x", At: at}}
		if i%10 == 0 { // /p/0 kept alive by updates
			ts = append(ts, Transition{From: "/p/0", To: "/y", At: at})
		}
		if err := s.Observe(ctx, ts); err != nil {
			t.Fatal(err)
		}
	}
	mem := s.Store.(*memory)
	if n := mem.len(); n != 100 {
		t.Errorf("source pages kept = %d, want 100", n)
	}
	if got := testutil.ToFloat64(s.m.evicted); got != 900 {
		t.Errorf("evicted = %v, want 900 (1,000 distinct sources, 100 kept)", got)
	}
	if d := lookup(ctx, t, s, "/p/0", t0); d.N == 0 {
		t.Error("/p/0, updated every 10 clicks, was evicted")
	}
	if d := lookup(ctx, t, s, "/p/5", t0); d.N != 0 {
		t.Errorf("/p/5, updated once long ago, still kept: %+v", d)
	}
}

// TestMemoryShardsStayBounded: with MaxPages of several shards, the
// in-process store still keeps exactly MaxPages source pages once more
// have passed, each eviction counted.
func TestMemoryShardsStayBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const maxPages, sources = 8 * minShardPages, 20_000
	s, err := NewMemory(Config{MaxPages: maxPages}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := s.Store.(*memory)
	if len(mem.shards) != 8 {
		t.Fatalf("shards = %d, want 8 of %d pages", len(mem.shards), minShardPages)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for i := range sources {
		if err := s.Observe(ctx, []Transition{{From: fmt.Sprintf("/p/%d", i), To: "/x", At: t0}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := mem.len(); n != maxPages {
		t.Errorf("source pages kept = %d, want %d", n, maxPages)
	}
	if got := testutil.ToFloat64(s.m.evicted); got != sources-maxPages {
		t.Errorf("evicted = %v, want %d", got, sources-maxPages)
	}
	if d := lookup(ctx, t, s, fmt.Sprintf("/p/%d", sources-1), t0); !near(d.N, 1) {
		t.Errorf("the last source observed: %+v, want N 1", d)
	}
}

// TestMemoryNextInOrder: the in-process store keeps each source's next
// pages in order as counts grow and decay (rebasing included), and
// returns the latest index given with each; the counts match the decayed
// sums computed from scratch.
func TestMemoryNextInOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const halfLife = time.Minute
	s, err := NewMemory(Config{HalfLife: halfLife, MaxNext: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := t0
	want := map[string]map[string]float64{} // source → next → decayed count at the end
	index := map[string]int64{}
	var times []time.Time
	var ts []Transition
	for i := range 5000 {
		// Up to 40 half-lives in all: past e^20 the store rebases.
		at = at.Add(time.Duration(rng.ExpFloat64() * float64(halfLife) / 125))
		from := fmt.Sprintf("/s/%d", rng.IntN(3))
		to := fmt.Sprintf("/n/%d", int(math.Sqrt(float64(rng.IntN(40*40))))) // some far more often
		ts = append(ts, Transition{From: from, To: to, At: at, ToIndex: int64(i)})
		times = append(times, at)
	}
	for i := 0; i < len(ts); i += 7 {
		if err := s.Observe(ctx, ts[i:min(i+7, len(ts))]); err != nil {
			t.Fatal(err)
		}
	}
	lambda := math.Ln2 / halfLife.Seconds()
	for i, tr := range ts {
		if want[tr.From] == nil {
			want[tr.From] = map[string]float64{}
		}
		want[tr.From][tr.To] += math.Exp(-lambda * at.Sub(times[i]).Seconds())
		index[tr.From+" "+tr.To] = tr.ToIndex
	}
	for from, next := range want {
		d := lookup(ctx, t, s, from, at)
		if len(d.Next) != len(next) {
			t.Fatalf("%s: %d next pages, want %d", from, len(d.Next), len(next))
		}
		for j, n := range d.Next {
			if j > 0 && less(n, d.Next[j-1]) {
				t.Errorf("%s: next page %d %+v comes after %+v", from, j, n, d.Next[j-1])
			}
			if w := next[n.Page]; !near(n.Count, w) {
				t.Errorf("%s → %s: count %v, want %v", from, n.Page, n.Count, w)
			}
			if w := index[from+" "+n.Page]; n.Index != w {
				t.Errorf("%s → %s: index %d, want the latest given, %d", from, n.Page, n.Index, w)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"evidence zero set", Config{Evidence: 0, EvidenceSet: true}, true},
		{"negative evidence", Config{Evidence: -1}, false},
		{"NaN evidence", Config{Evidence: math.NaN()}, false},
		{"negative half-life", Config{HalfLife: -time.Second}, false},
		{"negative max pages", Config{MaxPages: -1}, false},
		{"negative max next", Config{MaxNext: -1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.cfg.Validate(); (err == nil) != c.ok {
				t.Errorf("Validate() = %v, want ok %v", err, c.ok)
			}
		})
	}
}

func TestBlendWeight(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		n, w float64
	}{
		{"default k, no evidence", Config{}, 0, 0},
		{"default k", Config{}, 50, 0.5},
		{"k 10", Config{Evidence: 10}, 30, 0.75},
		{"k 0 set: all online", Config{EvidenceSet: true}, 0.5, 1},
		{"k 0 set, no evidence", Config{EvidenceSet: true}, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := NewMemory(c.cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Blend.Weight(c.n); !near(got, c.w) {
				t.Errorf("Weight(%v) = %v, want %v", c.n, got, c.w)
			}
		})
	}
}

func TestBlendNext(t *testing.T) {
	d := Dist{N: 10, Next: []Next{{Page: "/a", Count: 4}, {Page: "/new1", Count: 3}, {Page: "/new2", Count: 1}}}
	const w = 0.5
	var b Blend
	for _, c := range []struct {
		name    string
		nx      Next
		pModel  float64
		inVocab bool
		want    float64
	}{
		{"in the vocabulary", d.Next[0], 0.2, true, 0.5*0.2 + 0.5*0.4},
		// The model's 0.08 for an unknown page, shared 3:1 by the two
		// pages outside the vocabulary.
		{"outside, 3 of 4", d.Next[1], 0.08, false, 0.5*0.08*0.75 + 0.5*0.3},
		{"outside, 1 of 4", d.Next[2], 0.08, false, 0.5*0.08*0.25 + 0.5*0.1},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := b.Next(w, d, c.nx, c.pModel, c.inVocab, 4); !near(got, c.want) {
				t.Errorf("Next = %v, want %v", got, c.want)
			}
		})
	}
}

// TestRedisManySources: one Observe with more source pages than one
// script call takes (maxScriptKeys), on one redis-server and on a 3-master
// cluster (where each source page is a call of its own, its key on its
// node), counts every transition of every source.
func TestRedisManySources(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		name  string
		addrs []string
	}{
		{"server", []string{redistest.Start(t).Addr()}},
		{"cluster", redistest.StartCluster(t)},
	} {
		t.Run(c.name, func(t *testing.T) {
			client := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: c.addrs, IsClusterMode: len(c.addrs) > 1})
			t.Cleanup(func() { _ = client.Close() })
			trips := &scriptTrips{}
			client.AddHook(trips)
			s, err := NewRedis(Config{}, client, nil)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
			const sources = 3*maxScriptKeys + 5
			var ts []Transition
			var from []string
			for i := range sources {
				src := fmt.Sprintf("/s/%d", i)
				from = append(from, src)
				for j := range i%3 + 1 { // 1, 2 or 3 transitions to /a, then /b, /c
					ts = append(ts, Transition{From: src, To: "/" + string(rune('a'+j)), At: t0})
				}
				ts = append(ts, Transition{From: src, To: "/a", At: t0})
			}
			if err := s.Observe(ctx, ts); err != nil {
				t.Fatal(err)
			}
			// Up to maxScriptKeys source pages per round trip: pipelined
			// together, the calls would hold Redis for all their time at once.
			if want := (sources + maxScriptKeys - 1) / maxScriptKeys; trips.most > maxScriptKeys || trips.trips < want {
				t.Errorf("scripts sent in %d round trips, at most %d source pages in one; want at least %d, at most %d pages each", trips.trips, trips.most, want, maxScriptKeys)
			}
			ds, err := s.Lookup(ctx, from, t0, nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, d := range ds {
				n := i%3 + 2
				if !near(d.N, float64(n)) || len(d.Next) != n-1 || d.Next[0].Page != "/a" || !near(d.Next[0].Count, 2) {
					t.Errorf("%s: %+v, want N %d, /a first with 2, %d next pages", from[i], d, n, n-1)
				}
			}
		})
	}
}

// scriptTrips is a go-redis hook counting the round trips with EVALSHA
// calls and the most keys such calls carry in one round trip.
type scriptTrips struct {
	mu          sync.Mutex
	trips, most int
}

func (h *scriptTrips) count(cmds []redis.Cmder) {
	keys := 0
	for _, c := range cmds {
		if c.Name() == "evalsha" {
			n, _ := c.Args()[2].(int)
			keys += n
		}
	}
	if keys == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.trips++
	h.most = max(h.most, keys)
}

func (h *scriptTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (h *scriptTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.count(cmds)
		return next(ctx, cmds)
	}
}

// TestRedisScriptFlushed: after the server loses its scripts (a restart, a
// SCRIPT FLUSH) Observe loads the script again and sends the refused calls
// again: nothing is lost, nothing counted twice.
func TestRedisScriptFlushed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	s, err := NewRedis(Config{}, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	// More source pages than one script call takes: several calls in one
	// round trip, and more than one round trip.
	var tr []Transition
	for i := range 3*maxScriptKeys + 1 {
		tr = append(tr, Transition{From: "/s" + strconv.Itoa(i), To: "/b", At: t0})
	}
	if err := s.Observe(ctx, tr); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.Observe(ctx, tr); err != nil {
			t.Fatalf("Observe after SCRIPT FLUSH %d: %v, want the script loaded again and the calls sent again", round+1, err)
		}
	}
	for i := range 3*maxScriptKeys + 1 {
		if d := lookup(ctx, t, s, "/s"+strconv.Itoa(i), t0); !near(d.N, 3) {
			t.Fatalf("source %d: evidence %v, want 3 (none lost to the flushes, none counted twice)", i, d.N)
		}
	}
}

// TestNextIs checks the hashed comparison: a Next from a store carries its
// page's hash, one built elsewhere falls back on the page name, and a
// matching hash alone is never enough.
func TestNextIs(t *testing.T) {
	s, err := NewMemory(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1e9, 0)
	if err := s.Observe(context.Background(), []Transition{{From: "/a", To: "/b", At: at}, {From: "/a", To: "/c", At: at}}); err != nil {
		t.Fatal(err)
	}
	d, _ := s.Lookup(context.Background(), []string{"/a"}, at, nil)
	if len(d) != 1 || len(d[0].Next) != 2 {
		t.Fatalf("lookup: %+v", d)
	}
	for _, tc := range []struct {
		name string
		n    Next
		page string
		hash uint64
		want bool
	}{
		{"stored, same page", d[0].Next[0], d[0].Next[0].Page, PageHash(d[0].Next[0].Page), true},
		{"stored, other page", d[0].Next[0], d[0].Next[1].Page, PageHash(d[0].Next[1].Page), false},
		{"stored, hash of another page", d[0].Next[0], d[0].Next[0].Page, PageHash("/x"), false},
		{"built, same page", Next{Page: "/b"}, "/b", PageHash("/b"), true},
		{"built, other page", Next{Page: "/b"}, "/c", PageHash("/c"), false},
		{"same hash, other page", Next{Page: "/b", hash: 7}, "/c", 7, false},
	} {
		if got := tc.n.Is(tc.page, tc.hash); got != tc.want {
			t.Errorf("%s: Is(%q) = %v, want %v", tc.name, tc.page, got, tc.want)
		}
	}
	if PageHash("/b") == 0 || PageHash("") == 0 {
		t.Error("PageHash returned 0, the value for unknown")
	}
}

// TestOnlineOnlyWrites checks that the Redis store re-scores an online-only
// page only after freshRefresh (ZADD calls counted by a real redis-server),
// and that the gauge recovers at the next batch after the set is lost.
func TestOnlineOnlyWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	s, err := NewRedis(Config{}, c, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	zadds := func() int {
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(info, "\r\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_zadd:calls="); ok {
				n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
				return n
			}
		}
		return 0
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	refresh := time.Duration(s.Store.(*redisStore).freshRefresh() * float64(time.Second))
	batch := func(at time.Time, pages ...string) {
		t.Helper()
		var ts []Transition
		for _, p := range pages {
			ts = append(ts, Transition{From: "/home", To: p, ToUnknown: true, At: at})
		}
		if err := s.Observe(ctx, ts); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		name      string
		at        time.Duration
		flush     bool
		pages     []string
		wantZadds int // more than before
		wantPages float64
	}{
		{"new pages", 0, false, []string{"/n1", "/n2", "/n1"}, 1, 2},
		{"seen again, fresh", refresh / 2, false, []string{"/n1", "/n2"}, 0, 2},
		{"one new page", refresh / 2, false, []string{"/n1", "/n3"}, 1, 3},
		{"seen again, stale", refresh + time.Second, false, []string{"/n1"}, 1, 3},
		{"set lost: counted low once", refresh + 2*time.Second, true, []string{"/n3"}, 0, 0},
		{"then written again", refresh + 3*time.Second, false, []string{"/n2", "/n3"}, 1, 2},
	} {
		if step.flush {
			if err := c.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		before := zadds()
		batch(t0.Add(step.at), step.pages...)
		if got := zadds() - before; got != step.wantZadds {
			t.Errorf("%s: %d ZADD, want %d", step.name, got, step.wantZadds)
		}
		if got := testutil.ToFloat64(s.m.onlineOnly); got != step.wantPages {
			t.Errorf("%s: online-only pages = %v, want %v", step.name, got, step.wantPages)
		}
	}
}

// TestRedisLookupTimeout: a read of the statistics from a Redis that does
// not answer (busy with a script) gives up after OpTimeout, not after the
// caller's own deadline.
func TestRedisLookupTimeout(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	s, err := NewRedis(Config{OpTimeout: 100 * time.Millisecond}, client, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Another connection keeps the server busy for 1.5 s.
	busy := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 5 * time.Second})
	t.Cleanup(func() { _ = busy.Close() })
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		close(started)
		done <- busy.Eval(ctx, `local t0 = redis.call('TIME') repeat local t = redis.call('TIME') until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 1500000 return 1`, nil).Err()
	}()
	<-started
	time.Sleep(100 * time.Millisecond) // the script is running
	start := time.Now()
	_, err = s.Lookup(ctx, []string{"/a"}, time.Now(), nil)
	if took := time.Since(start); err == nil || took > time.Second {
		t.Errorf("Lookup on a busy server: %v after %v, want an error after about 100ms", err, took)
	}
	if err := <-done; err != nil {
		t.Fatalf("busy script: %v", err)
	}
	if _, err := s.Lookup(ctx, []string{"/a"}, time.Now(), nil); err != nil {
		t.Errorf("Lookup once the server answers: %v", err)
	}
}

// TestOnlineOnlySharedFigure checks that two replicas sharing Redis report
// the same count of online-only pages, the idle one too (Run refreshes it
// from Redis), and that pages past the retention leave it.
func TestOnlineOnlySharedFigure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	cfg := Config{HalfLife: 100 * time.Millisecond} // retention: ten half-lives, 1 s
	a, err := NewRedis(cfg, c, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewRedis(cfg, c, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	idle := Share(b, SharedConfig{FlushInterval: 20 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- idle.Run(runCtx) }()
	defer func() { stop(); <-done }()

	now := time.Now()
	var ts []Transition
	for _, p := range []string{"/new/1", "/new/2", "/new/3"} {
		ts = append(ts, Transition{From: "/home", To: p, ToUnknown: true, At: now})
	}
	if err := a.Observe(ctx, ts); err != nil {
		t.Fatal(err)
	}
	gauge := func(s *Stats) float64 { return testutil.ToFloat64(s.Store.(*redisStore).m.onlineOnly) }
	if got := gauge(a); got != 3 {
		t.Fatalf("writing replica: %v online-only pages, want 3", got)
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("after 5 s: %s", what)
			}
		}
	}
	waitUntil("the idle replica reports the 3 pages", func() bool { return gauge(b) == 3 })
	// Past the retention with no new transition: the idle replica's figure
	// falls to 0, as the set in Redis does.
	waitUntil("the idle replica reports 0 after the retention", func() bool { return gauge(b) == 0 })
	if n := c.ZCard(ctx, b.Store.(*redisStore).freshKey).Val(); n != 0 {
		t.Errorf("online-only set holds %d pages past the retention, want 0", n)
	}
}
