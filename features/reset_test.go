package features

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

// recreateTopic deletes topic and creates it again, empty, with 4
// partitions: its offsets start again at 0.
func recreateTopic(t *testing.T, addr, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr}
	if _, err := cl.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}}); err != nil {
		t.Fatalf("delete topic %s: %v", topic, err)
	}
	for {
		res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: 4, ReplicationFactor: 1}}})
		if err == nil && res.Errors[topic] == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("create topic %s again: %v %v", topic, err, res)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rewindGroup commits offset 0 for every partition of topic in group, as
// an operator's reset of an inactive group does.
func rewindGroup(t *testing.T, addr, group, topic string) {
	t.Helper()
	commitGroup(t, addr, group, topic, 0)
}

// commitGroup sets the group's committed offset of every partition of
// topic (4) to offset, as an admin tool would with the group empty.
func commitGroup(t *testing.T, addr, group, topic string, offset int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr}
	commits := make([]kafka.OffsetCommit, 4)
	for p := range commits {
		commits[p] = kafka.OffsetCommit{Partition: p, Offset: offset}
	}
	res, err := cl.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{topic: commits}})
	if err != nil {
		t.Fatalf("reset the group's offsets: %v", err)
	}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("reset the offset of partition %d: %v", p.Partition, p.Error)
		}
	}
}

