package app

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// TestWatchAnyUser: a WatchHints for AnyUser receives the hints of users it
// never named as they click through Kafka, at any probability (the service
// threshold is above every prediction here, so a per-user watch would get
// none).
func TestWatchAnyUser(t *testing.T) {
	from, to, prob, _ := strongestTransition(t)
	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.Threshold = 1
	svc := startService(t, cfg, 60*time.Second)
	ctx := svc.ctx

	conn, err := grpc.NewClient(svc.addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := prefetchv1.NewHintServiceClient(conn).WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: []string{AnyUser}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil { // subscribed
		t.Fatal(err)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			u := "walker-" + strconv.Itoa(i)
			kb.Produce(t, "clicks", kafkatest.Message(u, clickJSON(u, from, time.Now())))
		}
	}()
	u, err := stream.Recv()
	close(stop)
	<-stopped
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if len(u.GetUserId()) < len("walker-") || u.GetUserId()[:len("walker-")] != "walker-" {
		t.Errorf("update for %q, want one of the walkers", u.GetUserId())
	}
	if len(u.GetHints()) == 0 || u.GetHints()[0].GetPage() != to || u.GetHints()[0].GetProbability() != prob {
		t.Errorf("hints %v, want %s at %v first", u.GetHints(), to, prob)
	}
	// The hub's predictions are no one's Predict call.
	if n := metricSum(httpGet(t, ctx, "http://"+svc.addrs.Admin+"/metrics"), "prefetchd_model_requests_total"); n != 0 {
		t.Errorf("prefetchd_model_requests_total = %v with no Predict call, want 0", n)
	}
	svc.shutdown(t)
}

// TestAnyHubCountsDrops: a watcher of every user that does not read loses
// the updates past its buffer, and each loss is counted.
func TestAnyHubCountsDrops(t *testing.T) {
	var dropped atomic.Int64
	predict := func(context.Context, hint.Query) (hint.Result, error) { return hint.Result{ModelVersion: "v1"}, nil }
	h := newAnyHub(predict, func() { dropped.Add(1) }, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.run(ctx) }()
	defer func() { cancel(); <-done }()
	updates, unsubscribe := h.subscribe(2)
	defer unsubscribe()
	deadline := time.Now().Add(10 * time.Second)
	for dropped.Load() < 3 && time.Now().Before(deadline) {
		h.clicked("u")
		time.Sleep(2 * time.Millisecond)
	}
	if len(updates) != 2 || dropped.Load() < 3 {
		t.Fatalf("%d updates buffered, %d dropped; want the buffer of 2 full and the later ones counted", len(updates), dropped.Load())
	}
}

// TestAnyHubSpacing: updates of the any-user hub are at least its interval
// apart, also right after a quiet spell (a ticker's tick left over from it
// let two out back to back).
func TestAnyHubSpacing(t *testing.T) {
	predict := func(context.Context, hint.Query) (hint.Result, error) { return hint.Result{ModelVersion: "v1"}, nil }
	const every = 50 * time.Millisecond
	h := newAnyHub(predict, func() {}, every)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.run(ctx) }()
	defer func() { cancel(); <-done }()
	updates, unsubscribe := h.subscribe(64)
	defer unsubscribe()
	var at []time.Time
	for burst := range 4 {
		// A quiet spell longer than the interval, then clicks as fast as
		// they come.
		time.Sleep(3 * every)
		end := time.Now().Add(4 * every)
		for time.Now().Before(end) {
			h.clicked("u" + strconv.Itoa(burst))
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(2 * every)
	for len(updates) > 0 {
		at = append(at, (<-updates).At)
	}
	if len(at) < 8 {
		t.Fatalf("%d updates, want several per burst", len(at))
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < every-time.Millisecond {
			t.Errorf("updates %d and %d %v apart, want at least %v", i-1, i, gap, every)
		}
	}
}
