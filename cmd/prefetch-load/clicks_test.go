package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

// standIn plays prefetchd for the clicks mode: it reads the clicks in its
// own group and, delay after reading each, sets a key for its user.
func standIn(t *testing.T, ctx context.Context, brokers, redisAddr string, delay time.Duration) {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{brokers}, GroupID: "stand-in", Topic: "clicks",
		MaxWait: 50 * time.Millisecond, JoinGroupBackoff: 100 * time.Millisecond, StartOffset: kafka.FirstOffset})
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	ready := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	cctx, cancel := context.WithCancel(ctx)
	wg.Go(func() {
		for {
			msg, err := r.FetchMessage(cctx)
			if err != nil {
				return
			}
			once.Do(func() { close(ready) })
			var ev struct {
				UserID string `json:"user_id"`
			}
			if json.Unmarshal(msg.Value, &ev) != nil || ev.UserID == "" {
				continue
			}
			wg.Go(func() {
				select {
				case <-time.After(delay):
				case <-cctx.Done():
					return
				}
				_ = rdb.Set(cctx, "user:"+ev.UserID+":page:/next", "1", time.Second).Err()
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		_ = r.Close()
		wg.Wait()
		_ = rdb.Close()
	})
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatal("stand-in read nothing")
	}
}

// TestClicks runs the clicks mode against a stand-in service that warms a
// key 40 ms after reading each click, on a kfake broker and a real
// redis-server: the service latency must show the 40 ms, the bare reader's
// must not, and every click measured must have its key.
func TestClicks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := kafkatest.Start(t, "clicks")
	srv := redistest.Start(t, "--hz", "37") // reported in the results
	b.Produce(t, "clicks", kafkatest.Message("probe", `{"user_id":"probe","page":"/","ts":"2026-12-01T00:00:00Z"}`))
	const delay = 40 * time.Millisecond
	standIn(t, ctx, b.Addr(), srv.Addr(), delay)
	// The operator's own notification classes, which the run must keep
	// and put back as they were.
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer admin.Close()
	if err := admin.ConfigSet(ctx, "notify-keyspace-events", "Kx").Err(); err != nil {
		t.Fatal(err)
	}
	before, err := admin.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	args := []string{"clicks", "--kafka-brokers", b.Addr(), "--redis-addr", srv.Addr(), "--rates", "200,400",
		"--duration", "1s", "--warmup", "300ms", "--drain", "500ms", "--user-gap", "2s", "--json"}
	if err := run(ctx, args, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if after, err := admin.ConfigGet(ctx, "notify-keyspace-events").Result(); err != nil ||
		after["notify-keyspace-events"] != before["notify-keyspace-events"] {
		t.Errorf("notify-keyspace-events %q after the run (%v), want the operator's %q back", after["notify-keyspace-events"], err, before["notify-keyspace-events"])
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d result lines, want 2 (one per rate):\n%s", len(lines), out.String())
	}
	for i, rate := range []float64{200, 400} {
		var r map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &r); err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		num := func(k string) float64 {
			v, ok := r[k].(float64)
			if !ok {
				t.Fatalf("rate %v: %s = %v, want a number", rate, k, r[k])
			}
			return v
		}
		clicks, warmed := num("clicks"), num("clicks_warmed")
		if num("rate") != rate || math.Abs(clicks-rate) > rate/4 {
			t.Errorf("rate %v: %v clicks in 1s", rate, clicks)
		}
		if warmed < 0.95*clicks || num("keys") < warmed {
			t.Errorf("rate %v: %v of %v clicks warmed, %v keys", rate, warmed, clicks, num("keys"))
		}
		if p50 := num("p50_ms"); p50 < float64(delay.Milliseconds()) || p50 > 1000 {
			t.Errorf("rate %v: service p50 %vms, want at least the stand-in's %v", rate, p50, delay)
		}
		// The stand-in reads like the bare reader, then waits delay.
		if gap := num("p50_ms") - num("bare_p50_ms"); gap < 0.75*float64(delay.Milliseconds()) {
			t.Errorf("rate %v: service p50 %vms only %vms above the bare p50, want about %v", rate, num("p50_ms"), gap, delay)
		}
		if num("bare_p99_ms") <= 0 || num("p99_ratio") <= 0 {
			t.Errorf("rate %v: bare p99 %v, ratio %v; want both positive", rate, r["bare_p99_ms"], r["p99_ratio"])
		}
		if v, ok := r["redis_stall_ms"].(float64); !ok || v < 0 {
			t.Errorf("rate %v: redis_stall_ms %v, want a number", rate, r["redis_stall_ms"])
		}
		if r["redis_hz"] != "37" {
			t.Errorf("rate %v: redis_hz %v, want the server's 37", rate, r["redis_hz"])
		}
		if r["queue_full"] != nil {
			t.Errorf("rate %v: queue_full %v without --metrics-url, want null", rate, r["queue_full"])
		}
	}
}

