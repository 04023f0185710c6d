package features

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConsumerLagIsTheGroups: the lag is what the brokers hold (high-water
// mark minus the group's committed offset), not what the consumer did: a
// consumer that applies everything but cannot commit still shows it all.
// Assignments are logged with the partitions gained.
func TestConsumerLagIsTheGroups(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	b.Produce(t, topic, stream.batch(4, 5)...)
	cases := []struct {
		name     string
		noCommit bool
		wantLag  int64
	}{
		{name: "uncommitted work is lag", noCommit: true, wantLag: 20},
		{name: "committed work is not", noCommit: false, wantLag: 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			rec := newRecorder(newTestHistories(t, HistoryConfig{}))
			cfg := testConsumerConfig(b.Addr(), topic)
			cfg.GroupID = "lag-" + tc.name
			c, err := NewConsumer(cfg, rec, slog.New(slog.NewTextHandler(&logs, nil)), nil)
			if err != nil {
				t.Fatal(err)
			}
			c.noCommit = tc.noCommit
			stop := runConsumer(t, c)
			eventually(t, 20*time.Second, "every event applied", func() bool { return rec.total.Load() == 20 })
			// Two readings after the last event: the lag has settled.
			time.Sleep(3 * cfg.LagInterval)
			eventually(t, 10*time.Second, "the lag reading", func() bool { return c.Lag() == tc.wantLag })
			stop()
			if !strings.Contains(logs.String(), `msg="partitions assigned" topic=clicks partitions="[0 1 2 3]" gained="[0 1 2 3]"`) {
				t.Errorf("no assignment log line with the partitions gained; log:\n%s", logs.String())
			}
			if n := testutil.ToFloat64(c.m.rebalances); n < 1 {
				t.Errorf("rebalances %v, want at least 1", n)
			}
		})
	}
}

// TestLagOfUnknownGroup: a group the brokers do not know yet (before its
// first join) has committed nothing: the whole topic is its lag, not an
// error.
func TestLagOfUnknownGroup(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	b.Produce(t, topic, newClickStream().batch(4, 5)...)
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.GroupID = "never-joined"
	w := newLagWatch(cfg.withDefaults(), slog.New(slog.DiscardHandler))
	defer w.close()
	n, views, err := w.read(t.Context())
	if err != nil || n != 20 {
		t.Fatalf("lag of a group never joined = %d, %v; want 20 and no error", n, err)
	}
	for p, v := range views {
		if v.committed != -1 {
			t.Errorf("partition %d committed %d, want -1 (none)", p, v.committed)
		}
	}
}

// TestLagSecondsCountsUnfetched: records waiting in a held partition whose
// fetching stopped (nothing fetched from it for fetchStallAfter) count in
// the lag's age, by their own timestamp, until they are fetched; a
// partition this consumer does not hold, or one fetched recently, does not.
func TestLagSecondsCountsUnfetched(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := kafka.DialLeader(ctx, "tcp", b.Addr(), topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	old := time.Now().Add(-30 * time.Second).Truncate(time.Millisecond)
	if _, err := conn.WriteMessages(
		kafka.Message{Value: []byte("a"), Time: old.Add(-time.Minute)},
		kafka.Message{Value: []byte("b"), Time: old},
		kafka.Message{Value: []byte("c"), Time: old.Add(time.Second)},
	); err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(testConsumerConfig(b.Addr(), topic), newRecorder(newTestHistories(t, HistoryConfig{})), slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Offset 0 fetched and settled long ago; 1 and 2 wait unfetched.
	c.track.done(0, c.track.add(0, 0, 3, old.Add(-time.Minute)).seq)
	stale := map[int]position{0: {committed: 0, fetched: 0, seenAt: time.Now().Add(-time.Minute)}}
	views := map[int]brokerView{0: {committed: 1, hwm: 3}}

	c.findWaiting(ctx, stale, views)
	if got := c.LagSeconds(); got != 0 {
		t.Fatalf("lag %v s for a partition this consumer does not hold, want 0", got)
	}
	c.assign.owned = []int{0}
	recent := map[int]position{0: {committed: 0, fetched: 0, seenAt: time.Now()}}
	c.findWaiting(ctx, recent, views)
	if got := c.LagSeconds(); got != 0 {
		t.Fatalf("lag %v s for a partition fetched just now, want 0", got)
	}
	c.findWaiting(ctx, stale, views)
	if got := c.LagSeconds(); got < 29 || got > 40 {
		t.Fatalf("lag %v s with the record of offset 1 (30 s old) waiting unfetched, want about 30", got)
	}
	// Fetched at last: its age is the tracker's (settled: none).
	c.track.done(0, c.track.add(0, 1, 3, old).seq)
	if got := c.LagSeconds(); got != 0 {
		t.Fatalf("lag %v s once the waiting record was fetched and settled, want 0", got)
	}
}
