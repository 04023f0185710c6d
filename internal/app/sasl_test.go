package app

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/broker"
)

// TestKafkaSCRAM runs the service against a broker that requires SASL
// SCRAM-SHA-256: with the right password the replay (a kafka-go writer) and the
// consumer group both authenticate and keys get warmed; with a wrong one the
// service reports not ready.
func TestKafkaSCRAM(t *testing.T) {
	b, err := broker.Start(broker.Config{Topics: []string{"clicks"}, SCRAMUser: "svc", SCRAMPassword: "right"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	tests := []struct {
		name      string
		password  string
		wantReady bool
	}{
		{name: "right password", password: "right", wantReady: true},
		{name: "wrong password", password: "wrong", wantReady: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			cfg.KafkaBrokers = []string{b.Addr()}
			cfg.KafkaSASLMechanism = "SCRAM-SHA-256"
			cfg.KafkaUsername = "svc"
			cfg.KafkaPassword = tc.password
			cfg.Group = "g-" + tc.password
			cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
			cfg.Replay, cfg.ReplayRate, cfg.Threshold = ReplayEmbedded, 2000, 0.3

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			runCtx, stop := context.WithCancel(ctx)
			ready := make(chan Addrs, 1)
			done := make(chan error, 1)
			go func() {
				done <- RunWith(runCtx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Ready: func(a Addrs) { ready <- a }})
			}()
			var addrs Addrs
			select {
			case addrs = <-ready:
			case err := <-done:
				t.Fatalf("service stopped before serving: %v", err)
			}
			if tc.wantReady {
				for metricSum(httpGet(t, ctx, "http://"+addrs.Admin+"/metrics"), "prefetchd_prefetch_issued_total") < 5 {
					select {
					case <-ctx.Done():
						t.Fatal("no keys warmed through an authenticated broker")
					case <-time.After(200 * time.Millisecond):
					}
				}
			} else {
				// Give the health loop time to try the broker.
				time.Sleep(3 * time.Second)
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addrs.Admin+"/readyz", nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Errorf("/readyz with a wrong Kafka password: %d, want 503", resp.StatusCode)
				}
				if n := metricSum(httpGet(t, ctx, "http://"+addrs.Admin+"/metrics"), "prefetchd_ingest_events_total"); n != 0 {
					t.Errorf("%v events consumed with a wrong password, want 0", n)
				}
			}
			stop()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		})
	}
}
