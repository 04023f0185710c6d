package training

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/prefetchd/prefetchd/features"
)

// KafkaConfig selects a slice of the service's click topic.
type KafkaConfig struct {
	// Brokers are bootstrap addresses (host:port). Required.
	Brokers []string
	// Topic is the click topic. Required.
	Topic string
	// From and To bound the messages by their Kafka timestamp: From is
	// inclusive (zero: the earliest retained message), To exclusive (zero:
	// the end of each partition when the read starts).
	From, To time.Time
	// FromOffset and ToOffset bound the messages by offset in every
	// partition, FromOffset inclusive, ToOffset exclusive (0: no bound).
	// With times as well, the narrower bound wins.
	FromOffset, ToOffset int64
	// MaxMessages stops the read after this many messages (0: no limit).
	MaxMessages int
	// TLS and SASL secure the connections (see internal/kafkasec); nil is
	// plaintext without authentication.
	TLS  *tls.Config
	SASL sasl.Mechanism
}

// dialer is the Kafka dialer of cfg's security settings.
func (c KafkaConfig) dialer() *kafka.Dialer {
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: c.TLS, SASLMechanism: c.SASL}
}

// client is a kafka-go client of cfg's brokers and security settings, and
// the function that closes its connections.
func (c KafkaConfig) client() (*kafka.Client, func()) {
	transport := &kafka.Transport{TLS: c.TLS, SASL: c.SASL}
	cl := &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: transport, Timeout: 10 * time.Second}
	return cl, transport.CloseIdleConnections
}

// Validate checks the configuration.
func (c KafkaConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("kafka: no brokers")
	case c.Topic == "":
		return errors.New("kafka: no topic")
	case !c.From.IsZero() && !c.To.IsZero() && !c.From.Before(c.To):
		return fmt.Errorf("kafka: from %s is not before to %s", c.From, c.To)
	case c.FromOffset < 0 || c.ToOffset < 0:
		return fmt.Errorf("kafka: offsets %d..%d must not be negative", c.FromOffset, c.ToOffset)
	case c.ToOffset > 0 && c.FromOffset >= c.ToOffset:
		return fmt.Errorf("kafka: from offset %d is not before to offset %d", c.FromOffset, c.ToOffset)
	case c.MaxMessages < 0:
		return fmt.Errorf("kafka: max messages %d is negative", c.MaxMessages)
	}
	return nil
}

// ReadKafka reads the click events of every partition of the topic between
// the configured times, decoding each message value like a JSONL line
// (malformed ones are skipped and counted). It never waits for new
// messages: each partition is read up to its end offset taken at the start.
// It returns ctx.Err() (wrapped) when ctx ends first.
func ReadKafka(ctx context.Context, cfg KafkaConfig) ([]ClickEvent, JSONLStats, error) {
	var st JSONLStats
	if err := cfg.Validate(); err != nil {
		return nil, st, err
	}
	parts, err := topicPartitions(ctx, cfg)
	if err != nil {
		return nil, st, err
	}
	stable, err := stableOffsets(ctx, cfg, parts)
	if err != nil {
		return nil, st, err
	}
	var events []ClickEvent
	for _, p := range parts {
		first, end, err := partitionRange(ctx, cfg, p)
		if err != nil {
			return nil, st, err
		}
		if s, ok := stable[p.ID]; ok && s < end {
			st.Unsettled += end - max(s, first)
			end = s
		}
		if first >= end {
			continue
		}
		if err := readPartition(ctx, cfg, p.ID, first, end, &events, &st); err != nil {
			return nil, st, err
		}
		if cfg.MaxMessages > 0 && st.Lines >= cfg.MaxMessages {
			break
		}
	}
	events, st.Duplicates = dropRepeats(events)
	st.Events = len(events)
	return events, st, nil
}

// partitionRange returns the offsets [first, end) of partition p that fall
// between cfg.From and cfg.To and between cfg.FromOffset and cfg.ToOffset.
func partitionRange(ctx context.Context, cfg KafkaConfig, p kafka.Partition) (first, end int64, err error) {
	conn, err := dialLeader(ctx, cfg, p.ID)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	lo, hi, err := conn.ReadOffsets()
	if err != nil {
		return 0, 0, fmt.Errorf("kafka: offsets of %s/%d: %w", cfg.Topic, p.ID, err)
	}
	at := func(t time.Time, def int64) (int64, error) {
		if t.IsZero() {
			return def, nil
		}
		off, err := conn.ReadOffset(t)
		if err != nil {
			return 0, fmt.Errorf("kafka: offset of %s/%d at %s: %w", cfg.Topic, p.ID, t, err)
		}
		if off < 0 || off > hi {
			return hi, nil // no message at or after t
		}
		return max(off, lo), nil
	}
	if first, err = at(cfg.From, lo); err != nil {
		return 0, 0, err
	}
	if end, err = at(cfg.To, hi); err != nil {
		return 0, 0, err
	}
	first = max(first, cfg.FromOffset)
	if cfg.ToOffset > 0 {
		end = min(end, cfg.ToOffset)
	}
	return first, end, nil
}

