package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	"github.com/prefetchd/prefetchd/model"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// publishBundled publishes the bundled model as version into repo/default,
// the way publishers must: a hidden temporary folder renamed into place.
func publishBundled(t *testing.T, repo, version string, created time.Time) {
	t.Helper()
	fsys, dir := embedded.Model()
	f, err := fsys.Open(dir + "/" + model.ManifestFile)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.ReadManifest(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	m.Version, m.Created = version, created
	base := filepath.Join(repo, "default")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(base, ".incoming-")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"model.onnx", "step.onnx", "vocab.txt"} {
		b, err := fs.ReadFile(fsys, dir+"/"+name)
		if errors.Is(err, fs.ErrNotExist) && name == "step.onnx" {
			continue // a bundle without a step form
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mf, err := os.Create(filepath.Join(tmp, model.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteTo(mf); err != nil {
		t.Fatal(err)
	}
	mf.Close()
	if err := os.Rename(tmp, filepath.Join(base, version)); err != nil {
		t.Fatal(err)
	}
}

// TestModelRepositoryOverMutualTLS runs the service on a watched model
// repository behind mutual TLS: a newly published version answers Predict,
// ModelService needs an allowed client certificate or the admin token, and a
// rollback returns to the earlier version.
func TestModelRepositoryOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	certs := servertest.WriteCerts(t, dir, "ops", "web")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join(dir, "models")
	start := time.Now().Add(-time.Hour)
	publishBundled(t, repo, "v1", start)

	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.ModelRepo = repo
	cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA = certs.ServerCert, certs.ServerKey, certs.CA
	cfg.AdminClientCNs = []string{"ops"}
	cfg.AdminTokenFile = tokenFile

	svc := startService(t, cfg, 90*time.Second)
	ctx, addrs := svc.ctx, svc.addrs

	dial := func(cn string) *grpc.ClientConn {
		t.Helper()
		pem, err := os.ReadFile(certs.CA)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
		if cn != "" {
			kp, err := tls.LoadX509KeyPair(certs.Clients[cn].Cert, certs.Clients[cn].Key)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	ops, web, anon := dial("ops"), dial("web"), dial("")

	version := func() string {
		resp, err := prefetchv1.NewHintServiceClient(web).Predict(ctx, &prefetchv1.PredictRequest{Pages: []string{"/page/3"}})
		if err != nil {
			t.Fatalf("Predict: %v", err)
		}
		return resp.ModelVersion
	}
	if v := version(); v != "v1" {
		t.Fatalf("serving %q, want v1", v)
	}
	if _, err := prefetchv1.NewHintServiceClient(anon).Predict(ctx, &prefetchv1.PredictRequest{Pages: []string{"/page/3"}}); err == nil {
		t.Error("Predict without a client certificate succeeded, want the handshake refused")
	}

	publishBundled(t, repo, "v2", start.Add(time.Minute))
	for version() != "v2" {
		select {
		case <-ctx.Done():
			t.Fatal("published v2 never served")
		case <-time.After(100 * time.Millisecond):
		}
	}

	withToken := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer s3cret")
	tests := []struct {
		name string
		conn *grpc.ClientConn
		ctx  context.Context
		want codes.Code
	}{
		{name: "allowed client certificate", conn: ops, ctx: ctx, want: codes.OK},
		{name: "other certificate, no token", conn: web, ctx: ctx, want: codes.PermissionDenied},
		{name: "other certificate, wrong token", conn: web, ctx: metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer nope"), want: codes.Unauthenticated},
		{name: "other certificate, token", conn: web, ctx: withToken, want: codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := prefetchv1.NewModelServiceClient(tc.conn).Status(tc.ctx, &prefetchv1.StatusRequest{})
			if status.Code(err) != tc.want {
				t.Fatalf("Status: %v, want %v", err, tc.want)
			}
			if tc.want == codes.OK && st.GetActive() != "v2" {
				t.Errorf("active version %q, want v2", st.GetActive())
			}
		})
	}
	if _, err := prefetchv1.NewModelServiceClient(web).Rollback(ctx, &prefetchv1.RollbackRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Rollback without rights: %v, want PermissionDenied", err)
	}
	if v := version(); v != "v2" {
		t.Fatalf("a refused Rollback changed the version to %q", v)
	}
	if _, err := prefetchv1.NewModelServiceClient(ops).Rollback(ctx, &prefetchv1.RollbackRequest{}); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if v := version(); v != "v1" {
		t.Fatalf("after Rollback serving %q, want v1", v)
	}
	svc.shutdown(t)
}
