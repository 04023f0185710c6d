package app

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/cputime"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

// BenchmarkServiceThroughput is an end-to-end load run: NASA July 1995 clicks
// are produced to the broker, then the whole service (consumer group,
// histories, model on every click, online transition statistics, policy,
// pipelined warming into a real redis-server, online evaluation) consumes
// them; beside it, in the same run and over the same topic, a bare kafka-go
// consumer-group loop that only fetches and commits, and the service with
// --online=false, the two services alternating which goes first. It reports
// the rates, the ratios to the bare loop and the redis-server CPU time per
// 100,000 clicks of each service, with the first-order Markov model
// (features/testdata/markov1, the model `make run` served before the GRU),
// with a GRU step-form model (the PyTorch export of
// features/testdata/gru-step, vocabulary 200: other pages are unknown and
// still stepped), with the bundled GRU (vocabulary 2,027, hidden 128), and
// with the Markov model and --history-store redis (histories and online
// statistics in Redis).
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
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()

	round := 0
	// run drains the topic with the service and returns its rate, the keys
	// it warmed, and the CPU seconds it took in this process (the broker's
	// included) and in redis-server.
	run := func(b *testing.B, cfg Config) (rate, warmed, cpu, redisCPU float64) {
		round++
		cfg.Group = fmt.Sprintf("svc-%d", round)
		// Every service starts on an empty Redis: no warm keys, histories
		// or statistics of earlier rounds.
		if err := rdb.FlushAll(b.Context()).Err(); err != nil {
			b.Fatalf("FLUSHALL: %v", err)
		}
		cpu0, rcpu0 := cputime.Used(), redistest.CPUTime(b, rdb).Seconds()
		// The clicks are counted from the service's registry directly:
		// scraping /metrics every few milliseconds would cost the service
		// CPU in proportion to how long it runs.
		reg := prometheus.NewRegistry()
		svc := startServiceWith(b, cfg, 5*time.Minute, Options{Registry: reg})
		// As for the bare loop, the rate counts from the first event
		// consumed, after the group join.
		var start time.Time
		first := 0.0
		for {
			n := gathered(b, reg, "prefetchd_clicks_total")
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
		rate = (events - first) / time.Since(start).Seconds()
		warmed = gathered(b, reg, "prefetchd_prefetch_issued_total")
		svc.shutdown(b)
		return rate, warmed, (cputime.Used() - cpu0).Seconds(), redistest.CPUTime(b, rdb).Seconds() - rcpu0
	}
	for _, bc := range []struct{ name, dir, store string }{
		{"markov", "../../features/testdata/markov1", features.BackendMemory},
		{"gru-step", "../../features/testdata/gru-step", features.BackendMemory},
		{"bundled-gru", "", features.BackendMemory},
		{"redis-store/markov", "../../features/testdata/markov1", features.BackendRedis},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				bare := bareConsume(b, kb.Addr(), fmt.Sprintf("bare-%d-%d", round, i), events)
				var rate, warmed, cpu, rcpu [2]float64 // [0] online on (the default), [1] off
				for j := range 2 {
					k := (i + j) % 2
					cfg := testConfig([]string{kb.Addr()}, rs.Addr())
					cfg.Model, cfg.HistoryStore = bc.dir, bc.store
					cfg.Threshold = 0.3
					cfg.Online = k == 0
					rate[k], warmed[k], cpu[k], rcpu[k] = run(b, cfg)
				}
				b.ReportMetric(bare, "bare-events/s")
				b.ReportMetric(rate[0], "service-events/s")
				b.ReportMetric(rate[0]/bare, "ratio")
				b.ReportMetric(rate[1]/bare, "ratio-online-off")
				b.ReportMetric(warmed[0], "keys-warmed")
				b.ReportMetric(warmed[1], "keys-warmed-online-off")
				b.ReportMetric(cpu[0]*1e9/events, "cpu-ns/event")
				b.ReportMetric(cpu[1]*1e9/events, "cpu-ns/event-online-off")
				b.ReportMetric(rcpu[0]*1e3*1e5/events, "redis-cpu-ms/100k")
				b.ReportMetric(rcpu[1]*1e3*1e5/events, "redis-cpu-ms/100k-online-off")
			}
		})
	}
}

// gathered is the sum of the counter name's series in reg.
func gathered(b *testing.B, reg *prometheus.Registry, name string) float64 {
	b.Helper()
	families, err := reg.Gather()
	if err != nil {
		b.Fatalf("gather metrics: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
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
