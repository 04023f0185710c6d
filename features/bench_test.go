package features

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/nasa"

	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/model"
)

// readSessions reads an SPMF session file: one session per line, pages
// separated by -1, ended by -2.
func readSessions(tb testing.TB) [][]int32 {
	tb.Helper()
	ids, err := nasa.Sessions()
	if err != nil {
		tb.Fatal(err)
	}
	sessions := make([][]int32, len(ids))
	for i, s := range ids {
		sessions[i] = make([]int32, len(s))
		for j, p := range s {
			sessions[i][j] = int32(p)
		}
	}
	return sessions
}

// replayMessages interleaves sessions as concurrent users (window sessions
// active at once) and encodes each click as a v1 event keyed by user, page
// /page/N. limit > 0 keeps only the first limit clicks.
func replayMessages(sessions [][]int32, window, limit int, start time.Time) []kafka.Message {
	var msgs []kafka.Message
	type active struct {
		user string
		s    []int32
	}
	var act []active
	next := 0
	ts := start
	for (next < len(sessions) || len(act) > 0) && (limit <= 0 || len(msgs) < limit) {
		for len(act) < window && next < len(sessions) {
			act = append(act, active{user: "s" + strconv.Itoa(next), s: sessions[next]})
			next++
		}
		for i := 0; i < len(act); {
			a := &act[i]
			ts = ts.Add(time.Microsecond)
			b, _ := Encode(Event{UserID: a.user, Page: "/page/" + strconv.Itoa(int(a.s[0])), TS: ts})
			msgs = append(msgs, kafka.Message{Key: []byte(a.user), Value: b})
			a.s = a.s[1:]
			if len(a.s) == 0 {
				act[i] = act[len(act)-1]
				act = act[:len(act)-1]
				continue
			}
			i++
		}
	}
	if limit > 0 && len(msgs) > limit {
		msgs = msgs[:limit]
	}
	return msgs
}

// produceAll writes msgs to topic with large batches.
func produceAll(tb testing.TB, addr, topic string, msgs []kafka.Message) {
	tb.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, Balancer: &kafka.Hash{},
		BatchSize: 5000, BatchBytes: 4 << 20, BatchTimeout: 5 * time.Millisecond, RequiredAcks: kafka.RequireOne}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for len(msgs) > 0 {
		n := min(len(msgs), 50_000)
		if err := w.WriteMessages(ctx, msgs[:n]...); err != nil {
			tb.Fatalf("produce: %v", err)
		}
		msgs = msgs[n:]
	}
}

// benchSettings are the fetch and batch settings shared by both loops.
type benchSettings struct {
	minBytes      int
	maxBytes      int
	maxWait       time.Duration
	queueCapacity int
	workers       int
	workerQueue   int
	batchSize     int
	commitBatch   int
	commits       bool // the bare loop commits (INGEST_BENCH_BARE_COMMITS=0: it does not)
}

// bareLoop consumes n messages with a minimal kafka-go group consumer:
// FetchMessage, and CommitMessages of the last message of every partition
// each commitBatch messages or commit interval, as in Consumer. It returns
// the time from the first message to the last.
func bareLoop(tb testing.TB, addr, topic, group string, s benchSettings, n int) time.Duration {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, GroupID: group, Topic: topic,
		MinBytes: s.minBytes, MaxBytes: s.maxBytes, MaxWait: s.maxWait, QueueCapacity: s.queueCapacity,
		SessionTimeout: 6 * time.Second, HeartbeatInterval: time.Second, StartOffset: kafka.FirstOffset})
	defer r.Close()
	var start, lastCommit time.Time
	var bytes, pending int
	var last []kafka.Message // last message fetched per partition
	commit := func() {
		var msgs []kafka.Message
		for _, m := range last {
			if m.Topic != "" {
				msgs = append(msgs, m)
			}
		}
		if s.commits {
			if err := r.CommitMessages(ctx, msgs...); err != nil {
				tb.Fatalf("bare commit: %v", err)
			}
		}
		clear(last)
		pending = 0
		lastCommit = time.Now()
	}
	for i := range n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			tb.Fatalf("bare fetch %d: %v", i, err)
		}
		if i == 0 {
			start = time.Now()
			lastCommit = start
		}
		bytes += len(m.Value)
		for m.Partition >= len(last) {
			last = append(last, kafka.Message{})
		}
		last[m.Partition] = m
		if pending++; pending >= s.commitBatch || (pending%1024 == 0 && time.Since(lastCommit) >= time.Second) {
			commit()
		}
	}
	d := time.Since(start)
	if pending > 0 {
		commit()
	}
	if bytes == 0 {
		tb.Fatal("empty messages")
	}
	return d
}