// TestConsumerOffsetsGoBackwards: when a partition's offsets start again
// (topic recreated, broker replaced), the new events are applied, not taken
// for redeliveries, in this process (watermarks) and across a restart with
// durable shared histories (marks in Redis); the reset is counted. A group
// reset on the same log is told apart by the records' timestamps: its
// records are redeliveries and are not applied again.
func TestConsumerOffsetsGoBackwards(t *testing.T) {
	const topic = "clicks"
	t.Run("topic recreated while consuming", func(t *testing.T) {
		b := kafkatest.Start(t, topic)
		stream := newClickStream()
		b.Produce(t, topic, stream.batch(6, 5)...)
		store := newTestHistories(t, HistoryConfig{MaxLen: 1000})
		rec := newRecorder(store)
		cfg := testConsumerConfig(b.Addr(), topic)
		c, err := NewConsumer(cfg, rec, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		stop := runConsumer(t, c)
		eventually(t, 20*time.Second, "the first events applied and committed", func() bool { return rec.total.Load() == 30 && c.Lag() == 0 })
		recreateTopic(t, b.Addr(), topic)
		b.Produce(t, topic, stream.batch(6, 5)...)
		eventually(t, 40*time.Second, "the events of the new topic applied", func() bool { return rec.total.Load() == 60 })
		eventually(t, 10*time.Second, "the new topic's offsets committed", func() bool { return c.Lag() == 0 })
		stop()
		checkApplied(t, rec.snapshot(), stream.want)
		wantOffsetResets(t, c, topic)
	})
	t.Run("topic recreated, partitions left empty", func(t *testing.T) {
		b := kafkatest.Start(t, topic)
		stream := newClickStream()
		b.Produce(t, topic, stream.batch(6, 5)...)
		rec := newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 1000}))
		c, err := NewConsumer(testConsumerConfig(b.Addr(), topic), rec, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		stop := runConsumer(t, c)
		eventually(t, 20*time.Second, "the first events applied and committed", func() bool { return rec.total.Load() == 30 && c.Lag() == 0 })
		assigned := testutil.ToFloat64(c.m.rebalances)
		recreateTopic(t, b.Addr(), topic)
		// One user's events: one partition has records, the others stay
		// empty.
		var msgs []kafka.Message
		for range 5 {
			msgs = append(msgs, stream.next("user-00"))
		}
		b.Produce(t, topic, msgs...)
		eventually(t, 40*time.Second, "the new events applied", func() bool { return rec.total.Load() == 35 })
		// Many lag reads later (LagInterval 100 ms), the reader was
		// replaced once, not at every read while partitions stay empty.
		time.Sleep(2 * time.Second)
		if n := testutil.ToFloat64(c.m.rebalances) - assigned; n > 2 {
			t.Errorf("%v assignments in 2 s after the topic was recreated, want the one of the replaced reader", n)
		}
		stop()
	})
	t.Run("broker replaced while stopped, shared histories in Redis", func(t *testing.T) {
		srv := redistest.Start(t)
		client := newRedisClient(t, srv.Addr())
		store := newTestRedisStore(t, client, StoreConfig{History: HistoryConfig{MaxLen: 1000}})
		stream := newClickStream()
		rec := newRecorder(store)

		b1 := kafkatest.Start(t, topic)
		b1.Produce(t, topic, stream.batch(6, 5)...)
		cfg := testConsumerConfig(b1.Addr(), topic)
		cfg.Marks = NewRedisMarks(client, DefaultKeyPrefix, cfg.GroupID, topic)
		// member runs a member of the group over the shared histories
		// until until holds and its offsets are committed.
		member := func(what string, until func(c *Consumer) bool) *Consumer {
			t.Helper()
			c, err := NewConsumer(cfg, rec.replica(store), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := runConsumer(t, c)
			eventually(t, 30*time.Second, what, func() bool { return until(c) && c.Lag() == 0 })
			stop()
			return c
		}
		member("the first events applied and committed", func(*Consumer) bool { return rec.total.Load() == 30 })

		// A new broker (offsets from 0, no committed offsets), the same
		// histories and marks.
		b2 := kafkatest.Start(t, topic)
		b2.Produce(t, topic, append(stream.batch(6, 5), kafkatest.Message("user-00", "not json"))...)
		cfg.Brokers = []string{b2.Addr()}
		cfg.DeadLetterTopic = "dead"
		c2 := member("the new broker's events applied, the bad one dead-lettered", func(c *Consumer) bool {
			return rec.total.Load() == 60 && testutil.ToFloat64(c.m.deadLetters.WithLabelValues("written")) == 1
		})
		checkApplied(t, rec.snapshot(), stream.want)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for u, want := range stream.want {
			got, err := store.Get(ctx, u, nil)
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("user %s history in Redis %v (%v), want %v", u, got, err, want)
			}
		}
		if d := testutil.ToFloat64(c2.m.duplicates); d != 0 {
			t.Errorf("%v new events taken for duplicates", d)
		}

		// The group's offsets reset to 0 on the same log: every record is
		// a redelivery, none is applied again, and the offsets are
		// committed to the end again.
		rewindGroup(t, b2.Addr(), cfg.GroupID, topic)
		c3 := member("the rewound records taken for redeliveries and committed", func(c *Consumer) bool {
			return testutil.ToFloat64(c.m.duplicates) >= 31
		})
		checkApplied(t, rec.snapshot(), stream.want)
		// The bad record was dead-lettered the first time: not again.
		if n, r := testutil.ToFloat64(c3.m.deadLetters.WithLabelValues("written")), testutil.ToFloat64(c3.m.rejected(ReasonJSON)); n != 0 || r != 0 {
			t.Errorf("the rewound bad record: %v dead letters written, %v rejections counted; want none again", n, r)
		}

		// Another member on the same broker: nothing new, nothing applied
		// twice (the generation is the same, the offsets committed).
		b2.Produce(t, topic, stream.next("user-00"))
		member("the one new event", func(*Consumer) bool { return rec.total.Load() == 61 })
		checkApplied(t, rec.snapshot(), stream.want)
	})
}

// failingMarks is MemoryMarks whose first save of a committed offset
// fails, as a Redis blip right after a commit would.
type failingMarks struct {
	*MemoryMarks
	failed atomic.Bool
}

func (m *failingMarks) SaveMarks(ctx context.Context, marks map[int]PartitionMark) error {
	for _, mk := range marks {
		if mk.Committed >= 0 && m.failed.CompareAndSwap(false, true) {
			return errors.New("marks store unavailable")
		}
	}
	return m.MemoryMarks.SaveMarks(ctx, marks)
}

