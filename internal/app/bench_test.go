package app

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

// BenchmarkServiceThroughput is an end-to-end load run: NASA July 1995 clicks
// are produced to the broker, then the whole service (consumer group,
// histories, model on every click, policy, pipelined warming into a real
// redis-server, online evaluation) consumes them; beside it, in the same run
// and over the same topic, a bare kafka-go consumer-group loop that only
// fetches and commits. It reports both rates and their ratio, with the
// first-order Markov model (features/testdata/markov1, the model `make run` served
// before the GRU), with a GRU step-form model (the PyTorch export
// of features/testdata/gru-step, vocabulary 200: other pages are unknown
// and still stepped), and with the bundled GRU (vocabulary 2,027, hidden
// 128).
//
//	go test -run '^$' -bench ServiceThroughput -benchtime 1x ./internal/app
func BenchmarkServiceThroughput(b *testing.B) {
	const events = 100_000
	sessions, err := embedded.NASASessions()
	if err != nil {
		b.Fatal(err)
	}
	kb := kafkatest.Start(b, "clicks")
	var msgs []kafka.Message
	at := time.Now()
	for i := 0; len(msgs) < events; i++ {
		user := "u" + strconv.Itoa(i)
		for _, p := range sessions[i].Pages {
			msgs = append(msgs, kafkatest.Message(user, clickJSON(user, p, at)))
		}
	}
	msgs = msgs[:events]
	for i := 0; i < len(msgs); i += 5000 {
		kb.Produce(b, "clicks", msgs[i:min(i+5000, len(msgs))]...)
	}
	rs := redistest.Start(b)

	round := 0
	for _, model := range []struct{ name, dir string }{{"markov", "../../features/testdata/markov1"}, {"gru-step", "../../features/testdata/gru-step"}, {"bundled-gru", ""}} {
		b.Run(model.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				round++
				bare := bareConsume(b, kb.Addr(), fmt.Sprintf("bare-%d", round), events)

				cfg := testConfig([]string{kb.Addr()}, rs.Addr())
				cfg.Model = model.dir
				cfg.Group = fmt.Sprintf("svc-%d", round)
				cfg.KeyTemplate = fmt.Sprintf("r%d:page:{page}", round) // keys of earlier rounds are still warm
				cfg.Threshold = 0.3
				svc := startService(b, cfg, 5*time.Minute)
				url := "http://" + svc.addrs.Admin + "/metrics"
				// As for the bare loop, the rate counts from the first event
				// consumed, after the group join.
				var start time.Time
				first := 0.0
				for {
					n := metricSum(httpGet(b, svc.ctx, url), "prefetchd_clicks_total")
					if n > 0 && start.IsZero() {
						start, first = time.Now(), n
					}
					if n >= events {
						break
					}
					select {
					case <-svc.ctx.Done():
						b.Fatal("service did not consume every event in time")
					case <-time.After(5 * time.Millisecond):
					}
				}
				full := (events - first) / time.Since(start).Seconds()
				warmed := metricSum(httpGet(b, svc.ctx, url), "prefetchd_prefetch_issued_total")
				svc.shutdown(b)
				b.ReportMetric(bare, "bare-events/s")
				b.ReportMetric(full, "service-events/s")
				b.ReportMetric(full/bare, "ratio")
				b.ReportMetric(warmed, "keys-warmed")
			}
		})
	}
}

// bareConsume reads n messages with a kafka-go consumer group, committing
// every 1000, and returns the rate.
func bareConsume(b *testing.B, addr, group string, n int) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: []string{addr}, Topic: "clicks", GroupID: group, StartOffset: kafka.FirstOffset,
		MaxWait: 250 * time.Millisecond, SessionTimeout: 10 * time.Second, MaxBytes: 10 << 20,
	})
	defer r.Close()
	m, err := r.FetchMessage(ctx) // joining the group is not part of the rate
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	batch := []kafka.Message{m}
	for i := 1; i < n; i++ {
		if m, err = r.FetchMessage(ctx); err != nil {
			b.Fatal(err)
		}
		batch = append(batch, m)
		if len(batch) == 1000 {
			if err := r.CommitMessages(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := r.CommitMessages(ctx, batch...); err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}
