package features

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The kafkatest producer uses kafka-go's process-wide default transport,
	// whose idle connections outlive its writers: release them, then look for
	// leaked goroutines.
	if t, ok := kafka.DefaultTransport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// recorder is a Handler that appends clicks to a Store like the engine does
// and records, per user, the pages applied (duplicates excluded).
type recorder struct {
	store Store
	*appliedLog
	// failUntil makes the handler fail this many times per event before succeeding.
	failUntil int
	fails     map[string]int
}

// appliedLog is what recorders (possibly several, one per replica) applied.
type appliedLog struct {
	mu      sync.Mutex
	applied map[string][]int32
	dups    int
	total   atomic.Int64
}

func newRecorder(store Store) *recorder {
	return &recorder{store: store, appliedLog: &appliedLog{applied: map[string][]int32{}}, fails: map[string]int{}}
}

// replica returns a recorder with its own store sharing r's log.
func (r *recorder) replica(store Store) *recorder {
	return &recorder{store: store, appliedLog: r.appliedLog, fails: map[string]int{}}
}

func (r *recorder) HandleEvent(ctx context.Context, ev Event, msg Meta) error {
	page, err := strconv.Atoi(strings.TrimPrefix(ev.Page, "/page/"))
	if err != nil {
		return &RejectError{Reason: "handler", Detail: "page is not /page/N"}
	}
	if r.failUntil > 0 {
		r.mu.Lock()
		key := fmt.Sprint(msg.Partition, msg.Offset)
		r.fails[key]++
		n := r.fails[key]
		r.mu.Unlock()
		if n <= r.failUntil {
			return errors.New("transient failure")
		}
	}
	var rec Record
	err = r.store.Append(ctx, ev.UserID, Click{Page: int32(page), TS: ev.TS, Partition: msg.Partition, Gen: msg.Gen, Offset: msg.Offset}, &rec)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case errors.Is(err, ErrDuplicate):
		r.dups++
		return err
	case err != nil:
		return err
	}
	r.applied[ev.UserID] = append(r.applied[ev.UserID], int32(page))
	r.total.Add(1)
	return nil
}

func (r *recorder) snapshot() map[string][]int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]int32, len(r.applied))
	for k, v := range r.applied {
		out[k] = slices.Clone(v)
	}
	return out
}

// clickStream produces per user pages 0..n-1 in order and remembers them.
type clickStream struct {
	want map[string][]int32
	ts   time.Time
}

func newClickStream() *clickStream {
	return &clickStream{want: map[string][]int32{}, ts: time.Now().Add(-time.Hour)}
}

func (s *clickStream) next(user string) kafka.Message {
	page := int32(len(s.want[user]))
	s.want[user] = append(s.want[user], page)
	s.ts = s.ts.Add(time.Millisecond)
	b, _ := Encode(Event{UserID: user, Page: fmt.Sprintf("/page/%d", page), TS: s.ts})
	return kafkatest.Message(user, string(b))
}

// batch makes users×perUser good messages interleaved across users.
func (s *clickStream) batch(users, perUser int) []kafka.Message {
	var msgs []kafka.Message
	for range perUser {
		for u := range users {
			msgs = append(msgs, s.next(fmt.Sprintf("user-%02d", u)))
		}
	}
	return msgs
}

func (s *clickStream) count() int {
	n := 0
	for _, v := range s.want {
		n += len(v)
	}
	return n
}

func testConsumerConfig(addr, topic string) ConsumerConfig {
	return ConsumerConfig{
		Brokers:           []string{addr},
		Topic:             topic,
		GroupID:           "prefetchd",
		Workers:           3,
		CommitInterval:    100 * time.Millisecond,
		CommitBatch:       50,
		MaxWait:           50 * time.Millisecond,
		SessionTimeout:    6 * time.Second,
		HeartbeatInterval: 200 * time.Millisecond,
		RebalanceTimeout:  6 * time.Second,
		HandlerBackoff:    time.Millisecond,
		LagInterval:       100 * time.Millisecond,
	}
}

// runConsumer starts c.Run and returns a stop function that cancels it, waits
// for it, closes the consumer and fails the test on error.
func runConsumer(t *testing.T, c *Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkApplied(t *testing.T, got, want map[string][]int32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("applied events for %d users, want %d", len(got), len(want))
	}
	for u, w := range want {
		if !slices.Equal(got[u], w) {
			t.Fatalf("user %s applied %v, want each page once in order %v", u, got[u], w)
		}
	}
}

