package app

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// TestRedisOutage stops the real redis-server under the running service:
// consumption and Predict go on, prefetches are dropped and counted, the
// service reports not ready, and warming resumes once Redis is back.
func TestRedisOutage(t *testing.T) {
	from, to, prob, _ := strongestTransition(t)
	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.Threshold = float64(prob) * 0.99
	cfg.KeyTemplate = "user:{user}:page:{page}"

	svc := startService(t, cfg, 90*time.Second)
	ctx, addrs := svc.ctx, svc.addrs
	metrics := func() string { return httpGet(t, ctx, "http://"+addrs.Admin+"/metrics") }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("timed out waiting for %s", what)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	sent := 0
	clicks := func(prefix string, n int) {
		for i := 0; i < n; i++ {
			u := prefix + strconv.Itoa(i)
			kb.Produce(t, "clicks", kafkatest.Message(u, clickJSON(u, from, time.Now())))
		}
		sent += n
	}

	clicks("before-", 5)
	waitFor("5 keys warmed", func() bool { return metricSum(metrics(), "prefetchd_prefetch_issued_total") == 5 })
	waitFor("ready", func() bool { return readyz(t, ctx, addrs.Admin) == http.StatusOK })

	rs.Stop()
	clicks("during-", 5)
	waitFor("clicks consumed while Redis is down", func() bool { return int(metricSum(metrics(), "prefetchd_clicks_total")) == sent })
	waitFor("prefetches dropped and counted", func() bool {
		return metricSum(metrics(), "prefetchd_prefetch_dropped_total") >= 5
	})
	waitFor("not ready while Redis is down", func() bool { return readyz(t, ctx, addrs.Admin) == http.StatusServiceUnavailable })
	if n := metricSum(metrics(), "prefetchd_prefetch_issued_total"); n != 5 {
		t.Errorf("issued %v during the outage, want still 5", n)
	}
	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "prefetch.v1.HintService"}); err != nil || hc.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health while Redis is down: %v, %v; want NOT_SERVING", hc, err)
	}
	resp, err := prefetchv1.NewHintServiceClient(conn).Predict(ctx, &prefetchv1.PredictRequest{UserId: "during-0"})
	if err != nil || len(resp.Hints) == 0 || resp.Hints[0].Page != to {
		t.Fatalf("Predict during the outage: %v, %v; want a hint for %s", resp, err, to)
	}

	rs.Restart()
	waitFor("ready again", func() bool { return readyz(t, ctx, addrs.Admin) == http.StatusOK })
	clicks("after-", 5)
	waitFor("warming resumed", func() bool { return metricSum(metrics(), "prefetchd_prefetch_issued_total") >= 10 })

	svc.shutdown(t)
}
