package app

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// TestReplicasShareHistories runs two replicas in one consumer group with the
// Redis history store: whichever replica consumed a user's clicks, both answer
// Predict for that user from the same history.
func TestReplicasShareHistories(t *testing.T) {
	from, to, prob, _ := strongestTransition(t)
	cfg, _, kb := onRedisStore(t)
	cfg.Threshold = float64(prob) * 0.99
	a := startService(t, cfg, 90*time.Second)
	b := startService(t, cfg, 90*time.Second)
	ctx := a.ctx

	users := []string{"r-1", "r-2", "r-3", "r-4", "r-5", "r-6", "r-7", "r-8"}
	for _, u := range users {
		kb.Produce(t, "clicks", kafkatest.Message(u, clickJSON(u, from, time.Now())))
	}
	consumed := func(s *service) float64 {
		return metricSum(httpGet(t, ctx, "http://"+s.addrs.Admin+"/metrics"), "prefetchd_clicks_total")
	}
	for consumed(a)+consumed(b) < float64(len(users)) {
		select {
		case <-ctx.Done():
			t.Fatalf("clicks consumed: %v + %v of %d", consumed(a), consumed(b), len(users))
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Logf("replica A consumed %v clicks, replica B %v", consumed(a), consumed(b))
	for _, s := range []*service{a, b} {
		conn, err := grpc.NewClient(s.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := prefetchv1.NewHintServiceClient(conn)
		for _, u := range users {
			resp, err := c.Predict(ctx, &prefetchv1.PredictRequest{UserId: u})
			if err != nil {
				t.Fatalf("Predict %s on %s: %v", u, s.addrs.GRPC, err)
			}
			if len(resp.Hints) == 0 || resp.Hints[0].Page != to {
				t.Fatalf("Predict %s on %s = %v, want first hint %s", u, s.addrs.GRPC, resp.Hints, to)
			}
		}
	}
	a.shutdown(t)
	b.shutdown(t)
}
