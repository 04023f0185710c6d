package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testCtx returns a context that ends with the test or after 10 s.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// harness is a server on a real 127.0.0.1 listener and a client for it.
type harness struct {
	srv    *Server
	addr   string
	conn   *grpc.ClientConn
	hints  prefetchv1.HintServiceClient
	models prefetchv1.ModelServiceClient
	logs   *servertest.Buffer
	reg    *prometheus.Registry
	stop   func() error // ends Serve and returns its error; idempotent
}

// start serves deps with cfg and dials it with dial (insecure when none).
func start(t testing.TB, cfg Config, deps Deps, dial ...grpc.DialOption) *harness {
	t.Helper()
	h := &harness{logs: &servertest.Buffer{}, reg: prometheus.NewRegistry()}
	logger := slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(cfg, deps, logger, h.reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	h.srv, h.addr = srv, lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, lis) }()
	var once sync.Once
	var serveErr error
	h.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serveErr = <-errc:
			case <-time.After(15 * time.Second):
				serveErr = errors.New("Serve did not return within 15 s of cancel")
			}
		})
		return serveErr
	}
	if len(dial) == 0 {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(h.addr, dial...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	h.conn = conn
	h.hints = prefetchv1.NewHintServiceClient(conn)
	h.models = prefetchv1.NewModelServiceClient(conn)
	t.Cleanup(func() {
		conn.Close()
		if err := h.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

// wantCode fails the test unless err has code want.
func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

func ptr[T any](v T) *T { return &v }

func TestPredictValidation(t *testing.T) {
	pred := &servertest.Predictor{Result: hint.Result{ModelVersion: "v1"}}
	h := start(t, Config{}, Deps{Predictor: pred})
	many := make([]string, DefaultMaxPages+1)
	for i := range many {
		many[i] = "/p"
	}
	tests := []struct {
		name  string
		req   *prefetchv1.PredictRequest
		field string // "" means the call must succeed
	}{
		{"empty user", &prefetchv1.PredictRequest{}, "user_id"},
		{"oversized user", &prefetchv1.PredictRequest{UserId: strings.Repeat("u", 257)}, "user_id"},
		{"user at limit", &prefetchv1.PredictRequest{UserId: strings.Repeat("u", 256)}, ""},
		{"oversized user beside pages", &prefetchv1.PredictRequest{UserId: strings.Repeat("u", 257), Pages: []string{"/a"}}, "user_id"},
		{"pages without user", &prefetchv1.PredictRequest{Pages: []string{"/a", "/b"}}, ""},
		{"too many pages", &prefetchv1.PredictRequest{Pages: many}, "pages"},
		{"pages at limit", &prefetchv1.PredictRequest{Pages: many[:DefaultMaxPages]}, ""},
		{"empty page", &prefetchv1.PredictRequest{Pages: []string{"/a", ""}}, "pages[1]"},
		{"oversized page", &prefetchv1.PredictRequest{Pages: []string{strings.Repeat("p", DefaultMaxPageBytes+1)}}, "pages[0]"},
		{"k zero", &prefetchv1.PredictRequest{UserId: "u", K: ptr[int32](0)}, "k"},
		{"k negative", &prefetchv1.PredictRequest{UserId: "u", K: ptr[int32](-1)}, "k"},
		{"k too big", &prefetchv1.PredictRequest{UserId: "u", K: ptr[int32](101)}, "k"},
		{"k bounds", &prefetchv1.PredictRequest{UserId: "u", K: ptr[int32](100)}, ""},
		{"threshold negative", &prefetchv1.PredictRequest{UserId: "u", Threshold: ptr(-0.01)}, "threshold"},
		{"threshold above one", &prefetchv1.PredictRequest{UserId: "u", Threshold: ptr(1.01)}, "threshold"},
		{"threshold NaN", &prefetchv1.PredictRequest{UserId: "u", Threshold: ptr(math.NaN())}, "threshold"},
		{"threshold bounds", &prefetchv1.PredictRequest{UserId: "u", Threshold: ptr(1.0)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(pred.Queries())
			_, err := h.hints.Predict(testCtx(t), tt.req)
			calls := len(pred.Queries()) - before
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Predict: %v, want success", err)
				}
				if calls != 1 {
					t.Fatalf("predictor called %d times, want 1", calls)
				}
				return
			}
			wantCode(t, err, codes.InvalidArgument)
			if calls != 0 {
				t.Errorf("predictor called %d times for an invalid request, want 0", calls)
			}
			st := status.Convert(err)
			if !strings.HasPrefix(st.Message(), tt.field+": ") {
				t.Errorf("message %q does not start with the field %q", st.Message(), tt.field)
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) != 1 || fields[0] != tt.field {
				t.Errorf("BadRequest fields = %v, want [%s]", fields, tt.field)
			}
		})
	}
}

func TestPredictQueryAndResponse(t *testing.T) {
	res := hint.Result{ModelVersion: "v7", Hints: []hint.Hint{
		{Page: "/a", Probability: 0.5, Warm: true},
		{Page: "/b", Probability: 0.25},
	}}
	tests := []struct {
		name string
		req  *prefetchv1.PredictRequest
		want hint.Query
	}{
		{"defaults", &prefetchv1.PredictRequest{UserId: "u1"}, hint.Query{UserID: "u1", K: 0, Threshold: -1}},
		{"overrides", &prefetchv1.PredictRequest{UserId: "u1", K: ptr[int32](3), Threshold: ptr(0.2)}, hint.Query{UserID: "u1", K: 3, Threshold: 0.2}},
		{"zero threshold is not the default", &prefetchv1.PredictRequest{UserId: "u1", Threshold: ptr(0.0)}, hint.Query{UserID: "u1", Threshold: 0}},
		{"stateless", &prefetchv1.PredictRequest{Pages: []string{"/x", "/y"}}, hint.Query{Pages: []string{"/x", "/y"}, Threshold: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pred := &servertest.Predictor{Result: res}
			h := start(t, Config{}, Deps{Predictor: pred})
			got, err := h.hints.Predict(testCtx(t), tt.req)
			if err != nil {
				t.Fatalf("Predict: %v", err)
			}
			want := &prefetchv1.PredictResponse{ModelVersion: "v7", Hints: []*prefetchv1.Hint{
				{Page: "/a", Probability: 0.5, Warm: true},
				{Page: "/b", Probability: 0.25},
			}}
			if !proto.Equal(got, want) {
				t.Errorf("response %v, want %v", got, want)
			}
			qs := pred.Queries()
			if len(qs) != 1 {
				t.Fatalf("%d queries, want 1", len(qs))
			}
			q := qs[0]
			if q.UserID != tt.want.UserID || q.K != tt.want.K || q.Threshold != tt.want.Threshold || strings.Join(q.Pages, ",") != strings.Join(tt.want.Pages, ",") {
				t.Errorf("query %+v, want %+v", q, tt.want)
			}
		})
	}
}

func TestPredictErrors(t *testing.T) {
	blockUntilDone := func(ctx context.Context, _ hint.Query) (hint.Result, error) {
		<-ctx.Done()
		return hint.Result{}, ctx.Err()
	}
	tests := []struct {
		name     string
		cfg      Config
		pred     *servertest.Predictor
		deadline time.Duration // client deadline; 0 means none
		want     codes.Code
		wantMsg  string
	}{
		{"no model", Config{}, &servertest.Predictor{Err: fmt.Errorf("predict: %w", hint.ErrNoModel)}, 0, codes.Unavailable, "no model loaded"},
		{"engine says invalid", Config{}, &servertest.Predictor{Err: fmt.Errorf("page %q: %w", "x", hint.ErrInvalid)}, 0, codes.InvalidArgument, "invalid argument"},
		{"unexpected error hides details", Config{}, &servertest.Predictor{Err: errors.New("secret internals")}, 0, codes.Internal, "internal error"},
		{"panic becomes internal", Config{}, &servertest.Predictor{Fn: func(context.Context, hint.Query) (hint.Result, error) { panic("boom") }}, 0, codes.Internal, "internal error"},
		{"client deadline", Config{}, &servertest.Predictor{Fn: blockUntilDone}, 50 * time.Millisecond, codes.DeadlineExceeded, ""},
		{"default deadline", Config{DefaultDeadline: 50 * time.Millisecond}, &servertest.Predictor{Fn: blockUntilDone}, 0, codes.DeadlineExceeded, ""},
		{"a store's own timeout", Config{}, &servertest.Predictor{Err: fmt.Errorf("load history of %q: %w", "u", context.DeadlineExceeded)}, 10 * time.Second, codes.Unavailable, "load history"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, tt.cfg, Deps{Predictor: tt.pred})
			// No deadline on the context: the server's default must apply.
			// A timer still bounds the test.
			ctx, cancelCtx := context.WithCancel(context.Background())
			defer time.AfterFunc(10*time.Second, cancelCtx).Stop()
			defer cancelCtx()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			startAt := time.Now()
			_, err := h.hints.Predict(ctx, &prefetchv1.PredictRequest{UserId: "u"})
			wantCode(t, err, tt.want)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.wantMsg) || strings.Contains(msg, "secret") {
				t.Errorf("message %q, want it to contain %q and no internals", msg, tt.wantMsg)
			}
			if elapsed := time.Since(startAt); elapsed > 3*time.Second {
				t.Errorf("call took %v, deadline not honoured", elapsed)
			}
			// The server keeps serving after the failure.
			if _, err := h.hints.Ping(testCtx(t), &prefetchv1.PingRequest{}); err != nil {
				t.Errorf("Ping after failure: %v", err)
			}
		})
	}
}

