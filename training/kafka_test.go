package training

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"net"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/prefetchd/prefetchd/internal/broker"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
)

func TestReadKafkaBetweenTimes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := kafkatest.Start(t, "clicks")
	t0 := time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	var msgs []kafka.Message
	for i := range 40 {
		ts := t0.Add(time.Duration(i) * time.Minute)
		user := fmt.Sprintf("u%d", i%4)
		msgs = append(msgs, kafka.Message{
			Key:   []byte(user),
			Value: fmt.Appendf(nil, `{"user_id":%q,"page":"/p/%d","ts":%q}`, user, i%5, ts.Format(time.RFC3339)),
			Time:  ts,
		})
	}
	msgs = append(msgs, kafka.Message{Key: []byte("u0"), Value: []byte("not json"), Time: t0.Add(45 * time.Minute)})
	b.Produce(t, "clicks", msgs...)

	tests := []struct {
		name            string
		from, to        time.Time
		fromOff, toOff  int64
		events, skipped int
	}{
		{"whole topic", time.Time{}, time.Time{}, 0, 0, 40, 1},
		{"between times", t0.Add(10 * time.Minute), t0.Add(20 * time.Minute), 0, 0, 10, 0},
		{"from a time", t0.Add(35 * time.Minute), time.Time{}, 0, 0, 5, 1},
		{"after the end", t0.Add(time.Hour), time.Time{}, 0, 0, 0, 0},
		// Offsets bound every partition: 40 events of 4 users hashed onto the
		// partitions, so offsets [0, 2) hold two messages per used partition.
		{"between offsets", time.Time{}, time.Time{}, 0, 2, -1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			evs, st, err := ReadKafka(ctx, KafkaConfig{Brokers: []string{b.Addr()}, Topic: "clicks", From: tc.from, To: tc.to,
				FromOffset: tc.fromOff, ToOffset: tc.toOff})
			if err != nil {
				t.Fatalf("ReadKafka: %v", err)
			}
			if tc.events < 0 { // two per non-empty partition
				tc.events = 2 * partitionsUsed(ctx, t, b.Addr())
			}
			if len(evs) != tc.events || st.Skipped != tc.skipped {
				t.Fatalf("got %d events, %d skipped; want %d and %d", len(evs), st.Skipped, tc.events, tc.skipped)
			}
			for _, e := range evs {
				if (!tc.from.IsZero() && e.TS.Before(tc.from)) || (!tc.to.IsZero() && !e.TS.Before(tc.to)) {
					t.Errorf("event at %s outside [%s, %s)", e.TS, tc.from, tc.to)
				}
			}
		})
	}
	if _, _, err := ReadKafka(ctx, KafkaConfig{Topic: "clicks"}); err == nil {
		t.Error("ReadKafka without brokers succeeded")
	}
}

// partitionsUsed counts the partitions of "clicks" that hold messages.
func partitionsUsed(ctx context.Context, t *testing.T, addr string) int {
	t.Helper()
	conn, err := kafka.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions("clicks")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range parts {
		lc, err := kafka.DialLeader(ctx, "tcp", addr, "clicks", p.ID)
		if err != nil {
			t.Fatal(err)
		}
		_, hi, err := lc.ReadOffsets()
		lc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if hi > 0 {
			n++
		}
	}
	return n
}

// TestReadKafkaMissingTopic: a topic that does not exist is an error naming
// it, and reading does not create it on the broker.
func TestReadKafkaMissingTopic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := kafkatest.Start(t, "clicks")
	_, _, err := ReadKafka(ctx, KafkaConfig{Brokers: []string{b.Addr()}, Topic: "clikcs"})
	if err == nil || !strings.Contains(err.Error(), `topic "clikcs" does not exist`) {
		t.Fatalf("err %v, want the missing topic named", err)
	}
	conn, err := kafka.DialContext(ctx, "tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if p.Topic == "clikcs" {
			t.Fatalf("reading created topic %q", p.Topic)
		}
	}
}