func TestConsumerPoisonMessages(t *testing.T) {
	const topic, dlqTopic = "clicks", "clicks.dead"
	b := kafkatest.Start(t, topic, dlqTopic)
	stream := newClickStream()
	var msgs []kafka.Message
	poison := []struct {
		value, reason string
	}{
		{`{"user_id":`, ReasonJSON},
		{``, ReasonEmpty},
		{"{\"user_id\":\"\xff\"}", ReasonUTF8},
		{`{"page":"/page/1","ts":"2026-01-01T00:00:00Z"}`, ReasonMissingUserID},
		{`{"user_id":"user-01","page":"/page/1","ts":"never"}`, ReasonBadTS},
		{`{"user_id":"user-01","page":"/page/1","ts":"1995-07-01T00:00:00Z"}`, ReasonTSSkew},
		{`{"user_id":"user-01","page":"/page/1","ts":"` + time.Now().Format(time.RFC3339) + `","x":"` + strings.Repeat("a", 2000) + `"}`, ReasonTooLarge},
		{`{"user_id":"user-02","page":"/other","ts":"` + time.Now().Format(time.RFC3339) + `"}`, "handler"},
	}
	for i := range 6 {
		msgs = append(msgs, stream.batch(8, 5)...)
		for _, p := range poison {
			msgs = append(msgs, kafkatest.Message(fmt.Sprintf("user-%02d", i), p.value))
		}
	}
	b.Produce(t, topic, msgs...)
	good := stream.count()

	reg := prometheus.NewPedanticRegistry()
	store := newTestHistories(t, HistoryConfig{MaxLen: 1000})
	rec := newRecorder(store)
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.DeadLetterTopic = dlqTopic
	cfg.Decoder.MaxMessageBytes = 1024
	c, err := NewConsumer(cfg, rec, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	eventually(t, 30*time.Second, "all good events and dead letters", func() bool {
		return rec.total.Load() == int64(good) && c.Lag() == 0 &&
			testutil.ToFloat64(c.m.deadLetters.WithLabelValues("written")) == float64(6*len(poison))
	})
	checkApplied(t, rec.snapshot(), stream.want)
	for _, p := range poison {
		if got := testutil.ToFloat64(c.m.rejected(p.reason)); got != 6 {
			t.Errorf("rejected{reason=%q} = %v, want 6", p.reason, got)
		}
	}
	stop()

	// Everything, poison included, was committed: a new member of the group
	// sees only new messages.
	b.Produce(t, topic, stream.next("user-00"))
	rec2 := newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 1000}))
	c2, err := NewConsumer(cfg, rec2, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop2 := runConsumer(t, c2)
	eventually(t, 30*time.Second, "the one new event", func() bool { return rec2.total.Load() == 1 })
	time.Sleep(300 * time.Millisecond)
	if got := rec2.snapshot(); len(got) != 1 || !slices.Equal(got["user-00"], []int32{6 * 5}) {
		t.Fatalf("after restart applied %v, want only user-00 page 30", got)
	}
	if n := testutil.ToFloat64(c2.m.rejected(ReasonJSON)); n != 0 {
		t.Fatalf("poison redelivered after commit: %v json rejections", n)
	}
	stop2()

	// The dead-letter topic holds every poison message with its reason.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{b.Addr()}, GroupID: "dlq-check", Topic: dlqTopic,
		MaxWait: 50 * time.Millisecond, SessionTimeout: 6 * time.Second, HeartbeatInterval: 200 * time.Millisecond})
	defer r.Close()
	reasons := map[string]int{}
	for range 6 * len(poison) {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("read dead letters: %v (got %v)", err, reasons)
		}
		hdr := map[string]string{}
		for _, h := range m.Headers {
			hdr[h.Key] = string(h.Value)
		}
		reasons[hdr["reason"]]++
		if hdr["source_topic"] != topic || hdr["source_offset"] == "" || hdr["source_partition"] == "" {
			t.Fatalf("dead letter headers %v lack the source", hdr)
		}
		if hdr["reason"] == ReasonJSON && string(m.Value) != `{"user_id":` {
			t.Fatalf("dead letter value %q, want the original", m.Value)
		}
	}
	for _, p := range poison {
		if reasons[p.reason] != 6 {
			t.Fatalf("dead letters by reason %v, want 6 of %q", reasons, p.reason)
		}
	}
}