func TestMaxRecvMsgSize(t *testing.T) {
	h := start(t, Config{MaxRecvMsgSize: 1024}, Deps{Predictor: &servertest.Predictor{}})
	_, err := h.hints.Predict(testCtx(t), &prefetchv1.PredictRequest{UserId: "u", Pages: []string{strings.Repeat("p", 2000)}})
	wantCode(t, err, codes.ResourceExhausted)
}

func TestModelServiceAuth(t *testing.T) {
	const token = "s3cr3t-admin-token"
	tests := []struct {
		name   string
		md     []string // metadata key/value pairs
		want   codes.Code
		change bool // whether Activate reaches the engine
	}{
		{"no credentials", nil, codes.Unauthenticated, false},
		{"wrong token", []string{"authorization", "Bearer wrong-token"}, codes.Unauthenticated, false},
		{"token prefix", []string{"authorization", "Bearer s3cr3t"}, codes.Unauthenticated, false},
		{"no scheme", []string{"authorization", token}, codes.Unauthenticated, false},
		{"basic scheme", []string{"authorization", "Basic " + token}, codes.Unauthenticated, false},
		{"empty bearer", []string{"authorization", "Bearer "}, codes.Unauthenticated, false},
		{"two headers", []string{"authorization", "Bearer " + token, "authorization", "Bearer x"}, codes.Unauthenticated, false},
		{"right token", []string{"authorization", "Bearer " + token}, codes.OK, true},
		{"scheme is case-insensitive", []string{"authorization", "bearer " + token}, codes.OK, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			models := servertest.NewModels("v1", []string{"v1", "v2"})
			h := start(t, Config{AdminToken: token}, Deps{Predictor: &servertest.Predictor{}, Models: models})
			ctx := testCtx(t)
			if tt.md != nil {
				ctx = metadata.AppendToOutgoingContext(ctx, tt.md...)
			}
			_, err := h.models.Activate(ctx, &prefetchv1.ActivateRequest{Version: "v2"})
			wantCode(t, err, tt.want)
			active, changes := models.State()
			if tt.change != (changes == 1) || (tt.change && active != "v2") || (!tt.change && active != "v1") {
				t.Errorf("after Activate: active %q, %d changes; want change=%v", active, changes, tt.change)
			}
			_, err = h.models.Status(ctx, &prefetchv1.StatusRequest{})
			wantCode(t, err, tt.want)
			_, err = h.models.Rollback(ctx, &prefetchv1.RollbackRequest{})
			if tt.want == codes.OK {
				wantCode(t, err, codes.OK)
			} else {
				wantCode(t, err, tt.want)
				if _, changes := models.State(); changes != 0 {
					t.Errorf("refused Rollback changed the engine: %d changes", changes)
				}
			}
			if logs := h.logs.String(); strings.Contains(logs, "s3cr3t") {
				t.Errorf("logs hold the token:\n%s", logs)
			}
			if tt.want != codes.OK && !strings.Contains(h.logs.String(), "admin call refused") {
				t.Errorf("refusal not logged:\n%s", h.logs.String())
			}
		})
	}
}

