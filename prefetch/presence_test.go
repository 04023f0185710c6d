package prefetch

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// TestWarmerCacheLost loses the cache under a running Warmer, by a restart
// (kill and start empty on the same port), a FLUSHALL, and an outage during
// which pages are predicted. In every case the Warmer notices, forgets what
// it believed (no more skips as warm), Present says cold until the pages are
// warmed again on their next prediction, and clicks on lost pages do not
// count as warm.
func TestWarmerCacheLost(t *testing.T) {
	cases := []struct {
		name   string
		reason string
		// lose loses the cache and returns the pages whose writes failed
		// meanwhile.
		lose func(t *testing.T, srv *redistest.Server, rdb *redis.Client, w *Warmer) []Page
	}{
		{"restart", resetRestart, func(t *testing.T, srv *redistest.Server, _ *redis.Client, _ *Warmer) []Page {
			srv.Restart()
			return nil
		}},
		{"flushall", resetFlush, func(t *testing.T, _ *redistest.Server, rdb *redis.Client, _ *Warmer) []Page {
			if err := rdb.FlushAll(testCtx(t)).Err(); err != nil {
				t.Fatalf("FLUSHALL: %v", err)
			}
			return nil
		}},
		{"outage with predictions", resetRestart, func(t *testing.T, srv *redistest.Server, _ *redis.Client, w *Warmer) []Page {
			srv.Stop()
			// Predictions during the outage: the writes fail and must not
			// leave anything believed warm.
			dropped := counter(w.m.dropped[dropRedis])
			more := []Page{{Key: "/during/1", Probability: 0.8}, {Key: "/during/2", Probability: 0.8}}
			w.Warm(testCtx(t), Request{UserID: "u", ModelVersion: "v1", Pages: more})
			eventually(t, 5*time.Second, "writes during the outage dropped", func() bool {
				return counter(w.m.dropped[dropRedis]) >= dropped+2
			})
			w.mu.Lock()
			for _, p := range more {
				if _, exp, flying := w.keys.lookup(w.Key("u", p.Key)); exp != 0 || flying {
					t.Errorf("%s after a failed write: expiry %d, in flight %v; want forgotten", p.Key, exp, flying)
				}
			}
			w.mu.Unlock()
			srv.Restart()
			return more
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, rdb := newRedis(t)
			ctx := testCtx(t)
			w, ev := watchedWarmer(t, rdb)
			pages := []Page{{Key: "/a", Probability: 0.9}, {Key: "/b", Probability: 0.7}, {Key: "/c", Probability: 0.6}}
			names := []string{"/a", "/b", "/c"}
			t0 := time.Now()
			req := Request{UserID: "u", ModelVersion: "v1", Pages: pages, At: t0}
			if n := w.Warm(ctx, req); n != 3 {
				t.Fatalf("Warm queued %d, want 3", n)
			}
			eventually(t, 5*time.Second, "3 pages written", func() bool { return counter(w.m.written) == 3 })
			if got := w.Present(ctx, "u", names, nil); !slices.Equal(got, []bool{true, true, true}) {
				t.Fatalf("Present before the loss = %v, want all true", got)
			}
			w.Warm(ctx, req)
			if got := counter(w.m.skippedWarm); got != 3 {
				t.Fatalf("skipped warm = %v before the loss, want 3", got)
			}
			// A click before the loss is warm.
			ev.ObserveClick("u", "/a", t0.Add(time.Second))
			// Let the watcher see the server once (run_id and sentinel).
			eventually(t, 5*time.Second, "sentinel written", func() bool { return rdb.Exists(ctx, w.sentinel).Val() == 1 })

			failed := tc.lose(t, srv, rdb, w)
			eventually(t, 10*time.Second, "the loss noticed", func() bool { return counter(w.m.resets[tc.reason]) >= 1 })
			w.mu.Lock()
			tracked := w.keys.Len()
			w.mu.Unlock()
			if tracked != 0 {
				t.Errorf("%d keys still believed warm after the loss, want 0", tracked)
			}
			if got := w.Present(ctx, "u", names, nil); !slices.Equal(got, []bool{false, false, false}) {
				t.Errorf("Present after the loss = %v, want all false", got)
			}
			// Clicks on the lost pages are cold: clicks grow, warm clicks do not.
			ev.ObserveClick("u", "/b", t0.Add(2*time.Second))
			ev.ObserveClick("u", "/c", t0.Add(3*time.Second))
			s := ev.Stats()
			if len(s) != 1 || s[0].Clicks != 3 || s[0].WarmClicks != 1 || s[0].Used != 1 || s[0].Wasted != 2 {
				t.Errorf("stats after the loss %+v, want 3 clicks, 1 warm, 1 used, 2 wasted", s)
			}

			// The next prediction warms them again instead of skipping them.
			skipped := counter(w.m.skippedWarm)
			if n := w.Warm(ctx, Request{UserID: "u", ModelVersion: "v1", Pages: pages, At: t0.Add(4 * time.Second)}); n != 3 {
				t.Errorf("Warm after the loss queued %d pages, want 3", n)
			}
			if got := counter(w.m.skippedWarm); got != skipped {
				t.Errorf("skipped warm grew from %v to %v after the loss, want no skip of a lost key", skipped, got)
			}
			eventually(t, 5*time.Second, "pages written again", func() bool { return counter(w.m.written) == 6 })
			if got := w.Present(ctx, "u", names, nil); !slices.Equal(got, []bool{true, true, true}) {
				t.Errorf("Present after rewarming = %v, want all true", got)
			}
			// Pages whose writes failed during the outage are warmed on
			// their next prediction.
			if len(failed) > 0 {
				if n := w.Warm(ctx, Request{UserID: "u", ModelVersion: "v1", Pages: failed, At: t0.Add(4 * time.Second)}); n != len(failed) {
					t.Errorf("Warm of the pages that failed queued %d, want %d", n, len(failed))
				}
				eventually(t, 5*time.Second, "failed pages written", func() bool { return counter(w.m.written) == float64(6+len(failed)) })
			}
			ev.ObserveClick("u", "/b", t0.Add(5*time.Second))
			if s := ev.Stats(); s[0].WarmClicks != 2 || s[0].Used != 2 {
				t.Errorf("stats after rewarming %+v, want 2 warm clicks, 2 used", s)
			}
			if counter(w.m.resets[resetRestart])+counter(w.m.resets[resetFlush]) != 1 {
				t.Errorf("resets restart %v flush %v, want exactly one", counter(w.m.resets[resetRestart]), counter(w.m.resets[resetFlush]))
			}
		})
	}
}

