package features

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// Defaults of ConsumerConfig.
const (
	DefaultWorkers           = 4
	DefaultWorkerQueue       = 1024
	DefaultBatchSize         = 64
	DefaultEventIDCache      = 100_000
	DefaultCommitInterval    = time.Second
	DefaultCommitBatch       = 5000
	DefaultMinBytes          = 1
	DefaultMaxBytes          = 10 << 20
	DefaultMaxWait           = 250 * time.Millisecond
	DefaultQueueCapacity     = 1000
	DefaultSessionTimeout    = 10 * time.Second
	DefaultHeartbeatInterval = time.Second
	DefaultRebalanceTimeout  = 10 * time.Second
	DefaultHandlerRetries    = 3
	DefaultHandlerBackoff    = 100 * time.Millisecond
	// MinSessionTimeout is the smallest session timeout brokers accept by
	// default (group.min.session.timeout.ms); below it kafka-go retries
	// joining forever.
	MinSessionTimeout = 6 * time.Second
)

// ConsumerConfig configures the Kafka consumer group. Zero fields take the
// defaults.
type ConsumerConfig struct {
	// Brokers are the bootstrap addresses (host:port). Required.
	Brokers []string
	// Topic is the clickstream topic. Required.
	Topic string
	// GroupID is the consumer group. Required.
	GroupID string
	// Workers is the number of goroutines that decode and handle events,
	// beside the fetch loop; a user (message key) always goes to the same
	// worker. Default 4. On two cores, 2 to 4 are best for a CPU-bound
	// handler; more overlap a handler that waits (Redis).
	Workers int
	// WorkerQueue is each worker's buffer of fetched messages; a worker takes
	// everything queued at once. Default 1024.
	WorkerQueue int
	// BatchSize is the most events handed to a BatchHandler in one call;
	// a worker batches what it has already fetched and never waits to fill
	// a batch. Default 64; 1 hands events one by one. Ignored for a plain
	// Handler.
	BatchSize int
	// CommitInterval is the longest time between commits. Default 1 s.
	CommitInterval time.Duration
	// CommitBatch commits early once this many messages are done since the
	// last commit. Default 5000.
	CommitBatch int
	// MinBytes, MaxBytes and MaxWait shape fetch requests (kafka-go
	// ReaderConfig). Defaults 1 B, 10 MiB, 250 ms.
	MinBytes int
	MaxBytes int
	MaxWait  time.Duration
	// QueueCapacity is kafka-go's internal message queue. Default 1000.
	QueueCapacity int
	// SessionTimeout of the group membership, at least 6 s. Default 10 s.
	SessionTimeout time.Duration
	// HeartbeatInterval bounds how fast a rebalance is noticed. Default 1 s.
	HeartbeatInterval time.Duration
	// RebalanceTimeout is how long the group waits for members to rejoin.
	// Default 10 s.
	RebalanceTimeout time.Duration
	// StartOffset applies when the group has no committed offset:
	// kafka.FirstOffset (-2, the default) or kafka.LastOffset (-1).
	StartOffset int64
	// DeadLetterTopic, when set, receives rejected messages unchanged with
	// headers reason, detail, source_topic, source_partition, source_offset.
	DeadLetterTopic string
	// HandlerRetries is how many times a failing handler is retried (with
	// doubling backoff from HandlerBackoff) before the event is counted and
	// skipped. Default 3; negative means no retry.
	HandlerRetries int
	// HandlerBackoff is the first retry delay. Default 100 ms.
	HandlerBackoff time.Duration
	// EventIDCache is how many recent (user_id, event_id) pairs the consumer
	// remembers: an event whose pair was applied recently is dropped as a
	// duplicate even under a new Kafka position or from Apply (a producer's
	// retry, a gRPC client's resend). Events without an event_id are not
	// affected. Default 100,000; negative turns it off. The memory is this
	// process's: it does not survive a restart.
	EventIDCache int
	// Decoder sets the validation limits of events.
	Decoder DecoderConfig
	// Dialer, when set, is used for broker connections (TLS, SASL).
	Dialer *kafka.Dialer
}

// Validate reports a configuration error.
func (c ConsumerConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("consumer: no brokers")
	case c.Topic == "":
		return errors.New("consumer: no topic")
	case c.GroupID == "":
		return errors.New("consumer: no group id")
	case c.Workers < 0 || c.WorkerQueue < 0 || c.BatchSize < 0 || c.CommitBatch < 0 || c.MinBytes < 0 || c.MaxBytes < 0 || c.QueueCapacity < 0:
		return errors.New("consumer: negative count or size")
	case c.CommitInterval < 0 || c.MaxWait < 0 || c.HeartbeatInterval < 0 || c.RebalanceTimeout < 0 || c.HandlerBackoff < 0:
		return errors.New("consumer: negative duration")
	case c.SessionTimeout != 0 && c.SessionTimeout < MinSessionTimeout:
		return fmt.Errorf("consumer: session timeout %s below %s", c.SessionTimeout, MinSessionTimeout)
	case c.StartOffset != 0 && c.StartOffset != kafka.FirstOffset && c.StartOffset != kafka.LastOffset:
		return fmt.Errorf("consumer: start offset %d is neither kafka.FirstOffset nor kafka.LastOffset", c.StartOffset)
	case c.DeadLetterTopic != "" && c.DeadLetterTopic == c.Topic:
		return errors.New("consumer: dead-letter topic is the input topic")
	}
	for _, b := range c.Brokers {
		if b == "" {
			return errors.New("consumer: empty broker address")
		}
	}
	if err := c.Decoder.Validate(); err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	return nil
}