// TestMarksStoredAfterFailedSave: when storing the marks fails after a
// commit, they are stored at the next commit even though nothing new was
// committed (the stream has gone quiet), so a later group reset still tells
// the records before them for redeliveries.
func TestMarksStoredAfterFailedSave(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	b.Produce(t, topic, stream.batch(6, 5)...)
	marks := &failingMarks{MemoryMarks: NewMemoryMarks()}
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.Marks = marks
	rec := newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 1000}))
	c, err := NewConsumer(cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	eventually(t, 20*time.Second, "the events applied and committed", func() bool { return rec.total.Load() == 30 && c.Lag() == 0 })
	// The committed offsets, every partition's, end up in the marks.
	eventually(t, 5*time.Second, "the marks of the committed offsets stored", func() bool {
		if !marks.failed.Load() {
			return false
		}
		sum := int64(0)
		for p := range 4 {
			mk, _ := marks.LoadMark(context.Background(), p)
			sum += mk.Committed + 1
		}
		return sum == 30
	})
	stop()
}

// TestConsumerGroupOffsetPastLogEnd: a group whose committed offsets are
// past the end of the log (committed against a log since replaced by a
// shorter one: a broker replaced empty while a commit was pending) would
// have the reader wait there for the log to grow, skipping every record
// before. The consumer commits the log's start and reads it all, counts the
// reset, and the lag says the whole log is unread until then.
func TestConsumerGroupOffsetPastLogEnd(t *testing.T) {
	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	b.Produce(t, topic, stream.batch(6, 5)...)
	cfg := testConsumerConfig(b.Addr(), topic)
	// Found by the readings at the start and at the assignment, without
	// waiting for the periodic one.
	cfg.LagInterval = time.Minute
	commitGroup(t, b.Addr(), cfg.GroupID, topic, 500)
	rec := newRecorder(newTestHistories(t, HistoryConfig{MaxLen: 1000}))
	c, err := NewConsumer(cfg, rec, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	eventually(t, 15*time.Second, "the log read from its start", func() bool { return rec.total.Load() == 30 })
	b.Produce(t, topic, stream.batch(6, 5)...)
	eventually(t, 20*time.Second, "the new events applied", func() bool { return rec.total.Load() == 60 })
	stop()
	checkApplied(t, rec.snapshot(), stream.want)
	wantOffsetResets(t, c, topic)
}

// TestTrackerHoldsRewoundCommits: a partition assigned with a group offset
// below what this consumer committed there is held: the offsets it has done
// in the old log are not committed into what may be a new one, until its
// next record; a partition assigned where this consumer left it commits as
// before.
func TestTrackerHoldsRewoundCommits(t *testing.T) {
	tr := newTracker()
	now := time.Now()
	for p := range 2 {
		tr.init(p, PartitionMark{Committed: -1})
		for off := range int64(10) {
			a := tr.add(p, off, 100, now)
			tr.done(p, a.seq)
		}
		tr.committed(tr.pending(nil)) // both at 9
		for off := int64(10); off < 15; off++ {
			a := tr.add(p, off, 100, now)
			tr.done(p, a.seq)
		}
	}
	// Partition 0's group offset is gone (-1, none); partition 1's is ours.
	tr.assigned(map[int]int64{0: -1, 1: 10})
	got := tr.pending(nil)
	if len(got) != 1 || got[0].partition != 1 || got[0].offset != 14 {
		t.Fatalf("pending %+v, want partition 1 at 14 alone", got)
	}
	// Partition 0's next record, from a new log (offset 0, a newer time):
	// a new generation, committed from there.
	a := tr.add(0, 0, 1, now.Add(time.Second))
	tr.done(0, a.seq)
	got = tr.pending(nil)
	slices.SortFunc(got, func(x, y commitOffset) int { return x.partition - y.partition })
	if len(got) != 2 || got[0].partition != 0 || got[0].offset != 0 {
		t.Fatalf("pending after partition 0's next record %+v, want it at 0 in its new generation", got)
	}
}

// wantOffsetResets checks that c counted at least one offset reset over the
// 4 partitions of topic.
func wantOffsetResets(t *testing.T, c *Consumer, topic string) {
	t.Helper()
	var resets float64
	for p := range 4 {
		resets += testutil.ToFloat64(c.m.offsetResets.WithLabelValues(topic, fmt.Sprint(p)))
	}
	if resets < 1 {
		t.Errorf("offset resets %v, want at least one", resets)
	}
}
