package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// floodWatcher sends updates to every subscriber as fast as it takes them,
// until cancelled, so that a send is under way when the caller goes.
type floodWatcher struct{}

func (floodWatcher) Subscribe(users []string, _ int) (<-chan hint.Update, func()) {
	ch := make(chan hint.Update)
	done := make(chan struct{})
	page := "/" + strings.Repeat("p", 1000)
	go func() {
		for {
			select {
			case ch <- hint.Update{UserID: users[0], At: time.Now(), Result: hint.Result{ModelVersion: "v1", Hints: []hint.Hint{{Page: page, Probability: 0.5}}}}:
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return ch, func() { once.Do(func() { close(done) }) }
}

// TestWatchHintsCancelledIsCanceled: streams whose callers go away while
// updates are being sent to them (some reading, some never; the call
// cancelled or the connection closed) are counted as CANCELED, not as a
// server failure (UNAVAILABLE, UNKNOWN).
func TestWatchHintsCancelledIsCanceled(t *testing.T) {
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}, Watcher: floodWatcher{}})
	const streams = 40
	var wg sync.WaitGroup
	for i := range streams {
		ctx, cancel := context.WithCancel(testCtx(t))
		client := h.hints
		if i%4 >= 2 {
			// A connection of its own, closed instead of the call cancelled.
			conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			client = prefetchv1.NewHintServiceClient(conn)
			stop := cancel
			cancel = func() { conn.Close(); stop() }
		}
		w, err := client.WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"u"}})
		if err != nil {
			t.Fatalf("WatchHints: %v", err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatalf("first update: %v", err)
		}
		wg.Go(func() {
			if i%2 == 0 {
				// Reading when cancelled.
				go func() {
					time.Sleep(time.Duration(i) * time.Millisecond)
					cancel()
				}()
				for {
					if _, err := w.Recv(); err != nil {
						return
					}
				}
			}
			// Never reading: the server's sends wait for flow control.
			time.Sleep(100*time.Millisecond + time.Duration(i)*time.Millisecond)
			cancel()
		})
	}
	wg.Wait()
	const method = "/prefetch.v1.HintService/WatchHints"
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(method, "Canceled")) < streams && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, code := range []string{"Canceled", "Unavailable", "Unknown", "Internal", "OK"} {
		want := 0.0
		if code == "Canceled" {
			want = streams
		}
		if got := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(method, code)); got != want {
			t.Errorf("WatchHints ended %s: %v, want %v", code, got, want)
		}
	}
}

// TestHealthWatchEndsAtShutdown: an open grpc.health.v1 Watch stream gets
// NOT_SERVING, then UNAVAILABLE, and does not hold the graceful stop for
// its timeout.
func TestHealthWatchEndsAtShutdown(t *testing.T) {
	h := start(t, Config{ShutdownTimeout: 10 * time.Second}, Deps{Predictor: &servertest.Predictor{}})
	h.srv.SetServing(true)
	w, err := healthpb.NewHealthClient(h.conn).Watch(testCtx(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first status %v, %v; want SERVING", r.GetStatus(), err)
	}
	start := time.Now()
	if err := h.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a health watch open, want well under the 10 s drain timeout", d)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("status at shutdown %v, %v; want NOT_SERVING", r.GetStatus(), err)
	}
	if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("after NOT_SERVING: %v, want UNAVAILABLE", err)
	}
}

// TestShutdownCutsStuckWatchers: at shutdown, WatchHints streams whose
// callers stopped reading (their sends wait for flow control) are cut about
// a second after every other call has ended, not after the 10 s drain
// timeout; a call still running keeps them waiting until it ends, and a
// watcher that reads ends with UNAVAILABLE as before.
func TestShutdownCutsStuckWatchers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		slow  time.Duration // a Predict call running when shutdown starts, this long
		atMin time.Duration
		atMax time.Duration
	}{
		{"stuck watchers only", 0, 900 * time.Millisecond, 4 * time.Second},
		{"and a Predict call of 3 s", 3 * time.Second, 3 * time.Second, 7 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			predicting := make(chan struct{})
			pred := &servertest.Predictor{Fn: func(ctx context.Context, q hint.Query) (hint.Result, error) {
				close(predicting)
				time.Sleep(tc.slow)
				return hint.Result{ModelVersion: "v1"}, nil
			}}
			h := start(t, Config{ShutdownTimeout: 10 * time.Second}, Deps{Predictor: pred, Watcher: floodWatcher{}})
			ctx := testCtx(t)
			// Two callers that stop reading after their first update, on
			// connections of their own, and one that keeps reading.
			for range 2 {
				conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				w, err := prefetchv1.NewHintServiceClient(conn).WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"u"}})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := w.Recv(); err != nil {
					t.Fatal(err)
				}
			}
			reader, err := h.hints.WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"r"}})
			if err != nil {
				t.Fatal(err)
			}
			readEnd := make(chan error, 1)
			go func() {
				for {
					if _, err := reader.Recv(); err != nil {
						readEnd <- err
						return
					}
				}
			}()
			deadline := time.Now().Add(5 * time.Second)
			for h.srv.sending.Load() < 2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			predicted := make(chan error, 1)
			if tc.slow > 0 {
				go func() {
					_, err := h.hints.Predict(ctx, &prefetchv1.PredictRequest{UserId: "p"})
					predicted <- err
				}()
				<-predicting
			}
			begin := time.Now()
			if err := h.stop(); err != nil {
				t.Fatalf("Serve: %v", err)
			}
			took := time.Since(begin)
			if took < tc.atMin || took > tc.atMax {
				t.Errorf("shutdown took %v, want %v to %v", took, tc.atMin, tc.atMax)
			}
			if tc.slow > 0 {
				if err := <-predicted; err != nil {
					t.Errorf("the Predict call running at shutdown: %v, want an answer", err)
				}
			}
			if err := <-readEnd; status.Code(err) != codes.Unavailable {
				t.Errorf("the reading watcher ended with %v, want UNAVAILABLE", err)
			}
			if !strings.Contains(h.logs.String(), "callers stopped reading") {
				t.Errorf("no log of the cut streams in %s", h.logs.String())
			}
		})
	}
}