// stableOffsets returns the last stable offset of each partition: the first
// offset of the oldest transaction still open, or the end of the partition.
// A read_committed reader cannot get past it until that transaction ends.
func stableOffsets(ctx context.Context, cfg KafkaConfig, parts []kafka.Partition) (map[int]int64, error) {
	cl, done := cfg.client()
	defer done()
	reqs := make([]kafka.OffsetRequest, len(parts))
	for i, p := range parts {
		reqs[i] = kafka.LastOffsetOf(p.ID)
	}
	res, err := cl.ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics:         map[string][]kafka.OffsetRequest{cfg.Topic: reqs},
		IsolationLevel: kafka.ReadCommitted,
	})
	if err != nil {
		return nil, fmt.Errorf("kafka: stable offsets of %s: %w", cfg.Topic, err)
	}
	out := make(map[int]int64, len(parts))
	for _, po := range res.Topics[cfg.Topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("kafka: stable offset of %s/%d: %w", cfg.Topic, po.Partition, po.Error)
		}
		if po.LastOffset >= 0 {
			out[po.Partition] = po.LastOffset
		}
	}
	return out, nil
}

// dialLeader connects to the leader of the topic's partition, asking each
// bootstrap broker in turn until one answers: one broker of the list down
// must not stop the read.
func dialLeader(ctx context.Context, cfg KafkaConfig, partition int) (*kafka.Conn, error) {
	var errs []error
	for _, b := range cfg.Brokers {
		conn, err := cfg.dialer().DialLeader(ctx, "tcp", b, cfg.Topic, partition)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("kafka: dial leader of %s/%d: %w", cfg.Topic, partition, errors.Join(errs...))
}

func readPartition(ctx context.Context, cfg KafkaConfig, partition int, first, end int64, events *[]ClickEvent, st *JSONLStats) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: cfg.Brokers, Topic: cfg.Topic, Partition: partition, Dialer: cfg.dialer(),
		MinBytes: 1, MaxBytes: 8 << 20, MaxWait: 200 * time.Millisecond,
		IsolationLevel: kafka.ReadCommitted, // as the service reads
	})
	defer r.Close()
	if err := r.SetOffset(first); err != nil {
		return fmt.Errorf("kafka: seek %s/%d to %d: %w", cfg.Topic, partition, first, err)
	}
	for {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			return fmt.Errorf("kafka: read %s/%d: %w", cfg.Topic, partition, err)
		}
		if msg.Offset >= end {
			return nil
		}
		// A transaction's commit or abort marker is not a click.
		if !features.IsControlRecord(msg.Key, msg.Value) {
			st.Lines++
			if e, ok := decodeClick(msg.Value); ok {
				*events = append(*events, e)
			} else {
				st.Skipped++
			}
		}
		if msg.Offset+1 >= end || (cfg.MaxMessages > 0 && st.Lines >= cfg.MaxMessages) {
			return nil
		}
	}
}

// topicPartitions reads the partitions of cfg.Topic from the brokers'
// metadata, without asking a broker to create the topic (a misspelt name
// would otherwise leave a new, empty topic behind).
func topicPartitions(ctx context.Context, cfg KafkaConfig) ([]kafka.Partition, error) {
	cl, done := cfg.client()
	defer done()
	res, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{cfg.Topic}})
	if err != nil {
		return nil, fmt.Errorf("kafka: metadata of %s from %s: %w", cfg.Topic, strings.Join(cfg.Brokers, ","), err)
	}
	for _, t := range res.Topics {
		if t.Name != cfg.Topic {
			continue
		}
		if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("kafka: topic %q does not exist on %s", cfg.Topic, strings.Join(cfg.Brokers, ","))
		}
		if t.Error != nil {
			return nil, fmt.Errorf("kafka: metadata of %s: %w", cfg.Topic, t.Error)
		}
		return t.Partitions, nil
	}
	return nil, fmt.Errorf("kafka: topic %q does not exist on %s", cfg.Topic, strings.Join(cfg.Brokers, ","))
}
