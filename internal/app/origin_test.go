package app

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

// TestOriginFlags runs the service in origin mode with --origin-max-body
// and --origin-timeout: a predicted page whose body is within the limit is
// stored with the origin's body; over it, it is not stored, counted as too
// large, and not asked again for the next user who gets it predicted.
func TestOriginFlags(t *testing.T) {
	from, to, prob, _ := strongestTransition(t)
	var hits atomic.Int64
	var size atomic.Int64
	size.Store(5000)
	origin := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = rw.Write([]byte(strings.Repeat("x", int(size.Load()))))
	}))
	defer origin.Close()
	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.PrefetchMode, cfg.OriginURL = "origin", origin.URL+"/{page}"
	cfg.OriginMaxBody, cfg.OriginTimeout = 1000, time.Second
	cfg.KeyTemplate = "user:{user}:page:{page}"
	cfg.Threshold = float64(prob) * 0.99
	svc := startService(t, cfg, 90*time.Second)
	ctx := svc.ctx
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()

	size.Store(100)
	kb.Produce(t, "clicks", kafkatest.Message("o1", clickJSON("o1", from, time.Now())))
	eventually(t, ctx, "a body within the limit stored", func() bool {
		v, err := rdb.Get(ctx, "user:o1:page:"+to).Result()
		return err == nil && len(v) == 100
	})
	size.Store(5000)
	kb.Produce(t, "clicks", kafkatest.Message("o2", clickJSON("o2", from, time.Now())))
	eventually(t, ctx, "the oversized body dropped", func() bool {
		return metricSum(httpGet(t, ctx, "http://"+svc.addrs.Admin+"/metrics"), `prefetchd_prefetch_dropped_total{reason="origin_too_large"}`) >= 1
	})
	if n, _ := rdb.Exists(ctx, "user:o2:page:"+to).Result(); n != 0 {
		t.Fatalf("a body over --origin-max-body stored")
	}
	// Refused: another user's prediction of the page does not ask again.
	before := hits.Load()
	kb.Produce(t, "clicks", kafkatest.Message("o3", clickJSON("o3", from, time.Now())))
	eventually(t, ctx, "the page dropped again", func() bool {
		return metricSum(httpGet(t, ctx, "http://"+svc.addrs.Admin+"/metrics"), `prefetchd_prefetch_dropped_total{reason="origin_too_large"}`) >= 2
	})
	if got := hits.Load(); got != before {
		t.Fatalf("origin asked %d more times for a page it refused just now, want 0", got-before)
	}
	svc.shutdown(t)
}
