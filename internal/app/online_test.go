package app

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// TestNewPageFromTraffic runs two replicas sharing Redis (histories and
// online statistics): 40 users open a page the model has never seen from a
// page it knows, through Kafka; within seconds both replicas name the new
// page among the hints for the known page over gRPC, and the metrics count
// it as a page known online only.
func TestNewPageFromTraffic(t *testing.T) {
	from, _, _, _ := strongestTransition(t)
	const fresh = "/news/published-after-training"
	cfg, _, kb := onRedisStore(t)
	cfg.Online = true
	a := startService(t, cfg, 90*time.Second)
	b := startService(t, cfg, 90*time.Second)
	ctx := a.ctx

	hints := func(s *service) []string {
		t.Helper()
		conn, err := grpc.NewClient(s.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		k, thr := int32(5), 0.0
		resp, err := prefetchv1.NewHintServiceClient(conn).Predict(ctx, &prefetchv1.PredictRequest{Pages: []string{from}, K: &k, Threshold: &thr})
		if err != nil {
			t.Fatalf("Predict on %s: %v", s.addrs.GRPC, err)
		}
		var pages []string
		for _, h := range resp.Hints {
			pages = append(pages, h.Page)
		}
		return pages
	}
	if got := hints(a); slices.Contains(got, fresh) {
		t.Fatalf("hints for %s before the traffic %v contain %s", from, got, fresh)
	}
	start := time.Now()
	const users = 40
	for u := range users {
		user := fmt.Sprintf("n-%d", u)
		at := time.Now()
		kb.Produce(t, "clicks", kafkatest.Message(user, clickJSON(user, from, at)))
		kb.Produce(t, "clicks", kafkatest.Message(user, clickJSON(user, fresh, at.Add(time.Second))))
	}
	metrics := func(s *service, name string) float64 {
		return metricSum(httpGet(t, ctx, "http://"+s.addrs.Admin+"/metrics"), name)
	}
	for metrics(a, "prefetchd_clicks_total")+metrics(b, "prefetchd_clicks_total") < 2*users {
		select {
		case <-ctx.Done():
			t.Fatalf("clicks consumed: %v + %v of %d", metrics(a, "prefetchd_clicks_total"), metrics(b, "prefetchd_clicks_total"), 2*users)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Each replica sends its observations in batches (--online-flush-interval)
	// and reuses what it read for a moment (--online-cache-ttl): both name
	// the page within seconds.
	for _, s := range []*service{a, b} {
		for got := hints(s); !slices.Contains(got, fresh); got = hints(s) {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("hints for %s on %s after %d users = %v, want %s among them", from, s.addrs.GRPC, users, got, fresh)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	took := time.Since(start)
	t.Logf("new page a hint %v after the first click", took)
	if took > 10*time.Second {
		t.Errorf("the new page took %v to become a hint, want seconds", took)
	}
	if got := max(metrics(a, "prefetchd_transitions_online_only_pages"), metrics(b, "prefetchd_transitions_online_only_pages")); got != 1 {
		t.Errorf("pages known online only = %v, want 1", got)
	}
	if got := metrics(a, "prefetchd_transitions_served_predictions_total") + metrics(b, "prefetchd_transitions_served_predictions_total"); got < 2 {
		t.Errorf("predictions served from online statistics = %v, want at least the 2 answers", got)
	}
	a.shutdown(t)
	b.shutdown(t)
}
