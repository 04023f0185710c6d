package kafkatest

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

func TestProduceThenConsumeInGroup(t *testing.T) {
	b := Start(t, "clicks")
	b.Produce(t, "clicks", Message("u1", "a"), Message("u1", "b"), Message("u2", "c"))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        []string{b.Addr()},
		GroupID:        "g",
		Topic:          "clicks",
		StartOffset:    kafka.FirstOffset,
		MaxWait:        50 * time.Millisecond,
		SessionTimeout: 6 * time.Second,
	})
	defer r.Close()
	got := map[string]int{}
	for i := 0; i < 3; i++ {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("fetch message %d: %v", i, err)
		}
		got[string(m.Key)]++
		if err := r.CommitMessages(ctx, m); err != nil {
			t.Fatalf("commit: %v", err)
		}
	}
	if got["u1"] != 2 || got["u2"] != 1 {
		t.Fatalf("consumed keys %v, want u1:2 u2:1", got)
	}
}