// TestWarmerFlushWithoutInfo: with a Redis user that may not run INFO (no
// run_id), a FLUSHALL is still noticed through the sentinel key.
func TestWarmerFlushWithoutInfo(t *testing.T) {
	srv, admin := newRedis(t)
	ctx := testCtx(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", "pf", "on", ">pw", "~*", "&*", "+@all", "-info").Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "pf", Password: "pw", ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.Info(ctx, "server").Err(); err == nil {
		t.Fatal("INFO allowed to the restricted user")
	}
	w := startWarmer(t, Config{CheckInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}, rdb)
	pages := []Page{{Key: "/a", Probability: 0.9}, {Key: "/b", Probability: 0.7}}
	if n := w.Warm(ctx, Request{UserID: "u", ModelVersion: "v1", Pages: pages, At: time.Now()}); n != 2 {
		t.Fatalf("Warm queued %d, want 2", n)
	}
	eventually(t, 5*time.Second, "2 pages written", func() bool { return counter(w.m.written) == 2 })
	eventually(t, 5*time.Second, "sentinel written", func() bool { return admin.Exists(ctx, w.sentinel).Val() == 1 })
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	eventually(t, 5*time.Second, "the flush noticed", func() bool { return counter(w.m.resets[resetFlush]) == 1 })
	if n := w.Warm(ctx, Request{UserID: "u", ModelVersion: "v1", Pages: pages, At: time.Now()}); n != 2 {
		t.Errorf("Warm after the flush queued %d pages, want 2 (none believed warm)", n)
	}
	eventually(t, 5*time.Second, "pages written again", func() bool { return counter(w.m.written) == 4 })
	if got := counter(w.m.resets[resetRestart]); got != 0 {
		t.Errorf("restart resets %v without a restart, want 0", got)
	}
}