func TestModelServiceDisabledWithoutCredentialsConfigured(t *testing.T) {
	models := servertest.NewModels("v1", []string{"v1", "v2"})
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Models: models})
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "authorization", "Bearer ")
	_, err := h.models.Activate(ctx, &prefetchv1.ActivateRequest{Version: "v2"})
	wantCode(t, err, codes.Unauthenticated)
	ctx = metadata.AppendToOutgoingContext(testCtx(t), "authorization", "Bearer anything")
	_, err = h.models.Activate(ctx, &prefetchv1.ActivateRequest{Version: "v2"})
	wantCode(t, err, codes.Unauthenticated)
	// The refusal says why, not that the token is wrong; the start said so.
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "started without an admin token") {
		t.Errorf("refusal %q does not say the server has no admin token", msg)
	}
	if !strings.Contains(h.logs.String(), "ModelService calls will all be refused") {
		t.Errorf("no warning at start that ModelService is unusable:\n%s", h.logs.String())
	}
	if _, changes := models.State(); changes != 0 {
		t.Errorf("engine changed %d times, want 0", changes)
	}
}

func TestModelService(t *testing.T) {
	const token = "tok"
	models := servertest.NewModels("v1", []string{"v1", "v2", "bad"}, "bad")
	h := start(t, Config{AdminToken: token}, Deps{Predictor: &servertest.Predictor{}, Models: models})
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "authorization", "Bearer "+token)

	st, err := h.models.Status(ctx, &prefetchv1.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	wantStatus := &prefetchv1.StatusResponse{Active: "v1", Versions: []*prefetchv1.ModelVersion{
		{Name: "markov", Version: "v1", Loaded: true, Active: true, LoadedAt: timestamppb.New(servertest.LoadedAt()), Requests: 10, PrefetchesIssued: 8, PrefetchesUsed: 6, Precision: 0.75},
		{Name: "markov", Version: "v2", Loaded: true, LoadedAt: timestamppb.New(servertest.LoadedAt()), Requests: 10, PrefetchesIssued: 8, PrefetchesUsed: 6, Precision: 0.75},
		{Name: "markov", Version: "bad", RefusedReason: "golden case 0 off by 0.3"},
	}}
	if !proto.Equal(st, wantStatus) {
		t.Errorf("Status = %v, want %v", st, wantStatus)
	}

	steps := []struct {
		name       string
		call       func() (string, error)
		want       codes.Code
		wantActive string
	}{
		{"rollback with no history", rollback(ctx, h), codes.FailedPrecondition, "v1"},
		{"activate unknown", activate(ctx, h, "v9"), codes.NotFound, "v1"},
		{"activate refused", activate(ctx, h, "bad"), codes.FailedPrecondition, "v1"},
		{"activate empty", activate(ctx, h, ""), codes.InvalidArgument, "v1"},
		{"activate oversized", activate(ctx, h, strings.Repeat("v", 257)), codes.InvalidArgument, "v1"},
		{"activate v2", activate(ctx, h, "v2"), codes.OK, "v2"},
		{"rollback to v1", rollback(ctx, h), codes.OK, "v1"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			got, err := s.call()
			wantCode(t, err, s.want)
			if active, _ := models.State(); active != s.wantActive {
				t.Errorf("engine active %q, want %q", active, s.wantActive)
			}
			if s.want == codes.OK && got != s.wantActive {
				t.Errorf("response names %q, want %q", got, s.wantActive)
			}
		})
	}
}

