package features

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

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