func (c ConsumerConfig) withDefaults() ConsumerConfig {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Workers, DefaultWorkers)
	def(&c.WorkerQueue, DefaultWorkerQueue)
	def(&c.BatchSize, DefaultBatchSize)
	def(&c.EventIDCache, DefaultEventIDCache)
	def(&c.CommitBatch, DefaultCommitBatch)
	def(&c.MinBytes, DefaultMinBytes)
	def(&c.MaxBytes, DefaultMaxBytes)
	def(&c.QueueCapacity, DefaultQueueCapacity)
	def(&c.HandlerRetries, DefaultHandlerRetries)
	defD(&c.CommitInterval, DefaultCommitInterval)
	defD(&c.MaxWait, DefaultMaxWait)
	defD(&c.SessionTimeout, DefaultSessionTimeout)
	defD(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	defD(&c.RebalanceTimeout, DefaultRebalanceTimeout)
	defD(&c.HandlerBackoff, DefaultHandlerBackoff)
	if c.StartOffset == 0 {
		c.StartOffset = kafka.FirstOffset
	}
	if c.HandlerRetries < 0 {
		c.HandlerRetries = 0
	}
	return c
}

// Meta locates an event in Kafka. Events from Apply have Partition and
// Offset -1 and an empty Topic.
type Meta struct {
	Topic     string
	Partition int32
	Offset    int64
	// Time is the broker timestamp of the message (zero for Apply).
	Time time.Time
	// Gen is the partition's generation, bumped when its offsets go backwards.
	Gen uint32
}

// Handler applies a decoded event (the engine: history, model, prefetch).
// Calls for one user are sequential and in partition order; calls for
// different users run in parallel.
type Handler interface {
	// HandleEvent applies ev. An error wrapping ErrDuplicate counts the event
	// as a duplicate and an error wrapping ErrRejected (for example a
	// *RejectError) as rejected; neither is retried. Other errors are retried
	// (ConsumerConfig.HandlerRetries) and then counted and skipped. ctx ends
	// when the consumer stops; an event interrupted so is not committed.
	HandleEvent(ctx context.Context, ev Event, msg Meta) error
}

// BatchHandler is a Handler that can also apply a run of events in one call,
// sharing work among them (the engine runs the model's step form once for
// many users). The consumer hands it runs of up to ConsumerConfig.BatchSize
// decoded events of one worker, in fetch order.
type BatchHandler interface {
	Handler
	// HandleEvents applies evs with the effect of HandleEvent on each,
	// keeping the order of each user's events (events of different users
	// may go in any order), and reports each event's outcome in errs
	// (len(errs) == len(evs)): nil, or an error wrapping ErrDuplicate or
	// ErrRejected, which are final. When an event fails otherwise it
	// returns the smallest such index n, with its error in errs[n], once
	// every event before n is settled: the consumer retries evs[n] alone
	// (as a HandleEvent error) and hands the events after it again, so a
	// handler that already applied some of them reports them as duplicates
	// then. It returns len(evs) when none failed so. metas[i] locates
	// evs[i].
	HandleEvents(ctx context.Context, evs []Event, metas []Meta, errs []error) int
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, ev Event, msg Meta) error

// HandleEvent calls f.
func (f HandlerFunc) HandleEvent(ctx context.Context, ev Event, msg Meta) error {
	return f(ctx, ev, msg)
}

// Consumer reads the clickstream with a kafka-go consumer group and applies
// each valid event through a Handler, at least once:
//
//   - FetchMessage, then the message goes to a worker chosen by a hash of its
//     key (the user id; the partition when the key is empty), so one user's
//     events are handled in order while partitions and users run in parallel;
//   - a worker decodes and validates the event; a rejected message is counted
//     by reason, optionally copied to the dead-letter topic, and done;
//   - the worker hands the events it has, in order, to the handler: in runs
//     of up to BatchSize when the handler is a BatchHandler, else one by one;
//   - a handler error is retried with backoff, then counted and skipped;
//   - commits run every CommitInterval or CommitBatch messages and cover, per
//     partition, only offsets whose message and all earlier ones are done; a
//     crash or rebalance redelivers at most the uncommitted tail;
//   - redeliveries within one Consumer (kafka-go restarts partitions from the
//     committed offset after every rebalance) are dropped by a per-partition
//     watermark, the highest offset already fetched; redeliveries across
//     restarts or consumers are dropped by the Store, which keeps the
//     position of the last click applied per user (ErrDuplicate);
//   - an event sent twice under different positions (a producer's retry) is
//     dropped when it carries an event_id applied recently (EventIDCache).
type Consumer struct {
	cfg     ConsumerConfig
	handler Handler
	log     *slog.Logger
	dec     *Decoder
	m       *ingestMetrics
	reader  *kafka.Reader
	dlq     *kafka.Writer
	track   *tracker
	ids     *recentIDs // nil when EventIDCache is off

	dlqTransport *kafka.Transport

	commitNow chan struct{}
	dlqQueue  chan deadLetter

	// clock is the wall clock of the skew check in Unix ns, refreshed every
	// clockTick while Run runs: one atomic load per event instead of a
	// time.Now call (about 100 ns on virtual machines).
	clock atomic.Int64

	// noCommit makes commits no-ops, so that tests can simulate a crash.
	noCommit bool

	mu      sync.Mutex
	running bool
	closed  bool
}