func TestConsumerRestartFromCommittedOffsets(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	b.Produce(t, topic, stream.batch(10, 10)...)
	store := newTestHistories(t, HistoryConfig{MaxLen: 1000})
	rec := newRecorder(store)
	cfg := testConsumerConfig(b.Addr(), topic)

	// First run: clean shutdown commits what is done.
	c1, err := NewConsumer(cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop1 := runConsumer(t, c1)
	eventually(t, 30*time.Second, "first 100 events", func() bool { return rec.total.Load() == 100 })
	stop1()

	// Second run crashes: events are applied but never committed.
	b.Produce(t, topic, stream.batch(10, 10)...)
	c2, err := NewConsumer(cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2.noCommit = true
	stop2 := runConsumer(t, c2)
	eventually(t, 30*time.Second, "next 100 events", func() bool { return rec.total.Load() == 200 })
	stop2()

	// Third run: the uncommitted 100 come again and the store's per-user
	// positions absorb them; new events are applied once, in order.
	b.Produce(t, topic, stream.batch(10, 5)...)
	c3, err := NewConsumer(cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop3 := runConsumer(t, c3)
	eventually(t, 30*time.Second, "redeliveries and new events", func() bool {
		return rec.total.Load() == 250 && testutil.ToFloat64(c3.m.duplicates) == 100
	})
	stop3()
	checkApplied(t, rec.snapshot(), stream.want)
	if got := testutil.ToFloat64(c3.m.messages); got != 150 {
		t.Fatalf("third run fetched %v messages, want 150 (100 uncommitted + 50 new)", got)
	}
}

// TestConsumerRebalance runs two replicas in one group and starts the second
// mid-stream: no event is lost, and the redeliveries of the rebalance are
// absorbed, with one in-memory store shared by both and with one Redis store
// per replica (separate caches, one server).
func TestConsumerRebalance(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	backends := []struct {
		name   string
		stores func() (Store, Store, Store) // replica 1, replica 2, reader
	}{
		{name: "memory", stores: func() (Store, Store, Store) {
			s := newTestHistories(t, HistoryConfig{MaxLen: 100})
			return s, s, s
		}},
		{name: "redis", stores: func() (Store, Store, Store) {
			cfg := StoreConfig{History: HistoryConfig{MaxLen: 100}, KeyPrefix: "rebalance:"}
			direct := cfg
			direct.CacheSize = -1
			return newTestRedisStore(t, client, cfg), newTestRedisStore(t, client, cfg), newTestRedisStore(t, client, direct)
		}},
	}
	for i, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			const topic = "clicks"
			b := kafkatest.Start(t, topic)
			stream := newClickStream()
			s1, s2, reader := be.stores()
			rec1 := newRecorder(s1)
			rec2 := rec1.replica(s2)
			cfg := testConsumerConfig(b.Addr(), topic)
			cfg.GroupID = fmt.Sprintf("rebalance-%d", i)
			cfg.CommitInterval = time.Second // leave uncommitted work to be redelivered
			cfg.CommitBatch = 1 << 20

			c1, err := NewConsumer(cfg, rec1, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop1 := runConsumer(t, c1)
			b.Produce(t, topic, stream.batch(20, 10)...)
			eventually(t, 30*time.Second, "first member to consume", func() bool { return rec1.total.Load() >= 100 })

			c2, err := NewConsumer(cfg, rec2, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop2 := runConsumer(t, c2)
			// Keep producing while the group rebalances.
			for range 8 {
				b.Produce(t, topic, stream.batch(20, 2)...)
				time.Sleep(300 * time.Millisecond)
			}
			want := int64(stream.count())
			eventually(t, 40*time.Second, "every event applied", func() bool { return rec1.total.Load() >= want })
			eventually(t, 10*time.Second, "second member to get partitions", func() bool { return testutil.ToFloat64(c2.m.messages) > 0 })
			stop1()
			stop2()
			if got := rec1.total.Load(); got != want {
				t.Fatalf("%d events applied, want each of %d once", got, want)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for u, w := range stream.want {
				got, err := reader.Get(ctx, u, nil)
				if err != nil || !slices.Equal(got, w) {
					t.Fatalf("user %s history %v (%v), want %v", u, got, err, w)
				}
			}
			t.Logf("events %d, member 1 fetched %v, member 2 fetched %v, redeliveries absorbed: consumer %v, store %d",
				want, testutil.ToFloat64(c1.m.messages), testutil.ToFloat64(c2.m.messages),
				testutil.ToFloat64(c1.m.duplicates)+testutil.ToFloat64(c2.m.duplicates)-float64(rec1.dups), rec1.dups)
		})
	}
}

// TestConsumerHandlerRetries: a handler failing with a transient error is
// retried until it succeeds, however long that takes; no event is skipped,
// and Ready says why ingestion is paused while it lasts.
func TestConsumerHandlerRetries(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	b.Produce(t, topic, stream.batch(3, 4)...)
	cases := []struct {
		name      string
		failUntil int
		batch     int
	}{
		{name: "short", failUntil: 2},
		{name: "long outage", failUntil: 40},
		{name: "long outage in runs of one", failUntil: 40, batch: 1},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(newTestHistories(t, HistoryConfig{}))
			rec.failUntil = tc.failUntil
			cfg := testConsumerConfig(b.Addr(), topic)
			cfg.GroupID = fmt.Sprintf("retries-%d", i)
			cfg.BatchSize = tc.batch
			cfg.MaxBackoff = 5 * time.Millisecond
			c, err := NewConsumer(cfg, rec, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := runConsumer(t, c)
			var pausedSeen atomic.Bool
			var oldest float64
			eventually(t, 30*time.Second, "all messages applied and committed", func() bool {
				if err := c.Ready(); err != nil && strings.Contains(err.Error(), "transient failure") {
					pausedSeen.Store(true)
				}
				oldest = max(oldest, c.lagSeconds())
				return rec.total.Load() == 12 && c.Lag() == 0
			})
			stop()
			checkApplied(t, rec.snapshot(), stream.want)
			if got := testutil.ToFloat64(c.m.handlerErrors); got < float64(tc.failUntil) {
				t.Errorf("transient failures counted %v, want at least %d", got, tc.failUntil)
			}
			if tc.failUntil >= 40 && !pausedSeen.Load() {
				t.Error("Ready never reported the pause")
			}
			if err := c.Ready(); err != nil {
				t.Errorf("Ready after recovery: %v", err)
			}
			// In a long outage the messages waited at least the retries'
			// backoff (40 × up to 5 ms).
			if tc.failUntil >= 40 && oldest < 0.1 {
				t.Errorf("age of the oldest unsettled record peaked at %.3f s, want it to show the wait", oldest)
			}
			if age := c.lagSeconds(); age != 0 {
				t.Errorf("age of the oldest unsettled record %.3f s with nothing in flight, want 0", age)
			}
		})
	}
}

func TestConsumerApply(t *testing.T) {
	store := newTestHistories(t, HistoryConfig{})
	rec := newRecorder(store)
	c, err := NewConsumer(ConsumerConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "t", GroupID: "g"}, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	for _, p := range []string{"/page/3", "/page/4"} {
		if err := c.Apply(ctx, []byte(`{"user_id":"ann","page":"`+p+`","ts":"`+ts+`"}`)); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	got, _ := store.Get(ctx, "ann", nil)
	if !slices.Equal(got, []int32{3, 4}) {
		t.Fatalf("history %v, want [3 4]", got)
	}
	rec.failUntil = 1
	err = c.Apply(ctx, []byte(`{"user_id":"bob","page":"/page/1","ts":"`+ts+`"}`))
	if err == nil || errors.Is(err, ErrRejected) {
		t.Fatalf("Apply with a failing handler: %v, want the handler's error", err)
	}
	rec.failUntil = 0
	err = c.Apply(ctx, []byte(`{"user_id":"ann"}`))
	var rej *RejectError
	if !errors.As(err, &rej) || rej.Reason != ReasonMissingPage {
		t.Fatalf("Apply of a bad event: %v, want reason %s", err, ReasonMissingPage)
	}
	if n := testutil.ToFloat64(c.m.rejected(ReasonMissingPage)); n != 1 {
		t.Fatalf("rejected count %v, want 1", n)
	}
}

func TestConsumerConfigValidate(t *testing.T) {
	ok := ConsumerConfig{Brokers: []string{"b:9092"}, Topic: "t", GroupID: "g"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	for name, mut := range map[string]func(*ConsumerConfig){
		"no brokers":      func(c *ConsumerConfig) { c.Brokers = nil },
		"empty broker":    func(c *ConsumerConfig) { c.Brokers = []string{""} },
		"no topic":        func(c *ConsumerConfig) { c.Topic = "" },
		"no group":        func(c *ConsumerConfig) { c.GroupID = "" },
		"short session":   func(c *ConsumerConfig) { c.SessionTimeout = time.Second },
		"bad offset":      func(c *ConsumerConfig) { c.StartOffset = 5 },
		"dlq is input":    func(c *ConsumerConfig) { c.DeadLetterTopic = "t" },
		"negative worker": func(c *ConsumerConfig) { c.Workers = -1 },
		"negative batch":  func(c *ConsumerConfig) { c.BatchSize = -1 },
		"bad decoder":     func(c *ConsumerConfig) { c.Decoder.MaxPageBytes = -1 },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := ok
			mut(&cfg)
			if err := cfg.Validate(); err == nil {
				t.Fatalf("%+v accepted", cfg)
			}
		})
	}
}

// TestConsumerStopDuringRetries stops a consumer whose handler keeps failing:
// the events are not committed, and the next member of the group applies them.
func TestConsumerStopDuringRetries(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	b.Produce(t, topic, stream.batch(2, 3)...)
	store := newTestHistories(t, HistoryConfig{})
	failing := newRecorder(store)
	failing.failUntil = 1 << 30
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.HandlerBackoff = 10 * time.Millisecond
	c1, err := NewConsumer(cfg, failing, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop1 := runConsumer(t, c1)
	eventually(t, 30*time.Second, "handler retries", func() bool { return testutil.ToFloat64(c1.m.handlerRetries) >= 3 })
	stop1()

	ok := failing.replica(store)
	c2, err := NewConsumer(cfg, ok, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop2 := runConsumer(t, c2)
	eventually(t, 30*time.Second, "every event applied by the next member", func() bool { return ok.total.Load() == 6 })
	stop2()
	checkApplied(t, ok.snapshot(), stream.want)
}

// batchRecorder is a recorder that also takes runs of events
// (BatchHandler): it applies them one by one, reports duplicates and
// rejections in place and stops at the first other error, as the contract
// asks, and remembers the largest run it was handed.
type batchRecorder struct {
	*recorder
	largest atomic.Int64
	runs    atomic.Int64
}

func (b *batchRecorder) HandleEvents(ctx context.Context, evs []Event, metas []Meta, errs []error) int {
	b.runs.Add(1)
	for n := int64(len(evs)); ; {
		cur := b.largest.Load()
		if n <= cur || b.largest.CompareAndSwap(cur, n) {
			break
		}
	}
	for i := range evs {
		errs[i] = b.HandleEvent(ctx, evs[i], metas[i])
		if errs[i] != nil && !errors.Is(errs[i], ErrDuplicate) && !errors.Is(errs[i], ErrRejected) {
			return i
		}
	}
	return len(evs)
}

var _ BatchHandler = (*batchRecorder)(nil)

// TestConsumerBatchHandler drives the batch path through the broker: runs
// of events reach the handler, poison messages among them are rejected, an
// event that fails inside a run is retried alone and the run resumes after
// it, and every user's events are applied once, in order.
func TestConsumerBatchHandler(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	var msgs []kafka.Message
	for i, m := range stream.batch(6, 40) {
		msgs = append(msgs, m)
		if i%25 == 0 {
			msgs = append(msgs, kafkatest.Message(fmt.Sprintf("user-%02d", i%6), `{"user_id":`))
		}
	}
	b.Produce(t, topic, msgs...)
	good := stream.count()
	for i, tc := range []struct {
		name      string
		failUntil int
		retries   float64
	}{
		{name: "clean", failUntil: 0, retries: 0},
		{name: "every event fails once", failUntil: 1, retries: float64(good)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &batchRecorder{recorder: newRecorder(newTestHistories(t, HistoryConfig{}))}
			rec.failUntil = tc.failUntil
			cfg := testConsumerConfig(b.Addr(), topic)
			cfg.GroupID = fmt.Sprintf("batch-%d", i)
			cfg.Workers = 2
			c, err := NewConsumer(cfg, rec, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := runConsumer(t, c)
			eventually(t, 30*time.Second, "all messages handled", func() bool {
				return testutil.ToFloat64(c.m.events) == float64(good) &&
					testutil.ToFloat64(c.m.rejected(ReasonJSON)) == float64(len(msgs)-good) && c.Lag() == 0
			})
			stop()
			checkApplied(t, rec.snapshot(), stream.want)
			if got := testutil.ToFloat64(c.m.rejected(ReasonJSON)); got != float64(len(msgs)-good) {
				t.Errorf("rejected %v, want %d", got, len(msgs)-good)
			}
			if got := testutil.ToFloat64(c.m.handlerRetries); got != tc.retries {
				t.Errorf("handler retries %v, want %v", got, tc.retries)
			}
			if got := testutil.ToFloat64(c.m.events); got != float64(good) {
				t.Errorf("events %v, want %d", got, good)
			}
			if rec.runs.Load() == 0 || rec.largest.Load() < 2 {
				t.Errorf("handler got %d runs, largest %d: the batch path was not taken", rec.runs.Load(), rec.largest.Load())
			}
		})
	}
}

// TestConsumerEventIDs: an event sent twice with the same event_id is
// applied once, whether it comes twice from Kafka (two offsets: a
// producer's retry), from Apply after Kafka, or twice from Apply; events
// without an event_id are never dropped for it; with EventIDCache negative
// the check is off.
func TestConsumerEventIDs(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	event := func(user, page, id string) string {
		s := `{"user_id":"` + user + `","page":"/page/` + page + `","ts":"` + ts + `"`
		if id != "" {
			s += `,"event_id":"` + id + `"`
		}
		return s + "}"
	}
	msgs := []kafka.Message{
		kafkatest.Message("ann", event("ann", "1", "e1")),
		kafkatest.Message("ann", event("ann", "2", "e2")),
		kafkatest.Message("ann", event("ann", "2", "e2")), // the producer's retry
		kafkatest.Message("ann", event("ann", "3", "")),
		kafkatest.Message("ann", event("ann", "3", "")),   // no id: applied again
		kafkatest.Message("bob", event("bob", "1", "e1")), // same id, other user
	}
	b.Produce(t, topic, msgs...)
	for i, tc := range []struct {
		name  string
		cache int
		batch bool
		ann   []int32
		dups  float64
	}{
		{name: "on, runs", cache: 0, batch: true, ann: []int32{1, 2, 3, 3}, dups: 1},
		{name: "on, one by one", cache: 0, batch: false, ann: []int32{1, 2, 3, 3}, dups: 1},
		{name: "off", cache: -1, batch: true, ann: []int32{1, 2, 2, 3, 3}, dups: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &batchRecorder{recorder: newRecorder(newTestHistories(t, HistoryConfig{}))}
			var h Handler = rec
			if !tc.batch {
				h = rec.recorder
			}
			cfg := testConsumerConfig(b.Addr(), topic)
			cfg.GroupID = fmt.Sprintf("ids-%d", i)
			cfg.EventIDCache = tc.cache
			c, err := NewConsumer(cfg, h, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := runConsumer(t, c)
			eventually(t, 30*time.Second, "all messages handled", func() bool {
				return testutil.ToFloat64(c.m.events)+testutil.ToFloat64(c.m.duplicates) == float64(len(msgs)) && c.Lag() == 0
			})
			got := rec.snapshot()
			if !slices.Equal(got["ann"], tc.ann) || !slices.Equal(got["bob"], []int32{1}) {
				t.Fatalf("applied %v, want ann %v and bob [1]", got, tc.ann)
			}
			if n := testutil.ToFloat64(c.m.duplicates); n != tc.dups {
				t.Fatalf("duplicates %v, want %v", n, tc.dups)
			}
			// The gRPC path shares the memory: e1 of ann came from Kafka.
			ctx := context.Background()
			err = c.Apply(ctx, []byte(event("ann", "4", "e1")))
			if tc.cache < 0 {
				if err != nil {
					t.Fatalf("Apply with the check off: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrDuplicate) {
				t.Fatalf("Apply of a Kafka event's id: %v, want ErrDuplicate", err)
			}
			if err := c.Apply(ctx, []byte(event("ann", "4", "e9"))); err != nil {
				t.Fatalf("Apply of a new id: %v", err)
			}
			if err := c.Apply(ctx, []byte(event("ann", "4", "e9"))); !errors.Is(err, ErrDuplicate) {
				t.Fatalf("second Apply of e9: %v, want ErrDuplicate", err)
			}
			// A failed Apply does not keep its id: the resend goes through.
			rec.failUntil = 1
			if err := c.Apply(ctx, []byte(event("cyd", "1", "e5"))); err == nil || errors.Is(err, ErrDuplicate) {
				t.Fatalf("Apply with a failing handler: %v", err)
			}
			rec.failUntil = 0
			if err := c.Apply(ctx, []byte(event("cyd", "1", "e5"))); err != nil {
				t.Fatalf("resend after a failed Apply: %v", err)
			}
			stop()
		})
	}
}

// TestConsumerKeysOtherThanUser: one user's events in one partition under
// other keys (a device id, a session) are applied, all and in order: the
// workers are chosen by user id, not by key.
func TestConsumerKeysOtherThanUser(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	// Keys that kafka-go's Hash balancer puts on one partition.
	var keys []string
	for i := 0; len(keys) < 8; i++ {
		k := "device-" + strconv.Itoa(i)
		if (&kafka.Hash{}).Balance(kafka.Message{Key: []byte(k)}, 0, 1, 2, 3) == 0 {
			keys = append(keys, k)
		}
	}
	s := newClickStream()
	var msgs []kafka.Message
	for i := range 200 {
		m := s.next("bob")
		m.Key = []byte(keys[i%len(keys)])
		msgs = append(msgs, m)
	}
	b.Produce(t, topic, msgs...)
	rec := &batchRecorder{recorder: newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 500}))}
	c, err := NewConsumer(testConsumerConfig(b.Addr(), topic), rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	eventually(t, 30*time.Second, "all messages handled", func() bool {
		return testutil.ToFloat64(c.m.events)+testutil.ToFloat64(c.m.duplicates) == float64(len(msgs)) && c.Lag() == 0
	})
	stop()
	checkApplied(t, rec.snapshot(), s.want)
	if n := testutil.ToFloat64(c.m.duplicates); n != 0 {
		t.Fatalf("%v events taken for duplicates, want 0", n)
	}
}

// TestConsumerTopicSwitch: histories fed from one topic take the events of
// another (a new format version's topic, from offset 0) as new, not as
// redeliveries of the first topic's offsets.
func TestConsumerTopicSwitch(t *testing.T) {
	b := kafkatest.Start(t, "clicks-v1", "clicks-v2")
	store := newTestHistories(t, HistoryConfig{MaxLen: 1000})
	rec := newRecorder(store)
	stream := newClickStream()
	for i, topic := range []string{"clicks-v1", "clicks-v2"} {
		n := []int{50, 10}[i]
		var msgs []kafka.Message
		for range n {
			msgs = append(msgs, stream.next("mig"))
		}
		b.Produce(t, topic, msgs...)
		c, err := NewConsumer(testConsumerConfig(b.Addr(), topic), rec.replica(store), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		stop := runConsumer(t, c)
		eventually(t, 30*time.Second, topic+" handled", func() bool {
			return testutil.ToFloat64(c.m.events)+testutil.ToFloat64(c.m.duplicates) == float64(n) && c.Lag() == 0
		})
		stop()
		if d := testutil.ToFloat64(c.m.duplicates); d != 0 {
			t.Errorf("%s: %v events taken for redeliveries, want 0", topic, d)
		}
	}
	checkApplied(t, rec.snapshot(), stream.want)
	if TopicGen("clicks-v1", 0) == TopicGen("clicks-v2", 0) || TopicGen("t", 1) == TopicGen("t", 2) {
		t.Error("TopicGen does not tell topics or generations apart")
	}
}

// TestConsumerApplyMany: several raw events at once go through the batch
// handler; bad events and repeated event ids get their error in place and
// the rest are applied, each user's in order; a failing handler stops at
// that event.
func TestConsumerApplyMany(t *testing.T) {
	rec := &batchRecorder{recorder: newRecorder(newTestHistories(t, HistoryConfig{}))}
	c, err := NewConsumer(ConsumerConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "t", GroupID: "g"}, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	ev := func(user, page, id string) []byte {
		s := `{"user_id":"` + user + `","page":"/page/` + page + `","ts":"` + ts + `"`
		if id != "" {
			s += `,"event_id":"` + id + `"`
		}
		return []byte(s + "}")
	}
	data := [][]byte{
		ev("ann", "1", "a1"),
		[]byte(`{"user_id":"ann"}`), // no page
		ev("bob", "5", ""),
		ev("ann", "2", "a2"),
		ev("ann", "2", "a2"), // the same event again
		ev("bob", "6", ""),
	}
	errs := make([]error, len(data))
	if n := c.ApplyMany(ctx, data, errs); n != len(data) {
		t.Fatalf("ApplyMany = %d, %v; want all settled", n, errs)
	}
	var rej *RejectError
	if !errors.As(errs[1], &rej) || rej.Reason != ReasonMissingPage || !errors.Is(errs[4], ErrDuplicate) ||
		errs[0] != nil || errs[2] != nil || errs[3] != nil || errs[5] != nil {
		t.Fatalf("outcomes %v", errs)
	}
	got := rec.snapshot()
	if !slices.Equal(got["ann"], []int32{1, 2}) || !slices.Equal(got["bob"], []int32{5, 6}) {
		t.Fatalf("applied %v", got)
	}
	if rec.largest.Load() != 4 {
		t.Fatalf("largest run %d, want the 4 valid new events together", rec.largest.Load())
	}
	if n := testutil.ToFloat64(c.m.events); n != 4 {
		t.Fatalf("events counted %v, want 4", n)
	}
	// A failing handler: ApplyMany stops at that event.
	rec.failUntil = 1
	clear(errs)
	n := c.ApplyMany(ctx, [][]byte{ev("cyd", "1", "c1"), ev("cyd", "2", "c2")}, errs)
	if n != 0 || errs[0] == nil || errors.Is(errs[0], ErrRejected) || errors.Is(errs[0], ErrDuplicate) {
		t.Fatalf("with a failing handler ApplyMany = %d, %v", n, errs[:2])
	}
	rec.failUntil = 0
	// Its id was not kept: the resend goes through.
	if n := c.ApplyMany(ctx, [][]byte{ev("cyd", "1", "c1")}, errs); n != 1 || errs[0] != nil {
		t.Fatalf("resend = %d, %v", n, errs[0])
	}
}

// TestConsumerApplyManyBatchSize: ApplyMany hands the handler runs of at
// most BatchSize events.
func TestConsumerApplyManyBatchSize(t *testing.T) {
	rec := &batchRecorder{recorder: newRecorder(newTestHistories(t, HistoryConfig{}))}
	c, err := NewConsumer(ConsumerConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "t", GroupID: "g", BatchSize: 3}, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	var data [][]byte
	for i := range 10 {
		data = append(data, []byte(`{"user_id":"u`+strconv.Itoa(i)+`","page":"/page/1","ts":"`+ts+`"}`))
	}
	errs := make([]error, len(data))
	if n := c.ApplyMany(context.Background(), data, errs); n != len(data) || errors.Join(errs...) != nil {
		t.Fatalf("ApplyMany = %d, %v", n, errs)
	}
	if rec.largest.Load() != 3 || rec.runs.Load() != 4 || rec.total.Load() != 10 {
		t.Fatalf("largest run %d, %d runs, %d applied; want 3, 4, 10", rec.largest.Load(), rec.runs.Load(), rec.total.Load())
	}
}

func TestWaves(t *testing.T) {
	evs := []Event{{UserID: "a"}, {UserID: "a"}, {UserID: "b"}, {UserID: "a"}, {UserID: "c"}, {UserID: "b"}}
	seen := map[string]int{"stale": 3}
	wave, n := Waves(evs, seen, []int{9, 9})
	if !slices.Equal(wave, []int{0, 1, 0, 2, 0, 1}) || n != 3 {
		t.Fatalf("Waves = %v, %d; want [0 1 0 2 0 1], 3", wave, n)
	}
	if wave, n := Waves(nil, seen, wave); len(wave) != 0 || n != 0 {
		t.Fatalf("Waves of nothing = %v, %d", wave, n)
	}
}

// TestConsumerPartitionsAdded adds partitions to the topic while a consumer
// runs and writes clicks straight into them: they are applied without a
// restart, once each, in order.
func TestConsumerPartitionsAdded(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	b.Produce(t, topic, stream.batch(8, 3)...)
	rec := newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 1000}))
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.PartitionWatch = 200 * time.Millisecond
	c, err := NewConsumer(cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	defer stop()
	eventually(t, 30*time.Second, "the first 24 events", func() bool { return rec.total.Load() == 24 })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(b.Addr())}
	res, err := client.CreatePartitions(ctx, &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: topic, Count: 6}},
	})
	if err != nil || res.Errors[topic] != nil {
		t.Fatalf("create partitions: %v %v", err, res.Errors)
	}
	// Write to the new partitions only, each user to one of them.
	for p := 4; p < 6; p++ {
		conn, err := kafka.DialLeader(ctx, "tcp", b.Addr(), topic, p)
		if err != nil {
			t.Fatalf("dial the leader of partition %d: %v", p, err)
		}
		var msgs []kafka.Message
		for range 3 {
			msgs = append(msgs, stream.next(fmt.Sprintf("new-%d", p)))
		}
		if _, err := conn.WriteMessages(msgs...); err != nil {
			t.Fatalf("write to partition %d: %v", p, err)
		}
		conn.Close()
	}
	eventually(t, 30*time.Second, "the events of the added partitions", func() bool { return rec.total.Load() == 30 })
	stop()
	checkApplied(t, rec.snapshot(), stream.want)
}

