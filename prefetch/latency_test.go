package prefetch

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// histogram reads a histogram's sample count and sum.
func histogram(t *testing.T, h prometheus.Histogram) (uint64, float64) {
	t.Helper()
	var d dto.Metric
	if err := h.Write(&d); err != nil {
		t.Fatalf("read histogram: %v", err)
	}
	return d.Histogram.GetSampleCount(), d.Histogram.GetSampleSum()
}

// TestShedFromDefault checks that unset ShedFrom means no shedding and that
// 0 is a value.
func TestShedFromDefault(t *testing.T) {
	if got := (Config{}).withDefaults().ShedFrom; got != 1 {
		t.Errorf("default ShedFrom = %v, want 1 (off)", got)
	}
	if got := (Config{ShedFromSet: true}).withDefaults().ShedFrom; got != 0 {
		t.Errorf("ShedFrom 0 with ShedFromSet became %v, want 0", got)
	}
}

// TestLatencyMetricsAtZero checks that the latency metrics are in the first
// scrape, before any click.
func TestLatencyMetricsAtZero(t *testing.T) {
	_, rdb := newRedis(t)
	reg := prometheus.NewRegistry()
	if _, err := NewWarmer(Config{}, rdb, nil, reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"prefetchd_click_to_warm_seconds": false, "prefetchd_prefetch_late_total": false,
		"prefetchd_prefetch_blocked_total": false, `prefetchd_prefetch_dropped_total{reason="shed"}`: false}
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					key = name + `{reason="` + l.GetValue() + `"}`
				}
			}
			if _, ok := want[key]; ok {
				want[key] = true
			}
			if _, ok := want[name]; ok {
				want[name] = true
			}
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("%s not in the first scrape", k)
		}
	}
}

// TestClickToWarm writes one page per case and checks which clock the
// latency was counted from.
func TestClickToWarm(t *testing.T) {
	_, rdb := newRedis(t)
	now := time.Now()
	cases := []struct {
		name     string
		at, rec  time.Time
		min, max float64 // bounds of the observed seconds
	}{
		{"event time near the record time", now.Add(-300 * time.Millisecond), now.Add(-250 * time.Millisecond), 0.3, 5},
		{"event time an hour off: record time", now.Add(-time.Hour), now.Add(-200 * time.Millisecond), 0.2, 5},
		{"event time in the future: record time", now.Add(time.Hour), now.Add(-200 * time.Millisecond), 0.2, 5},
		{"no record time: event time", now.Add(-400 * time.Millisecond), time.Time{}, 0.4, 5},
		{"neither: now", time.Time{}, time.Time{}, 0, 5},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := startWarmer(t, Config{}, rdb)
			page := "/case/" + string(rune('a'+i))
			if n := w.Warm(testCtx(t), Request{UserID: "u", At: tc.at, Recorded: tc.rec, Pages: []Page{{Key: page, Probability: 0.5}}}); n != 1 {
				t.Fatalf("queued %d, want 1", n)
			}
			eventually(t, 5*time.Second, "page written", func() bool { return counter(w.m.written) == 1 })
			n, sum := histogram(t, w.m.clickToWarm)
			if n != 1 || sum < tc.min || sum >= tc.max {
				t.Errorf("click_to_warm: %d samples, sum %.3fs; want 1 sample in [%v, %v)", n, sum, tc.min, tc.max)
			}
		})
	}
}