func activate(ctx context.Context, h *harness, v string) func() (string, error) {
	return func() (string, error) {
		r, err := h.models.Activate(ctx, &prefetchv1.ActivateRequest{Version: v})
		return r.GetActive(), err
	}
}

func rollback(ctx context.Context, h *harness) func() (string, error) {
	return func() (string, error) {
		r, err := h.models.Rollback(ctx, &prefetchv1.RollbackRequest{})
		return r.GetActive(), err
	}
}

func TestUnimplementedWithoutDeps(t *testing.T) {
	h := start(t, Config{AdminToken: "t"}, Deps{Predictor: &servertest.Predictor{}})
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "authorization", "Bearer t")
	_, err := h.models.Status(ctx, &prefetchv1.StatusRequest{})
	wantCode(t, err, codes.Unimplemented)
	w, err := h.hints.WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"u"}})
	if err == nil {
		_, err = w.Recv()
	}
	wantCode(t, err, codes.Unimplemented)
	in, err := h.hints.Ingest(ctx)
	if err == nil {
		_, err = in.CloseAndRecv()
	}
	wantCode(t, err, codes.Unimplemented)
}

func TestHealthAndReflection(t *testing.T) {
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}})
	hc := healthpb.NewHealthClient(h.conn)
	check := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		for _, svc := range []string{"", "prefetch.v1.HintService", "prefetch.v1.ModelService"} {
			r, err := hc.Check(testCtx(t), &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				t.Fatalf("Check(%q): %v", svc, err)
			}
			if r.GetStatus() != want {
				t.Errorf("Check(%q) = %v, want %v", svc, r.GetStatus(), want)
			}
		}
	}
	check(healthpb.HealthCheckResponse_NOT_SERVING)
	h.srv.SetServing(true)
	check(healthpb.HealthCheckResponse_SERVING)
	h.srv.SetServing(false)
	check(healthpb.HealthCheckResponse_NOT_SERVING)

	rc, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(testCtx(t))
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	if err := rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("reflection send: %v", err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatalf("reflection recv: %v", err)
	}
	rc.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"prefetch.v1.HintService", "prefetch.v1.ModelService", "grpc.health.v1.Health"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}