// TestConsumerCannotJoin runs a consumer whose session timeout the broker
// refuses (above its group.max.session.timeout.ms): every fetch fails, and
// Ready says so once the failures have lasted fetchGrace.
func TestConsumerCannotJoin(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.SessionTimeout = 40 * time.Minute
	cfg.MaxBackoff = 200 * time.Millisecond
	c, err := NewConsumer(cfg, newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 10})), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stop := runConsumer(t, c)
	defer stop()
	eventually(t, 30*time.Second, "Ready to report the failing fetches", func() bool {
		err := c.Ready()
		return err != nil && strings.Contains(err.Error(), "fetches from kafka failing") && strings.Contains(err.Error(), "Session Timeout")
	})
	if d := time.Since(start); d < fetchGrace {
		t.Errorf("reported after %v, before the grace of %v", d, fetchGrace)
	}
}

// TestFetchFailures: a run of failed fetches is reported once it has
// lasted fetchGrace and while failures keep coming; a success or a pause
// longer than the gap ends it.
func TestFetchFailures(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	gap := 15 * time.Second
	boom := errors.New("boom")
	failEvery := func(f *fetchFailures, from, to time.Duration) {
		for d := from; d <= to; d += time.Second {
			f.fail(t0.Add(d), boom, gap)
		}
	}
	tests := []struct {
		name string
		run  func(f *fetchFailures)
		at   time.Duration
		want bool
	}{
		{"none", func(*fetchFailures) {}, 0, false},
		{"within the grace", func(f *fetchFailures) { failEvery(f, 0, 5*time.Second) }, 5 * time.Second, false},
		{"past the grace", func(f *fetchFailures) { failEvery(f, 0, 12*time.Second) }, 12 * time.Second, true},
		{"failures stopped coming", func(f *fetchFailures) { failEvery(f, 0, 12*time.Second) }, 12*time.Second + gap + time.Second, false},
		{"a fetch succeeded", func(f *fetchFailures) { failEvery(f, 0, 12*time.Second); f.ok() }, 12 * time.Second, false},
		{"a new run after a pause", func(f *fetchFailures) {
			failEvery(f, 0, 12*time.Second)
			failEvery(f, 30*time.Second, 35*time.Second)
		}, 35 * time.Second, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var f fetchFailures
			tc.run(&f)
			err := f.err(t0.Add(tc.at), gap)
			if (err != nil) != tc.want || (err != nil && !errors.Is(err, boom)) {
				t.Errorf("err = %v, want reported %t", err, tc.want)
			}
		})
	}
}