// fetched is what the workers need of a fetched message: 88 bytes instead
// of kafka.Message's 152, which the worker queues (a thousand messages each)
// copy and hold.
type fetched struct {
	Key, Value []byte
	Time       time.Time
	Offset     int64
	Partition  int
}

type job struct {
	msg fetched
	seq int64
}

type deadLetter struct {
	msg    fetched
	seq    int64
	reason string
	detail string
}

// NewConsumer validates cfg and prepares a consumer; it does not contact the
// brokers until Run. logger and reg may be nil. Metrics are
// prefetchd_ingest_*.
func NewConsumer(cfg ConsumerConfig, handler Handler, logger *slog.Logger, reg prometheus.Registerer) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if handler == nil {
		return nil, errors.New("consumer: nil handler")
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dec, err := NewDecoder(cfg.Decoder)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	c := &Consumer{
		cfg:       cfg,
		handler:   handler,
		log:       logger,
		dec:       dec,
		track:     newTracker(),
		ids:       newRecentIDs(cfg.EventIDCache),
		commitNow: make(chan struct{}, 1),
	}
	c.clock.Store(time.Now().UnixNano())
	c.m, err = newIngestMetrics(reg, c.track.lag)
	if err != nil {
		return nil, err
	}
	c.reader = kafka.NewReader(kafka.ReaderConfig{
		Brokers:           cfg.Brokers,
		GroupID:           cfg.GroupID,
		Topic:             cfg.Topic,
		Dialer:            cfg.Dialer,
		QueueCapacity:     cfg.QueueCapacity,
		MinBytes:          cfg.MinBytes,
		MaxBytes:          cfg.MaxBytes,
		MaxWait:           cfg.MaxWait,
		HeartbeatInterval: cfg.HeartbeatInterval,
		SessionTimeout:    cfg.SessionTimeout,
		RebalanceTimeout:  cfg.RebalanceTimeout,
		JoinGroupBackoff:  500 * time.Millisecond,
		StartOffset:       cfg.StartOffset,
		CommitInterval:    0, // synchronous: we batch commits ourselves
		ErrorLogger: kafka.LoggerFunc(func(format string, args ...any) {
			logger.Debug("kafka reader", "detail", fmt.Sprintf(format, args...))
		}),
	})
	if cfg.DeadLetterTopic != "" {
		// An own transport (not kafka-go's process-wide default) so that Close
		// can release its connections.
		c.dlqTransport = &kafka.Transport{}
		if cfg.Dialer != nil {
			c.dlqTransport = &kafka.Transport{Dial: cfg.Dialer.DialFunc, TLS: cfg.Dialer.TLS, SASL: cfg.Dialer.SASLMechanism}
		}
		c.dlq = &kafka.Writer{
			Addr:                   kafka.TCP(cfg.Brokers...),
			Topic:                  cfg.DeadLetterTopic,
			Balancer:               &kafka.Hash{},
			BatchTimeout:           5 * time.Millisecond,
			RequiredAcks:           kafka.RequireAll,
			AllowAutoTopicCreation: true,
			MaxAttempts:            3,
			WriteTimeout:           5 * time.Second,
			Transport:              c.dlqTransport,
		}
		c.dlqQueue = make(chan deadLetter, 1024)
	}
	return c, nil
}

// Run consumes until ctx ends, then stops fetching and the workers, commits
// every offset that is done and returns nil. Messages fetched but not handled
// when ctx ends, and an event whose handler sees ctx end, stay uncommitted
// and are redelivered to the group. Run returns an error when called twice or
// after Close, when the reader is closed under it, or when the final commit
// fails. The handler must honour ctx: Run waits for the calls in progress.
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running || c.closed {
		c.mu.Unlock()
		return errors.New("consumer: Run called twice or after Close")
	}
	c.running = true
	c.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	c.clock.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	// Even with one worker, events are handled beside the fetch loop, not in
	// it: a fetch loop slower than kafka-go's reader goroutine makes that
	// goroutine sleep and wake for every message (measured: +900 ns of CPU
	// per event with the model step).
	queues := make([]*workQueue, c.cfg.Workers)
	for i := range queues {
		queues[i] = newWorkQueue(c.cfg.WorkerQueue)
		wg.Go(func() { c.work(ctx, queues[i]) })
	}
	var side sync.WaitGroup
	side.Go(func() { c.commitLoop(ctx) })
	side.Go(func() { c.clockLoop(ctx) })
	if c.dlq != nil {
		side.Go(func() { c.deadLetterLoop(ctx) })
	}

	err := c.fetchLoop(ctx, queues)
	cancel()
	wg.Wait()
	side.Wait()

	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer ccancel()
	if cerr := c.commit(cctx); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// clockTick is how often Run refreshes the clock of the skew check.