func TestWatchHints(t *testing.T) {
	watcher := servertest.NewWatcher()
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Watcher: watcher})

	t.Run("validation", func(t *testing.T) {
		for _, tc := range []struct {
			users []string
			field string
		}{
			{nil, "user_ids"},
			{[]string{"a", ""}, "user_ids[1]"},
			{[]string{strings.Repeat("u", 257)}, "user_ids[0]"},
			{make([]string, DefaultMaxUsers+1), "user_ids"},
		} {
			w, err := h.hints.WatchHints(testCtx(t), &prefetchv1.WatchHintsRequest{UserIds: tc.users})
			if err == nil {
				_, err = w.Recv()
			}
			wantCode(t, err, codes.InvalidArgument)
			if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, tc.field+": ") {
				t.Errorf("message %q does not name %s", msg, tc.field)
			}
		}
	})

	t.Run("updates then cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testCtx(t))
		w, err := h.hints.WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"alice", "bob"}})
		if err != nil {
			t.Fatalf("WatchHints: %v", err)
		}
		if _, err := w.Header(); err != nil {
			t.Fatalf("Header: %v", err)
		}
		sub := <-watcher.Subs
		if strings.Join(sub.Users, ",") != "alice,bob" {
			t.Errorf("subscribed users %v, want [alice bob]", sub.Users)
		}
		at := time.Date(2026, 11, 26, 11, 0, 0, 0, time.UTC)
		sub.Updates <- hint.Update{UserID: "bob", At: at, Result: hint.Result{ModelVersion: "v1", Hints: []hint.Hint{{Page: "/n", Probability: 0.9, Warm: true}}}}
		got, err := w.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		want := &prefetchv1.HintUpdate{UserId: "bob", ModelVersion: "v1", At: timestamppb.New(at), Hints: []*prefetchv1.Hint{{Page: "/n", Probability: 0.9, Warm: true}}}
		if !proto.Equal(got, want) {
			t.Errorf("update %v, want %v", got, want)
		}
		cancel()
		select {
		case <-sub.Cancelled:
		case <-time.After(5 * time.Second):
			t.Fatal("subscription not cancelled after the client went away")
		}
	})

	t.Run("shutdown ends stream", func(t *testing.T) {
		w, err := h.hints.WatchHints(testCtx(t), &prefetchv1.WatchHintsRequest{UserIds: []string{"carol"}})
		if err != nil {
			t.Fatalf("WatchHints: %v", err)
		}
		if _, err := w.Header(); err != nil {
			t.Fatalf("Header: %v", err)
		}
		sub := <-watcher.Subs
		if err := h.stop(); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		_, err = w.Recv()
		wantCode(t, err, codes.Unavailable)
		select {
		case <-sub.Cancelled:
		default:
			t.Error("subscription not cancelled at shutdown")
		}
	})
}

