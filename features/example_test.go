package features_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/prefetchd/prefetchd/features"
)

func ExampleDecoder() {
	dec, err := features.NewDecoder(features.DecoderConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	ev, err := dec.Decode([]byte(`{"user_id":"ann","page":"/news/","ts":"2026-11-26T09:59:30Z"}`), now)
	fmt.Println(ev.UserID, ev.Page, ev.TS.Format(time.Kitchen), err)

	_, err = dec.Decode([]byte(`{"user_id":"ann","ts":"2026-11-26T09:59:30Z"}`), now)
	var rej *features.RejectError
	if errors.As(err, &rej) {
		fmt.Println("rejected:", rej.Reason)
	}
	// Output:
	// ann /news/ 9:59AM <nil>
	// rejected: missing_page
}

// ExampleConsumer wires a consumer group into an in-memory history store.
func ExampleConsumer() {
	hist, err := features.NewHistories(features.HistoryConfig{MaxLen: 20}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	canon, _ := features.NewCanonicalizer(features.CanonicalizerConfig{})
	pages := map[string]int32{}
	handler := features.HandlerFunc(func(ctx context.Context, ev features.Event, m features.Meta) error {
		page, ok := pages[canon.Canonical(ev.Page)]
		if !ok {
			page = 1 // unknown
		}
		var rec features.Record
		return hist.Append(ctx, ev.UserID, features.Click{Page: page, TS: ev.TS, Partition: m.Partition, Offset: m.Offset}, &rec)
	})
	c, err := features.NewConsumer(features.ConsumerConfig{
		Brokers:         []string{"127.0.0.1:9092"},
		Topic:           "clicks",
		GroupID:         "prefetchd",
		DeadLetterTopic: "clicks.dead",
	}, handler, slog.Default(), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := c.Run(ctx); err != nil {
		slog.Error("consume", "err", err)
	}
}
