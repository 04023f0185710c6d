// Package kafkatest gives tests an in-process Kafka-protocol broker on loopback
// and a kafka-go producer for it.
package kafkatest

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/broker"
)

// Broker is a broker started for one test.
type Broker struct {
	*broker.Broker
	writer *kafka.Writer
}

// Start starts a broker with the given topics (4 partitions each; other topics
// are created on first use) and stops it when the test ends.
func Start(t testing.TB, topics ...string) *Broker {
	t.Helper()
	b, err := broker.Start(broker.Config{Topics: topics})
	if err != nil {
		t.Fatalf("start broker: %v", err)
	}
	transport := &kafka.Transport{}
	w := &kafka.Writer{
		Addr:                   kafka.TCP(b.Addr()),
		Balancer:               &kafka.Hash{},
		BatchTimeout:           time.Millisecond,
		RequiredAcks:           kafka.RequireAll,
		AllowAutoTopicCreation: true,
		Transport:              transport,
	}
	t.Cleanup(func() {
		_ = w.Close()
		transport.CloseIdleConnections()
		b.Close()
	})
	return &Broker{Broker: b, writer: w}
}

// Produce writes messages to topic, keyed so that one key stays on one
// partition, and fails the test if the broker does not acknowledge them.
func (b *Broker) Produce(t testing.TB, topic string, msgs ...kafka.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range msgs {
		msgs[i].Topic = topic
	}
	if err := b.writer.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce %d messages to %s: %v", len(msgs), topic, err)
	}
}

// Message is a convenience for building a keyed message.
func Message(key, value string) kafka.Message {
	return kafka.Message{Key: []byte(key), Value: []byte(value)}
}
