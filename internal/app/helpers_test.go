package app

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

// service is prefetchd running in the test's process.
type service struct {
	ctx   context.Context // ends at the test's deadline
	addrs Addrs
	stop  context.CancelFunc
	done  chan error
}

// startService runs the service with cfg until the test ends or shutdown is
// called, and waits until it serves. timeout bounds the whole test.
func startService(t testing.TB, cfg Config, timeout time.Duration) *service {
	t.Helper()
	return startServiceWith(t, cfg, timeout, Options{})
}

// startServiceWith is startService with opts (its Ready is the helper's).
func startServiceWith(t testing.TB, cfg Config, timeout time.Duration, opts Options) *service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	runCtx, stop := context.WithCancel(ctx)
	s := &service{ctx: ctx, stop: stop, done: make(chan error, 1)}
	ready := make(chan Addrs, 1)
	go func() {
		opts.Ready = func(a Addrs) { ready <- a }
		s.done <- RunWith(runCtx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), opts)
	}()
	select {
	case s.addrs = <-ready:
	case err := <-s.done:
		t.Fatalf("service stopped before serving: %v", err)
	case <-ctx.Done():
		t.Fatal("service did not start in time")
	}
	t.Cleanup(func() {
		stop()
		<-s.done
	})
	return s
}

// shutdown cancels the service and expects a clean stop within 30 s.
func (s *service) shutdown(t testing.TB) {
	t.Helper()
	s.stop()
	select {
	case err := <-s.done:
		s.done <- nil // for the cleanup
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of cancel")
	}
}

// onRedisStore starts a redis-server and a kfake broker with topic clicks
// and returns testConfig on them with the Redis history store.
func onRedisStore(t *testing.T) (Config, *redistest.Server, *kafkatest.Broker) {
	t.Helper()
	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.HistoryStore = "redis"
	return cfg, rs, kb
}

// testConfig is the service on ephemeral loopback ports, without replay.
func testConfig(brokers []string, redisAddr string) Config {
	cfg := Default()
	cfg.KafkaBrokers, cfg.RedisAddr = brokers, redisAddr
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Replay = ReplayNone
	return cfg
}

// readyz returns the status code of the service's /readyz.
func readyz(t *testing.T, ctx context.Context, admin string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