// stepper is the step form of a model bundle (*model.Bundle).
type stepper interface {
	Step(ctx context.Context, pageID int64, state []float32, dst []float32) (probs, newState []float32, err error)
	StepMany(ctx context.Context, pageIDs []int64, states, probs [][]float32) error
}

// historyHandler is the engine's work: canonicalize, map to a vocabulary
// index, append to the history and, when model is set, run the model's step
// form on the click and store the new recurrent state.
type historyHandler struct {
	canon *Canonicalizer
	vocab Vocabulary
	hist  *Histories
	model stepper
	bufs  sync.Pool // *handlerBuf
	waves sync.Pool // *benchWave
	n     atomic.Int64
	base  time.Time
	first atomic.Int64 // when the first event was applied, ns since base
	last  atomic.Int64 // when event number want was applied, ns since base
	want  int64
	done  chan struct{}
}

type handlerBuf struct {
	rec   Record
	probs []float32
}

func (h *historyHandler) HandleEvent(ctx context.Context, ev Event, msg Meta) error {
	buf, _ := h.bufs.Get().(*handlerBuf)
	if buf == nil {
		buf = new(handlerBuf)
	}
	defer h.bufs.Put(buf)
	return h.handleOne(ctx, ev, msg, buf)
}

func (h *historyHandler) handleOne(ctx context.Context, ev Event, msg Meta, buf *handlerBuf) error {
	rec := &buf.rec
	err := h.hist.Append(ctx, ev.UserID, Click{Page: h.canon.Index(h.vocab, ev.Page), TS: ev.TS,
		Partition: msg.Partition, Offset: msg.Offset}, rec)
	if err == nil && h.model != nil {
		buf.probs, rec.State, err = h.model.Step(ctx, int64(rec.Pages[len(rec.Pages)-1]), rec.State, buf.probs)
		if err == nil {
			err = h.hist.Save(ctx, ev.UserID, rec)
		}
	}
	if err == nil {
		h.count()
	}
	return err
}

// count counts an applied event. The clock is read twice per run (as in
// bareLoop), not per event.
func (h *historyHandler) count() {
	switch h.n.Add(1) {
	case 1:
		h.first.Store(int64(time.Since(h.base)))
	case h.want:
		h.last.Store(int64(time.Since(h.base)))
		close(h.done)
	}
}

// HandleEvents is the engine's batch path: clicks of distinct users in a
// row share one StepMany call (see engine.HandleEvents).
func (h *historyHandler) HandleEvents(ctx context.Context, evs []Event, metas []Meta, errs []error) int {
	if h.model == nil {
		buf, _ := h.bufs.Get().(*handlerBuf)
		if buf == nil {
			buf = new(handlerBuf)
		}
		defer h.bufs.Put(buf)
		for i := range evs {
			if errs[i] = h.handleOne(ctx, evs[i], metas[i], buf); errs[i] != nil && !errors.Is(errs[i], ErrDuplicate) {
				return i
			}
		}
		return len(evs)
	}
	w, _ := h.waves.Get().(*benchWave)
	if w == nil {
		w = &benchWave{seen: make(map[string]int)}
	}
	defer h.waves.Put(w)
	// Wave k holds every user's k-th click of the run (as the engine cuts
	// them); after a failure only clicks before it are still applied.
	var waves int
	w.layer, waves = Waves(evs, w.seen, w.layer)
	failAt := len(evs)
	for k := range waves {
		w.rows, w.ids, w.states = w.rows[:0], w.ids[:0], w.states[:0]
		for i, lk := range w.layer {
			if i >= failAt {
				break
			}
			if lk != k {
				continue
			}
			for len(w.recs) <= len(w.rows) {
				w.recs = append(w.recs, Record{})
				w.probs = append(w.probs, nil)
			}
			ev, meta, rec := &evs[i], &metas[i], &w.recs[len(w.rows)]
			err := h.hist.Append(ctx, ev.UserID, Click{Page: h.canon.Index(h.vocab, ev.Page), TS: ev.TS,
				Partition: meta.Partition, Offset: meta.Offset}, rec)
			if errs[i] = err; err != nil {
				if !errors.Is(err, ErrDuplicate) {
					failAt = i
				}
				continue
			}
			w.rows = append(w.rows, i)
			w.ids = append(w.ids, int64(rec.Pages[len(rec.Pages)-1]))
			w.states = append(w.states, rec.State)
		}
		if len(w.rows) == 0 {
			continue
		}
		if err := h.model.StepMany(ctx, w.ids, w.states, w.probs[:len(w.rows)]); err != nil {
			errs[w.rows[0]] = err
			return min(failAt, w.rows[0])
		}
		for j, i := range w.rows {
			rec := &w.recs[j]
			rec.State = w.states[j]
			if err := h.hist.Save(ctx, evs[i].UserID, rec); err != nil {
				errs[i] = err
				failAt = min(failAt, i)
				continue
			}
			h.count()
		}
	}
	return failAt
}