const clockTick = 10 * time.Millisecond

func (c *Consumer) clockLoop(ctx context.Context) {
	t := time.NewTicker(clockTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.clock.Store(now.UnixNano())
		}
	}
}

func (c *Consumer) fetchLoop(ctx context.Context, queues []*workQueue) error {
	backoff := 100 * time.Millisecond
	for {
		msg, err := c.reader.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errors.New("consumer: reader closed")
			}
			c.m.fetchErrors.Inc()
			c.log.Warn("fetch message", "err", err, "topic", c.cfg.Topic)
			if !sleepCtx(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		c.m.messages.Inc()
		seq, dup := c.track.add(msg.Partition, msg.Offset, msg.HighWaterMark)
		if dup {
			c.m.duplicates.Inc()
			continue
		}
		q := queues[workerOf(msg.Key, msg.Partition, len(queues))]
		if !q.push(ctx, job{msg: fetched{Key: msg.Key, Value: msg.Value, Time: msg.Time, Offset: msg.Offset, Partition: msg.Partition}, seq: seq}) {
			return nil
		}
	}
}

func workerOf(key []byte, partition, n int) int {
	if len(key) == 0 {
		return partition % n
	}
	x := uint64(14695981039346656037)
	for _, b := range key {
		x ^= uint64(b)
		x *= 1099511628211
	}
	return int(x % uint64(n))
}

// workQueue hands fetched messages to one worker in batches: the fetch loop
// appends under a mutex and wakes the worker only when it waits for work;
// the worker takes everything queued at once. A busy worker therefore costs
// the fetch loop one uncontended lock per message and no goroutine switch,
// and an idle one is woken at once (no batching delay).
type workQueue struct {
	mu      sync.Mutex
	jobs    []job
	limit   int
	waiting bool          // the worker waits on wake
	full    bool          // the fetch loop waits on space
	wake    chan struct{} // to the worker, at most one token
	space   chan struct{} // to the fetch loop, at most one token
}