// TestWarmersShareRedis runs two Warmers, as two replicas would, on one
// redis-server: they agree on what is warm whichever wrote it, both notice a
// flush, and both see a page one of them warms again.
func TestWarmersShareRedis(t *testing.T) {
	srv, rdb := newRedis(t)
	rdb2 := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb2.Close() })
	ctx := testCtx(t)
	cfg := Config{CheckInterval: 50 * time.Millisecond}
	a := startWarmer(t, cfg, rdb)
	b := startWarmer(t, cfg, rdb2)
	names := []string{"/x", "/y"}
	agree := func(want []bool) bool {
		ga, gb := a.Present(ctx, "u1", names, nil), b.Present(ctx, "u2", names, nil)
		return slices.Equal(ga, want) && slices.Equal(gb, want)
	}
	if !agree([]bool{false, false}) {
		t.Fatalf("before any warming: replicas say %v and %v, want all false",
			a.Present(ctx, "u1", names, nil), b.Present(ctx, "u2", names, nil))
	}
	a.Warm(ctx, Request{UserID: "u1", Pages: []Page{{Key: "/x", Probability: 0.9}}})
	eventually(t, 5*time.Second, "both replicas see /x warm", func() bool { return agree([]bool{true, false}) })
	b.Warm(ctx, Request{UserID: "u2", Pages: []Page{{Key: "/y", Probability: 0.9}}})
	eventually(t, 5*time.Second, "both replicas see /x and /y warm", func() bool { return agree([]bool{true, true}) })
	eventually(t, 5*time.Second, "both sentinels written", func() bool {
		return rdb.Exists(ctx, a.sentinel, b.sentinel).Val() == 2
	})

	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if !agree([]bool{false, false}) {
		t.Errorf("after FLUSHALL: replicas say %v and %v, want all false",
			a.Present(ctx, "u1", names, nil), b.Present(ctx, "u2", names, nil))
	}
	eventually(t, 5*time.Second, "both replicas notice the flush", func() bool {
		return counter(a.m.resets[resetFlush]) == 1 && counter(b.m.resets[resetFlush]) == 1
	})
	// b warms /x again (a wrote it before): both see it.
	b.Warm(ctx, Request{UserID: "u2", Pages: []Page{{Key: "/x", Probability: 0.9}}})
	eventually(t, 5*time.Second, "both replicas see /x warm again", func() bool { return agree([]bool{true, false}) })
}

// TestPresentRedisDown checks that Present answers cold, within its timeout,
// when Redis is down, and counts the failure.
func TestPresentRedisDown(t *testing.T) {
	srv, rdb := newRedis(t)
	w, err := NewWarmer(Config{PresenceTimeout: 100 * time.Millisecond}, rdb, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := rdb.Set(ctx, "page:/p", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if got := w.Present(ctx, "u", []string{"/p", "/q"}, nil); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("Present = %v, want [true false]", got)
	}
	srv.Stop()
	start := time.Now()
	got := w.Present(ctx, "u", []string{"/p", "/q"}, make([]bool, 0, 2))
	if d := time.Since(start); d > time.Second {
		t.Errorf("Present took %v with Redis down, want about the 100ms timeout", d)
	}
	if !slices.Equal(got, []bool{false, false}) {
		t.Errorf("Present with Redis down = %v, want all false", got)
	}
	if n := counter(w.m.presenceErrors); n != 1 {
		t.Errorf("presence errors = %v, want 1", n)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRunID checks the parsing of INFO server.
func TestRunID(t *testing.T) {
	cases := []struct {
		name, info, want string
		ok               bool
	}{
		{"present", "# Server\r\nredis_version:7.0.15\r\nrun_id:0123abcd\r\ntcp_port:6379\r\n", "0123abcd", true},
		{"missing", "# Server\r\nredis_version:7.0.15\r\n", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := runID(tc.info)
			if got != tc.want || (err == nil) != tc.ok {
				t.Errorf("runID = %q, %v; want %q, ok %v", got, err, tc.want, tc.ok)
			}
		})
	}
}

// TestWarmerCacheLostCluster runs the Warmer on a Redis Cluster of one
// master holding every slot: the watcher reads the masters' run_ids and
// notices a FLUSHALL and a restart (empty, same node from its nodes.conf).
func TestWarmerCacheLostCluster(t *testing.T) {
	srv := redistest.Start(t, "--cluster-enabled", "yes")
	ctx := testCtx(t)
	node := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { _ = node.Close() })
	if err := node.ClusterAddSlotsRange(ctx, 0, 16383).Err(); err != nil {
		t.Fatalf("add slots: %v", err)
	}
	clusterOK := func() bool {
		info, err := node.ClusterInfo(ctx).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	}
	eventually(t, 10*time.Second, "cluster state ok", clusterOK)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}, ContextTimeoutEnabled: true,
		DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	w := startWarmer(t, Config{CheckInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}, rdb)
	names := []string{"/a", "/b"}
	pages := []Page{{Key: "/a", Probability: 0.9}, {Key: "/b", Probability: 0.8}}
	rewarm := func(what string) {
		t.Helper()
		eventually(t, 10*time.Second, what, func() bool {
			w.Warm(ctx, Request{UserID: "u", Pages: pages})
			return slices.Equal(w.Present(ctx, "u", names, nil), []bool{true, true})
		})
	}
	rewarm("pages warm on the cluster")
	eventually(t, 5*time.Second, "sentinel written", func() bool { return node.Exists(ctx, w.sentinel).Val() == 1 })

	if err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() }); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	eventually(t, 10*time.Second, "flush noticed", func() bool { return counter(w.m.resets[resetFlush]) == 1 })
	if got := w.Present(ctx, "u", names, nil); !slices.Equal(got, []bool{false, false}) {
		t.Errorf("Present after FLUSHALL = %v, want all false", got)
	}
	rewarm("pages warmed again after the flush")

	srv.Restart()
	eventually(t, 10*time.Second, "cluster state ok after restart", clusterOK)
	eventually(t, 10*time.Second, "restart noticed", func() bool { return counter(w.m.resets[resetRestart]) == 1 })
	rewarm("pages warmed again after the restart")
}

