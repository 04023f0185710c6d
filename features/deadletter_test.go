package features

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
)

// createTopic creates topic with one partition and the given configs.
func createTopic(t *testing.T, addr, topic string, configs map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var entries []kafka.ConfigEntry
	for k, v := range configs {
		entries = append(entries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
	}
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: &kafka.Transport{}}
	defer cl.Transport.(*kafka.Transport).CloseIdleConnections()
	res, err := cl.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: topic, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: entries}}})
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// setTopicConfig changes one config of topic.
func setTopicConfig(t *testing.T, addr, topic, name, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: &kafka.Transport{}}
	defer cl.Transport.(*kafka.Transport).CloseIdleConnections()
	res, err := cl.AlterConfigs(ctx, &kafka.AlterConfigsRequest{Resources: []kafka.AlterConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic,
		Configs: []kafka.AlterConfigRequestConfig{{Name: name, Value: value}}}}})
	if err != nil {
		t.Fatalf("alter %s of %s: %v", name, topic, err)
	}
	for _, e := range res.Errors {
		if e != nil {
			t.Fatalf("alter %s of %s: %v", name, topic, e)
		}
	}
}

// readLetters reads n messages of topic from its start.
func readLetters(t *testing.T, addr, topic string, n int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: 0, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	var out []kafka.Message
	for len(out) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("read %s: %v (after %d of %d)", topic, err, len(out), n)
		}
		out = append(out, m)
	}
	return out
}

func headers(m kafka.Message) map[string]string {
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	return h
}

// TestDeadLetters: a dead letter the broker refuses as too large is cut
// (header original_size), never dropped; a dead-letter topic that refuses
// every write holds the rejected message's offset back (Ready says why)
// until it accepts, and nothing is lost meanwhile.
func TestDeadLetters(t *testing.T) {
	cases := []struct {
		name     string
		maxBytes string // the dead-letter topic's max.message.bytes at first
		fixTo    string // then, once the pause is seen ("": never changed)
		value    int    // size of the bad message
		key      int    // size of its key (0: the user id)
		bads     int    // bad messages in a row (0: one)
		wantCut  bool
	}{
		{name: "oversized letter is cut", maxBytes: "3000", value: 20_000, wantCut: true},
		{name: "oversized key is cut", maxBytes: "3000", value: 500, key: 20_000, wantCut: true},
		{name: "key alone over the limit is cut", maxBytes: "600", value: 300, key: 700, wantCut: true},
		{name: "letters that fit alone but not together", maxBytes: "3000", value: 2500, bads: 6},
		{name: "refusing topic holds the offset until it accepts", maxBytes: "1", fixTo: "1000000", value: 500},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic, dlq := "clicks-"+strconv.Itoa(i), "dead-"+strconv.Itoa(i)
			b := kafkatest.Start(t, topic)
			createTopic(t, b.Addr(), dlq, map[string]string{"max.message.bytes": tc.maxBytes})
			stream := newClickStream()
			bad := `{"user_id":"user-00","page":` + strings.Repeat("x", tc.value) + `}`
			key := "user-00"
			if tc.key > 0 {
				key = strings.Repeat("k", tc.key)
			}
			bads := max(tc.bads, 1)
			msgs := stream.batch(3, 2)
			for range bads {
				msgs = append(msgs, kafkatest.Message(key, bad))
			}
			msgs = append(msgs, stream.batch(3, 2)...)
			b.Produce(t, topic, msgs...)

			rec := newRecorder(newTestHistories(t, HistoryConfig{}))
			cfg := testConsumerConfig(b.Addr(), topic)
			cfg.DeadLetterTopic = dlq
			cfg.Decoder.MaxMessageBytes = 1 << 20
			cfg.MaxBackoff = 20 * time.Millisecond
			c, err := NewConsumer(cfg, rec, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			stop := runConsumer(t, c)
			if tc.fixTo != "" {
				eventually(t, 20*time.Second, "the pause reported", func() bool {
					err := c.Ready()
					return err != nil && strings.Contains(err.Error(), "dead letters")
				})
				time.Sleep(300 * time.Millisecond)
				if lag := c.Lag(); lag < 1 {
					t.Fatalf("lag %d while the dead letter is not written, want the bad message uncommitted", lag)
				}
				setTopicConfig(t, b.Addr(), dlq, "max.message.bytes", tc.fixTo)
			}
			eventually(t, 30*time.Second, "every event applied, the letter written, all committed", func() bool {
				return rec.total.Load() == 12 && c.Lag() == 0 &&
					testutil.ToFloat64(c.m.deadLetters.WithLabelValues("written")) == float64(bads)
			})
			stop()
			checkApplied(t, rec.snapshot(), stream.want)
			if err := c.Ready(); err != nil {
				t.Errorf("Ready after the letter was written: %v", err)
			}
			letters := readLetters(t, b.Addr(), dlq, bads)
			m := letters[len(letters)-1]
			h := headers(m)
			if h["reason"] != ReasonJSON {
				t.Errorf("letter reason %q, want %q", h["reason"], ReasonJSON)
			}
			if tc.key > 0 {
				if h["original_key_size"] != strconv.Itoa(tc.key) || len(m.Key) >= tc.key || !strings.HasPrefix(key, string(m.Key)) {
					t.Errorf("letter key of %d bytes with original_key_size %q, want a prefix of the %d-byte key and its size", len(m.Key), h["original_key_size"], tc.key)
				}
			} else if string(m.Key) != key {
				t.Errorf("letter key %q, want %q", m.Key, key)
			}
			cut := h["original_size"] != "" || h["original_key_size"] != ""
			switch {
			case h["original_size"] != "" && (h["original_size"] != strconv.Itoa(len(bad)) || len(m.Value) >= len(bad) || !strings.HasPrefix(bad, string(m.Value))):
				t.Errorf("cut letter of %d bytes with original_size %q, want a prefix of the %d-byte message and its size", len(m.Value), h["original_size"], len(bad))
			case h["original_size"] == "" && string(m.Value) != bad:
				t.Errorf("letter of %d bytes without original_size, want the %d-byte message whole", len(m.Value), len(bad))
			case tc.wantCut && !cut:
				t.Error("letter not cut, want it cut to the topic's limit")
			}
			// (A letter refused whatever its size may go cut or whole,
			// depending on whether the limit was read before or after it
			// was raised: both keep the letter.)
			if n := testutil.ToFloat64(c.m.deadLetters.WithLabelValues("truncated")); (n >= 1) != cut {
				t.Errorf("truncated letters %v, letter cut %v", n, cut)
			}
		})
	}
}
