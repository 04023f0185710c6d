package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/internal/cli/clitest"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/server"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "ctl-test-token"

// fixture is a prefetchd gRPC server with fake engine parts.
type fixture struct {
	addr      string
	pred      *servertest.Predictor
	watcher   *servertest.Watcher
	ingester  *servertest.Ingester
	models    *servertest.Models
	tokenFile string
	certs     servertest.Certs
	srv       *server.Server
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serve starts a server; with tlsOn it requires mutual TLS and allows CN "ops".
func serve(t *testing.T, tlsOn bool) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{
		pred: &servertest.Predictor{Result: hint.Result{ModelVersion: "v1", Hints: []hint.Hint{
			{Page: "/next", Probability: 0.75, Warm: true}, {Page: "/other", Probability: 0.125},
		}}},
		watcher: servertest.NewWatcher(),
		ingester: &servertest.Ingester{Reject: func(b []byte) bool { return strings.Contains(string(b), "/refused") },
			Duplicate: func(b []byte) bool { return strings.Contains(string(b), `"event_id":"seen"`) }},
		models:    servertest.NewModels("v1", []string{"v1", "v2", "bad"}, "bad"),
		tokenFile: filepath.Join(dir, "token"),
	}
	if err := os.WriteFile(f.tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{AdminToken: token}
	if tlsOn {
		f.certs = servertest.WriteCerts(t, dir, "ops", "guest")
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = f.certs.ServerCert, f.certs.ServerKey, f.certs.CA
		cfg.RequireClientCert, cfg.AllowedClientCNs = true, []string{"ops"}
	}
	srv, err := server.New(cfg, server.Deps{Predictor: f.pred, Watcher: f.watcher, Ingester: f.ingester, Models: f.models}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.addr, f.srv = listenAndServe(t, srv), srv
	return f
}

// listenAndServe serves srv on a loopback port until the test ends and
// returns the address.
func listenAndServe(t *testing.T, srv *server.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func TestCommands(t *testing.T) {
	f := serve(t, false)
	events := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(events, []byte(strings.Join([]string{
		`{"user_id":"u1","page":"/a","ts":"1995-07-01T00:00:01Z"}`,
		`{"user_id":"u1","page":"/b","ts":"1995-07-01T00:00:02Z","session_id":"s"}`,
		``,
		`not json`,
		`{"user_id":"","page":"/c","ts":"1995-07-01T00:00:03Z"}`,
		`{"user_id":"u2","page":"/refused","ts":"1995-07-01T00:00:03Z"}`,
		`{"user_id":"u2","page":"/d"}`,
	}, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		stdin    string
		wantOut  []string // substrings of the output, in order
		wantCode codes.Code
		usage    bool
		check    func(t *testing.T)
	}{
		{name: "predict", args: []string{"predict", "--user", "u1"},
			wantOut: []string{"model v1, 2 hints", "0.7500\t/next\twarm", "0.1250\t/other\n"},
			check: func(t *testing.T) {
				q := last(t, f.pred.Queries())
				if q.UserID != "u1" || q.K != 0 || q.Threshold != -1 {
					t.Errorf("query %+v, want user u1 with server defaults", q)
				}
			}},
		{name: "predict overrides and global flags after the command", args: []string{"predict", "--pages", "/x,/y", "--k", "3", "--threshold", "0", "--addr", f.addr},
			wantOut: []string{"model v1"},
			check: func(t *testing.T) {
				q := last(t, f.pred.Queries())
				if strings.Join(q.Pages, " ") != "/x /y" || q.K != 3 || q.Threshold != 0 {
					t.Errorf("query %+v, want pages /x /y, k 3, threshold 0", q)
				}
			}},
		{name: "predict json", args: []string{"--json", "predict", "--user", "u1"},
			wantOut: []string{`"page":"/next"`, `"model_version":"v1"`}},
		{name: "predict empty pages", args: []string{"predict", "--pages", ","}, wantCode: codes.InvalidArgument},
		{name: "ingest", args: []string{"ingest", "--file", events},
			wantOut: []string{"accepted 2, rejected 3, unreadable 1", "empty_user_id: 1", "invalid: 1", "missing_ts: 1", "line 5: user_id: must not be empty", "line 6: invalid argument", "line 7: ts: must be set", "line 4: decode JSON"},
			check: func(t *testing.T) {
				if n := len(f.ingester.Events()); n != 2 {
					t.Errorf("engine got %d events, want 2", n)
				}
			}},
		{name: "ingest json counts unreadable lines", args: []string{"--json", "ingest", "--file", "-"},
			stdin:   "not json\n" + `{"user_id":"u4","page":"/a","ts":"1995-07-01T00:00:01Z"}` + "\n",
			wantOut: []string{`"accepted":"1"`, `"rejected":"1"`, `"unreadable":"1"`, `"unreadable_lines":[{"line":1,"message":"line 1: decode JSON`}},
		{name: "ingest skips a line over 1 MiB and goes on", args: []string{"ingest", "--file", "-"},
			stdin:   `{"user_id":"u5","page":"/a","ts":"1995-07-01T00:00:01Z"}` + "\n" + `{"user_id":"u5","page":"/` + strings.Repeat("x", 1<<20+10) + `"}` + "\n" + `{"user_id":"u5","page":"/b","ts":"1995-07-01T00:00:02Z"}`,
			wantOut: []string{"accepted 2, rejected 0, unreadable 1", "line 2: longer than 1048576 bytes"}},
		{name: "ingest refuses a line that is not UTF-8", args: []string{"ingest", "--file", "-"},
			stdin:   "{\"user_id\":\"u6\",\"page\":\"/caf\xe9\",\"ts\":\"1995-07-01T00:00:01Z\"}\n" + `{"user_id":"u6","page":"/b","ts":"1995-07-01T00:00:02Z"}` + "\n",
			wantOut: []string{"accepted 1, rejected 0, unreadable 1", "line 1: not valid UTF-8"}},
		{name: "ingest json of nothing has its counts", args: []string{"--json", "ingest", "--file", "-"}, stdin: "",
			wantOut: []string{`"accepted":"0"`, `"rejected":"0"`}},
		{name: "ingest stdin, lower-case t and z", args: []string{"ingest", "--file", "-"}, stdin: `{"user_id":"u3","page":"/a","ts":"1995-07-01t00:00:01z"}` + "\n",
			wantOut: []string{"accepted 1, rejected 0"}},
		{name: "ingest duplicate", args: []string{"ingest", "--file", "-"}, stdin: `{"user_id":"u3","page":"/a","ts":"1995-07-01T00:00:01Z","event_id":"seen"}` + "\n",
			wantOut: []string{"accepted 0, rejected 0", "duplicates 1"}},
		{name: "status without token", args: []string{"model", "status"}, wantCode: codes.Unauthenticated},
		{name: "activate without token changes nothing", args: []string{"model", "activate", "v2"}, wantCode: codes.Unauthenticated,
			check: func(t *testing.T) {
				if a, _ := f.models.State(); a != "v1" {
					t.Errorf("active %s after refused activate, want v1", a)
				}
			}},
		{name: "status", args: []string{"--token-file", f.tokenFile, "model", "status"},
			wantOut: []string{"active v1", "v1\tmarkov\tactive\trequests 10", "v2\tmarkov\tloaded", "bad\tmarkov\trefused: golden"}},
		{name: "activate refused", args: []string{"--token-file", f.tokenFile, "model", "activate", "bad"}, wantCode: codes.FailedPrecondition},
		{name: "activate, flag after the version", args: []string{"model", "activate", "bad", "--token-file", f.tokenFile}, wantCode: codes.FailedPrecondition},
		{name: "activate unknown", args: []string{"--token-file", f.tokenFile, "model", "activate", "v9"}, wantCode: codes.NotFound},
		{name: "activate", args: []string{"--token-file", f.tokenFile, "model", "activate", "v2"}, wantOut: []string{"active v2"}},
		{name: "rollback", args: []string{"model", "rollback", "--token-file", f.tokenFile}, wantOut: []string{"active v1"}},
		{name: "rollback without history", args: []string{"--token-file", f.tokenFile, "model", "rollback"}, wantCode: codes.FailedPrecondition},
		{name: "help", args: []string{"--help"}, wantOut: []string{"usage: prefetchctl", "model status", "--addr string"}},
		{name: "command help", args: []string{"watch", "-h"}, wantOut: []string{"usage: prefetchctl [flags] watch", "--user value"}},
		{name: "model help", args: []string{"model", "--help"}, wantOut: []string{"usage: prefetchctl [flags] model status|activate VERSION|rollback"}},
		{name: "model command help", args: []string{"model", "activate", "--help"}, wantOut: []string{"usage: prefetchctl [flags] model activate VERSION", "--token-file string"}},
		{name: "version", args: []string{"--version"}, wantOut: []string{"prefetchctl ", "go1."}},
		{name: "no command", args: []string{}, usage: true},
		{name: "unknown command", args: []string{"frobnicate"}, usage: true},
		{name: "unknown flag", args: []string{"predict", "--nope"}, usage: true},
		{name: "activate without version", args: []string{"model", "activate"}, usage: true},
		{name: "model without subcommand", args: []string{"model"}, usage: true},
		{name: "cert without key", args: []string{"--tls-ca", "ca.pem", "--tls-cert", "c.pem", "predict", "--user", "u"}, usage: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			args := append([]string{"--addr", f.addr}, tt.args...)
			err := run(testCtx(t), args, noEnv, strings.NewReader(tt.stdin), &out)
			switch {
			case tt.usage:
				if !errors.Is(err, cli.ErrUsage) || exitCode(err) != 2 {
					t.Fatalf("run: %v, want a usage error (exit 2)", err)
				}
				if out.Len() > 0 {
					t.Errorf("a usage error printed to stdout: %q", out.String())
				}
				return
			case tt.wantCode != codes.OK:
				if status.Code(errors.Unwrap(err)) != tt.wantCode && status.Code(err) != tt.wantCode {
					t.Fatalf("run: %v, want code %v", err, tt.wantCode)
				}
				if exitCode(err) != 1 {
					t.Errorf("exit code %d, want 1", exitCode(err))
				}
				if !strings.Contains(err.Error(), tt.wantCode.String()) {
					t.Errorf("error %q does not show the code %v", err, tt.wantCode)
				}
			case exitCode(err) != 0:
				t.Fatalf("run: %v", err)
			}
			rest := out.String()
			for _, w := range tt.wantOut {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order); output:\n%s", w, out.String())
				}
				rest = rest[i+len(w):]
			}
			if tt.check != nil {
				tt.check(t)
			}
			if strings.Contains(out.String(), token) {
				t.Errorf("output shows the token")
			}
		})
	}
}

func last(t *testing.T, qs []hint.Query) hint.Query {
	t.Helper()
	if len(qs) == 0 {
		t.Fatal("no query reached the predictor")
	}
	return qs[len(qs)-1]
}

func TestWatch(t *testing.T) {
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	update := func(user string, probs ...float32) hint.Update {
		u := hint.Update{UserID: user, At: at, Result: hint.Result{ModelVersion: "v1"}}
		for i, p := range probs {
			u.Result.Hints = append(u.Result.Hints, hint.Hint{Page: fmt.Sprintf("/p%d", i), Probability: p})
		}
		return u
	}
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantUsers string
		updates   []hint.Update // sent in order; the last one must be printed
		want      []string
		notWant   []string
	}{
		{name: "users", args: []string{"watch", "--user", "alice", "--user", "bob,carol"}, wantUsers: "alice,bob,carol",
			updates: []hint.Update{update("bob", 0.5)},
			want:    []string{"2026-11-26T12:00:00Z user bob, model v1", "0.5000\t/p0"}},
		{name: "threshold hides low hints", args: []string{"watch", "--user", "bob", "--threshold", "0.3"}, wantUsers: "bob",
			updates: []hint.Update{update("bob", 0.5, 0.2)},
			want:    []string{"user bob", "0.5000\t/p0"}, notWant: []string{"/p1"}},
		{name: "any user skips updates with nothing left", args: []string{"watch", "--any", "--threshold", "0.3"}, wantUsers: "*",
			updates: []hint.Update{update("quiet", 0.1), update("nasa-7", 0.4)},
			want:    []string{"user nasa-7", "0.4000\t/p0"}, notWant: []string{"quiet"}},
		{name: "address from the environment", args: []string{"watch", "--any"}, env: map[string]string{"PREFETCHCTL_ADDR": "ADDR"}, wantUsers: "*",
			updates: []hint.Update{update("u", 0.05)},
			want:    []string{"user u", "0.0500\t/p0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := serve(t, false)
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			args := tt.args
			getenv := func(k string) string { return strings.ReplaceAll(tt.env[k], "ADDR", f.addr) }
			if tt.env == nil {
				args = append([]string{"--addr", f.addr}, args...)
			}
			out := &servertest.Buffer{}
			done := make(chan error, 1)
			go func() { done <- run(ctx, args, getenv, nil, out) }()
			var sub *servertest.Sub
			select {
			case sub = <-f.watcher.Subs:
			case err := <-done:
				t.Fatalf("watch ended before subscribing: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("no subscription within 5 s")
			}
			if got := strings.Join(sub.Users, ","); got != tt.wantUsers {
				t.Errorf("watching %s, want %s", got, tt.wantUsers)
			}
			for _, u := range tt.updates {
				sub.Updates <- u
			}
			last := tt.updates[len(tt.updates)-1].UserID
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(out.String(), "user "+last) {
				if time.Now().After(deadline) {
					t.Fatalf("update not printed within 5 s; output:\n%s", out.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("watch after Ctrl-C: %v, want nil", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("output shows %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestMutualTLS(t *testing.T) {
	f := serve(t, true)
	ops, guest := f.certs.Clients["ops"], f.certs.Clients["guest"]
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"allowed client certificate, no token", []string{"--tls-ca", f.certs.CA, "--tls-cert", ops.Cert, "--tls-key", ops.Key, "model", "status"}, ""},
		{"other client certificate", []string{"--tls-ca", f.certs.CA, "--tls-cert", guest.Cert, "--tls-key", guest.Key, "model", "status"}, "PermissionDenied"},
		{"other client certificate with token", []string{"--tls-ca", f.certs.CA, "--tls-cert", guest.Cert, "--tls-key", guest.Key, "--token-file", f.tokenFile, "model", "status"}, ""},
		{"predict over mTLS", []string{"--tls-ca", f.certs.CA, "--tls-cert", guest.Cert, "--tls-key", guest.Key, "predict", "--user", "u"}, ""},
		{"no client certificate", []string{"--tls-ca", f.certs.CA, "predict", "--user", "u"}, "Unavailable"},
		{"plaintext", []string{"predict", "--user", "u"}, "Unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(testCtx(t), append([]string{"--addr", f.addr, "--timeout", "3s"}, tt.args...), noEnv, nil, &out)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("run: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("run: %v, want an error with %s", err, tt.wantErr)
			}
		})
	}
}

// noEnv is an empty environment.
func noEnv(string) string { return "" }

// exitCode is the process exit status main gives err.
func exitCode(err error) int { return cli.Exit("prefetchctl", err, io.Discard) }

func TestFlags(t *testing.T) {
	cases := append(clitest.Common("prefetchctl"),
		clitest.Case{Name: "no command", Exit: 2, Stderr: "no command"},
		clitest.Case{Name: "unknown command", Args: []string{"frobnicate"}, Exit: 2, Stderr: `unknown command "frobnicate"`},
		clitest.Case{Name: "command help", Args: []string{"predict", "--help"}, Stdout: []string{"usage: prefetchctl [flags] predict", "--threshold float"}},
		clitest.Case{Name: "bad command flag", Args: []string{"watch", "--nope"}, Exit: 2, Stderr: "-nope"},
		clitest.Case{Name: "watch nobody", Args: []string{"watch"}, Exit: 2, Stderr: "watch needs --user U (repeatable) or --any"},
		clitest.Case{Name: "watch any and users", Args: []string{"watch", "--any", "--user", "u"}, Exit: 2, Stderr: "not both"},
		clitest.Case{Name: "watch threshold above one", Args: []string{"watch", "--any", "--threshold", "2"}, Exit: 2, Stderr: "--threshold 2 outside [0, 1]"},
		clitest.Case{Name: "predict for nobody", Args: []string{"predict"}, Exit: 2, Stderr: "predict needs --user U or --pages a,b"},
		clitest.Case{Name: "predict k zero", Args: []string{"predict", "--user", "u", "--k", "0"}, Exit: 2, Stderr: "--k 0 outside 1..100"},
		clitest.Case{Name: "predict k above the server's limit", Args: []string{"predict", "--user", "u", "--k", "1000"}, Exit: 2, Stderr: "--k 1000 outside 1..100"},
		clitest.Case{Name: "address without a port", Args: []string{"--addr", "localhost", "health"}, Exit: 2, Stderr: `--addr (or PREFETCHCTL_ADDR): "localhost" is not host:port`},
		clitest.Case{Name: "watch threshold NaN", Args: []string{"watch", "--any", "--threshold", "NaN"}, Exit: 2, Stderr: "--threshold NaN outside [0, 1]"},
		clitest.Case{Name: "zero timeout", Args: []string{"--timeout", "0", "health"}, Exit: 2, Stderr: "--timeout 0s is not positive"},
		clitest.Case{Name: "negative timeout", Args: []string{"health", "--timeout", "-1s"}, Exit: 2, Stderr: "--timeout -1s is not positive"},
		clitest.Case{Name: "predict threshold above one", Args: []string{"predict", "--user", "u", "--threshold", "2"}, Exit: 2, Stderr: "--threshold 2 outside [0, 1]"},
	)
	clitest.Check(t, "prefetchctl", func(ctx context.Context, args []string, stdout *bytes.Buffer) error {
		return run(ctx, args, noEnv, nil, stdout)
	}, cases)
}

func TestHealth(t *testing.T) {
	f := serve(t, false)
	for _, tc := range []struct {
		name    string
		serving bool
		exit    int
		out     string
	}{
		{name: "not serving", serving: false, exit: 1},
		{name: "serving", serving: true, exit: 0, out: "SERVING"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.srv.SetServing(tc.serving)
			var out bytes.Buffer
			err := run(testCtx(t), []string{"--addr", f.addr, "health"}, noEnv, nil, &out)
			if got := exitCode(err); got != tc.exit {
				t.Fatalf("health: exit %d (err %v), want %d", got, err, tc.exit)
			}
			if tc.exit != 0 && !strings.Contains(err.Error(), "NOT_SERVING") {
				t.Errorf("error %q does not name the status", err)
			}
			if strings.TrimSpace(out.String()) != tc.out {
				t.Errorf("output %q, want %q", out.String(), tc.out)
			}
			if tc.serving {
				out.Reset()
				if err := run(testCtx(t), []string{"--addr", f.addr, "--json", "health"}, noEnv, nil, &out); err != nil {
					t.Fatal(err)
				}
				if got := strings.TrimSpace(out.String()); got != `{"status":"SERVING"}` {
					t.Errorf("--json health printed %q, want {\"status\":\"SERVING\"}", got)
				}
			}
		})
	}
}

// TestModelStatusNotServed: a repository folder that is not a complete
// version shows in model status with the reason, through a real model
// manager behind the server.
func TestModelStatusNotServed(t *testing.T) {
	repo := t.TempDir()
	half := filepath.Join(repo, "default", "half")
	if err := os.MkdirAll(half, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(half, "model.onnx"), []byte("onnx"), 0o644); err != nil {
		t.Fatal(err)
	}
	models, err := lifecycle.New(lifecycle.Config{Repo: repo}, lifecycle.LoadBundle, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := models.Sync(testCtx(t)); err == nil {
		t.Fatal("Sync of a repository without a complete version succeeded")
	}
	srv, err := server.New(server.Config{AdminToken: token}, server.Deps{
		Predictor: &servertest.Predictor{}, Watcher: servertest.NewWatcher(), Ingester: &servertest.Ingester{}, Models: models,
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := listenAndServe(t, srv)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(testCtx(t), []string{"--addr", addr, "--token-file", tokenFile, "model", "status"}, noEnv, nil, &out); err != nil {
		t.Fatalf("model status: %v", err)
	}
	if want := "half\tdefault\tnot served: vocab.txt missing or empty"; !strings.Contains(out.String(), want) {
		t.Errorf("model status lacks %q:\n%s", want, out.String())
	}
}
