package app

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// strongestTransition finds the page whose most likely successor under the
// bundled model is the most certain, and returns both with the probability.
func strongestTransition(t *testing.T) (from, to string, prob float32, version string) {
	t.Helper()
	fsys, dir := embedded.Model()
	b, err := model.LoadBundleFS(fsys, dir)
	if err != nil {
		t.Fatalf("load bundled model: %v", err)
	}
	v := b.Vocab()
	for i := int64(2); i < int64(v.Len()); i++ {
		probs, err := b.PredictOne(context.Background(), []int64{i}, nil)
		if err != nil {
			t.Fatalf("predict from page %d: %v", i, err)
		}
		for j := 2; j < len(probs); j++ {
			if int64(j) != i && probs[j] > prob {
				from, to, prob = v.Page(i), v.Page(int64(j)), probs[j]
			}
		}
	}
	return from, to, prob, b.Manifest().Version
}

func clickJSON(user, page string, at time.Time) string {
	b, _ := features.Encode(features.Event{UserID: user, Page: page, TS: at})
	return string(b)
}

// TestEndToEnd produces clicks to a Kafka-protocol broker, then expects the
// predicted page warmed in a real redis-server with a TTL, and the same page
// with the model's probability from Predict over gRPC.
func TestEndToEnd(t *testing.T) {
	ts := startTransitionService(t)
	from, to, prob, version, rs, kb, cfg := ts.from, ts.to, ts.prob, ts.version, ts.rs, ts.kb, ts.cfg
	svc := ts.svc
	ctx, addrs := svc.ctx, svc.addrs

	// A malformed event first: it must be skipped without blocking the
	// partition (same key, so same partition as the good click).
	user := "e2e-user"
	now := time.Now()
	kb.Produce(t, "clicks",
		kafkatest.Message(user, `{"user_id": "e2e-user", "page": 17`),
		kafkatest.Message(user, clickJSON(user, "https://www.example.org"+from+"?utm_source=mail", now)),
	)

	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	key := "page:" + to
	var ttl time.Duration
	for {
		d, err := rdb.TTL(ctx, key).Result()
		if err == nil && d > 0 {
			ttl = d
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("key %q never warmed (last TTL %v, err %v)", key, d, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if ttl > cfg.TTL || ttl < cfg.TTL-10*time.Second {
		t.Errorf("TTL of %s = %v, want about %v", key, ttl, cfg.TTL)
	}

	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial gRPC: %v", err)
	}
	defer conn.Close()
	hints := prefetchv1.NewHintServiceClient(conn)
	resp, err := hints.Predict(ctx, &prefetchv1.PredictRequest{UserId: user})
	if err != nil {
		t.Fatalf("Predict: %v", err)
	}
	if len(resp.Hints) == 0 {
		t.Fatalf("Predict returned no hints, want %s", to)
	}
	h := resp.Hints[0]
	if h.Page != to || math.Abs(float64(h.Probability-prob)) > 1e-6 || !h.Warm {
		t.Errorf("first hint = %+v, want page %s with probability %v, warm", h, to, prob)
	}
	if resp.ModelVersion != version {
		t.Errorf("model version %q, want %q", resp.ModelVersion, version)
	}

	if _, err := hints.Predict(ctx, &prefetchv1.PredictRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Predict with no user: %v, want InvalidArgument", err)
	}
	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health = %v, %v; want SERVING", hc, err)
	}

	// gRPC Ingest: the same event (same user and event_id) sent twice is
	// applied once.
	in, err := hints.Ingest(ctx)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	click := &prefetchv1.ClickEvent{UserId: "e2e-grpc", Page: from, Ts: timestamppb.Now(), EventId: "e2e-1"}
	for range 2 {
		if err := in.Send(click); err != nil {
			t.Fatalf("Ingest send: %v", err)
		}
	}
	if sum, err := in.CloseAndRecv(); err != nil || sum.GetAccepted() != 1 || sum.GetDuplicates() != 1 || sum.GetRejected() != 0 {
		t.Errorf("Ingest of one event twice = %v, %v; want 1 accepted, 1 duplicate", sum, err)
	}
	// An event the consumer rejects is reported with the consumer's reason.
	in, err = hints.Ingest(ctx)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	if err := in.Send(&prefetchv1.ClickEvent{UserId: "e2e-grpc", Page: from, Ts: timestamppb.New(time.Now().Add(72 * time.Hour))}); err != nil {
		t.Fatalf("Ingest send: %v", err)
	}
	if sum, err := in.CloseAndRecv(); err != nil || sum.GetRejectedByReason()["ts_skew"] != 1 {
		t.Errorf("Ingest of an event 72 h ahead = %v, %v; want 1 rejected for ts_skew", sum, err)
	}

	metrics := httpGet(t, ctx, "http://"+addrs.Admin+"/metrics")
	for _, want := range []string{
		`prefetchd_prefetch_issued_total{model_version="` + version + `"} 1`,
		`prefetchd_ingest_rejected_total{reason="json"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if body := httpGet(t, ctx, "http://"+addrs.Admin+"/readyz"); !strings.Contains(body, "ready model_version="+version) {
		t.Errorf("/readyz = %q, want ready with the model version", body)
	}
	if body := httpGet(t, ctx, "http://"+addrs.Admin+"/healthz"); !strings.Contains(body, "ok") {
		t.Errorf("/healthz = %q", body)
	}

	svc.shutdown(t)
}

// TestEmbeddedDefaults runs the service as `make run` does, on ephemeral
// ports, and expects replayed events to warm keys.
func TestEmbeddedDefaults(t *testing.T) {
	cfg := Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.Replay = ReplayEmbedded
	cfg.ReplayRate = 2000
	cfg.Threshold = 0.3

	svc := startService(t, cfg, 90*time.Second)
	ctx, addrs := svc.ctx, svc.addrs
	for {
		m := httpGet(t, ctx, "http://"+addrs.Admin+"/metrics")
		if n := metricSum(m, "prefetchd_prefetch_issued_total"); n >= 10 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("fewer than 10 keys warmed from the replay; metrics:\n%s", grepLines(m, "prefetchd_"))
		case <-time.After(200 * time.Millisecond):
		}
	}
	svc.shutdown(t)
}

func httpGet(t testing.TB, ctx context.Context, url string) string {
	t.Helper()
	_, body := get(t, ctx, url)
	return body
}

// metricSum adds the values of every series of a metric in Prometheus text form.
func metricSum(text, name string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func grepLines(text, prefix string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestStartFailures: bad settings found at start stop the service with an
// error that names the cause, and leave nothing running (goleak checks).
func TestStartFailures(t *testing.T) {
	kb := kafkatest.Start(t, "clicks")
	rs := redistest.Start(t)
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{name: "missing replay file", edit: func(c *Config) { c.Replay = "no/such/sessions.spmf" }, wantErr: "replay sessions"},
		{name: "missing model", edit: func(c *Config) { c.Model = "no/such/bundle" }, wantErr: "load model"},
		{name: "missing admin token file", edit: func(c *Config) { c.AdminTokenFile = "no/such/token" }, wantErr: "token"},
		{name: "busy gRPC port", edit: func(c *Config) { c.Listen = kb.Addr() }, wantErr: "listen grpc"},
		{name: "bad canonicalization file", edit: func(c *Config) { c.CanonicalConfig = "no/such/rules.json" }, wantErr: "canonicalization"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig([]string{kb.Addr()}, rs.Addr())
			tc.edit(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := RunWith(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("RunWith: %v, want an error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

// TestCloseWithin: shutdown waits for a close at most its bound, and no
// longer than the close takes.
func TestCloseWithin(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	release := make(chan struct{})
	defer close(release)
	start := time.Now()
	closeWithin(log, "stuck", 100*time.Millisecond, func() error { <-release; return nil })
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Errorf("a stuck close held shutdown %v, want about 100ms", d)
	}
	if !strings.Contains(buf.String(), "stuck did not close in time") {
		t.Errorf("log %q, want the stuck close named", buf.String())
	}
	start = time.Now()
	closeWithin(log, "quick", time.Minute, func() error { return errors.New("boom") })
	if d := time.Since(start); d > time.Second {
		t.Errorf("a quick close held shutdown %v", d)
	}
	if !strings.Contains(buf.String(), "close quick") || !strings.Contains(buf.String(), "boom") {
		t.Errorf("log %q, want the close error", buf.String())
	}
}
