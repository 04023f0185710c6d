package app

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// TestStateRedisApart runs the Redis history store with --state-redis-addr:
// histories and partition marks go to the state Redis, warmed pages to the
// cache Redis, nothing of the state lands in the cache, Predict reads the
// history back and checks warm in the cache, and /readyz names the state
// Redis when it stops.
func TestStateRedisApart(t *testing.T) {
	from, to, prob, _ := strongestTransition(t)
	cfg, cacheSrv, kb := onRedisStore(t)
	stateSrv := redistest.Start(t)
	cfg.StateRedisAddr = stateSrv.Addr()
	cfg.Threshold = float64(prob) * 0.99
	cfg.HistoryIdleTTL = 2 * time.Hour // --history-idle-ttl: the history key's TTL
	svc := startService(t, cfg, 90*time.Second)
	ctx := svc.ctx

	cache := redis.NewClient(&redis.Options{Addr: cacheSrv.Addr()})
	defer cache.Close()
	state := redis.NewClient(&redis.Options{Addr: stateSrv.Addr()})
	defer state.Close()

	const user = "apart-1"
	kb.Produce(t, "clicks", kafkatest.Message(user, clickJSON(user, from, time.Now())))
	eventually(t, ctx, "page "+to+" warmed in the cache Redis", func() bool {
		n, err := cache.Exists(ctx, "page:"+to).Result()
		return err == nil && n == 1
	})
	histKey := "prefetchd:h:{" + user + "}"
	marksKey := "prefetchd:h:marks:{" + cfg.Group + "/clicks}"
	eventually(t, ctx, "the history and the partition marks in the state Redis", func() bool {
		n, err := state.Exists(ctx, histKey, marksKey).Result()
		return err == nil && n == 2
	})
	if d, err := state.TTL(ctx, histKey).Result(); err != nil || d > 2*time.Hour || d < 2*time.Hour-time.Minute {
		t.Errorf("TTL of the history %v (%v), want --history-idle-ttl 2h", d, err)
	}
	if ks, err := cache.Keys(ctx, "prefetchd:*").Result(); err != nil || len(ks) != 0 {
		t.Errorf("state keys in the cache Redis: %v (%v)", ks, err)
	}
	if n, _ := state.Exists(ctx, "page:"+to).Result(); n != 0 {
		t.Errorf("warmed page written to the state Redis")
	}

	conn, err := grpc.NewClient(svc.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := prefetchv1.NewHintServiceClient(conn).Predict(ctx, &prefetchv1.PredictRequest{UserId: user})
	if err != nil {
		t.Fatalf("Predict: %v", err)
	}
	if len(resp.Hints) == 0 || resp.Hints[0].Page != to || !resp.Hints[0].Warm {
		t.Fatalf("Predict %s = %v, want first hint %s, warm", user, resp.Hints, to)
	}

	stateSrv.Stop()
	eventually(t, ctx, "/readyz naming the state Redis", func() bool {
		code, body := get(t, ctx, "http://"+svc.addrs.Admin+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "\nstate-redis: ") && !strings.Contains(body, "\nredis: ")
	})
	stateSrv.Restart()
	eventually(t, ctx, "/readyz ready again", func() bool {
		code, _ := get(t, ctx, "http://"+svc.addrs.Admin+"/readyz")
		return code == http.StatusOK
	})
	svc.shutdown(t)
}
