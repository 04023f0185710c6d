package app

import (
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
			cfg := testConfig([]string{b.Addr()}, "")
			cfg.KafkaSASLMechanism = "SCRAM-SHA-256"
			cfg.KafkaUsername = "svc"
			cfg.KafkaPassword = tc.password
			cfg.Group = "g-" + tc.password
			cfg.Replay, cfg.ReplayRate, cfg.Threshold = ReplayEmbedded, 2000, 0.3

			svc := startService(t, cfg, 60*time.Second)
			ctx, addrs := svc.ctx, svc.addrs
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
				if code := readyz(t, ctx, addrs.Admin); code != http.StatusServiceUnavailable {
					t.Errorf("/readyz with a wrong Kafka password: %d, want 503", code)
				}
				if n := metricSum(httpGet(t, ctx, "http://"+addrs.Admin+"/metrics"), "prefetchd_ingest_events_total"); n != 0 {
					t.Errorf("%v events consumed with a wrong password, want 0", n)
				}
			}
			svc.shutdown(t)
		})
	}
}
