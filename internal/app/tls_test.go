package app

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/broker"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
)

// TestKafkaAndRedisOverTLS runs the service against a broker and a
// redis-server that accept TLS only, with certificates from a test CA: with
// --kafka-tls/--kafka-ca and --redis-tls/--redis-ca it consumes the replayed
// clicks and warms keys in Redis; without the CA (the system roots do not
// know it) it refuses the connections and is not ready.
func TestKafkaAndRedisOverTLS(t *testing.T) {
	certs := servertest.WriteCerts(t, t.TempDir())
	pair, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.Start(broker.Config{Topics: []string{"clicks"}, TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rs := redistest.StartTLS(t, certs.ServerCert, certs.ServerKey, certs.CA)

	for _, tc := range []struct {
		name      string
		ca        string
		wantReady bool
	}{
		{name: "test CA", ca: certs.CA, wantReady: true},
		{name: "system roots", ca: "", wantReady: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig([]string{b.Addr()}, rs.TLSAddr())
			cfg.KafkaTLS, cfg.KafkaCA = true, tc.ca
			cfg.RedisTLS, cfg.RedisCA = true, tc.ca
			cfg.Group = "tls-" + tc.name
			cfg.Replay, cfg.ReplayRate, cfg.Threshold = ReplayEmbedded, 2000, 0.3
			svc := startService(t, cfg, 60*time.Second)
			ctx, addrs := svc.ctx, svc.addrs
			if !tc.wantReady {
				time.Sleep(3 * time.Second) // the health loop tries both
				if code := readyz(t, ctx, addrs.Admin); code != http.StatusServiceUnavailable {
					t.Errorf("/readyz with an unknown CA: %d, want 503", code)
				}
				if n := metricSum(httpGet(t, ctx, "http://"+addrs.Admin+"/metrics"), "prefetchd_ingest_events_total"); n != 0 {
					t.Errorf("%v events consumed through an untrusted TLS broker, want 0", n)
				}
				svc.shutdown(t)
				return
			}
			for metricSum(httpGet(t, ctx, "http://"+addrs.Admin+"/metrics"), "prefetchd_prefetch_issued_total") < 5 {
				select {
				case <-ctx.Done():
					t.Fatal("no keys warmed through TLS")
				case <-time.After(200 * time.Millisecond):
				}
			}
			for readyz(t, ctx, addrs.Admin) != http.StatusOK {
				select {
				case <-ctx.Done():
					t.Fatal("never ready over TLS")
				case <-time.After(200 * time.Millisecond):
				}
			}
			// The keys are in the TLS Redis, read back over TLS.
			pem, err := os.ReadFile(certs.CA)
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(pem)
			rdb := redis.NewClient(&redis.Options{Addr: rs.TLSAddr(), TLSConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}})
			defer rdb.Close()
			keys, err := rdb.Keys(ctx, "page:*").Result()
			if err != nil || len(keys) == 0 {
				t.Fatalf("warmed keys over TLS: %v, %v", keys, err)
			}
			svc.shutdown(t)
		})
	}
}
