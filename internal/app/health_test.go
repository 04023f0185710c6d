package app

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// get returns the status code and body of a GET.
func get(t testing.TB, ctx context.Context, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually polls cond every 50 ms until it holds or ctx ends.
func eventually(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestServesBeforeModel starts the service on a model repository holding no
// valid version: both ports listen, /healthz answers, /readyz and gRPC
// health say not ready and why, ModelService lists the folder that is not
// served, Predict is UNAVAILABLE; once a version is published all turn ready.
func TestServesBeforeModel(t *testing.T) {
	dir := t.TempDir()
	repo := filepath.Join(dir, "models")
	if err := os.MkdirAll(filepath.Join(repo, "default", "half"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "default", "half", "model.onnx"), []byte("onnx"), 0o644); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.ModelRepo = repo
	cfg.AdminTokenFile = tokenFile

	ctx, addrs := startListening(t, cfg, 90*time.Second)
	admin := "http://" + addrs.Admin

	if code, body := get(t, ctx, admin+"/healthz"); code != http.StatusOK || !strings.Contains(body, "ok") {
		t.Errorf("/healthz = %d %q, want 200 ok", code, body)
	}
	var body string
	eventually(t, ctx, "/readyz naming the missing model", func() bool {
		var code int
		code, body = get(t, ctx, admin+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "model: no valid model version")
	})
	for _, want := range []string{"not ready\n", "half: vocab.txt missing or empty"} {
		if !strings.Contains(body, want) {
			t.Errorf("/readyz body lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "redis:") || strings.Contains(body, "kafka:") {
		t.Errorf("/readyz blames a backend that answers:\n%s", body)
	}

	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("gRPC health = %v, %v; want NOT_SERVING", hc.GetStatus(), err)
	}
	_, err = prefetchv1.NewHintServiceClient(conn).Predict(ctx, &prefetchv1.PredictRequest{Pages: []string{"/page/3"}})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Predict before the model: %v, want UNAVAILABLE", err)
	}
	if w, err := prefetchv1.NewHintServiceClient(conn).WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"a"}}); err != nil {
		t.Errorf("WatchHints before the model: %v", err)
	} else if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("WatchHints before the model: %v, want UNAVAILABLE", err)
	}
	withToken := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer s3cret")
	st, err := prefetchv1.NewModelServiceClient(conn).Status(withToken, &prefetchv1.StatusRequest{})
	if err != nil {
		t.Fatalf("ModelService.Status before the model: %v", err)
	}
	var reason string
	for _, v := range st.GetVersions() {
		if v.GetVersion() == "half" {
			reason = v.GetRefusedReason()
		}
	}
	if !strings.Contains(reason, "not served: vocab.txt missing or empty") {
		t.Errorf("Status of folder half: %q, want its reason (versions %v)", reason, st.GetVersions())
	}
	if code, _ := get(t, ctx, admin+"/stats"); code != http.StatusServiceUnavailable {
		t.Errorf("/stats before the model: %d, want 503", code)
	}

	publishBundled(t, repo, "v1", time.Now().Add(-time.Hour))
	eventually(t, ctx, "/readyz 200", func() bool {
		var code int
		code, body = get(t, ctx, admin+"/readyz")
		return code == http.StatusOK
	})
	if !strings.Contains(body, "ready model_version=v1") {
		t.Errorf("/readyz = %q, want the model version", body)
	}
	eventually(t, ctx, "gRPC health SERVING", func() bool {
		hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && hc.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	resp, err := prefetchv1.NewHintServiceClient(conn).Predict(ctx, &prefetchv1.PredictRequest{Pages: []string{"/page/3"}})
	if err != nil || resp.GetModelVersion() != "v1" {
		t.Errorf("Predict after publishing: %v, %v; want model v1", resp.GetModelVersion(), err)
	}
}

// TestReadyzNamesBackends runs the service with Kafka and Redis addresses
// where nothing listens: /readyz is 503 and names both.
func TestReadyzNamesBackends(t *testing.T) {
	cfg := testConfig([]string{closedAddr(t)}, closedAddr(t))
	svc := startService(t, cfg, 60*time.Second)
	// The model is loaded (the service serves), so once the checks have run
	// again only the backends are named.
	eventually(t, svc.ctx, "/readyz naming Kafka and Redis only", func() bool {
		code, body := get(t, svc.ctx, "http://"+svc.addrs.Admin+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "\nredis: ") &&
			strings.Contains(body, "\nkafka: unreachable") && !strings.Contains(body, "model:")
	})
	svc.shutdown(t)
}

// TestReadiness checks the list of named checks and the /readyz rendering.
func TestReadiness(t *testing.T) {
	tests := []struct {
		name     string
		checks   map[string]error // in the order of names
		names    []string
		wantCode int
		wantBody string
	}{
		{name: "no evaluation yet", wantCode: http.StatusServiceUnavailable, wantBody: "not ready\nstarting: first checks not run yet\n"},
		{name: "all pass", names: []string{"model", "redis"}, checks: map[string]error{"model": nil, "redis": nil},
			wantCode: http.StatusOK, wantBody: "ready model_version=v7\n"},
		{name: "one reason per failing check, in order", names: []string{"model", "redis", "kafka", "consumer"},
			checks:   map[string]error{"model": errors.New("loading"), "redis": nil, "kafka": errors.New("unreachable:\ndial refused"), "consumer": errors.New("paused")},
			wantCode: http.StatusServiceUnavailable, wantBody: "not ready\nmodel: loading\nkafka: unreachable: dial refused\nconsumer: paused\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			r, err := newReadiness(reg)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range tc.names {
				err := tc.checks[n]
				r.add(n, func(ctx context.Context) error {
					if _, ok := ctx.Deadline(); !ok {
						t.Errorf("check %s got a context without deadline", n)
					}
					return err
				})
			}
			if tc.names != nil {
				r.evaluate(context.Background())
			}
			rec := httptest.NewRecorder()
			r.serve(rec, func() string { return "v7" })
			if rec.Code != tc.wantCode || rec.Body.String() != tc.wantBody {
				t.Errorf("/readyz = %d %q, want %d %q", rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
			wantReady := 0.0
			if tc.wantCode == http.StatusOK {
				wantReady = 1
			}
			if got := testutil.ToFloat64(r.ready); got != wantReady {
				t.Errorf("prefetchd_ready = %v, want %v", got, wantReady)
			}
			for _, n := range tc.names {
				want := 0.0
				if tc.checks[n] != nil {
					want = 1
				}
				if got := testutil.ToFloat64(r.failing.WithLabelValues(n)); got != want {
					t.Errorf("prefetchd_ready_check_failing{check=%q} = %v, want %v", n, got, want)
				}
			}
		})
	}
}

func TestOverloaded(t *testing.T) {
	for _, tc := range []struct {
		name string
		lag  float64
		fail bool
	}{
		{"nothing waiting", 0, false},
		{"under the limit", 1.5, false},
		{"at the limit", 2, false},
		{"over the limit", 2.5, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := overloaded(tc.lag, 2*time.Second)
			if (err != nil) != tc.fail {
				t.Fatalf("overloaded(%v, 2s) = %v, want failing %v", tc.lag, err, tc.fail)
			}
			if err != nil && !strings.Contains(err.Error(), "2.5s old") {
				t.Errorf("reason %q does not say how old", err)
			}
		})
	}
}