type benchWave struct {
	seen   map[string]int
	layer  []int
	recs   []Record
	ids    []int64
	states [][]float32
	probs  [][]float32
	rows   []int
}

var _ BatchHandler = (*historyHandler)(nil)

// consumerLoop consumes n messages through Consumer into Histories and
// returns the time from the first event to the last.
func consumerLoop(tb testing.TB, addr, topic, group string, s benchSettings, n int, vocab Vocabulary, model stepper) time.Duration {
	tb.Helper()
	hist, err := NewHistories(HistoryConfig{MaxLen: 20}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	canon, _ := NewCanonicalizer(CanonicalizerConfig{})
	h := &historyHandler{canon: canon, vocab: vocab, hist: hist, model: model, want: int64(n), done: make(chan struct{}), base: time.Now()}
	c, err := NewConsumer(ConsumerConfig{Brokers: []string{addr}, Topic: topic, GroupID: group,
		Workers: s.workers, WorkerQueue: s.workerQueue, BatchSize: s.batchSize, MinBytes: s.minBytes, MaxBytes: s.maxBytes, MaxWait: s.maxWait,
		QueueCapacity: s.queueCapacity, CommitBatch: s.commitBatch, SessionTimeout: 6 * time.Second}, h, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// As the service does: Run evicts idle users and keeps the clock
	// that Append reads.
	var evict sync.WaitGroup
	defer evict.Wait()
	evict.Go(func() { _ = hist.Run(ctx, time.Minute) })
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	select {
	case <-h.done:
	case <-ctx.Done():
		tb.Fatalf("consumer applied %d of %d events", h.n.Load(), n)
	}
	cancel()
	if err := <-errc; err != nil {
		tb.Fatalf("consumer: %v", err)
	}
	_ = c.Close()
	if hist.Len() == 0 {
		tb.Fatal("no histories")
	}
	return time.Duration(h.last.Load() - h.first.Load())
}

// BenchmarkIngestNASA replays the NASA July 1995 sessions (569,493 clicks as
// 256 concurrent users at a time) through the in-process broker, then, in
// each iteration, consumes the whole topic twice with fresh groups: a bare
// kafka-go FetchMessage loop with batched commits, and Consumer into
// Histories (decode, validate, canonicalize, vocabulary lookup, append; the
// model-step case also runs the GRU step form on every click). It reports
// both rates (first to last message), their ratio and the process's CPU time
// per event in each loop. Both loops share the fetch settings: MinBytes 1,
// MaxBytes 10 MiB, MaxWait 250 ms, QueueCapacity 1000, CommitBatch 5000.
// INGEST_BENCH_LIMIT=N replays only the first N clicks; INGEST_BENCH_WORKERS,
// _WORKER_QUEUE, _BATCH, _QUEUE_CAPACITY, _MIN_BYTES, _MAX_BYTES, _MAX_WAIT and
// _COMMIT_BATCH override settings; INGEST_BENCH_BARE_COMMITS=0 drops the bare
// loop's commits.
func BenchmarkIngestNASA(b *testing.B) {
	sessions := readSessions(b)
	limit, _ := strconv.Atoi(os.Getenv("INGEST_BENCH_LIMIT"))
	msgs := replayMessages(sessions, 256, limit, time.Now().Add(-time.Hour))
	vocab := mapVocab{}
	for _, s := range sessions {
		for _, p := range s {
			vocab["/page/"+strconv.Itoa(int(p))] = int64(p) + 2
		}
	}
	const topic = "nasa"
	br := kafkatest.Start(b, topic)
	produceAll(b, br.Addr(), topic, msgs)
	// Keep only the count: the produced messages would otherwise stay on the
	// heap and make every GC cycle of both loops mark them.
	events := len(msgs)
	msgs = nil
	sessions = nil
	runtime.GC()
	bundle, err := model.LoadBundle("testdata/gru-step")
	if err != nil {
		b.Fatalf("load model: %v", err)
	}
	if !bundle.HasStep() {
		b.Fatal("test model has no step form")
	}
	fetch := benchSettings{minBytes: 1, maxBytes: 10 << 20, maxWait: 250 * time.Millisecond, queueCapacity: 1000, workers: DefaultWorkers, workerQueue: DefaultWorkerQueue, batchSize: DefaultBatchSize, commitBatch: 5000,
		commits: os.Getenv("INGEST_BENCH_BARE_COMMITS") != "0"}
	// Overrides for sweeping the settings.
	for env, v := range map[string]*int{"INGEST_BENCH_WORKERS": &fetch.workers, "INGEST_BENCH_WORKER_QUEUE": &fetch.workerQueue, "INGEST_BENCH_BATCH": &fetch.batchSize,
		"INGEST_BENCH_QUEUE_CAPACITY": &fetch.queueCapacity, "INGEST_BENCH_MIN_BYTES": &fetch.minBytes,
		"INGEST_BENCH_MAX_BYTES": &fetch.maxBytes, "INGEST_BENCH_COMMIT_BATCH": &fetch.commitBatch} {
		if n, err := strconv.Atoi(os.Getenv(env)); err == nil && n > 0 {
			*v = n
		}
	}
	if d, err := time.ParseDuration(os.Getenv("INGEST_BENCH_MAX_WAIT")); err == nil && d > 0 {
		fetch.maxWait = d
	}
	cases := []struct {
		name  string
		s     benchSettings
		vocab Vocabulary
		model stepper
	}{
		{name: "histories", s: fetch, vocab: vocab},
		{name: "model-step", s: fetch, vocab: bundle.Vocab(), model: bundle},
	}
	group := 0
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var bare, cons, bareCPU, consCPU time.Duration
			runBare := func() {
				c0 := cpuTime()
				pprof.Do(context.Background(), pprof.Labels("loop", "bare"), func(context.Context) {
					bare += bareLoop(b, br.Addr(), topic, fmt.Sprintf("bare-%d", group), tc.s, events)
				})
				bareCPU += cpuTime() - c0
			}
			runConsumer := func() {
				c0 := cpuTime()
				pprof.Do(context.Background(), pprof.Labels("loop", "consumer"), func(context.Context) {
					cons += consumerLoop(b, br.Addr(), topic, fmt.Sprintf("consumer-%d", group), tc.s, events, tc.vocab, tc.model)
				})
				consCPU += cpuTime() - c0
			}
			for i := 0; b.Loop(); i++ {
				group++
				// Alternate which loop goes first, so that neither always
				// inherits the other's garbage or a warmer broker.
				if i%2 == 0 {
					runBare()
					runConsumer()
				} else {
					runConsumer()
					runBare()
				}
			}
			n := float64(b.N * events)
			b.ReportMetric(n/bare.Seconds(), "bare-events/s")
			b.ReportMetric(n/cons.Seconds(), "events/s")
			b.ReportMetric(bare.Seconds()/cons.Seconds(), "ratio")
			// CPU time of the whole process (broker included) per event: less
			// sensitive than wall time to other load on the machine.
			b.ReportMetric(float64(bareCPU.Nanoseconds())/n, "bare-cpu-ns/event")
			b.ReportMetric(float64(consCPU.Nanoseconds())/n, "cpu-ns/event")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// cpuTime is the user and system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkConsumerProcess measures a worker's share of the per-event work
// without Kafka: decode, validate, canonicalize, vocabulary lookup, history
// append and offset tracking, for 10,000 users.
func BenchmarkConsumerProcess(b *testing.B) {
	hist, err := NewHistories(HistoryConfig{MaxLen: 20}, nil)
	if err != nil {
		b.Fatal(err)
	}
	canon, _ := NewCanonicalizer(CanonicalizerConfig{})
	vocab := mapVocab{}
	for p := range 5000 {
		vocab["/page/"+strconv.Itoa(p)] = int64(p) + 2
	}
	h := &historyHandler{canon: canon, vocab: vocab, hist: hist, want: -1}
	c, err := NewConsumer(ConsumerConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "t", GroupID: "g"}, h, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const n = 100_000
	msgs := make([]fetched, n)
	ts := time.Now().Add(-time.Hour)
	for i := range msgs {
		user := "u" + strconv.Itoa(i%10_000)
		v, _ := Encode(Event{UserID: user, Page: "/page/" + strconv.Itoa(i%5000), TS: ts.Add(time.Duration(i) * time.Millisecond)})
		msgs[i] = fetched{Key: []byte(user), Value: v, Offset: int64(i)}
	}
	ctx := context.Background()
	fin := c.newFinished()
	var rn runner
	rows := make([]row, 1)
	jobs := make([]job, 1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m := msgs[i%n]
		m.Offset = int64(i)
		a := c.track.add(0, m.Offset, m.Offset+1, m.Time)
		jobs[0] = job{msg: m, seq: a.seq}
		ev, err := c.dec.decode(m.Value, ts.Add(time.Hour), true)
		if err != nil {
			b.Fatal(err)
		}
		rows[0] = row{ev: ev, meta: c.metaOf(&jobs[0].msg)}
		if !c.settle(ctx, 0, &rn, rows, jobs, fin) {
			b.Fatal("not settled")
		}
		i++
	}
	fin.flush()
}
