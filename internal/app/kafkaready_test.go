package app

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/broker"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
)

// silentListener accepts TCP connections on loopback and holds them without
// ever answering, as the kernel does for a broker stopped with SIGSTOP. It
// closes the listener and the connections when the test ends.
func silentListener(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		lis.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// TestKafkaReady runs the "kafka" readiness check against a real
// Kafka-protocol broker (plain, SCRAM, TLS), a listener that accepts
// connections but never answers (a frozen broker, which a TCP connect
// would take for a live one) and an address where nothing listens. A
// failing check must return within its timeout, SASL and TLS handshakes
// included.
func TestKafkaReady(t *testing.T) {
	plain := kafkatest.Start(t, "clicks")
	scramB, err := broker.Start(broker.Config{Topics: []string{"clicks"}, SCRAMUser: "svc", SCRAMPassword: "right"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(scramB.Close)
	certs := servertest.WriteCerts(t, t.TempDir())
	pair, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	tlsB, err := broker.Start(broker.Config{Topics: []string{"clicks"}, TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tlsB.Close)
	silent, closed := silentListener(t), closedAddr(t)

	scram := func(pw string) Config {
		return Config{KafkaSASLMechanism: "SCRAM-SHA-256", KafkaUsername: "svc", KafkaPassword: pw}
	}
	withTLS := Config{KafkaTLS: true, KafkaCA: certs.CA}
	const timeout = checkTimeout
	tests := []struct {
		name    string
		cfg     Config // Kafka security settings only
		brokers []string
		wantErr string // prefix of the error; "" for ready
	}{
		{name: "broker up", brokers: []string{plain.Addr()}},
		{name: "SCRAM broker, right password", cfg: scram("right"), brokers: []string{scramB.Addr()}},
		{name: "TLS broker, test CA", cfg: withTLS, brokers: []string{tlsB.Addr()}},
		{name: "silent listener then broker up", brokers: []string{silent, plain.Addr()}},
		{name: "nothing listening then broker up", brokers: []string{closed, plain.Addr()}},
		{name: "silent listener", brokers: []string{silent}, wantErr: "no broker answered within 1s: " + silent + ": no answer"},
		{name: "silent listener, SASL", cfg: scram("right"), brokers: []string{silent}, wantErr: "no broker answered within 1s: " + silent + ": no answer"},
		{name: "silent listener, TLS", cfg: withTLS, brokers: []string{silent}, wantErr: "no broker answered within 1s over TLS (a listener without TLS stays silent to it): " + silent + ": no answer"},
		{name: "TLS client, broker without TLS", cfg: withTLS, brokers: []string{plain.Addr()}, wantErr: "no broker answered within 1s over TLS"},
		{name: "silent listener and nothing listening", brokers: []string{silent, closed}, wantErr: "no broker answered within 1s: "},
		{name: "nothing listening", brokers: []string{closed}, wantErr: "unreachable: "},
		{name: "SCRAM broker, wrong password", cfg: scram("wrong"), brokers: []string{scramB.Addr()}, wantErr: "unreachable: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tlsc, mech, err := kafkaSecurity(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			err = kafkaReady(ctx, kafkaDialer(tlsc, mech), tc.brokers, timeout)
			took := time.Since(start)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("kafkaReady(%v) = %v after %s, want ready", tc.brokers, err, took)
			case tc.wantErr != "" && err == nil:
				t.Errorf("kafkaReady(%v) = ready after %s, want an error starting %q", tc.brokers, took, tc.wantErr)
			case tc.wantErr != "" && !strings.HasPrefix(err.Error(), tc.wantErr):
				t.Errorf("kafkaReady(%v) = %q, want it to start %q", tc.brokers, err, tc.wantErr)
			}
			// A generous margin over the timeout: what matters is that a
			// frozen broker cannot hold the check (and /readyz) forever.
			if limit := timeout + time.Second; took > limit {
				t.Errorf("kafkaReady(%v) took %s, want at most %s", tc.brokers, took, limit)
			}
		})
	}
}