func TestIngest(t *testing.T) {
	ts := timestamppb.New(time.Date(1995, 7, 1, 0, 0, 1, 0, time.UTC))
	ing := &servertest.Ingester{Reject: func(b []byte) bool { return strings.Contains(string(b), "/refused") },
		Duplicate: func(b []byte) bool { return strings.Contains(string(b), `"event_id":"seen"`) }}
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Ingester: ing})
	events := []*prefetchv1.ClickEvent{
		{UserId: "u1", Page: "/a", Ts: ts, SessionId: "s1", Referrer: "/r", EventId: "e1"},
		{UserId: "", Page: "/a", Ts: ts},
		{UserId: "u1", Page: "", Ts: ts},
		{UserId: "u1", Page: "/a"},
		{UserId: strings.Repeat("u", 257), Page: "/a", Ts: ts},
		{UserId: "u1", Page: "/refused", Ts: ts},
		{UserId: "u1", Page: "/a", Ts: &timestamppb.Timestamp{Seconds: 1, Nanos: -1}},
		{UserId: "u2", Page: "/b", Ts: ts},
		{UserId: "u2", Page: "/b", Ts: ts, EventId: "seen"},
	}
	stream, err := h.hints.Ingest(testCtx(t))
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	for i, ev := range events {
		if err := stream.Send(ev); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	sum, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatalf("CloseAndRecv: %v", err)
	}
	want := &prefetchv1.IngestSummary{
		Accepted:   2,
		Duplicates: 1,
		Rejected:   6,
		RejectedByReason: map[string]uint64{
			"empty_user_id": 1, "empty_page": 1, "missing_ts": 1, "oversized_user_id": 1, "invalid": 1, "invalid_ts": 1,
		},
	}
	gotReasons := []string{}
	for _, e := range sum.GetFirstErrors() {
		gotReasons = append(gotReasons, fmt.Sprintf("%d:%s", e.GetIndex(), e.GetReason()))
	}
	sum.FirstErrors = nil
	if !proto.Equal(sum, want) {
		t.Errorf("summary %v, want %v", sum, want)
	}
	if g, w := strings.Join(gotReasons, " "), "1:empty_user_id 2:empty_page 3:missing_ts 4:oversized_user_id 5:invalid 6:invalid_ts"; g != w {
		t.Errorf("first errors %s, want %s", g, w)
	}
	got := ing.Events()
	wantJSON := []string{
		`{"user_id":"u1","page":"/a","ts":"1995-07-01T00:00:01Z","session_id":"s1","referrer":"/r","event_id":"e1"}`,
		`{"user_id":"u2","page":"/b","ts":"1995-07-01T00:00:01Z"}`,
	}
	if len(got) != len(wantJSON) {
		t.Fatalf("engine got %d events, want %d", len(got), len(wantJSON))
	}
	for i := range got {
		if string(got[i]) != wantJSON[i] {
			t.Errorf("event %d = %s, want %s", i, got[i], wantJSON[i])
		}
	}
}