// TestWarmerLate clicks pages whose prefetch is queued (the Warmer is not
// running, so nothing lands) and pages that have landed.
func TestWarmerLate(t *testing.T) {
	_, rdb := newRedis(t)
	cases := []struct {
		name     string
		template string
		user     string
		page     string
		late     bool
	}{
		{"same user, page in flight", "user:{user}:page:{page}", "u", "/b", true},
		{"other user, per-user keys", "user:{user}:page:{page}", "v", "/b", false},
		{"other user, shared keys", "page:{page}", "v", "/b", true},
		{"page never prefetched", "user:{user}:page:{page}", "u", "/z", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			w, err := NewWarmer(Config{KeyTemplate: tc.template}, rdb, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n := w.Warm(ctx, Request{UserID: "u", Page: "/a", Pages: []Page{{Key: "/b", Probability: 0.9}}}); n != 1 {
				t.Fatalf("queued %d, want 1", n)
			}
			if got := counter(w.m.late); got != 0 {
				t.Fatalf("late after the first click = %v, want 0", got)
			}
			w.Warm(ctx, Request{UserID: tc.user, Page: tc.page})
			want := 0.0
			if tc.late {
				want = 1
			}
			if got := counter(w.m.late); got != want {
				t.Errorf("late = %v, want %v", got, want)
			}
			// Once written (Close flushes), the same click is not late.
			if err := w.Close(ctx); err != nil {
				t.Fatal(err)
			}
			w.Warm(ctx, Request{UserID: tc.user, Page: tc.page})
			if got := counter(w.m.late); got != want {
				t.Errorf("late after the write = %v, want still %v", got, want)
			}
			_ = rdb.FlushAll(ctx).Err()
		})
	}
}

