package training

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

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
		events, skipped int
	}{
		{"whole topic", time.Time{}, time.Time{}, 40, 1},
		{"between times", t0.Add(10 * time.Minute), t0.Add(20 * time.Minute), 10, 0},
		{"from a time", t0.Add(35 * time.Minute), time.Time{}, 5, 1},
		{"after the end", t0.Add(time.Hour), time.Time{}, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			evs, st, err := ReadKafka(ctx, KafkaConfig{Brokers: []string{b.Addr()}, Topic: "clicks", From: tc.from, To: tc.to})
			if err != nil {
				t.Fatalf("ReadKafka: %v", err)
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