func TestClicksMetrics(t *testing.T) {
	le := func(v string) string { return `prefetchd_click_to_warm_seconds_bucket{le="` + v + `"}` }
	before := map[string]float64{
		`prefetchd_prefetch_dropped_total{reason="queue_full"}`: 5, `prefetchd_prefetch_dropped_total{reason="shed"}`: 1,
		`prefetchd_prefetch_late_total`: 2, le("0.001"): 10, le("0.01"): 10, le("0.1"): 10, le("+Inf"): 10,
	}
	cases := []struct {
		name  string
		after map[string]float64
		p99   float64
	}{
		{"all within 1ms", map[string]float64{le("0.001"): 110, le("0.01"): 110, le("0.1"): 110, le("+Inf"): 110}, 1},
		{"2 in 100 over 10ms", map[string]float64{le("0.001"): 50, le("0.01"): 108, le("0.1"): 110, le("+Inf"): 110}, 100},
		{"nothing new", map[string]float64{le("0.001"): 10, le("0.01"): 10, le("0.1"): 10, le("+Inf"): 10}, math.NaN()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			after := map[string]float64{`prefetchd_prefetch_dropped_total{reason="queue_full"}`: 5,
				`prefetchd_prefetch_dropped_total{reason="shed"}`: 4, `prefetchd_prefetch_late_total`: 9}
			for k, v := range tc.after {
				after[k] = v
			}
			r := clickResult{MetricP99: math.NaN()}
			r.addMetrics(before, after)
			if r.QueueFull != 0 || r.Shed != 3 || r.Late != 7 {
				t.Errorf("queue_full %v, shed %v, late %v; want 0, 3, 7", r.QueueFull, r.Shed, r.Late)
			}
			if !(r.MetricP99 == tc.p99 || math.IsNaN(r.MetricP99) && math.IsNaN(tc.p99)) {
				t.Errorf("metric p99 %vms, want %v", r.MetricP99, tc.p99)
			}
		})
	}
}

func TestClicksFlags(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no brokers", []string{"--redis-addr", "r:1"}, "--kafka-brokers"},
		{"no redis", []string{"--kafka-brokers", "k:1"}, "--redis-addr"},
		{"bad rate", []string{"--kafka-brokers", "k:1", "--redis-addr", "r:1", "--rates", "10,x"}, "--rates"},
		{"template without user", []string{"--kafka-brokers", "k:1", "--redis-addr", "r:1", "--key-template", "page:{page}"}, "{user}"},
		{"ok", []string{"--kafka-brokers", "k:1", "--redis-addr", "r:1"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseClicksFlags(tc.args, &bytes.Buffer{})
			if tc.wantErr == "" {
				if err != nil || len(c.rates) != 4 || c.rates[2] != 10000 {
					t.Fatalf("parse: %v, rates %v; want the default 1k, 5k, 10k, 20k", err, c.rates)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
			}
		})
	}
}

// TestRedisStall makes Redis stall in a busy script on a real redis-server
// and checks that redisStall names the event and its length, and reports
// nothing after LATENCY RESET.
func TestRedisStall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := redistest.Start(t, "--latency-monitor-threshold", "1")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	if ms, ev := redisStall(ctx, rdb); ms != 0 || ev != "" {
		t.Fatalf("fresh server: stall %v %q, want none", ms, ev)
	}
	// A script busy for at least 20 ms by Redis's own clock.
	const busy = `local t0 = redis.call('TIME') local ms = 0
while ms < 20 do local t = redis.call('TIME') ms = (t[1] - t0[1]) * 1000 + (t[2] - t0[2]) / 1000 end
return 1`
	if err := rdb.Eval(ctx, busy, nil).Err(); err != nil {
		t.Fatal(err)
	}
	if ms, ev := redisStall(ctx, rdb); ms < 20 || ev != "command" {
		t.Fatalf("after a 20 ms script: stall %v ms %q, want at least 20 ms, event command", ms, ev)
	}
	if err := rdb.Do(ctx, "latency", "reset").Err(); err != nil {
		t.Fatal(err)
	}
	if ms, ev := redisStall(ctx, rdb); ms != 0 || ev != "" {
		t.Fatalf("after LATENCY RESET: stall %v %q, want none", ms, ev)
	}
}