// TestWarmerShed fills the queue of a Warmer that is not running, past
// ShedFrom, and checks that the least likely pages go first and each
// request's most likely page never.
func TestWarmerShed(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	w, err := NewWarmer(Config{QueueSize: 10, ShedFrom: 0.5}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	page := 0
	warm := func(probs ...float32) int {
		req := Request{UserID: "u"}
		for _, p := range probs {
			page++
			req.Pages = append(req.Pages, Page{Key: "/p/" + string(rune('a'+page)), Probability: p})
		}
		return w.Warm(ctx, req)
	}
	steps := []struct {
		probs          []float32
		queued         int
		shed, fullDrop float64 // totals after the step
	}{
		// Below half full nothing is shed, however unlikely.
		{[]float32{0.01, 0.01, 0.01, 0.01, 0.01}, 5, 0, 0},
		// At half full the floor is 0: all three go in (fill 0.8).
		{[]float32{0.02, 0.9, 0.5}, 3, 0, 0},
		// Fill 0.8: the top page (0.95) goes in; then fill 0.9, floor 0.8:
		// 0.85 goes in, 0.3 is shed (floor 1 at fill 1.0).
		{[]float32{0.85, 0.95, 0.3}, 2, 1, 0},
		// Full: the top page is not shed but finds no room.
		{[]float32{0.01}, 0, 1, 1},
	}
	for i, s := range steps {
		if got := warm(s.probs...); got != s.queued {
			t.Errorf("step %d: queued %d, want %d", i, got, s.queued)
		}
		if shed, full := counter(w.m.dropped[dropShed]), counter(w.m.dropped[dropQueueFull]); shed != s.shed || full != s.fullDrop {
			t.Errorf("step %d: shed %v, queue_full %v; want %v and %v", i, shed, full, s.shed, s.fullDrop)
		}
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := counter(w.m.written); got != 10 {
		t.Errorf("written %v, want the 10 queued", got)
	}
}

// TestWarmerBlockNotDuringOutage: while writes fail, a full queue drops
// rather than stall the consumer.
func TestWarmerBlockNotDuringOutage(t *testing.T) {
	_, rdb := newRedis(t)
	ctx := testCtx(t)
	w, err := NewWarmer(Config{QueueSize: 1, Block: true}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.failure.Store(&writeFailure{since: time.Now(), err: errors.New("down")}) // as write does when a pipeline fails
	if n := w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/1"}}}); n != 1 {
		t.Fatalf("queued %d, want 1", n)
	}
	done := make(chan int, 1)
	go func() { done <- w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/2"}}}) }()
	select {
	case n := <-done:
		if n != 0 || counter(w.m.dropped[dropQueueFull]) != 1 || counter(w.m.blocked) != 0 {
			t.Errorf("queued %d, queue_full %v, blocked %v; want 0, 1, 0", n, counter(w.m.dropped[dropQueueFull]), counter(w.m.blocked))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Warm waited during an outage")
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestWarmerBlock checks backpressure: with Block, Warm on a full queue
// waits for room, and gives up when its ctx ends or the Warmer closes.
func TestWarmerBlock(t *testing.T) {
	_, rdb := newRedis(t)
	cases := []struct {
		name   string
		end    func(w *Warmer, cancel context.CancelFunc, run func())
		queued int
		reason string // the drop counted, if any
	}{
		{"room frees up", func(_ *Warmer, _ context.CancelFunc, run func()) { run() }, 1, ""},
		{"ctx ends", func(_ *Warmer, cancel context.CancelFunc, _ func()) { cancel() }, 0, dropCanceled},
		{"warmer closes", func(w *Warmer, _ context.CancelFunc, _ func()) {
			go func() { _ = w.Close(context.Background()) }()
		}, 0, dropClosed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			_ = rdb.FlushAll(ctx).Err()
			w, err := NewWarmer(Config{QueueSize: 2, Block: true}, rdb, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			runCtx, stopRun := context.WithCancel(context.Background())
			ran := make(chan error, 1)
			run := func() { go func() { ran <- w.Run(runCtx) }() }
			defer func() {
				stopRun()
				_ = w.Close(ctx)
				select {
				case <-ran:
				default:
				}
			}()
			if n := w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/1"}, {Key: "/2"}}}); n != 2 {
				t.Fatalf("queued %d, want 2", n)
			}
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			got := make(chan int, 1)
			go func() { got <- w.Warm(wctx, Request{UserID: "u", Pages: []Page{{Key: "/3"}}}) }()
			select {
			case n := <-got:
				t.Fatalf("Warm on a full queue returned %d without waiting", n)
			case <-time.After(100 * time.Millisecond):
			}
			if b := counter(w.m.blocked); b != 1 {
				t.Errorf("blocked = %v, want 1", b)
			}
			tc.end(w, cancel, run)
			select {
			case n := <-got:
				if n != tc.queued {
					t.Errorf("Warm queued %d, want %d", n, tc.queued)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Warm still blocked")
			}
			if tc.reason != "" {
				if d := counter(w.m.dropped[tc.reason]); d != 1 {
					t.Errorf("dropped{%s} = %v, want 1", tc.reason, d)
				}
			}
			if d := counter(w.m.dropped[dropQueueFull]); d != 0 {
				t.Errorf("queue_full = %v with Block, want 0", d)
			}
			if tc.queued == 1 {
				eventually(t, 5*time.Second, "3 pages written", func() bool { return counter(w.m.written) == 3 })
			}
		})
	}
}

// TestLateCheckAllocatesNothing: the check runs on every click.
func TestLateCheckAllocatesNothing(t *testing.T) {
	_, rdb := newRedis(t)
	w, err := NewWarmer(Config{KeyTemplate: "user:{user}:page:{page}"}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	w.Warm(ctx, Request{UserID: "u", Pages: []Page{{Key: "/b", Probability: 1}}})
	if n := testing.AllocsPerRun(100, func() { w.countLate("u", "/b", time.Now().UnixNano()) }); n != 0 {
		t.Errorf("countLate allocates %v times, want 0", n)
	}
	if got := counter(w.m.late); got != 101 {
		t.Errorf("late = %v after 101 checks of a page in flight, want 101", got)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestWarmSkipAllocatesNothing: a page still warm or already on its way is
// skipped without building its key, on every click that predicts it.
func TestWarmSkipAllocatesNothing(t *testing.T) {
	_, rdb := newRedis(t)
	w, err := NewWarmer(Config{KeyTemplate: "user:{user}:page:{page}"}, rdb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	req := Request{UserID: "u", Pages: []Page{{Key: "/a", Probability: 0.9}, {Key: "/b", Probability: 0.5}}}
	if n := w.Warm(ctx, req); n != 2 {
		t.Fatalf("first Warm queued %d pages, want 2", n)
	}
	if n := testing.AllocsPerRun(100, func() { w.Warm(ctx, req) }); n != 0 {
		t.Errorf("Warm of pages on their way allocates %v times, want 0", n)
	}
	if got := counter(w.m.skippedCoalesced); got != 202 {
		t.Errorf("coalesced = %v after 101 repeats of 2 pages in flight, want 202", got)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestClicksBehindTheStream: a consumer behind its stream applies a click
// after the prefetch it should have found landed, though the user made it
// before. Such a click is late and cold, in prefetchd_prefetch_late_total
// and in the Evaluator's figures; a click made after the landing is warm.
// The same holds whatever the client's clock says, ahead or behind, as
// both judge the click at its record time (JudgeTime), taken on a server's
// clock like the landing; and for clicks through gRPC Ingest, stamped when
// the service takes them in, judged at their ts.
func TestClicksBehindTheStream(t *testing.T) {
	_, rdb := newRedis(t)
	for _, tc := range []struct {
		name string
		skew time.Duration // ts minus record time
		// receipt: the clicks come through gRPC Ingest, stamped when the
		// service takes them in (now, while it is 10 s behind), and ts is
		// right.
		receipt bool
	}{
		{"clock right", 0, false},
		{"clock an hour ahead", time.Hour, false},
		{"clock 30 s ahead", 30 * time.Second, false},
		{"clock 3 s behind", -3 * time.Second, false},
		{"clock 30 s behind", -30 * time.Second, false},
		{"clock an hour behind", -time.Hour, false},
		{"gRPC receipt", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := NewEvaluator(EvaluatorConfig{KeyTemplate: "user:{user}:page:{page}"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			w := startWarmerWith(t, Config{KeyTemplate: "user:{user}:page:{page}", TTL: time.Minute}, rdb,
				func(w *Warmer) { w.SetObserver(ev) })
			ev.SetModelVersion("v1")
			ctx := testCtx(t)
			prefix := strings.ReplaceAll(tc.name, " ", "-")
			u, v := prefix+"-u", prefix+"-v"
			click := func(user, page string, rec time.Time, pages ...Page) int {
				at := rec.Add(tc.skew)
				if tc.receipt {
					rec = time.Now() // taken in now
				}
				ev.ObserveClick(user, page, JudgeTime(at, rec, time.Now(), tc.receipt)) // as the engine does
				return w.Warm(ctx, Request{UserID: user, Page: page, At: at, Recorded: rec, Receipt: tc.receipt, ModelVersion: "v1", Pages: pages})
			}
			// Users u and v clicked /a 10 s ago; the consumer, 10 s
			// behind, applies those clicks now, and their prefetches of
			// /b land now.
			t0 := time.Now().Add(-10 * time.Second)
			for _, user := range []string{u, v} {
				if n := click(user, "/a", t0, Page{Key: "/b", Probability: 0.9}); n != 1 {
					t.Fatalf("queued %d, want 1", n)
				}
			}
			eventually(t, 5*time.Second, "both pages written", func() bool { return counter(w.m.written) == 2 })
			// u clicked /b 2 s after /a, 8 s before the write landed.
			click(u, "/b", t0.Add(2*time.Second))
			if got := counter(w.m.late); got != 1 {
				t.Errorf("late = %v after a click made before the landing, want 1", got)
			}
			// v clicks /b now, after the landing: warm, not late.
			click(v, "/b", time.Now())
			if got := counter(w.m.late); got != 1 {
				t.Errorf("late = %v after a click made after the landing, want still 1", got)
			}
			st := ev.Stats()
			if len(st) != 1 || st[0].Clicks != 4 || st[0].WarmClicks != 1 || st[0].Used != 1 || st[0].Issued != 2 {
				t.Errorf("evaluator figures %+v, want 4 clicks, 1 warm (v's), 2 issued, 1 used", st)
			}
		})
	}
}