// TestReadKafkaSecured: a broker that requires SASL SCRAM-SHA-256 is read
// with the right credentials and refused without them; a bootstrap list
// whose first broker is down still reads from the next one.
func TestReadKafkaSecured(t *testing.T) {
	b, err := broker.Start(broker.Config{Topics: []string{"clicks"}, SCRAMUser: "trainer", SCRAMPassword: "right"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	mech := func(pw string) sasl.Mechanism {
		m, err := scram.Mechanism(scram.SHA256, "trainer", pw)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := &kafka.Transport{SASL: mech("right")}
	defer tr.CloseIdleConnections()
	w := &kafka.Writer{Addr: kafka.TCP(b.Addr()), Topic: "clicks", Balancer: &kafka.Hash{}, BatchTimeout: time.Millisecond, Transport: tr}
	now := time.Now().UTC()
	var msgs []kafka.Message
	for i := range 12 {
		u := fmt.Sprintf("u%d", i%3)
		msgs = append(msgs, kafka.Message{Key: []byte(u), Value: fmt.Appendf(nil, `{"user_id":%q,"page":"/p/%d","ts":%q}`, u, i, now.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano))})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	w.Close()
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := down.Addr().String()
	down.Close()
	for _, tc := range []struct {
		name    string
		brokers []string
		sasl    sasl.Mechanism
		ok      bool
	}{
		{"right password", []string{b.Addr()}, mech("right"), true},
		{"first broker down", []string{downAddr, b.Addr()}, mech("right"), true},
		{"wrong password", []string{b.Addr()}, mech("wrong"), false},
		{"no credentials", []string{b.Addr()}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			defer rcancel()
			evs, _, err := ReadKafka(rctx, KafkaConfig{Brokers: tc.brokers, Topic: "clicks", SASL: tc.sasl})
			if tc.ok && (err != nil || len(evs) != 12) {
				t.Fatalf("ReadKafka: %d events, %v; want 12", len(evs), err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("ReadKafka read %d events, want a refusal", len(evs))
			}
		})
	}
}

// TestReadKafkaTransactions: clicks produced in committed transactions are
// read, and the brokers' commit markers between them are neither clicks
// nor skipped lines.
func TestReadKafkaTransactions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := kafkatest.Start(t, "clicks")
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.TransactionalID("train-tx"), kgo.DefaultProduceTopic("clicks"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	t0 := time.Now().Add(-time.Hour).UTC()
	for tx := range 3 {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			user := fmt.Sprintf("u%d", i)
			v := fmt.Appendf(nil, `{"user_id":%q,"page":"/p/%d","ts":%q}`, user, tx, t0.Add(time.Duration(4*tx+i)*time.Second).Format(time.RFC3339))
			if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(user), Value: v}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatal(err)
		}
	}
	evs, st, err := ReadKafka(ctx, KafkaConfig{Brokers: []string{b.Addr()}, Topic: "clicks"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 12 || st.Skipped != 0 || st.Lines != 12 {
		t.Fatalf("read %d events, %d lines, %d skipped; want 12, 12 and 0 (markers are not clicks)", len(evs), st.Lines, st.Skipped)
	}
}

// TestReadKafkaOpenTransaction: a transaction still open when the read
// starts must not stall it (read_committed cannot pass it); its records
// are left out and counted, and the committed ones before it are read.
func TestReadKafkaOpenTransaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := kafkatest.Start(t, "clicks")
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addr()), kgo.TransactionalID("train-open"), kgo.DefaultProduceTopic("clicks"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	t0 := time.Now().Add(-time.Hour).UTC()
	produce := func(n, from int) {
		for i := range n {
			v := fmt.Appendf(nil, `{"user_id":"u","page":"/p/%d","ts":%q}`, from+i, t0.Add(time.Duration(from+i)*time.Second).Format(time.RFC3339))
			if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("u"), Value: v, Partition: 0}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produce(5, 0)
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produce(3, 5) // left open
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	evs, st, err := ReadKafka(rctx, KafkaConfig{Brokers: []string{b.Addr()}, Topic: "clicks"})
	if err != nil {
		t.Fatalf("read with a transaction open: %v", err)
	}
	if len(evs) != 5 || st.Unsettled != 3 {
		t.Fatalf("read %d events, %d unsettled; want the 5 committed and 3 unsettled", len(evs), st.Unsettled)
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	evs, st, err = ReadKafka(ctx, KafkaConfig{Brokers: []string{b.Addr()}, Topic: "clicks"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 8 || st.Unsettled != 0 {
		t.Fatalf("after the commit: read %d events, %d unsettled; want 8 and 0", len(evs), st.Unsettled)
	}
}