func TestIngestEngineFailureEndsStream(t *testing.T) {
	ing := &servertest.Ingester{Err: fmt.Errorf("apply: %w", hint.ErrNoModel)}
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Ingester: ing})
	stream, err := h.hints.Ingest(testCtx(t))
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	_ = stream.Send(&prefetchv1.ClickEvent{UserId: "u", Page: "/a", Ts: timestamppb.Now()})
	_, err = stream.CloseAndRecv()
	wantCode(t, err, codes.Unavailable)
}

func TestMetrics(t *testing.T) {
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{Err: hint.ErrNoModel}})
	for range 3 {
		if _, err := h.hints.Ping(testCtx(t), &prefetchv1.PingRequest{}); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	}
	_, _ = h.hints.Predict(testCtx(t), &prefetchv1.PredictRequest{UserId: "u"})
	_, _ = h.hints.Predict(testCtx(t), &prefetchv1.PredictRequest{})
	_, _ = h.models.Status(testCtx(t), &prefetchv1.StatusRequest{})

	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	counts := map[string]float64{}
	histCounts := map[string]uint64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := []string{}
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			if c := m.GetCounter(); c != nil {
				counts[key] = c.GetValue()
			}
			if hg := m.GetHistogram(); hg != nil {
				histCounts[key] = hg.GetSampleCount()
			}
		}
	}
	for key, want := range map[string]float64{
		"prefetchd_grpc_requests_total{code=OK,method=/prefetch.v1.HintService/Ping}":                      3,
		"prefetchd_grpc_requests_total{code=Unavailable,method=/prefetch.v1.HintService/Predict}":          1,
		"prefetchd_grpc_requests_total{code=InvalidArgument,method=/prefetch.v1.HintService/Predict}":      1,
		"prefetchd_grpc_requests_total{code=Unauthenticated,method=/prefetch.v1.ModelService/Status}":      1,
		"prefetchd_grpc_auth_failures_total{code=Unauthenticated,method=/prefetch.v1.ModelService/Status}": 1,
	} {
		if counts[key] != want {
			t.Errorf("%s = %v, want %v", key, counts[key], want)
		}
	}
	if got := histCounts["prefetchd_grpc_request_duration_seconds{method=/prefetch.v1.HintService/Predict}"]; got != 2 {
		t.Errorf("Predict latency samples = %d, want 2", got)
	}
}

func TestNewErrors(t *testing.T) {
	pred := &servertest.Predictor{}
	tests := []struct {
		name string
		cfg  Config
		deps Deps
		want string
	}{
		{"no predictor", Config{}, Deps{}, "Predictor is required"},
		{"negative size", Config{MaxPages: -1}, Deps{Predictor: pred}, "MaxPages"},
		{"cert without key", Config{TLSCertFile: "c.pem"}, Deps{Predictor: pred}, "TLSCertFile and TLSKeyFile"},
		{"client CA without cert", Config{TLSClientCAFile: "ca.pem"}, Deps{Predictor: pred}, "TLSClientCAFile needs"},
		{"require without CA", Config{TLSCertFile: "c", TLSKeyFile: "k", RequireClientCert: true}, Deps{Predictor: pred}, "RequireClientCert needs"},
		{"CNs without CA", Config{TLSCertFile: "c", TLSKeyFile: "k", AllowedClientCNs: []string{"a"}}, Deps{Predictor: pred}, "AllowedClientCNs needs"},
		{"missing cert file", Config{TLSCertFile: "nope.pem", TLSKeyFile: "nope-key.pem"}, Deps{Predictor: pred}, "load TLS key pair"},
		{"token with space", Config{AdminToken: "tok\n"}, Deps{Predictor: pred}, "AdminToken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, tt.deps, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error mentioning %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "tok") {
				t.Errorf("error %q holds the token", err)
			}
		})
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{}, Deps{Predictor: pred}, nil, reg); err != nil {
		t.Fatalf("first New: %v", err)
	}
	if _, err := New(Config{}, Deps{Predictor: pred}, nil, reg); err == nil {
		t.Error("second New on the same registry: no error, want a registration error")
	}
}

