package app

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

// TestClickToWarmServed runs the service on a kfake broker and a real
// redis-server: the latency metrics and the overloaded check are in the
// first scrape at zero; clicks whose ts is two hours old are counted from
// their Kafka record timestamp, so the click-to-warm latency stays small.
func TestClickToWarmServed(t *testing.T) {
	from, _, prob, _ := strongestTransition(t)
	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.Threshold = float64(prob) * 0.99
	cfg.KeyTemplate = "user:{user}:page:{page}"
	cfg.OverloadLag = time.Hour
	svc := startService(t, cfg, 60*time.Second)
	ctx, url := svc.ctx, "http://"+svc.addrs.Admin+"/metrics"

	first := httpGet(t, ctx, url)
	for _, want := range []string{
		"prefetchd_click_to_warm_seconds_count 0",
		"prefetchd_prefetch_late_total 0",
		`prefetchd_prefetch_dropped_total{reason="shed"} 0`,
		"prefetchd_prefetch_blocked_total 0",
		`prefetchd_ready_check_failing{check="overloaded"} 0`,
		`prefetchd_engine_early_warms_total{outcome="confirmed"} 0`,
		`prefetchd_engine_early_warms_total{outcome="corrected"} 0`,
		`prefetchd_engine_early_warms_total{outcome="unapplied"} 0`,
	} {
		if !strings.Contains(first, want) {
			t.Errorf("first scrape lacks %q", want)
		}
	}

	const clicks = 5
	old := time.Now().Add(-2 * time.Hour)
	for i := range clicks {
		u := "lat-" + strconv.Itoa(i)
		kb.Produce(t, "clicks", kafkatest.Message(u, clickJSON(u, from, old)))
	}
	var text string
	waitUntil(t, svc, "every click's pages in click_to_warm", func() bool {
		text = httpGet(t, ctx, url)
		return metricSum(text, "prefetchd_click_to_warm_seconds_count") >= clicks
	})
	n, sum := metricSum(text, "prefetchd_click_to_warm_seconds_count"), metricSum(text, "prefetchd_click_to_warm_seconds_sum")
	if mean := sum / n; mean <= 0 || mean > 30 {
		t.Errorf("mean click_to_warm %.3fs over %v pages; want from the record timestamp (under 30s), not from the 2h-old ts", mean, n)
	}
	svc.shutdown(t)
}

// TestEarlyWarmsServed: with the Redis history store, each user's second
// click is warmed before its history's round trip returns and confirmed by
// it (prefetchd_engine_early_warms_total), and its pages reach Redis.
func TestEarlyWarmsServed(t *testing.T) {
	from, to, prob, _ := strongestTransition(t)
	cfg, rs, kb := onRedisStore(t)
	cfg.Threshold = float64(prob) * 0.99
	cfg.KeyTemplate = "user:{user}:page:{page}"
	cfg.OverloadLag = time.Hour
	svc := startService(t, cfg, 60*time.Second)
	ctx, url := svc.ctx, "http://"+svc.addrs.Admin+"/metrics"
	users := []string{"e-1", "e-2", "e-3", "e-4"}
	for round := 1; round <= 2; round++ {
		for _, u := range users {
			kb.Produce(t, "clicks", kafkatest.Message(u, clickJSON(u, from, time.Now())))
		}
		waitUntil(t, svc, "the round's clicks applied", func() bool {
			return metricSum(httpGet(t, ctx, url), "prefetchd_clicks_total") >= float64(round*len(users))
		})
	}
	text := httpGet(t, ctx, url)
	if got := metricSum(text, `prefetchd_engine_early_warms_total{outcome="confirmed"}`); got != float64(len(users)) {
		t.Errorf("early warms confirmed %v, want %d (each user's second click)", got, len(users))
	}
	if got := metricSum(text, `prefetchd_engine_early_warms_total{outcome="corrected"}`) + metricSum(text, `prefetchd_engine_early_warms_total{outcome="unapplied"}`); got != 0 {
		t.Errorf("early warms corrected or unapplied: %v, want 0", got)
	}
	client := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer client.Close()
	for _, u := range users {
		waitUntil(t, svc, "the warmed page in Redis", func() bool {
			n, err := client.Exists(ctx, "user:"+u+":page:"+to).Result()
			return err == nil && n == 1
		})
	}
	svc.shutdown(t)
}

// TestOverloadedReadiness stops the history store under the service: a click
// fetched then waits, unsettled, and once it is older than --overload-lag
// /readyz names the overloaded check.
func TestOverloadedReadiness(t *testing.T) {
	from, _, _, _ := strongestTransition(t)
	cfg, rs, kb := onRedisStore(t)
	cfg.OverloadLag = 300 * time.Millisecond
	svc := startService(t, cfg, 60*time.Second)
	ctx, admin := svc.ctx, svc.addrs.Admin

	// A first click of the same user loads the partition's mark from Redis and is applied.
	kb.Produce(t, "clicks", kafkatest.Message("slow", clickJSON("slow", from, time.Now().Add(-time.Second))))
	waitUntil(t, svc, "the first click applied", func() bool {
		return metricSum(httpGet(t, ctx, "http://"+admin+"/metrics"), "prefetchd_clicks_total") >= 1
	})
	rs.Stop()
	kb.Produce(t, "clicks", kafkatest.Message("slow", clickJSON("slow", from, time.Now())))
	waitUntil(t, svc, "/readyz naming the overloaded check", func() bool {
		_, body := get(t, ctx, "http://"+admin+"/readyz")
		return strings.Contains(body, "overloaded: oldest unsettled click") && strings.Contains(body, "over --overload-lag 300ms")
	})
	rs.Restart()
	waitUntil(t, svc, "the overloaded check passing once Redis is back and the click applied", func() bool {
		text := httpGet(t, ctx, "http://"+admin+"/metrics")
		return strings.Contains(text, `prefetchd_ready_check_failing{check="overloaded"} 0`) && metricSum(text, "prefetchd_clicks_total") >= 2
	})
	svc.shutdown(t)
}

// waitUntil polls cond every 50 ms until it holds, failing the test when the
// service's deadline passes first.
func waitUntil(t *testing.T, svc *service, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-svc.ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
