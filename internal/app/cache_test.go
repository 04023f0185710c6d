package app

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// transitionService is the service on a Kafka-protocol broker and a real
// redis-server, with the threshold just below the bundled model's most
// certain transition from → to (probability prob, model version version)
// and a TTL of a minute.
type transitionService struct {
	from, to string
	prob     float32
	version  string
	rs       *redistest.Server
	kb       *kafkatest.Broker
	cfg      Config
	svc      *service
}

func startTransitionService(t *testing.T) *transitionService {
	t.Helper()
	ts := &transitionService{rs: redistest.Start(t), kb: kafkatest.Start(t, "clicks")}
	ts.from, ts.to, ts.prob, ts.version = strongestTransition(t)
	ts.cfg = testConfig([]string{ts.kb.Addr()}, ts.rs.Addr())
	ts.cfg.Threshold = float64(ts.prob) * 0.99
	ts.cfg.TTL = time.Minute
	ts.svc = startService(t, ts.cfg, 90*time.Second)
	return ts
}

// TestCacheRestartedEmpty restarts the cache redis-server empty under the
// running service: Predict says cold at once, a click on the lost page is
// not counted warm, and the next prediction of the page warms it again.
func TestCacheRestartedEmpty(t *testing.T) {
	ts := startTransitionService(t)
	from, to, rs, kb, svc := ts.from, ts.to, ts.rs, ts.kb, ts.svc
	ctx, addrs := svc.ctx, svc.addrs

	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial gRPC: %v", err)
	}
	defer conn.Close()
	hints := prefetchv1.NewHintServiceClient(conn)
	warm := func() bool {
		t.Helper()
		resp, err := hints.Predict(ctx, &prefetchv1.PredictRequest{Pages: []string{from}})
		if err != nil {
			t.Fatalf("Predict: %v", err)
		}
		if len(resp.Hints) == 0 || resp.Hints[0].Page != to {
			t.Fatalf("hints %v, want %s first", resp.Hints, to)
		}
		return resp.Hints[0].Warm
	}
	metric := func(name string) float64 {
		return metricSum(httpGet(t, ctx, "http://"+addrs.Admin+"/metrics"), name)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("%s: %v", what, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	click := func(user, page string) {
		kb.Produce(t, "clicks", kafkatest.Message(user, clickJSON(user, page, time.Now())))
	}
	key := "page:" + to

	click("u1", from)
	waitFor("key warmed", func() bool { return rdb.Exists(ctx, key).Val() == 1 })
	if !warm() {
		t.Errorf("Predict: %s cold while %s is in Redis", to, key)
	}
	click("u2", to)
	waitFor("the first click on the warm page counted", func() bool { return metric("prefetchd_clicks_total") == 2 })
	if got := metric("prefetchd_clicks_warm_total"); got != 1 {
		t.Fatalf("warm clicks %v before the restart, want 1", got)
	}

	rs.Restart()
	if warm() {
		t.Errorf("Predict: %s warm right after the cache restarted empty", to)
	}
	waitFor("the restart noticed", func() bool { return metric("prefetchd_prefetch_cache_resets_total") >= 1 })
	click("u3", to)
	waitFor("the click on the lost page counted", func() bool { return metric("prefetchd_clicks_total") == 3 })
	if got := metric("prefetchd_clicks_warm_total"); got != 1 {
		t.Errorf("warm clicks %v after a click on the lost page, want still 1", got)
	}

	click("u4", from)
	waitFor("key warmed again", func() bool { return rdb.Exists(ctx, key).Val() == 1 })
	if !warm() {
		t.Errorf("Predict: %s cold after it was warmed again", to)
	}
	click("u5", to)
	waitFor("the click on the rewarmed page counted", func() bool { return metric("prefetchd_clicks_total") == 5 })
	if got := metric("prefetchd_clicks_warm_total"); got != 2 {
		t.Errorf("warm clicks %v after a click on the rewarmed page, want 2", got)
	}
	svc.shutdown(t)
}