func newWorkQueue(limit int) *workQueue {
	return &workQueue{jobs: make([]job, 0, limit), limit: limit,
		wake: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// push queues j, waiting while the queue holds limit jobs. It returns false
// when ctx ended first.
func (q *workQueue) push(ctx context.Context, j job) bool {
	q.mu.Lock()
	for len(q.jobs) >= q.limit {
		q.full = true
		q.mu.Unlock()
		select {
		case <-q.space:
		case <-ctx.Done():
			return false
		}
		q.mu.Lock()
	}
	q.jobs = append(q.jobs, j)
	wake := q.waiting
	q.waiting = false
	q.mu.Unlock()
	if wake {
		q.wake <- struct{}{}
	}
	return true
}

// take returns every queued job, waiting for one; buf (emptied) becomes the
// queue's next buffer. It returns nil when ctx ended first.
func (q *workQueue) take(ctx context.Context, buf []job) []job {
	q.mu.Lock()
	for len(q.jobs) == 0 {
		q.waiting = true
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-ctx.Done():
			return nil
		}
		q.mu.Lock()
	}
	jobs := q.jobs
	q.jobs = buf[:0]
	full := q.full
	q.full = false
	q.mu.Unlock()
	if full {
		q.space <- struct{}{}
	}
	return jobs
}

// doneFlush bounds how many finished messages a worker holds before marking
// them done in the tracker (one lock for all of them).
const doneFlush = 64

// finished collects a worker's finished messages and applied events and
// reports them together: one tracker lock for up to doneFlush messages, and
// one shared counter update per flush, not per event (workers on other
// cores would fight over its cache line).
type finished struct {
	c       *Consumer
	done    []partSeq
	applied int
}

func (c *Consumer) newFinished() *finished {
	return &finished{c: c, done: make([]partSeq, 0, doneFlush)}
}

// mark records j as done (committable), flushing when full.
func (f *finished) mark(j *job) {
	f.done = append(f.done, partSeq{partition: j.msg.Partition, seq: j.seq})
	if len(f.done) == cap(f.done) {
		f.flush()
	}
}

func (f *finished) flush() {
	if len(f.done) > 0 && f.c.track.doneMany(f.done) >= f.c.cfg.CommitBatch {
		f.c.kickCommit()
	}
	f.done = f.done[:0]
	if f.applied > 0 {
		f.c.m.events.Add(float64(f.applied))
		f.applied = 0
	}
}

func (c *Consumer) work(ctx context.Context, q *workQueue) {
	if bh, ok := c.handler.(BatchHandler); ok && c.cfg.BatchSize > 1 {
		c.workBatches(ctx, q, bh)
		return
	}
	buf := make([]job, 0, q.limit)
	fin := c.newFinished()
	defer fin.flush()
	stop := ctx.Done()
	for {
		fin.flush()
		jobs := q.take(ctx, buf)
		if jobs == nil {
			return
		}
		for i := range jobs {
			select {
			case <-stop:
				// Stopping: the rest stays uncommitted and is redelivered.
				return
			default:
			}
			j := &jobs[i]
			if c.process(ctx, &j.msg, j.seq, &fin.applied) {
				fin.mark(j)
			}
		}
		clear(jobs) // drop the messages for the garbage collector
		buf = jobs
	}
}

// workBatches is work for a BatchHandler: it decodes the worker's queued
// messages and hands the valid events to the handler in runs of up to
// BatchSize. When the handler stops at a retryable failure, that event goes
// through the retry path of a single event and the run resumes after it, so
// one user's events are still applied in order.
func (c *Consumer) workBatches(ctx context.Context, q *workQueue, bh BatchHandler) {
	buf := make([]job, 0, q.limit)
	fin := c.newFinished()
	size := c.cfg.BatchSize
	evs := make([]Event, 0, size)
	metas := make([]Meta, 0, size)
	errs := make([]error, size)
	idx := make([]int, 0, size) // job index of each event
	markDone := fin.mark
	defer fin.flush()
	stop := ctx.Done()
	for {
		fin.flush()
		jobs := q.take(ctx, buf)
		if jobs == nil {
			return
		}
		evs, metas, idx = evs[:0], metas[:0], idx[:0]
		for i := 0; i < len(jobs) || len(evs) > 0; {
			select {
			case <-stop:
				// Stopping: the rest stays uncommitted and is redelivered.
				return
			default:
			}
			for ; i < len(jobs) && len(evs) < size; i++ {
				j := &jobs[i]
				ev, ok, isDone := c.decode(&j.msg, j.seq)
				if !ok {
					if isDone {
						markDone(j)
					}
					continue
				}
				if !c.ids.reserve(ev.UserID, ev.EventID) {
					c.m.duplicates.Inc()
					markDone(j)
					continue
				}
				evs = append(evs, ev)
				metas = append(metas, c.metaOf(&j.msg))
				idx = append(idx, i)
			}
			if len(evs) == 0 {
				continue
			}
			clear(errs)
			n := bh.HandleEvents(ctx, evs, metas, errs[:len(evs)])
			n = min(max(n, 0), len(evs))
			for j, k := range idx[:n] {
				switch err := errs[j]; {
				case err == nil:
					fin.applied++
				case errors.Is(err, ErrDuplicate):
					c.m.duplicates.Inc()
				case errors.Is(err, ErrRejected):
					c.ids.release(evs[j].UserID, evs[j].EventID)
					if !c.rejected(&jobs[k].msg, jobs[k].seq, asReject(err)) {
						continue // done once its dead letter is written
					}
				default:
					// Not a final outcome: the contract was broken; count
					// it as a handler error rather than retry out of order.
					c.ids.release(evs[j].UserID, evs[j].EventID)
					c.m.handlerErrors.Inc()
					c.log.Warn("event skipped after handler error", "err", err, "user", evs[j].UserID,
						"partition", jobs[k].msg.Partition, "offset", jobs[k].msg.Offset)
				}
				markDone(&jobs[k])
			}
			if n == len(evs) {
				evs, metas, idx = evs[:0], metas[:0], idx[:0]
				continue
			}
			if ctx.Err() != nil {
				return
			}
			// evs[n] failed: finish it alone; the events after it (already
			// decoded) start the next run.
			j := &jobs[idx[n]]
			ok, kept := c.handle(ctx, &j.msg, j.seq, evs[n], metas[n], errs[n], &fin.applied)
			if !kept {
				c.ids.release(evs[n].UserID, evs[n].EventID)
			}
			if ok {
				markDone(j)
			} else if ctx.Err() != nil {
				return
			}
			rest := len(evs) - n - 1
			copy(evs, evs[n+1:])
			copy(metas, metas[n+1:])
			copy(idx, idx[n+1:])
			evs, metas, idx = evs[:rest], metas[:rest], idx[:rest]
		}
		clear(jobs) // drop the messages for the garbage collector
		buf = jobs
	}
}

func (c *Consumer) markDone(partition int, seq int64) {
	if c.track.done(partition, seq) >= c.cfg.CommitBatch {
		c.kickCommit()
	}
}

// kickCommit asks the commit loop for a commit now.
func (c *Consumer) kickCommit() {
	select {
	case c.commitNow <- struct{}{}:
	default:
	}
}

// process handles one message and reports whether it is done (committable);
// it adds 1 to *applied when the handler applied the event.
// The event's strings share msg.Value's memory (kafka-go allocates it per
// message and nothing writes to it afterwards): no copy per event.
func (c *Consumer) process(ctx context.Context, msg *fetched, seq int64, applied *int) bool {
	ev, ok, done := c.decode(msg, seq)
	if !ok {
		return done
	}
	if !c.ids.reserve(ev.UserID, ev.EventID) {
		c.m.duplicates.Inc()
		return true
	}
	done, keep := c.handle(ctx, msg, seq, ev, c.metaOf(msg), nil, applied)
	if !keep {
		c.ids.release(ev.UserID, ev.EventID)
	}
	return done
}

// decode decodes and validates msg. A bad message is counted and handed to
// the dead-letter writer: ok is false and done reports whether the message
// is done now.
func (c *Consumer) decode(msg *fetched, seq int64) (ev Event, ok, done bool) {
	ev, err := c.dec.decode(msg.Value, time.Unix(0, c.clock.Load()), true)
	if err != nil {
		return ev, false, c.rejected(msg, seq, asReject(err))
	}
	return ev, true, false
}

func (c *Consumer) metaOf(msg *fetched) Meta {
	return Meta{Topic: c.cfg.Topic, Partition: int32(msg.Partition), Offset: msg.Offset, Time: msg.Time}
}

// handle applies ev with retries and reports whether its message is done,
// and whether the event is in its user's history (applied now, or before:
// a duplicate); it adds 1 to *applied when the handler applied the event.
// first, when not nil, is the error of an attempt the caller already made.
func (c *Consumer) handle(ctx context.Context, msg *fetched, seq int64, ev Event, meta Meta, first error, applied *int) (done, kept bool) {
	backoff := c.cfg.HandlerBackoff
	for attempt := 0; ; attempt++ {
		err := first
		if attempt > 0 || first == nil {
			err = c.handler.HandleEvent(ctx, ev, meta)
		}
		switch {
		case err == nil:
			*applied++
			return true, true
		case ctx.Err() != nil:
			return false, false
		case errors.Is(err, ErrDuplicate):
			c.m.duplicates.Inc()
			return true, true
		case errors.Is(err, ErrRejected):
			return c.rejected(msg, seq, asReject(err)), false
		case attempt >= c.cfg.HandlerRetries:
			c.m.handlerErrors.Inc()
			c.log.Warn("event skipped after handler errors", "err", err, "user", ev.UserID,
				"partition", msg.Partition, "offset", msg.Offset, "attempts", attempt+1)
			return true, false
		}
		c.m.handlerRetries.Inc()
		if !sleepCtx(ctx, backoff) {
			return false, false
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// asReject returns the *RejectError in err, or one with reason "handler" for
// another error wrapping ErrRejected.
func asReject(err error) *RejectError {
	var rej *RejectError
	if errors.As(err, &rej) {
		return rej
	}
	return &RejectError{Reason: "handler", Detail: err.Error()}
}

// rejected counts a bad message and hands it to the dead-letter writer. It
// reports whether the message is done now (true) or once its dead letter is
// written (false).
func (c *Consumer) rejected(msg *fetched, seq int64, rej *RejectError) bool {
	c.m.rejected(rej.Reason).Inc()
	c.log.Debug("event rejected", "reason", rej.Reason, "detail", rej.Detail,
		"partition", msg.Partition, "offset", msg.Offset)
	if c.dlqQueue == nil {
		return true
	}
	select {
	case c.dlqQueue <- deadLetter{msg: *msg, seq: seq, reason: rej.Reason, detail: rej.Detail}:
		return false
	default:
		c.m.deadLetters.WithLabelValues("dropped").Inc()
		return true
	}
}

// deadLetterLoop writes dead letters in batches and marks their offsets done
// once written (or once writing failed). Letters still queued when ctx ends
// stay uncommitted and are redelivered.
func (c *Consumer) deadLetterLoop(ctx context.Context) {
	batch := make([]deadLetter, 0, 128)
	msgs := make([]kafka.Message, 0, 128)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case dl := <-c.dlqQueue:
			batch = append(batch, dl)
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case dl := <-c.dlqQueue:
				batch = append(batch, dl)
			default:
				break fill
			}
		}
		msgs = msgs[:0]
		for _, dl := range batch {
			msgs = append(msgs, kafka.Message{
				Key:   dl.msg.Key,
				Value: dl.msg.Value,
				Headers: []kafka.Header{
					{Key: "reason", Value: []byte(dl.reason)},
					{Key: "detail", Value: []byte(dl.detail)},
					{Key: "source_topic", Value: []byte(c.cfg.Topic)},
					{Key: "source_partition", Value: []byte(strconv.Itoa(dl.msg.Partition))},
					{Key: "source_offset", Value: []byte(strconv.FormatInt(dl.msg.Offset, 10))},
				},
			})
		}
		err := c.dlq.WriteMessages(ctx, msgs...)
		if ctx.Err() != nil {
			return
		}
		result := "written"
		if err != nil {
			result = "failed"
			c.log.Warn("write dead letters", "err", err, "topic", c.cfg.DeadLetterTopic, "count", len(msgs))
		}
		c.m.deadLetters.WithLabelValues(result).Add(float64(len(batch)))
		for _, dl := range batch {
			c.markDone(dl.msg.Partition, dl.seq)
		}
	}
}

func (c *Consumer) commitLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.commitNow:
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := c.commit(cctx); err != nil && ctx.Err() == nil {
			c.log.Warn("commit offsets", "err", err, "topic", c.cfg.Topic)
		}
		cancel()
	}
}