// TestUnknownMethodCounted: calls to a method or service the server does not
// have answer UNIMPLEMENTED and are counted under method "unknown".
func TestUnknownMethodCounted(t *testing.T) {
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}})
	for _, m := range []string{"/prefetch.v1.HintService/Nope", "/nope.Svc/Nope"} {
		err := h.conn.Invoke(testCtx(t), m, &prefetchv1.PredictRequest{UserId: "u"}, &prefetchv1.PredictResponse{})
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("%s: %v, want UNIMPLEMENTED", m, err)
		}
	}
	if got := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues("unknown", "Unimplemented")); got != 2 {
		t.Errorf("requests{method=unknown,code=Unimplemented} = %v, want 2", got)
	}
}

// TestIngestOversizedMessageCounted: an Ingest stream that grpc-go ends
// because a message is over the size limit is counted with the status the
// client got (RESOURCE_EXHAUSTED), not as CANCELED.
func TestIngestOversizedMessageCounted(t *testing.T) {
	ing := &servertest.Ingester{}
	h := start(t, Config{MaxRecvMsgSize: 4096}, Deps{Predictor: &servertest.Predictor{}, Ingester: ing})
	stream, err := h.hints.Ingest(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	ts := timestamppb.Now()
	for _, page := range []string{"/a", "/" + strings.Repeat("b", 8000), "/c"} {
		if err := stream.Send(&prefetchv1.ClickEvent{UserId: "u", Page: page, Ts: ts}); err != nil {
			break // the server ended the stream
		}
	}
	_, err = stream.CloseAndRecv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Ingest with an oversized message: %v, want RESOURCE_EXHAUSTED", err)
	}
	const method = "/prefetch.v1.HintService/Ingest"
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(method, "ResourceExhausted")) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(method, "ResourceExhausted")); got != 1 {
		t.Errorf("Ingest counted ResourceExhausted %v times, Canceled %v; want ResourceExhausted once", got,
			testutil.ToFloat64(h.srv.metrics.requests.WithLabelValues(method, "Canceled")))
	}
}

// TestMadeUpAdminMethodsBounded: refused calls of methods made up under the
// admin service, however many and however long their names, add one
// series to prefetchd_grpc_auth_failures_total, not one each.
func TestMadeUpAdminMethodsBounded(t *testing.T) {
	h := start(t, Config{}, Deps{Predictor: &servertest.Predictor{}})
	const n = 50
	for i := range n {
		m := fmt.Sprintf("/prefetch.v1.ModelService/Bogus%d%s", i, strings.Repeat("x", 1000*(i%2)))
		err := h.conn.Invoke(testCtx(t), m, &prefetchv1.PredictRequest{UserId: "u"}, &prefetchv1.PredictResponse{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%.60s: %v, want UNAUTHENTICATED", m, err)
		}
	}
	if got := testutil.CollectAndCount(h.srv.metrics.authFailures); got != 1 {
		t.Errorf("auth failure series = %d after %d made-up methods, want 1", got, n)
	}
	if got := testutil.ToFloat64(h.srv.metrics.authFailures.WithLabelValues("unknown", "Unauthenticated")); got != n {
		t.Errorf("auth failures{method=unknown} = %v, want %d", got, n)
	}
	if got := cutMethod(strings.Repeat("é", 100)); len(got) > maxLoggedMethod+3 || !strings.HasSuffix(got, "...") || !utf8.ValidString(got) {
		t.Errorf("cutMethod gave %d bytes %q, want at most %d valid UTF-8 ending in ...", len(got), got, maxLoggedMethod+3)
	}
}

// TestMaxWatchers: WatchHints streams beyond Config.MaxWatchers, over every
// connection, are refused with RESOURCE_EXHAUSTED; one ending makes room.
func TestMaxWatchers(t *testing.T) {
	h := start(t, Config{MaxWatchers: 2}, Deps{Predictor: &servertest.Predictor{}, Watcher: servertest.NewWatcher()})
	open := func(ctx context.Context) error {
		w, err := h.hints.WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"u"}})
		if err != nil {
			return err
		}
		_, err = w.Header() // sent once the stream is admitted
		return err
	}
	var cancels []context.CancelFunc
	for i := range 2 {
		ctx, cancel := context.WithCancel(testCtx(t))
		cancels = append(cancels, cancel)
		if err := open(ctx); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	w, err := h.hints.WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{"u"}})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream: %v, want RESOURCE_EXHAUSTED", err)
	}
	cancels[0]()
	deadline := time.Now().Add(5 * time.Second)
	for h.srv.watchers.Load() > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := open(testCtx(t)); err != nil {
		t.Fatalf("a stream after one ended: %v", err)
	}
	cancels[1]()
}