// TestWarmerCacheUnreachable: while the cache Redis does not answer, a click
// on a page the Warmer wrote counts as cold (nothing is served from a cache
// that is down), before the Redis comes back and is seen to have restarted.
func TestWarmerCacheUnreachable(t *testing.T) {
	srv, rdb := newRedis(t)
	ctx := testCtx(t)
	w, ev := watchedWarmer(t, rdb)
	t0 := time.Now()
	w.Warm(ctx, Request{UserID: "u", ModelVersion: "v1", At: t0,
		Pages: []Page{{Key: "/a", Probability: 0.9}, {Key: "/b", Probability: 0.9}}})
	eventually(t, 5*time.Second, "2 pages written", func() bool { return counter(w.m.written) == 2 })
	ev.ObserveClick("u", "/a", t0.Add(time.Second))
	if s := ev.Stats(); len(s) != 1 || s[0].WarmClicks != 1 {
		t.Fatalf("stats %+v, want the click on /a warm", s)
	}
	srv.Stop()
	eventually(t, 5*time.Second, "the cache seen unreachable", ev.unreachable.Load)
	ev.ObserveClick("u", "/b", t0.Add(2*time.Second))
	if s := ev.Stats(); s[0].Clicks != 2 || s[0].WarmClicks != 1 || s[0].Used != 1 {
		t.Fatalf("stats after a click with the cache down %+v, want 2 clicks, 1 warm, 1 used", s)
	}
	srv.Restart()
	eventually(t, 10*time.Second, "the cache reachable again", func() bool { return !ev.unreachable.Load() })
}

// TestWarmerWriteErrEndsWithoutWrites: a run of refused writes ends when
// the cache check's own write goes through again, even when no page comes
// to be written (a quiet replica must not stay unready).
func TestWarmerWriteErrEndsWithoutWrites(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	var ahead atomic.Int64
	w := startWarmerWith(t, Config{QueueSize: 64, PipelineSize: 16, WriteTimeout: 200 * time.Millisecond, CheckInterval: 50 * time.Millisecond}, rdb, func(w *Warmer) {
		w.now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	})
	// The checks see the sentinel in place (they only extend it) before
	// writes start to be refused.
	eventually(t, 5*time.Second, "sentinel written", func() bool { return rdb.Exists(ctx, w.sentinel).Val() == 1 })
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/p/1", Probability: 0.9}}})
	eventually(t, 5*time.Second, "a refused write", func() bool { return counter(w.m.dropped[dropRedis]) >= 1 })
	ahead.Store(int64(WriteFailureGrace + time.Second))
	// The checks keep failing too (their SET is refused): still reported.
	time.Sleep(300 * time.Millisecond)
	if err := w.WriteErr(); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("WriteErr while writes are refused: %v, want the OOM refusal", err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "WriteErr cleared by the cache check", func() bool { return w.WriteErr() == nil })
	if got := counter(w.m.written); got != 0 {
		t.Fatalf("%v pages written, want none (the check alone ends the run)", got)
	}
}

// watchedWarmer starts a Warmer that checks its Redis every 50 ms, with an
// Evaluator as its observer.
func watchedWarmer(t *testing.T, rdb *redis.Client) (*Warmer, *Evaluator) {
	t.Helper()
	ev, err := NewEvaluator(EvaluatorConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := startWarmer(t, Config{CheckInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}, rdb)
	w.SetObserver(ev)
	return w, ev
}