// commit commits every done offset not yet committed. Only one goroutine
// calls it at a time.
func (c *Consumer) commit(ctx context.Context) error {
	offs := c.track.pending(nil)
	if len(offs) == 0 || c.noCommit {
		return nil
	}
	msgs := make([]kafka.Message, len(offs))
	for i, o := range offs {
		msgs[i] = kafka.Message{Topic: c.cfg.Topic, Partition: o.partition, Offset: o.offset}
	}
	start := time.Now()
	err := c.reader.CommitMessages(ctx, msgs...)
	c.m.commitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		c.m.commitErrors.Inc()
		return fmt.Errorf("commit %d partitions of %s: %w", len(msgs), c.cfg.Topic, err)
	}
	c.m.commits.Inc()
	c.track.committed(offs)
	return nil
}

// Apply runs one raw event in the wire format through the same decoding,
// validation, metrics and handler as a Kafka message, in the caller's
// goroutine, with Meta{Partition: -1, Offset: -1}. It is the path of a
// single event of the gRPC Ingest call (ApplyMany takes several). A bad event returns a *RejectError (wrapping ErrRejected); an
// event whose (user_id, event_id) was applied recently (EventIDCache), by
// Apply or from Kafka, returns an error wrapping ErrDuplicate and is not
// applied again; a handler error is returned wrapped, without retry. Apply
// does not order itself with the Kafka events of the same user.
func (c *Consumer) Apply(ctx context.Context, data []byte) error {
	ev, err := c.dec.Decode(data, time.Now())
	if err != nil {
		var rej *RejectError
		if errors.As(err, &rej) {
			c.m.rejected(rej.Reason).Inc()
		}
		return err
	}
	if !c.ids.reserve(ev.UserID, ev.EventID) {
		c.m.duplicates.Inc()
		return fmt.Errorf("apply event %s of %s: %w", ev.EventID, ev.UserID, ErrDuplicate)
	}
	if err := c.handler.HandleEvent(ctx, ev, Meta{Partition: -1, Offset: -1}); err != nil {
		c.ids.release(ev.UserID, ev.EventID)
		var rej *RejectError
		if errors.As(err, &rej) {
			c.m.rejected(rej.Reason).Inc()
		}
		return fmt.Errorf("apply event of %s: %w", ev.UserID, err)
	}
	c.m.events.Inc()
	return nil
}

