package prefetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newRedis starts a real redis-server and a client for it that fails fast.
func newRedis(t testing.TB) (*redistest.Server, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{
		Addr:                  srv.Addr(),
		ContextTimeoutEnabled: true,
		DialTimeout:           200 * time.Millisecond,
		ReadTimeout:           500 * time.Millisecond,
		WriteTimeout:          500 * time.Millisecond,
		MaxRetries:            -1,
	})
	t.Cleanup(func() { _ = rdb.Close() })
	return srv, rdb
}

// startWarmer builds a Warmer, runs it and stops it when the test ends.
func startWarmer(t *testing.T, cfg Config, rdb redis.UniversalClient) *Warmer {
	t.Helper()
	return startWarmerWith(t, cfg, rdb, nil)
}

// startWarmerWith is startWarmer with prepare applied to the Warmer before
// it runs.
func startWarmerWith(t *testing.T, cfg Config, rdb redis.UniversalClient, prepare func(*Warmer)) *Warmer {
	t.Helper()
	w, err := NewWarmer(cfg, rdb, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("NewWarmer: %v", err)
	}
	if prepare != nil {
		prepare(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if err := w.Close(cctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pageKeys lists the keys in Redis other than Warmer sentinels.
func pageKeys(t *testing.T, rdb redis.UniversalClient) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	return slices.DeleteFunc(keys, func(k string) bool { return strings.Contains(k, sentinelPage) })
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// counter reads a counter's or gauge's value.
func counter(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero is hint mode with defaults", Config{}, true},
		{"origin", Config{Mode: ModeOrigin, OriginURL: "https://origin/{page}"}, true},
		{"origin without url", Config{Mode: ModeOrigin}, false},
		{"origin url without page", Config{Mode: ModeOrigin, OriginURL: "https://origin/x"}, false},
		{"origin url not http", Config{Mode: ModeOrigin, OriginURL: "ftp://origin/{page}"}, false},
		{"unknown mode", Config{Mode: "push"}, false},
		{"tiny ttl", Config{TTL: time.Microsecond}, false},
		{"key template without page", Config{KeyTemplate: "user:{user}"}, false},
		{"negative queue", Config{QueueSize: -1}, false},
		{"negative rate", Config{GlobalRate: -1}, false},
		{"negative budget", Config{BudgetBytes: -1}, false},
		{"negative timeout", Config{WriteTimeout: -time.Second}, false},
		{"shed from half", Config{ShedFrom: 0.5}, true},
		{"shed from zero when set", Config{ShedFromSet: true}, true},
		{"shed from above one", Config{ShedFrom: 1.5}, false},
		{"shed from negative", Config{ShedFrom: -0.1}, false},
		{"shed from not a number", Config{ShedFrom: math.NaN()}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate() = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestTemplates(t *testing.T) {
	cases := []struct{ tmpl, user, page, want string }{
		{"page:{page}", "u1", "/page/3", "page:/page/3"},
		{"user:{user}:page:{page}", "u1", "/page/3", "user:u1:page:/page/3"},
		{"{page}{user}{page}", "u", "p", "pup"},
	}
	for _, tc := range cases {
		t.Run(tc.tmpl, func(t *testing.T) {
			if got := parseTemplate(tc.tmpl).render(tc.user, tc.page); got != tc.want {
				t.Fatalf("render = %q, want %q", got, tc.want)
			}
		})
	}
	urls := []struct {
		tmpl, page, want string
		ok               bool
	}{
		{"https://origin/{page}", "/page/3", "https://origin/page/3", true},
		{"https://origin{page}", "/page/3", "https://origin/page/3", true},
		{"http://o/{page}?x=1", "/a b/c", "http://o/a%20b/c?x=1", true},
		{"http://o/{page}", "/a?b=1#c", "http://o/a%3Fb=1%23c", true},
		{"http://o/content/{page}", "/../../internal/secret", "", false},
		{"http://o/content/{page}", "/a/./b", "", false},
		{"http://o/content/{page}", "/a/..", "", false},
		{"http://o/content/{page}", "/a/...b/..c", "http://o/content/a/...b/..c", true},
		{"http://o/render?path={page}&tenant=public", "/x&tenant=secret", "http://o/render?path=%2Fx%26tenant%3Dsecret&tenant=public", true},
		{"http://o/render?path={page}", "/../x", "http://o/render?path=%2F..%2Fx", true},
	}
	for _, tc := range urls {
		t.Run(tc.tmpl+" "+tc.page, func(t *testing.T) {
			o := &originClient{url: tc.tmpl}
			got, ok := o.pageURL(tc.page)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("pageURL = %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestWarmerHint checks the hint mode against a real redis-server: keys set
// with the TTL, never overwritten (NX), never written twice while warm, the
// per-user key template and the hint record content.
func TestWarmerHint(t *testing.T) {
	_, rdb := newRedis(t)
	cases := []struct {
		name     string
		template string
		key      func(user, page string) string
	}{
		{"shared", "", func(_, page string) string { return "page:" + page }},
		{"per user", "user:{user}:page:{page}", func(user, page string) string { return "user:" + user + ":page:" + page }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			ev, err := NewEvaluator(EvaluatorConfig{KeyTemplate: tc.template}, nil)
			if err != nil {
				t.Fatal(err)
			}
			w := startWarmer(t, Config{TTL: 90 * time.Second, KeyTemplate: tc.template}, rdb)
			w.SetObserver(ev)
			// A key somebody else holds is left alone.
			if err := rdb.Set(ctx, tc.key("alice", "/held"), "theirs", 0).Err(); err != nil {
				t.Fatal(err)
			}
			at := time.Now()
			req := Request{UserID: "alice", ModelVersion: "v7", At: at, Pages: []Page{
				{Key: "/page/1", Probability: 0.75}, {Key: "/page/2", Probability: 0.5}, {Key: "/held", Probability: 0.9},
			}}
			if n := w.Warm(ctx, req); n != 3 {
				t.Fatalf("Warm queued %d pages, want 3", n)
			}
			eventually(t, 5*time.Second, "2 keys written and 1 existing", func() bool {
				return counter(w.m.written) == 2 && counter(w.m.skippedExists) == 1
			})
			if v, _ := rdb.Get(ctx, tc.key("alice", "/held")).Result(); v != "theirs" {
				t.Errorf("held key = %q, want it untouched", v)
			}
			for _, p := range req.Pages[:2] {
				key := tc.key("alice", p.Key)
				ttl, err := rdb.TTL(ctx, key).Result()
				if err != nil || ttl <= 80*time.Second || ttl > 90*time.Second {
					t.Errorf("TTL(%s) = %v, %v; want within (80s, 90s]", key, ttl, err)
				}
				raw, err := rdb.Get(ctx, key).Bytes()
				if err != nil {
					t.Fatalf("GET %s: %v", key, err)
				}
				var rec HintRecord
				if err := json.Unmarshal(raw, &rec); err != nil {
					t.Fatalf("hint record %s: %v", raw, err)
				}
				if rec.Page != p.Key || rec.Probability != p.Probability || rec.ModelVersion != "v7" {
					t.Errorf("hint record %+v, want page %s probability %v version v7", rec, p.Key, p.Probability)
				}
				if d := rec.ExpiresAt.Sub(time.Now().Add(90 * time.Second)); d > time.Second || d < -5*time.Second {
					t.Errorf("hint record expires at %v, want about now+90s", rec.ExpiresAt)
				}
			}
			// Written pages are now warm: asking again writes nothing.
			if n := w.Warm(ctx, req); n != 0 {
				t.Errorf("second Warm queued %d pages, want 0 (all warm)", n)
			}
			if got := counter(w.m.skippedWarm); got != 3 {
				t.Errorf("skipped warm = %v, want 3", got)
			}
			// Another user: a shared key is warm for them too, a per-user key is not.
			bob := Request{UserID: "bob", ModelVersion: "v7", At: at, Pages: req.Pages[:1]}
			wantBob := 0
			if w.PerUser() {
				wantBob = 1
			}
			if n := w.Warm(ctx, bob); n != wantBob {
				t.Errorf("Warm for bob queued %d, want %d", n, wantBob)
			}
			eventually(t, 5*time.Second, "bob's key written", func() bool { return counter(w.m.written) == float64(2+wantBob) })
			stats := ev.Stats()
			if len(stats) != 1 || stats[0].ModelVersion != "v7" || stats[0].Issued != uint64(2+wantBob) {
				t.Errorf("evaluator stats %+v, want %d issued for v7", stats, 2+wantBob)
			}
			if !ev.IsWarm("alice", "/page/1", time.Now()) || ev.IsWarm("alice", "/held", time.Now()) {
				t.Errorf("IsWarm(alice) = %v for /page/1, %v for /held; want true, false",
					ev.IsWarm("alice", "/page/1", time.Now()), ev.IsWarm("alice", "/held", time.Now()))
			}
			if got, want := ev.IsWarm("carol", "/page/1", time.Now()), !w.PerUser(); got != want {
				t.Errorf("IsWarm(carol) = %v, want %v (per-user keys %v)", got, want, w.PerUser())
			}
		})
	}
}

// TestWarmerCoalesce checks that identical warms in flight are written once.
func TestWarmerCoalesce(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	w, err := NewWarmer(Config{}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Not running yet: everything queued stays in flight.
	req := Request{UserID: "u", Pages: []Page{{Key: "/a", Probability: 0.9}}}
	for range 5 {
		w.Warm(ctx, req)
	}
	if got := counter(w.m.skippedCoalesced); got != 4 {
		t.Fatalf("coalesced = %v, want 4", got)
	}
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	eventually(t, 5*time.Second, "one key written", func() bool { return counter(w.m.written) == 1 })
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := len(pageKeys(t, rdb)); n != 1 {
		t.Fatalf("DBSIZE = %d, want 1", n)
	}
}

// TestWarmerLimits checks the per-user rate, the global token bucket and the
// budget.
func TestWarmerLimits(t *testing.T) {
	_, rdb := newRedis(t)
	pages := func(n int) []Page {
		ps := make([]Page, n)
		for i := range ps {
			ps[i] = Page{Key: fmt.Sprintf("/p/%d", i), Probability: 0.9}
		}
		return ps
	}
	cases := []struct {
		name    string
		cfg     Config
		users   []string
		reason  string
		dropped float64
		written float64
	}{
		{"per user rate", Config{PerUserRate: 0.001, PerUserBurst: 2}, []string{"a", "b"}, dropUserRate, 6, 4},
		{"global rate", Config{GlobalRate: 0.001, GlobalBurst: 3}, []string{"a", "b"}, dropGlobalRate, 7, 3},
		{"budget keys", Config{BudgetKeys: 5}, []string{"a", "b"}, dropBudget, 5, 5},
		{"budget bytes", Config{BudgetBytes: 1}, []string{"a"}, dropBudget, 5, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			tc.cfg.KeyTemplate = "u:{user}:{page}"
			w := startWarmer(t, tc.cfg, rdb)
			for _, u := range tc.users {
				w.Warm(ctx, Request{UserID: u, Pages: pages(5)})
			}
			eventually(t, 5*time.Second, "all pages accounted for", func() bool {
				return counter(w.m.written)+counter(w.m.dropped[tc.reason]) == float64(5*len(tc.users))
			})
			if got := counter(w.m.dropped[tc.reason]); got != tc.dropped {
				t.Errorf("dropped %s = %v, want %v", tc.reason, got, tc.dropped)
			}
			if n := len(pageKeys(t, rdb)); float64(n) != tc.written {
				t.Errorf("DBSIZE = %d, want %v", n, tc.written)
			}
		})
	}
}

// TestWarmerRedisOutage stops redis-server under a running Warmer: pages are
// dropped and counted, Warm never blocks, and writing resumes after restart.
func TestWarmerRedisOutage(t *testing.T) {
	srv, rdb := newRedis(t)
	ctx := testCtx(t)
	w := startWarmer(t, Config{QueueSize: 64, PipelineSize: 16, WriteTimeout: 200 * time.Millisecond}, rdb)
	warm := func(prefix string, n int) time.Duration {
		var worst time.Duration
		for i := range n {
			start := time.Now()
			w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/%s/%d", prefix, i), Probability: 0.9}}})
			worst = max(worst, time.Since(start))
		}
		return worst
	}
	warm("before", 10)
	eventually(t, 5*time.Second, "writes before the outage", func() bool { return counter(w.m.written) == 10 })

	goroutines := runtime.NumGoroutine()
	srv.Stop()
	const outage = 2000
	deadline := time.Now().Add(3 * time.Second)
	var worst time.Duration
	for i := 0; i < outage; i += 100 {
		worst = max(worst, warm(fmt.Sprintf("down%d", i), 100))
		time.Sleep(5 * time.Millisecond)
	}
	if worst > 250*time.Millisecond {
		t.Errorf("Warm blocked for %v during the outage", worst)
	}
	eventually(t, time.Until(deadline)+5*time.Second, "every outage page dropped", func() bool {
		return counter(w.m.dropped[dropRedis])+counter(w.m.dropped[dropQueueFull]) == outage
	})
	if counter(w.m.dropped[dropRedis]) == 0 {
		t.Errorf("no page dropped for a Redis error")
	}
	if got := counter(w.m.written); got != 10 {
		t.Errorf("written = %v during the outage, want 10", got)
	}
	w.mu.Lock()
	inflight, tracked := w.keys.flying(), w.keys.Len()
	w.mu.Unlock()
	if inflight != 0 || tracked != 10 {
		t.Errorf("after the outage: %d in flight, %d tracked; want 0 and 10 (no growth)", inflight, tracked)
	}
	// go-redis keeps up to its pool size of goroutines dialling; nothing
	// grows with the number of pages dropped.
	if n := runtime.NumGoroutine(); n > goroutines+rdb.Options().PoolSize {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after %d dropped pages, %d before the outage:\n%s", n, outage, goroutines, buf[:runtime.Stack(buf, true)])
	}

	srv.Restart()
	eventually(t, 10*time.Second, "writes resume after restart", func() bool {
		warm("after", 10)
		n, _ := rdb.Exists(ctx, "page:/after/0", "page:/after/9").Result()
		return n == 2
	})
	// The restarted server is empty: pages written before the outage are
	// warmed again rather than skipped as still warm.
	eventually(t, 10*time.Second, "pages from before the outage warmed again", func() bool {
		warm("before", 10)
		n, _ := rdb.Exists(ctx, "page:/before/0", "page:/before/9").Result()
		return n == 2
	})
}

// TestWarmerCloseFlushes checks that Close writes what is queued.
func TestWarmerCloseFlushes(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	w, err := NewWarmer(Config{}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var pages []Page
	for i := range 500 {
		pages = append(pages, Page{Key: fmt.Sprintf("/f/%d", i), Probability: 0.9})
	}
	w.Warm(ctx, Request{UserID: "u", Pages: pages})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- w.Run(runCtx) }()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := len(pageKeys(t, rdb)); n != 500 {
		t.Fatalf("DBSIZE after Close = %d, want 500", n)
	}
	if n := w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/late"}}}); n != 0 || counter(w.m.dropped[dropClosed]) != 1 {
		t.Fatalf("Warm after Close queued %d, dropped closed %v; want 0 and 1", n, counter(w.m.dropped[dropClosed]))
	}
	if err := w.Run(ctx); err != nil {
		t.Fatalf("Run after Close = %v, want nil", err)
	}
}

// TestWarmerZeroIsAValue checks the Config fields where 0 is a value: unset
// takes the default, 0 is honoured (with its Set flag where the default is
// not 0), and non-zero values are used as given.
func TestWarmerZeroIsAValue(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		get  func(Config) float64
		want float64
	}{
		{"flush timeout unset", Config{}, func(c Config) float64 { return c.FlushTimeout.Seconds() }, DefaultFlushTimeout.Seconds()},
		{"flush timeout zero", Config{FlushTimeoutSet: true}, func(c Config) float64 { return c.FlushTimeout.Seconds() }, 0},
		{"flush timeout 3s", Config{FlushTimeout: 3 * time.Second}, func(c Config) float64 { return c.FlushTimeout.Seconds() }, 3},
		{"linger unset is zero", Config{}, func(c Config) float64 { return c.Linger.Seconds() }, 0},
		{"per-user rate zero is no limit", Config{}, func(c Config) float64 { return c.PerUserRate }, 0},
		{"global rate zero is no limit", Config{}, func(c Config) float64 { return c.GlobalRate }, 0},
		{"budget keys zero is no cap", Config{}, func(c Config) float64 { return float64(c.BudgetKeys) }, 0},
		{"budget bytes zero is no cap", Config{}, func(c Config) float64 { return float64(c.BudgetBytes) }, 0},
		{"check interval unset", Config{}, func(c Config) float64 { return c.CheckInterval.Seconds() }, DefaultCheckInterval.Seconds()},
		{"presence timeout unset", Config{}, func(c Config) float64 { return c.PresenceTimeout.Seconds() }, DefaultPresenceTimeout.Seconds()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got := tc.get(tc.cfg.withDefaults()); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWarmerFlushTimeoutZero checks that FlushTimeout 0 (set) drops what is
// queued at Close without writing it, and that unset it is written.
func TestWarmerFlushTimeoutZero(t *testing.T) {
	_, rdb := newRedis(t)
	cases := []struct {
		name             string
		cfg              Config
		written, dropped float64
	}{
		{"unset flushes", Config{}, 50, 0},
		{"zero drops", Config{FlushTimeoutSet: true}, 0, 50},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			if err := rdb.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			w, err := NewWarmer(tc.cfg, rdb, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			var pages []Page
			for i := range 50 {
				pages = append(pages, Page{Key: fmt.Sprintf("/z/%d", i), Probability: 0.9})
			}
			if n := w.Warm(ctx, Request{UserID: "u", Pages: pages}); n != 50 {
				t.Fatalf("Warm queued %d, want 50", n)
			}
			if err := w.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if got, dropped := counter(w.m.written), counter(w.m.dropped[dropShutdown]); got != tc.written || dropped != tc.dropped {
				t.Errorf("written %v, dropped at shutdown %v; want %v and %v", got, dropped, tc.written, tc.dropped)
			}
			if n := len(pageKeys(t, rdb)); float64(n) != tc.written {
				t.Errorf("%d keys in Redis, want %v", n, tc.written)
			}
		})
	}
}

// origin is an httptest origin whose behaviour per path prefix is set by the
// test; it counts requests.
type origin struct {
	srv  *httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	down bool // every request answers 500
}

func newOrigin(t *testing.T) *origin {
	o := &origin{}
	release := make(chan struct{})
	o.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		o.hits.Add(1)
		o.mu.Lock()
		down := o.down
		o.mu.Unlock()
		switch {
		case down || strings.HasPrefix(r.URL.Path, "/fail"):
			http.Error(rw, "boom", http.StatusInternalServerError)
		case strings.HasPrefix(r.URL.Path, "/missing"):
			http.NotFound(rw, r)
		case strings.HasPrefix(r.URL.Path, "/moved"):
			http.Redirect(rw, r, "/login", http.StatusFound)
		case strings.HasPrefix(r.URL.Path, "/slow"):
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case strings.HasPrefix(r.URL.Path, "/big"):
			_, _ = rw.Write(make([]byte, 2048))
		default:
			_, _ = fmt.Fprintf(rw, "body of %s", r.URL.Path)
		}
	}))
	t.Cleanup(func() {
		close(release)
		o.srv.Close()
	})
	return o
}

func (o *origin) setDown(down bool) {
	o.mu.Lock()
	o.down = down
	o.mu.Unlock()
}

// TestWarmerOrigin checks origin mode: only 2xx bodies are stored; 5xx,
// 404, timeouts and oversized bodies are not.
func TestWarmerOrigin(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	w := startWarmer(t, Config{
		Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", OriginTimeout: time.Second,
		MaxBodyBytes: 1024, BreakerFailures: 100,
	}, rdb)
	pages := []Page{{Key: "/ok/1"}, {Key: "/ok/2"}, {Key: "/fail/1"}, {Key: "/missing/1"}, {Key: "/slow/1"}, {Key: "/big/1"}}
	w.Warm(ctx, Request{UserID: "u", Pages: pages})
	eventually(t, 5*time.Second, "every page fetched", func() bool {
		return counter(w.m.written)+counter(w.m.dropped[dropOrigin5xx])+counter(w.m.dropped[dropOriginStatus])+
			counter(w.m.dropped[dropOriginTimeout])+counter(w.m.dropped[dropOriginTooLarge]) == 6
	})
	for _, reason := range []string{dropOrigin5xx, dropOriginStatus, dropOriginTimeout, dropOriginTooLarge} {
		if got := counter(w.m.dropped[reason]); got != 1 {
			t.Errorf("dropped %s = %v, want 1", reason, got)
		}
	}
	if keys := pageKeys(t, rdb); len(keys) != 2 {
		t.Fatalf("keys = %v, want only the two 2xx pages", keys)
	}
	if v, _ := rdb.Get(ctx, "page:/ok/1").Result(); v != "body of /ok/1" {
		t.Errorf("page:/ok/1 = %q, want the origin body", v)
	}
	if ttl, _ := rdb.TTL(ctx, "page:/ok/1").Result(); ttl <= 0 || ttl > DefaultTTL {
		t.Errorf("TTL = %v, want within (0, %v]", ttl, DefaultTTL)
	}
}

// TestWarmerOriginBudget: pages the key budget has no room for are not
// fetched from the origin (the least likely go first), and a spent budget
// asks the origin for nothing.
func TestWarmerOriginBudget(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	w, err := NewWarmer(Config{Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", OriginTimeout: time.Second,
		BudgetKeys: 3, BudgetWindow: time.Hour}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Queued before Run starts, so one worker takes all five in a batch.
	probs := []float32{0.1, 0.9, 0.3, 0.8, 0.2}
	var pages []Page
	for i, p := range probs {
		pages = append(pages, Page{Key: fmt.Sprintf("/ok/%d", i), Probability: p})
	}
	if n := w.Warm(ctx, Request{UserID: "u", Pages: pages}); n != 5 {
		t.Fatalf("queued %d, want 5", n)
	}
	runQueued(t, ctx, w)
	eventually(t, 5*time.Second, "three written, two dropped", func() bool {
		return counter(w.m.written) == 3 && counter(w.m.dropped[dropBudget]) == 2
	})
	if got := o.hits.Load(); got != 3 {
		t.Errorf("origin asked %d times, want 3 (the budget's room)", got)
	}
	keys := pageKeys(t, rdb)
	slices.Sort(keys)
	if want := []string{"page:/ok/1", "page:/ok/2", "page:/ok/3"}; !slices.Equal(keys, want) {
		t.Errorf("keys %v, want the three most likely %v", keys, want)
	}
	// The budget is spent: more pages cost the origin nothing.
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/ok/9", Probability: 1}}})
	eventually(t, 5*time.Second, "the page dropped", func() bool { return counter(w.m.dropped[dropBudget]) == 3 })
	if got := o.hits.Load(); got != 3 {
		t.Errorf("origin asked %d times after the budget was spent, want still 3", got)
	}
}

// TestBudgetNotSpentOnExistingKeys: pages found in Redis already (another
// replica warmed them) are not written, so they do not spend the key
// budget.
func TestBudgetNotSpentOnExistingKeys(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	for _, k := range []string{"page:/x1", "page:/x2"} {
		if err := rdb.Set(ctx, k, "theirs", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	w := startWarmer(t, Config{BudgetKeys: 2, BudgetWindow: time.Hour}, rdb)
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/x1", Probability: 0.5}, {Key: "/x2", Probability: 0.5}}})
	eventually(t, 5*time.Second, "both found existing", func() bool { return counter(w.m.skippedExists) == 2 })
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/y1", Probability: 0.5}, {Key: "/y2", Probability: 0.5}}})
	eventually(t, 5*time.Second, "two more written or dropped", func() bool {
		return counter(w.m.written)+counter(w.m.dropped[dropBudget]) == 2
	})
	if got := counter(w.m.written); got != 2 {
		t.Errorf("written %v after two pages found existing, want 2: the budget was spent on keys not written", got)
	}
}

// TestWarmerOriginBudgetWorkers: workers fetching at once share the key
// budget's room (each reserves what it fetches), so the origin is asked for
// no more pages than the budget stores, and no body is fetched to be
// thrown away; a page that fails gives its key back.
func TestWarmerOriginBudgetWorkers(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	w, err := NewWarmer(Config{Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", OriginTimeout: time.Second,
		BudgetKeys: 10, BudgetWindow: time.Hour, Workers: 4, PipelineSize: 4, BreakerFailures: 100}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Two pages the origin fails first, then 38 good ones, queued before
	// the workers start.
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/fail/1", Probability: 0.9}, {Key: "/fail/2", Probability: 0.9}}})
	for i := range 38 {
		w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/ok/%d", i), Probability: 0.5}}})
	}
	runQueued(t, ctx, w)
	eventually(t, 10*time.Second, "every page written or dropped", func() bool {
		return counter(w.m.written)+counter(w.m.dropped[dropBudget])+counter(w.m.dropped[dropOrigin5xx]) == 40
	})
	// The failed pages' keys come back, but pages other workers dropped
	// meanwhile are gone: between 8 and 10 stored.
	written := counter(w.m.written)
	if written < 8 || written > 10 {
		t.Errorf("written %v, want 8 to 10 (the budget's 10, less the failed pages' at most)", written)
	}
	if got := o.hits.Load(); float64(got) != written+2 {
		t.Errorf("origin asked %d times for %v pages stored and 2 failed: bodies fetched for nothing", got, written)
	}
}

// TestWarmerOriginBreaker checks that the breaker opens after consecutive
// failures, spares the origin while open, half-opens after the cooldown and
// closes on a successful trial.
func TestWarmerOriginBreaker(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	const cooldown = time.Second
	w := startWarmer(t, Config{
		Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", BreakerFailures: 3, BreakerCooldown: cooldown,
		OriginConcurrency: 1, PipelineSize: 1,
	}, rdb)
	o.setDown(true)
	seq := 0
	warmOne := func() {
		seq++
		w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/x/%d", seq)}}})
	}
	for range 3 {
		warmOne()
	}
	eventually(t, 5*time.Second, "breaker open after 3 failures", func() bool { return w.BreakerState() == BreakerOpen })
	if got := counter(w.m.dropped[dropOrigin5xx]); got != 3 {
		t.Fatalf("5xx drops = %v, want 3", got)
	}
	hits := o.hits.Load()
	for range 5 {
		warmOne()
	}
	eventually(t, 5*time.Second, "open breaker drops pages", func() bool { return counter(w.m.dropped[dropBreakerOpen]) == 5 })
	if got := o.hits.Load(); got != hits {
		t.Fatalf("origin hit %d times while the breaker was open", got-hits)
	}
	if got := counter(w.m.breakerState); got != float64(BreakerOpen) {
		t.Errorf("breaker gauge = %v, want %d", got, BreakerOpen)
	}

	// A failed trial after the cooldown opens it again.
	time.Sleep(cooldown + 50*time.Millisecond)
	warmOne()
	eventually(t, 5*time.Second, "failed trial", func() bool { return counter(w.m.dropped[dropOrigin5xx]) == 4 })
	if s := w.BreakerState(); s != BreakerOpen {
		t.Fatalf("after a failed trial the breaker is %v, want open", s)
	}

	// A successful trial closes it.
	o.setDown(false)
	time.Sleep(cooldown + 50*time.Millisecond)
	warmOne()
	eventually(t, 5*time.Second, "breaker closed after a good trial", func() bool {
		return w.BreakerState() == BreakerClosed && counter(w.m.written) == 1
	})
}

// TestWarmerNeverBlocks fills the queue of a Warmer that is not running.
func TestWarmerNeverBlocks(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	w, err := NewWarmer(Config{QueueSize: 8}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	queued := 0
	for i := range 1000 {
		queued += w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/n/%d", i)}}})
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("1000 Warm calls took %v", d)
	}
	if queued != 8 || counter(w.m.dropped[dropQueueFull]) != 992 {
		t.Errorf("queued %d, dropped %v; want 8 and 992", queued, counter(w.m.dropped[dropQueueFull]))
	}
	// Close without Run flushes the queue itself.
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := counter(w.m.written); got != 8 {
		t.Errorf("written at close = %v, want 8", got)
	}
}

// TestAppendHint checks the hand-written hint encoder against encoding/json.
func TestAppendHint(t *testing.T) {
	exp := time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.UTC)
	cases := []struct {
		name, page, version string
		prob                float32
		wantPage            string
	}{
		{"plain", "/page/12", "v1", 0.61, "/page/12"},
		{"quotes and controls", "/a\"b\\c\n\t\x01", "v\"2", 1, "/a\"b\\c\n\t\x01"},
		{"unicode", "/über/日本", "ß", 1e-7, "/über/日本"},
		{"invalid utf-8", "/bad\xff\xfe", "v", 0, "/bad\uFFFD\uFFFD"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := appendHint(nil, tc.page, tc.prob, tc.version, exp.AppendFormat(nil, time.RFC3339Nano))
			var got HintRecord
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("decode %s: %v", raw, err)
			}
			want := HintRecord{Page: tc.wantPage, Probability: tc.prob, ModelVersion: tc.version, ExpiresAt: exp}
			if got != want {
				t.Fatalf("decoded %+v, want %+v", got, want)
			}
		})
	}
	if raw := appendHint(nil, "/p", float32(math.NaN()), "v", nil); len(raw) != 0 {
		t.Fatalf("NaN probability encoded as %s, want nothing", raw)
	}
}

// TestWarmerRedisSlow pauses the server's writes (CLIENT PAUSE) under a
// running Warmer: writes time out and are dropped and counted, Warm never
// blocks, and writing resumes when the pause ends.
func TestWarmerRedisSlow(t *testing.T) {
	srv, rdb := newRedis(t)
	ctx := testCtx(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer admin.Close()
	w := startWarmer(t, Config{QueueSize: 32, PipelineSize: 8, WriteTimeout: 100 * time.Millisecond}, rdb)
	if err := admin.Do(ctx, "CLIENT", "PAUSE", "1500", "WRITE").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	paused := time.Now()
	var worst time.Duration
	for i := range 200 {
		start := time.Now()
		w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/slow/%d", i)}}})
		worst = max(worst, time.Since(start))
		time.Sleep(time.Millisecond)
	}
	if worst > 250*time.Millisecond {
		t.Errorf("Warm blocked for %v while Redis was slow", worst)
	}
	eventually(t, 5*time.Second, "a write timed out", func() bool { return counter(w.m.dropped[dropRedis]) > 0 })
	if d := time.Since(paused); d > 1500*time.Millisecond {
		t.Logf("the first timeout came %v after the pause began", d)
	}
	eventually(t, 10*time.Second, "writes resume after the pause", func() bool {
		w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/after"}}})
		n, _ := rdb.Exists(ctx, "page:/after").Result()
		return n == 1
	})
	if counter(w.m.dropped[dropRedis]) == 0 {
		t.Errorf("no page dropped for a Redis timeout")
	}
}

// TestWarmerOriginConcurrency checks that no more than OriginConcurrency
// origin requests are in flight at once.
func TestWarmerOriginConcurrency(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	var cur, peak atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		n := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(30 * time.Millisecond)
		_, _ = rw.Write([]byte("ok"))
	}))
	defer srv.Close()
	w := startWarmer(t, Config{Mode: ModeOrigin, OriginURL: srv.URL + "/{page}", OriginConcurrency: 2, Workers: 3, PipelineSize: 4}, rdb)
	var pages []Page
	for i := range 24 {
		pages = append(pages, Page{Key: fmt.Sprintf("/c/%d", i), Probability: 0.9})
	}
	w.Warm(ctx, Request{UserID: "u", Pages: pages})
	eventually(t, 10*time.Second, "all pages stored", func() bool { return counter(w.m.written) == 24 })
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak origin concurrency %d, want 2", p)
	}
}

// TestWarmerStopsWithRun checks that once Run has returned because its
// context ended, Warm drops pages instead of queueing them for nobody.
func TestWarmerStopsWithRun(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	w, err := NewWarmer(Config{}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- w.Run(runCtx) }()
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/before"}}})
	eventually(t, 5*time.Second, "first page written", func() bool { return counter(w.m.written) == 1 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/after"}}}); n != 0 {
		t.Fatalf("Warm after Run returned queued %d pages", n)
	}
	if got := counter(w.m.dropped[dropClosed]); got != 1 {
		t.Fatalf("dropped closed = %v, want 1", got)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close after Run returned: %v", err)
	}
}

// TestWarmerLinger checks that a worker holding a partial pipeline waits up
// to Linger for more pages and sends them together.
func TestWarmerLinger(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	w := startWarmer(t, Config{Workers: 1, PipelineSize: 3, Linger: 2 * time.Second}, rdb)
	for i := range 3 {
		w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/l/%d", i)}}})
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 5*time.Second, "three pages written", func() bool { return counter(w.m.written) == 3 })
	var d dto.Metric
	if err := w.m.writeSeconds.Write(&d); err != nil {
		t.Fatal(err)
	}
	if n := d.GetHistogram().GetSampleCount(); n != 1 {
		t.Fatalf("%d pipelines for 3 pages within the linger, want 1", n)
	}
}

// TestWarmerMillisecondTTL checks that a TTL that is not whole seconds is
// sent as PX.
func TestWarmerMillisecondTTL(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	const ttl = 60*time.Second + 900*time.Millisecond // EX would round to 60s
	w := startWarmer(t, Config{TTL: ttl}, rdb)
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/ms"}}})
	eventually(t, 5*time.Second, "page written", func() bool { return counter(w.m.written) == 1 })
	got, err := rdb.PTTL(ctx, "page:/ms").Result()
	if err != nil || got <= 60*time.Second || got > ttl {
		t.Fatalf("PTTL = %v, %v; want within (60s, %v]", got, err, ttl)
	}
}

// TestWarmerTrackedKeysExpire checks that prefetchd_prefetch_tracked_keys
// counts the keys warm now: those past their TTL leave it when it is read,
// without waiting for a new write.
func TestWarmerTrackedKeysExpire(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	reg := prometheus.NewRegistry()
	w, err := NewWarmer(Config{TTL: 2 * time.Second}, rdb, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	defer func() {
		if err := w.Close(ctx); err != nil {
			t.Error(err)
		}
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	tracked := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "prefetchd_prefetch_tracked_keys" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("prefetchd_prefetch_tracked_keys not registered")
		return 0
	}
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/a", Probability: 0.9}, {Key: "/b", Probability: 0.8}}})
	eventually(t, 5*time.Second, "two keys written", func() bool { return counter(w.m.written) == 2 })
	if got := tracked(); got != 2 {
		t.Fatalf("tracked keys after the writes = %v, want 2", got)
	}
	time.Sleep(2200 * time.Millisecond) // past the TTL, no write since
	if got := tracked(); got != 0 {
		t.Fatalf("tracked keys past their TTL = %v, want 0", got)
	}
}

// TestWarmerExistingKeyTimeLeft: a page found already in Redis (another
// replica's, or this service's before a restart) is believed warm only for
// the time its key has left, so it is warmed again once that key expires,
// not a whole TTL later.
func TestWarmerExistingKeyTimeLeft(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	if err := rdb.Set(ctx, "page:/p42", "theirs", 700*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	w := startWarmer(t, Config{TTL: time.Minute}, rdb)
	req := Request{UserID: "u", Pages: []Page{{Key: "/p42", Probability: 0.9}}}
	w.Warm(ctx, req)
	eventually(t, 5*time.Second, "the existing key found", func() bool { return counter(w.m.skippedExists) == 1 })
	eventually(t, 5*time.Second, "the existing key expired in Redis", func() bool {
		n, err := rdb.Exists(ctx, "page:/p42").Result()
		return err == nil && n == 0
	})
	time.Sleep(50 * time.Millisecond)
	w.Warm(ctx, req)
	eventually(t, 5*time.Second, "the page warmed again", func() bool { return counter(w.m.written) == 1 })
	if v, err := rdb.Get(ctx, "page:/p42").Result(); err != nil || v == "theirs" {
		t.Fatalf("page:/p42 = %q, %v; want this warmer's value", v, err)
	}
	if d, err := rdb.TTL(ctx, "page:/p42").Result(); err != nil || d < 50*time.Second {
		t.Fatalf("TTL %v, %v; want about a minute", d, err)
	}
}

// TestWarmerWriteErr: a Redis that answers PING but refuses writes (out of
// memory with noeviction) makes WriteErr report it once writes have kept
// failing for WriteFailureGrace; one write that succeeds ends it.
func TestWarmerWriteErr(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	var ahead atomic.Int64
	w := startWarmerWith(t, Config{QueueSize: 64, PipelineSize: 16, WriteTimeout: 200 * time.Millisecond}, rdb, func(w *Warmer) {
		w.now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	})
	page := 0
	warm := func() {
		page++
		w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/p/%d", page), Probability: 0.9}}})
	}
	warm()
	eventually(t, 5*time.Second, "a first write", func() bool { return counter(w.m.written) == 1 })
	if err := w.WriteErr(); err != nil {
		t.Fatalf("WriteErr with writes going through: %v", err)
	}
	// Nothing can be written any more.
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	warm()
	eventually(t, 5*time.Second, "a refused write", func() bool { return counter(w.m.dropped[dropRedis]) >= 1 })
	if err := w.WriteErr(); err != nil {
		t.Fatalf("WriteErr right after the first refusal: %v, want nil within the grace", err)
	}
	ahead.Store(int64(WriteFailureGrace + time.Second))
	warm()
	eventually(t, 5*time.Second, "a second refused write", func() bool { return counter(w.m.dropped[dropRedis]) >= 2 })
	if err := w.WriteErr(); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("WriteErr after %v of refusals: %v, want the OOM refusal", WriteFailureGrace, err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	warm()
	eventually(t, 5*time.Second, "a write after memory was given back", func() bool { return counter(w.m.written) == 2 })
	if err := w.WriteErr(); err != nil {
		t.Fatalf("WriteErr after a write succeeded: %v", err)
	}
}

// TestWarmerOriginRefusals: a redirect is not followed (the origin's
// answer is not a 2xx), and a page the origin answered 404 or too large is
// not asked again within refuseFor, whoever predicts it; its predictions
// count as dropped with the same reason.
func TestWarmerOriginRefusals(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	w := startWarmer(t, Config{Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", OriginTimeout: time.Second,
		MaxBodyBytes: 1024, KeyTemplate: "user:{user}:page:{page}"}, rdb)
	for i, p := range []string{"/moved/a", "/missing/b", "/big/c"} {
		for u := range 3 {
			w.Warm(ctx, Request{UserID: fmt.Sprintf("u%d", u), Pages: []Page{{Key: p, Probability: 0.9}}})
			want := float64(u + 1)
			eventually(t, 5*time.Second, fmt.Sprintf("%s dropped %v times", p, want), func() bool {
				return counter(w.m.dropped[dropOriginStatus])+counter(w.m.dropped[dropOriginTooLarge]) == float64(3*i)+want
			})
		}
		if got := o.hits.Load(); got != int64(i+1) {
			t.Fatalf("origin asked %d times after %s was predicted for 3 users, want %d (once per page)", got, p, i+1)
		}
	}
	if got := counter(w.m.dropped[dropOriginStatus]); got != 6 {
		t.Errorf("dropped for their status %v, want 6 (redirect and 404, 3 users each)", got)
	}
	if keys := pageKeys(t, rdb); len(keys) != 0 {
		t.Errorf("keys %v stored, want none (no 2xx answer)", keys)
	}
}

// TestWarmerOriginSparedWhileWritesFail: once warm writes fail (Redis
// down), the origin is not asked for bodies that could not be stored.
func TestWarmerOriginSparedWhileWritesFail(t *testing.T) {
	srv, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	w := startWarmer(t, Config{Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", OriginTimeout: time.Second,
		WriteTimeout: 200 * time.Millisecond, CheckInterval: time.Hour}, rdb)
	srv.Stop()
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/ok/1", Probability: 0.9}}})
	eventually(t, 5*time.Second, "the write failed", func() bool { return counter(w.m.dropped[dropRedis]) == 1 })
	for i := 2; i <= 4; i++ {
		w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: fmt.Sprintf("/ok/%d", i), Probability: 0.9}}})
	}
	eventually(t, 5*time.Second, "three more dropped", func() bool { return counter(w.m.dropped[dropRedis]) == 4 })
	if got := o.hits.Load(); got != 1 {
		t.Fatalf("origin asked %d times, want 1 (not while writes fail)", got)
	}
}

// TestWarmerOriginBatchParts: with large pages a batch is fetched and
// written in parts of at most originBatchBytes of bodies.
func TestWarmerOriginBatchParts(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	w, err := NewWarmer(Config{Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", OriginTimeout: time.Second,
		MaxBodyBytes: originBatchBytes / 2}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var pages []Page
	for i := range 5 {
		pages = append(pages, Page{Key: fmt.Sprintf("/ok/%d", i), Probability: 0.9})
	}
	w.Warm(ctx, Request{UserID: "u", Pages: pages}) // one batch: queued before Run
	runQueued(t, ctx, w)
	eventually(t, 5*time.Second, "five written", func() bool { return counter(w.m.written) == 5 })
	if got := histogramCount(t, w.m.writeSeconds); got != 3 {
		t.Errorf("%d pipelines, want 3 (parts of 2, 2 and 1 pages)", got)
	}
}

// histogramCount reads a histogram's number of observations.
func histogramCount(t *testing.T, m prometheus.Metric) uint64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil || d.Histogram == nil {
		t.Fatalf("read histogram: %v", err)
	}
	return d.Histogram.GetSampleCount()
}

// TestWarmerOriginCoalesces: per-user keys of one page in one batch cost
// the origin one request, its answer shared: a body is stored under every
// key, a refusal drops every key.
func TestWarmerOriginCoalesces(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	o := newOrigin(t)
	w, err := NewWarmer(Config{Mode: ModeOrigin, OriginURL: o.srv.URL + "/{page}", OriginTimeout: time.Second,
		KeyTemplate: "user:{user}:page:{page}"}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for u := range 5 { // queued before Run: one batch
		w.Warm(ctx, Request{UserID: fmt.Sprintf("u%d", u), Pages: []Page{{Key: "/ok/shared", Probability: 0.9}, {Key: "/missing/shared", Probability: 0.8}}})
	}
	runQueued(t, ctx, w)
	eventually(t, 5*time.Second, "5 written, 5 dropped", func() bool {
		return counter(w.m.written) == 5 && counter(w.m.dropped[dropOriginStatus]) == 5
	})
	if got := o.hits.Load(); got != 2 {
		t.Fatalf("origin asked %d times for 2 pages predicted for 5 users, want 2", got)
	}
	if v, err := rdb.Get(ctx, "user:u3:page:/ok/shared").Result(); err != nil || v != "body of /ok/shared" {
		t.Fatalf("u3's key = %q, %v; want the shared body", v, err)
	}
}

// runQueued runs w, whose pages were queued before Run (so that one worker
// takes them in one batch), until the test ends.
func runQueued(t *testing.T, ctx context.Context, w *Warmer) {
	t.Helper()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
}