// TestReadyAfterRejoin: a run of failed fetches (the broker away) no longer
// fails Ready once the group is joined again, though an idle topic brings
// no record to end it.
func TestReadyAfterRejoin(t *testing.T) {
	c, err := NewConsumer(testConsumerConfig("127.0.0.1:9", "clicks"), newRecorder(newTestHistories(t, HistoryConfig{})), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now()
	for d := 20 * time.Second; d >= 0; d -= time.Second {
		c.fetchFails.fail(now.Add(-d), errors.New("connection refused"), c.fetchGap())
	}
	if c.Ready() == nil {
		t.Fatal("Ready nil after 20 s of failed fetches")
	}
	c.assign.observe("subscribed to topics and partitions: %v", "map[{topic:clicks partition:0}:12 {topic:clicks partition:1}:-2]")
	if err := c.Ready(); err != nil {
		t.Fatalf("Ready after the group was joined again: %v", err)
	}
}

// TestConsumerSkipsTransactionMarkers produces clicks in committed
// transactions with another client (franz-go, as a transactional producer
// such as Flink or Kafka Streams would): the broker writes a commit marker
// after each transaction, which kafka-go hands over as a message. Markers
// are counted and skipped, never rejected or dead-lettered, and every
// click is applied once.
func TestConsumerSkipsTransactionMarkers(t *testing.T) {
	const topic, dlqTopic = "clicks", "clicks.dead"
	b := kafkatest.Start(t, topic, dlqTopic)
	stream := newClickStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.TransactionalID("clicks-tx"), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const txs = 3
	for range txs {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for _, m := range stream.batch(4, 2) {
			if err := cl.ProduceSync(ctx, &kgo.Record{Key: m.Key, Value: m.Value}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatal(err)
		}
	}
	// Then clicks outside transactions, by the same partitioner.
	plain, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, m := range stream.batch(4, 1) {
		if err := plain.ProduceSync(ctx, &kgo.Record{Key: m.Key, Value: m.Value}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	good := stream.count()

	reg := prometheus.NewPedanticRegistry()
	rec := newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 1000}))
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.DeadLetterTopic = dlqTopic
	c, err := NewConsumer(cfg, rec, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	eventually(t, 30*time.Second, "every click applied and the topic read to its end", func() bool {
		return rec.total.Load() == int64(good) && c.Lag() == 0
	})
	stop()
	checkApplied(t, rec.snapshot(), stream.want)
	markers := testutil.ToFloat64(c.m.controlRecords)
	if markers < txs {
		t.Errorf("control records counted %v, want at least one per transaction (%d)", markers, txs)
	}
	if n := testutil.ToFloat64(c.m.messages); n != float64(good)+markers {
		t.Errorf("messages %v, want %d clicks + %v markers", n, good, markers)
	}
	if n := testutil.ToFloat64(c.m.rejected(ReasonJSON)); n != 0 {
		t.Errorf("rejected{reason=json} = %v, want 0: markers are not malformed events", n)
	}
	if n := testutil.ToFloat64(c.m.deadLetters.WithLabelValues("written")); n != 0 {
		t.Errorf("dead letters written %v, want 0", n)
	}
}

func TestIsControlRecord(t *testing.T) {
	for _, tc := range []struct {
		name       string
		key, value []byte
		want       bool
	}{
		{"commit marker", []byte{0, 0, 0, 1}, []byte{0, 0, 0, 0, 0, 7}, true},
		{"abort marker", []byte{0, 0, 0, 0}, []byte{0, 0, 0, 0, 0, 0}, true},
		{"other control type", []byte{0, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0}, false},
		{"later version", []byte{0, 1, 0, 1}, []byte{0, 0, 0, 0, 0, 0}, false},
		{"click with a 4-byte key", []byte("u-01"), []byte(`{"user_id":"u-01"}`), false},
		{"6-byte value, text key", []byte("abcd"), []byte{0, 0, 0, 0, 0, 0}, false},
		{"no key", nil, []byte{0, 0, 0, 0, 0, 0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsControlRecord(tc.key, tc.value); got != tc.want {
				t.Errorf("IsControlRecord(%v, %v) = %v, want %v", tc.key, tc.value, got, tc.want)
			}
		})
	}
}