// ApplyMany is Apply for several raw events: bad events and repeated event
// ids get their error in errs (len(errs) >= len(data)) and the valid ones
// go to the handler together, in runs of up to BatchSize through
// HandleEvents when it is a BatchHandler (else one by one), each user's in
// order. errs[i] is event i's outcome as Apply would return it. When an
// event fails with a handler error that is neither a duplicate nor a
// rejection, ApplyMany returns its index: every event before it is settled,
// later ones may or may not have been applied, and their event ids are
// forgotten (a resend of one that was applied is applied again). Else it
// returns len(data).
func (c *Consumer) ApplyMany(ctx context.Context, data [][]byte, errs []error) int {
	bh, batch := c.handler.(BatchHandler)
	if !batch || c.cfg.BatchSize <= 1 {
		for i, d := range data {
			errs[i] = c.Apply(ctx, d)
			if errs[i] != nil && !errors.Is(errs[i], ErrRejected) && !errors.Is(errs[i], ErrDuplicate) {
				return i
			}
		}
		return len(data)
	}
	for off := 0; off < len(data); off += c.cfg.BatchSize {
		end := min(off+c.cfg.BatchSize, len(data))
		if n := c.applyRun(ctx, bh, data[off:end], errs[off:end]); n < end-off {
			return off + n
		}
	}
	return len(data)
}

