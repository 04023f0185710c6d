package server

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// clientTLS builds client credentials trusting caFile, presenting kp if set.
func clientTLS(t *testing.T, caFile string, kp *servertest.KeyPair) grpc.DialOption {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate in PEM")
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if kp != nil {
		cert, err := tls.LoadX509KeyPair(kp.Cert, kp.Key)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(tc))
}

func TestTLS(t *testing.T) {
	const token = "admin-token"
	certs := servertest.WriteCerts(t, t.TempDir(), "ops", "intruder")
	other := servertest.WriteCerts(t, t.TempDir(), "ops") // a different CA
	ops, intruder, foreign := certs.Clients["ops"], certs.Clients["intruder"], other.Clients["ops"]

	base := Config{
		TLSCertFile:      certs.ServerCert,
		TLSKeyFile:       certs.ServerKey,
		TLSClientCAFile:  certs.CA,
		AllowedClientCNs: []string{"ops"},
		AdminToken:       token,
	}
	required := base
	required.RequireClientCert = true
	serverOnly := Config{TLSCertFile: certs.ServerCert, TLSKeyFile: certs.ServerKey, AdminToken: token}

	tests := []struct {
		name        string
		cfg         Config
		dial        func(t *testing.T) grpc.DialOption
		withToken   bool
		wantPredict codes.Code
		wantAdmin   codes.Code
	}{
		{"server TLS, token", serverOnly, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, nil) }, true, codes.OK, codes.OK},
		{"server TLS, no token", serverOnly, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, nil) }, false, codes.OK, codes.Unauthenticated},
		{"plaintext client to TLS server", serverOnly, func(*testing.T) grpc.DialOption { return grpc.WithTransportCredentials(insecure.NewCredentials()) }, true, codes.Unavailable, codes.Unavailable},
		{"client does not trust server CA", serverOnly, func(t *testing.T) grpc.DialOption { return clientTLS(t, other.CA, nil) }, true, codes.Unavailable, codes.Unavailable},
		{"mTLS allowed CN", required, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, &ops) }, false, codes.OK, codes.OK},
		{"mTLS other CN", required, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, &intruder) }, false, codes.OK, codes.PermissionDenied},
		{"mTLS other CN with token", required, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, &intruder) }, true, codes.OK, codes.OK},
		{"mTLS required, no client cert", required, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, nil) }, true, codes.Unavailable, codes.Unavailable},
		{"mTLS required, cert from another CA", required, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, &foreign) }, true, codes.Unavailable, codes.Unavailable},
		{"mTLS optional, no client cert, token", base, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, nil) }, true, codes.OK, codes.OK},
		{"mTLS optional, no client cert, no token", base, func(t *testing.T) grpc.DialOption { return clientTLS(t, certs.CA, nil) }, false, codes.OK, codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			models := servertest.NewModels("v1", []string{"v1", "v2"})
			h := start(t, tt.cfg, Deps{Predictor: &servertest.Predictor{}, Models: models}, tt.dial(t))
			_, err := h.hints.Predict(testCtx(t), &prefetchv1.PredictRequest{UserId: "u"})
			wantCode(t, err, tt.wantPredict)
			ctx := testCtx(t)
			if tt.withToken {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
			}
			_, err = h.models.Activate(ctx, &prefetchv1.ActivateRequest{Version: "v2"})
			wantCode(t, err, tt.wantAdmin)
			active, _ := models.State()
			if want := map[bool]string{true: "v2", false: "v1"}[tt.wantAdmin == codes.OK]; active != want {
				t.Errorf("active %q after Activate with %v, want %q", active, tt.wantAdmin, want)
			}
		})
	}
}

// TestTLSCertificateRotation: the server picks up a certificate rotated on
// disk without a restart (new connections see it), and keeps the previous
// one in service when the files hold a broken pair.
func TestTLSCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	first := servertest.WriteCerts(t, t.TempDir())
	second := servertest.WriteCerts(t, t.TempDir()) // another CA
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	install := func(c servertest.Certs) {
		t.Helper()
		for src, dst := range map[string]string{c.ServerCert: certFile, c.ServerKey: keyFile} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(first)
	h := start(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile}, Deps{Predictor: &servertest.Predictor{}}, clientTLS(t, first.CA, nil))
	// ping dials a new connection trusting caFile and reports the result.
	ping := func(caFile string) error {
		conn, err := grpc.NewClient(h.addr, clientTLS(t, caFile, nil))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = prefetchv1.NewHintServiceClient(conn).Ping(testCtx(t), &prefetchv1.PingRequest{})
		return err
	}
	if err := ping(first.CA); err != nil {
		t.Fatalf("first certificate: %v", err)
	}
	install(second)
	deadline := time.Now().Add(10 * time.Second)
	for ping(second.CA) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was not picked up within 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := ping(first.CA); err == nil {
		t.Fatal("new connections still get the first certificate")
	}
	// A broken pair on disk: the second certificate stays in service.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(certReloadEvery + 200*time.Millisecond)
	for range 3 {
		if err := ping(second.CA); err != nil {
			t.Fatalf("after a broken key was written: %v", err)
		}
	}
	ok := testutil.ToFloat64(h.srv.metrics.certReloads.WithLabelValues("ok"))
	failed := testutil.ToFloat64(h.srv.metrics.certReloads.WithLabelValues("failed"))
	if ok != 1 || failed < 1 {
		t.Errorf("prefetchd_grpc_tls_reloads_total ok %v, failed %v; want 1 and at least 1", ok, failed)
	}
}