func TestSecretNeverPrints(t *testing.T) {
	cfg := Config{AdminToken: "hunter2"}
	var logs bytes.Buffer
	slog.New(slog.NewTextHandler(&logs, nil)).Info("config", "cfg", cfg, "token", cfg.AdminToken)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("config", "cfg", cfg, "token", cfg.AdminToken)
	for _, s := range []string{
		fmt.Sprintf("%v %+v %#v %s %q", cfg, cfg, cfg, cfg.AdminToken, cfg.AdminToken),
		logs.String(),
	} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("secret printed: %s", s)
		}
	}
}

func TestServeGracefulDrain(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	pred := &servertest.Predictor{Fn: func(ctx context.Context, q hint.Query) (hint.Result, error) {
		entered <- struct{}{}
		if q.UserID == "slow" {
			<-ctx.Done()
			return hint.Result{}, ctx.Err()
		}
		<-release
		return hint.Result{ModelVersion: "v1"}, nil
	}}

	t.Run("in-flight call finishes", func(t *testing.T) {
		h := start(t, Config{}, Deps{Predictor: pred})
		errc := make(chan error, 1)
		go func() {
			_, err := h.hints.Predict(testCtx(t), &prefetchv1.PredictRequest{UserId: "u"})
			errc <- err
		}()
		<-entered
		stopped := make(chan error, 1)
		go func() { stopped <- h.stop() }()
		time.Sleep(50 * time.Millisecond)
		close(release)
		if err := <-errc; err != nil {
			t.Errorf("in-flight Predict: %v, want success", err)
		}
		if err := <-stopped; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	t.Run("drain times out", func(t *testing.T) {
		h := start(t, Config{ShutdownTimeout: 100 * time.Millisecond, DefaultDeadline: time.Minute}, Deps{Predictor: pred})
		errc := make(chan error, 1)
		go func() {
			_, err := h.hints.Predict(testCtx(t), &prefetchv1.PredictRequest{UserId: "slow"})
			errc <- err
		}()
		<-entered
		startAt := time.Now()
		if err := h.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
		if elapsed := time.Since(startAt); elapsed > 5*time.Second {
			t.Errorf("shutdown took %v with a 100 ms timeout", elapsed)
		}
		if err := <-errc; status.Code(err) != codes.Unavailable && status.Code(err) != codes.Canceled {
			t.Errorf("cut call got %v, want Unavailable or Canceled", err)
		}
	})
}

func TestServeTwice(t *testing.T) {
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}})
	if _, err := h.hints.Ping(testCtx(t), &prefetchv1.PingRequest{}); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer lis.Close()
	if err := h.srv.Serve(testCtx(t), lis); err == nil {
		t.Error("second Serve: no error")
	}
}

// TestIngestRuns: events the client has already sent reach a BatchIngester
// together, in stream order, and the summary counts them all.
func TestIngestRuns(t *testing.T) {
	ts := timestamppb.New(time.Date(1995, 7, 1, 0, 0, 1, 0, time.UTC))
	ing := &servertest.Ingester{Hold: make(chan struct{})}
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Ingester: ing})
	stream, err := h.hints.Ingest(testCtx(t))
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	const n = 50
	for i := range n {
		if err := stream.Send(&prefetchv1.ClickEvent{UserId: fmt.Sprintf("u%d", i%3), Page: fmt.Sprintf("/p/%d", i), Ts: ts}); err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	// The first event is held in the ingester while the rest arrive.
	time.Sleep(200 * time.Millisecond)
	close(ing.Hold)
	sum, err := stream.CloseAndRecv()
	if err != nil || sum.GetAccepted() != n || sum.GetRejected() != 0 {
		t.Fatalf("summary %v, %v; want %d accepted", sum, err, n)
	}
	if ing.LargestRun() < 2 {
		t.Fatalf("largest run %d: the events never went together", ing.LargestRun())
	}
	for i, ev := range ing.Events() {
		if want := fmt.Sprintf(`"page":"/p/%d"`, i); !strings.Contains(string(ev), want) {
			t.Fatalf("event %d is %s, want %s: stream order lost", i, ev, want)
		}
	}
}