// applyRun is ApplyMany for at most BatchSize events.
func (c *Consumer) applyRun(ctx context.Context, bh BatchHandler, data [][]byte, errs []error) int {
	now := time.Now()
	evs := make([]Event, 0, len(data))
	metas := make([]Meta, 0, len(data))
	idx := make([]int, 0, len(data))
	for i, d := range data {
		ev, err := c.dec.Decode(d, now)
		if err != nil {
			var rej *RejectError
			if errors.As(err, &rej) {
				c.m.rejected(rej.Reason).Inc()
			}
			errs[i] = err
			continue
		}
		if !c.ids.reserve(ev.UserID, ev.EventID) {
			c.m.duplicates.Inc()
			errs[i] = fmt.Errorf("apply event %s of %s: %w", ev.EventID, ev.UserID, ErrDuplicate)
			continue
		}
		errs[i] = nil
		evs = append(evs, ev)
		metas = append(metas, Meta{Partition: -1, Offset: -1})
		idx = append(idx, i)
	}
	if len(evs) == 0 {
		return len(data)
	}
	herrs := make([]error, len(evs))
	n := min(max(bh.HandleEvents(ctx, evs, metas, herrs), 0), len(evs))
	for j, i := range idx {
		err := herrs[j]
		switch {
		case j > n:
			// Not settled: the caller stops at event n.
			c.ids.release(evs[j].UserID, evs[j].EventID)
			continue
		case err == nil && j < n:
			c.m.events.Inc()
			continue
		case err == nil:
			err = errors.New("handler stopped without an error")
		}
		if !errors.Is(err, ErrDuplicate) {
			c.ids.release(evs[j].UserID, evs[j].EventID)
		}
		var rej *RejectError
		if errors.As(err, &rej) {
			c.m.rejected(rej.Reason).Inc()
		}
		errs[i] = fmt.Errorf("apply event of %s: %w", evs[j].UserID, err)
	}
	if n < len(evs) {
		return idx[n]
	}
	return len(data)
}

// Lag is the number of messages below the partitions' high-water marks that
// are not yet done (a lower bound before every partition was fetched once).
func (c *Consumer) Lag() int64 { return c.track.lag() }

// Close releases the reader (leaving the group) and the dead-letter writer.
// Call it after Run returned; it is safe to call more than once.
func (c *Consumer) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	err := c.reader.Close()
	if c.dlq != nil {
		err = errors.Join(err, c.dlq.Close())
		c.dlqTransport.CloseIdleConnections()
	}
	if err != nil {
		return fmt.Errorf("close consumer: %w", err)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

type ingestMetrics struct {
	messages, events, duplicates       prometheus.Counter
	handlerRetries, handlerErrors      prometheus.Counter
	fetchErrors, commits, commitErrors prometheus.Counter
	rejectedVec, deadLetters           *prometheus.CounterVec
	commitSeconds                      prometheus.Histogram
}

func (m *ingestMetrics) rejected(reason string) prometheus.Counter {
	return m.rejectedVec.WithLabelValues(reason)
}

func newIngestMetrics(reg prometheus.Registerer, lag func() int64) (*ingestMetrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &ingestMetrics{
		messages:       counter("prefetchd_ingest_messages_total", "Messages fetched from Kafka."),
		events:         counter("prefetchd_ingest_events_total", "Events applied by the handler."),
		duplicates:     counter("prefetchd_ingest_duplicates_total", "Events not applied again: Kafka redeliveries, and repeats of a recent (user_id, event_id) from Kafka or gRPC."),
		handlerRetries: counter("prefetchd_ingest_handler_retries_total", "Handler calls retried after an error."),
		handlerErrors:  counter("prefetchd_ingest_handler_errors_total", "Events skipped after the handler kept failing."),
		fetchErrors:    counter("prefetchd_ingest_fetch_errors_total", "Errors fetching from Kafka."),
		commits:        counter("prefetchd_ingest_commits_total", "Offset commits."),
		commitErrors:   counter("prefetchd_ingest_commit_errors_total", "Failed offset commits."),
		rejectedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_ingest_rejected_total",
			Help: "Messages rejected, by reason.",
		}, []string{"reason"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_ingest_deadletter_total",
			Help: "Rejected messages sent to the dead-letter topic, by result (written, failed, dropped).",
		}, []string{"result"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "prefetchd_ingest_commit_seconds",
			Help:    "Time to commit offsets.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
	}
	for _, r := range []string{ReasonEmpty, ReasonTooLarge, ReasonUTF8, ReasonJSON, ReasonMissingUserID,
		ReasonMissingPage, ReasonMissingTS, ReasonUserIDTooLong, ReasonPageTooLong, ReasonFieldTooLong,
		ReasonBadTS, ReasonTSSkew} {
		m.rejectedVec.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	lagGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "prefetchd_ingest_lag_messages",
		Help: "Messages below the partitions' high-water marks not yet handled.",
	}, func() float64 { return float64(lag()) })
	for _, col := range []prometheus.Collector{m.messages, m.events, m.duplicates, m.handlerRetries,
		m.handlerErrors, m.fetchErrors, m.commits, m.commitErrors, m.rejectedVec, m.deadLetters,
		m.commitSeconds, lagGauge} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register ingest metrics: %w", err)
		}
	}
	return m, nil
}

// Waves cuts a run of events into waves of distinct users, as a
// BatchHandler may: wave k holds every user's k-th event of the run, so the
// events of one wave can be applied together and a user's events keep their
// order when the waves go one after the other. It appends each event's wave
// to dst[:0] and returns it with the number of waves; seen is scratch
// (cleared here).
func Waves(evs []Event, seen map[string]int, dst []int) (wave []int, waves int) {
	clear(seen)
	dst = dst[:0]
	for _, ev := range evs {
		k := seen[ev.UserID]
		seen[ev.UserID] = k + 1
		dst = append(dst, k)
		waves = max(waves, k+1)
	}
	return dst, waves
}
