package features

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"hash/maphash"
	"io"
	"log/slog"
	"slices"
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
	// DefaultPartitionWatch is how often the topic's partition count is
	// read, so that partitions added to it are consumed without a restart.
	DefaultPartitionWatch = 5 * time.Second
	DefaultHandlerBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultLagInterval    = 5 * time.Second
	// DefaultDeadLetterMaxBytes keeps a dead letter, headers included,
	// under Kafka's default message.max.bytes (1 MiB and a little).
	DefaultDeadLetterMaxBytes = 1_000_000
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
	// PartitionWatch is how often the topic's partition count is read: a
	// change makes the group rebalance, so that added partitions are
	// assigned. Default DefaultPartitionWatch.
	PartitionWatch time.Duration
	// StartOffset applies when the group has no committed offset:
	// kafka.FirstOffset (-2, the default) or kafka.LastOffset (-1).
	StartOffset int64
	// DeadLetterTopic, when set, receives rejected messages unchanged with
	// headers reason, detail, source_topic, source_partition, source_offset.
	DeadLetterTopic string
	// HandlerBackoff is the first delay before retrying an event whose
	// handler failed with a transient error, or a dead letter that could not
	// be written; it doubles up to MaxBackoff. Nothing is ever skipped: the
	// worker (and, once its queue is full, the fetch loop) waits, and
	// Ready reports why. Default 100 ms.
	HandlerBackoff time.Duration
	// MaxBackoff caps the retry delay. Default 5 s.
	MaxBackoff time.Duration
	// LagInterval is how often the group's committed offsets and the
	// partitions' high-water marks are read from the brokers for
	// prefetchd_ingest_lag_messages and Lag. Default 5 s.
	LagInterval time.Duration
	// DeadLetterMaxBytes bounds a dead letter's value and headers: a longer
	// value is cut, with header original_size giving its length; a letter
	// the broker still refuses as too large is cut further. Default
	// 1,000,000.
	DeadLetterMaxBytes int
	// Marks keeps each partition's generation and committed offset beside
	// the histories (RedisMarks with the Redis history store). Default an
	// in-process MemoryMarks, right for in-process histories.
	Marks Marks
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
	case c.Workers < 0 || c.WorkerQueue < 0 || c.BatchSize < 0 || c.CommitBatch < 0 || c.MinBytes < 0 || c.MaxBytes < 0 || c.QueueCapacity < 0 || c.DeadLetterMaxBytes < 0:
		return errors.New("consumer: negative count or size")
	case c.CommitInterval < 0 || c.MaxWait < 0 || c.HeartbeatInterval < 0 || c.RebalanceTimeout < 0 || c.PartitionWatch < 0 || c.HandlerBackoff < 0 || c.MaxBackoff < 0 || c.LagInterval < 0:
		return errors.New("consumer: negative duration")
	case c.SessionTimeout != 0 && c.SessionTimeout < MinSessionTimeout:
		return fmt.Errorf("consumer: session timeout %s below the brokers' default minimum %s", c.SessionTimeout, MinSessionTimeout)
	case c.HeartbeatInterval != 0 && c.HeartbeatInterval >= cmp.Or(c.SessionTimeout, DefaultSessionTimeout):
		return fmt.Errorf("consumer: heartbeat interval %s not below the session timeout", c.HeartbeatInterval)
	case c.DeadLetterMaxBytes != 0 && c.DeadLetterMaxBytes < 1024:
		return fmt.Errorf("consumer: dead-letter limit %d below 1024 bytes", c.DeadLetterMaxBytes)
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
	def(&c.DeadLetterMaxBytes, DefaultDeadLetterMaxBytes)
	defD(&c.CommitInterval, DefaultCommitInterval)
	defD(&c.MaxWait, DefaultMaxWait)
	defD(&c.SessionTimeout, DefaultSessionTimeout)
	defD(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	defD(&c.RebalanceTimeout, DefaultRebalanceTimeout)
	defD(&c.PartitionWatch, DefaultPartitionWatch)
	defD(&c.HandlerBackoff, DefaultHandlerBackoff)
	defD(&c.MaxBackoff, DefaultMaxBackoff)
	defD(&c.LagInterval, DefaultLagInterval)
	if c.StartOffset == 0 {
		c.StartOffset = kafka.FirstOffset
	}
	if c.Marks == nil {
		c.Marks = NewMemoryMarks()
	}
	return c
}

// Meta locates an event in Kafka. Events from Apply have Partition and
// Offset -1 and an empty Topic.
type Meta struct {
	Topic     string
	Partition int32
	Offset    int64
	// Time is the record timestamp of the message; for Apply and ApplyMany
	// (gRPC Ingest) the time the events were taken in, and Receipt is true.
	Time    time.Time
	Receipt bool
	// Gen is the partition's generation (PartitionMark.Gen) tagged with the
	// topic (TopicGen): a click is a redelivery of another only within one
	// topic and generation, so that a history fed from one topic does not
	// take the first offsets of another (a new format version's topic) for
	// redeliveries.
	Gen uint32
}

// Handler applies a decoded event (the engine: history, model, prefetch).
// Calls for one user are sequential and in partition order; calls for
// different users run in parallel.
type Handler interface {
	// HandleEvent applies ev. An error wrapping ErrDuplicate counts the event
	// as a duplicate and an error wrapping ErrRejected (for example a
	// *RejectError, for an event that can never be applied) as rejected: it
	// is dead-lettered. Neither is retried. Any other error is transient
	// (a store down, a timeout, no model yet): the event is retried with
	// backoff until it succeeds or ctx ends, never skipped, so the handler
	// must be idempotent. ctx ends when the consumer stops; an event
	// interrupted so is not committed.
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
// each valid event through a handler, at least once:
//
//   - FetchMessage, then the message goes to a worker chosen by a hash of its
//     key (the user id; the partition when the key is empty), so one user's
//     events are handled in order while partitions and users run in parallel;
//   - a worker decodes and validates the events it has and hands the valid
//     ones to the handler in runs of up to BatchSize (a plain Handler, or
//     BatchSize 1, gets runs of one: there is one path);
//   - a rejected message (malformed, invalid, or refused by the handler as
//     one that can never be applied) is counted by reason and is done once
//     its dead letter is written (when a dead-letter topic is set);
//   - a transient failure (the handler's, or the dead-letter topic's) is
//     retried with backoff until it succeeds: the worker waits, its queue
//     fills, the fetch loop waits, memory stays bounded; Ready says why;
//   - commits run every CommitInterval or CommitBatch messages and cover, per
//     partition, only offsets whose message and all earlier ones are done; a
//     crash or rebalance redelivers at most the uncommitted tail;
//   - redeliveries within one Consumer (kafka-go restarts partitions from the
//     committed offset after every rebalance) are dropped by a per-partition
//     watermark, the highest offset already fetched; redeliveries across
//     restarts or consumers are dropped by the Store, which keeps the
//     position (generation, partition, offset) of the last click applied per
//     user (ErrDuplicate);
//   - offsets that go backwards (a topic recreated, a partition truncated,
//     a group reset) are detected against the partition's committed offset
//     and watermark, which Marks keeps beside the histories: the partition
//     starts a new generation and its events are applied as new;
//   - an event sent twice under different positions (a producer's retry) is
//     dropped when it carries an event_id applied recently (EventIDCache).
type Consumer struct {
	cfg     ConsumerConfig
	handler BatchHandler
	log     *slog.Logger
	dec     *Decoder
	m       *ingestMetrics
	dlq     *deadLetters // nil without a dead-letter topic
	// topicTag is TopicGen(Topic, 0), hashed once: Meta.Gen is topicTag ^
	// the partition's generation.
	topicTag uint32
	track    *tracker
	ids      *recentIDs // nil when EventIDCache is off
	lag      *lagWatch
	stalls   *stalls
	// fetchFails is the run of failed fetches under way, for Ready.
	fetchFails fetchFailures
	assign     *assignments
	// waiting holds, by partition, the first record not fetched yet of a
	// partition this consumer holds whose fetching has stopped (see
	// findWaiting).
	waitingMu sync.Mutex
	waiting   map[int]waitingRecord // guarded by waitingMu

	commitNow chan struct{}

	// readerMu guards the group reader, which is replaced when a
	// partition's offsets went backwards under it (kafka-go keeps reading
	// from its own position until the group rebalances).
	readerMu sync.Mutex
	reader   *kafka.Reader // guarded by readerMu
	// stopFetch interrupts the fetch in progress; backwards lists the
	// partitions found gone backwards by the lag watch.
	stopFetch context.CancelFunc // guarded by readerMu
	backwards []int              // guarded by readerMu

	// clock is the wall clock of the skew check in Unix ns, refreshed every
	// clockTick while Run runs: one atomic load per event instead of a
	// time.Now call (about 100 ns on virtual machines).
	clock atomic.Int64

	// noCommit makes commits no-ops, so that tests can simulate a crash.
	noCommit bool
	// marksBehind is set from a commit until its marks are stored.
	marksBehind atomic.Bool

	mu      sync.Mutex
	running bool
	closed  bool
}

// newReader builds the group reader.
func (c *Consumer) newReader() *kafka.Reader {
	cfg := c.cfg
	return kafka.NewReader(kafka.ReaderConfig{
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
		// Partitions added to the topic: kafka-go's watcher ends the
		// generation when the count changes, and the rejoin reassigns.
		WatchPartitionChanges:  true,
		PartitionWatchInterval: cfg.PartitionWatch,
		StartOffset:            cfg.StartOffset,
		// Records of transactions still open are not read (the fetch stops
		// at the last stable offset). kafka-go does not drop the records of
		// aborted transactions (segmentio/kafka-go#1332): producers should
		// not abort transactions on this topic.
		IsolationLevel: kafka.ReadCommitted,
		CommitInterval: 0, // synchronous: we batch commits ourselves
		Logger:         kafka.LoggerFunc(c.assign.observe),
		ErrorLogger: kafka.LoggerFunc(func(format string, args ...any) {
			c.log.Debug("kafka reader", "detail", fmt.Sprintf(format, args...))
		}),
	})
}

// currentReader is the group reader in use.
func (c *Consumer) currentReader() *kafka.Reader {
	c.readerMu.Lock()
	defer c.readerMu.Unlock()
	return c.reader
}

// fetched is what the workers need of a fetched message: a smaller copy of
// kafka.Message, which the worker queues (a thousand messages each) hold.
type fetched struct {
	Key, Value []byte
	Time       time.Time
	Offset     int64
	Partition  int
	Gen        uint32
}

type job struct {
	msg fetched
	seq int64
	// redelivery: a record applied before a group reset went back over it
	// (tracker's added.redelivery); rejected again, it is not
	// dead-lettered or counted again.
	redelivery bool
	// parsed is msg.Value read by the fetch loop (to route it by user id),
	// which the worker decodes from.
	parsed parsed
}

// oneByOne adapts a plain Handler to BatchHandler: events one by one,
// stopping at the first that fails with a non-final error.
type oneByOne struct{ Handler }

func (h oneByOne) HandleEvents(ctx context.Context, evs []Event, metas []Meta, errs []error) int {
	for i := range evs {
		errs[i] = h.HandleEvent(ctx, evs[i], metas[i])
		if errs[i] != nil && !Final(errs[i]) {
			return i
		}
	}
	return len(evs)
}

// Final reports whether a handler error settles its event: a duplicate or
// a rejection (BatchHandler implementations stop at the first other error).
func Final(err error) bool { return errors.Is(err, ErrDuplicate) || errors.Is(err, ErrRejected) }

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
	bh, ok := handler.(BatchHandler)
	if !ok {
		bh = oneByOne{handler}
	}
	c := &Consumer{
		cfg:       cfg,
		topicTag:  TopicGen(cfg.Topic, 0),
		handler:   bh,
		log:       logger,
		dec:       dec,
		track:     newTracker(),
		ids:       newRecentIDs(cfg.EventIDCache),
		stalls:    newStalls(cfg.Workers + 2), // workers, the fetch loop, the dead-letter writer
		commitNow: make(chan struct{}, 1),
	}
	c.clock.Store(time.Now().UnixNano())
	c.lag = newLagWatch(cfg, logger)
	c.m, err = newIngestMetrics(reg, cfg.Topic, c.lag.total, c.lagSeconds, c.stalls.count)
	if err != nil {
		return nil, err
	}
	c.assign = newAssignments(cfg.Topic, logger, c.m.rebalances)
	c.assign.onAssign = c.assigned
	c.reader = c.newReader()
	if cfg.DeadLetterTopic != "" {
		c.dlq = newDeadLetters(cfg, logger, c.m, c.stalls, cfg.Workers+1)
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
		wg.Go(func() { c.work(ctx, i, queues[i]) })
	}
	var side sync.WaitGroup
	side.Go(func() { c.commitLoop(ctx) })
	side.Go(func() { c.clockLoop(ctx) })
	side.Go(func() {
		c.lag.run(ctx, c.m, c.track.snapshot, c.wentBackwards, func(past map[int]int64) { c.pastLogEnd(ctx, past) }, c.findWaiting)
	})
	if c.dlq != nil {
		side.Go(func() { c.dlq.run(ctx, c.markDone) })
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

// Ready reports nil while ingestion flows, or why it is paused: a worker
// retrying an event after a transient failure (the store down), or dead
// letters that cannot be written, or fetches that have kept failing for
// fetchGrace (a group the consumer cannot join). It is true of now: the
// reason goes away as soon as the retry or a fetch succeeds.
func (c *Consumer) Ready() error {
	if err := c.stalls.err(); err != nil {
		return err
	}
	return c.fetchFails.err(time.Now(), c.fetchGap())
}

// fetchGap is the longest pause between two failed fetches of one run: the
// fetch loop backs off up to MaxBackoff, and a fetch may wait a while to fail.
func (c *Consumer) fetchGap() time.Duration { return 2*c.cfg.MaxBackoff + 5*time.Second }

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
	backoff := c.cfg.HandlerBackoff
	fctx, stop := c.fetchContext(ctx)
	defer func() { stop() }()
	for {
		msg, err := c.currentReader().FetchMessage(fctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if fctx.Err() != nil {
				// The lag watch found offsets gone backwards under the
				// reader: start the partitions' new generation and read
				// again from the group's committed offsets.
				stop()
				if !c.restartReader(ctx) {
					return nil
				}
				fctx, stop = c.fetchContext(ctx)
				continue
			}
			if errors.Is(err, io.EOF) {
				return errors.New("consumer: reader closed")
			}
			c.m.fetchErrors.Inc()
			c.fetchFails.fail(time.Now(), err, c.fetchGap())
			c.log.Warn("fetch message", "err", err, "topic", c.cfg.Topic)
			if !sleepCtx(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, c.cfg.MaxBackoff)
			continue
		}
		backoff = c.cfg.HandlerBackoff
		c.fetchFails.ok()
		c.m.messages.Inc()
		if !c.track.known(msg.Partition) && !c.loadMark(ctx, msg.Partition) {
			return nil
		}
		a := c.track.add(msg.Partition, msg.Offset, msg.HighWaterMark, msg.Time)
		if a.reset && !c.offsetsReset(ctx, msg.Partition, msg.Offset, a) {
			return nil
		}
		if a.rewound {
			c.m.offsetResets.WithLabelValues(c.cfg.Topic, strconv.Itoa(msg.Partition)).Inc()
			c.log.Warn("group offset went back on an unchanged log: its records are redeliveries",
				"topic", c.cfg.Topic, "partition", msg.Partition, "offset", msg.Offset,
				"committed", a.from, "watermark", a.to, "generation", a.gen)
		}
		if a.dup {
			c.m.duplicates.Inc()
			continue
		}
		p := c.dec.parse(msg.Value, true)
		q := queues[workerOf(p.w.UserID, msg.Key, msg.Partition, len(queues))]
		if !q.push(ctx, job{msg: fetched{Key: msg.Key, Value: msg.Value, Time: msg.Time, Offset: msg.Offset, Partition: msg.Partition, Gen: a.gen}, seq: a.seq, parsed: p, redelivery: a.redelivery}) {
			return nil
		}
	}
}

// fetchContext returns the context of the next fetches, which the lag
// watch cancels to have the reader replaced.
func (c *Consumer) fetchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	fctx, cancel := context.WithCancel(ctx)
	c.readerMu.Lock()
	c.stopFetch = cancel
	c.readerMu.Unlock()
	return fctx, cancel
}

// wentBackwards is the lag watch's report: the group's committed offset
// or the high-water mark of the given partitions is below what this
// consumer committed or fetched.
func (c *Consumer) wentBackwards(parts []int) {
	c.readerMu.Lock()
	defer c.readerMu.Unlock()
	c.backwards = append(c.backwards, parts...)
	if c.stopFetch != nil {
		c.stopFetch()
	}
}

// assigned takes the group's committed offsets of the partitions just
// assigned (see tracker.assigned). A group joined is a broker answering:
// a run of failed fetches ends there, not only at the next record, which
// an idle topic may not bring for a long time.
func (c *Consumer) assigned(next map[int]int64) {
	c.fetchFails.ok()
	c.track.assigned(next)
	c.lag.soon()
}

// pastLogEnd is the lag watch's report of partitions whose group offset is
// past the end of their log (see beyondEnd), with the log's start. For those
// this consumer holds, it commits the log's start and replaces the reader,
// which then reads them from there; the records tell the tracker whether
// they are new (another log) or redeliveries.
func (c *Consumer) pastLogEnd(ctx context.Context, past map[int]int64) {
	var msgs []kafka.Message
	var parts []int
	for p, first := range past {
		if !c.assign.holds(p) {
			continue
		}
		// CommitMessages commits a message's offset plus one.
		msgs = append(msgs, kafka.Message{Topic: c.cfg.Topic, Partition: p, Offset: first - 1})
		parts = append(parts, p)
	}
	if len(msgs) == 0 {
		return
	}
	slices.Sort(parts)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.currentReader().CommitMessages(cctx, msgs...); err != nil {
		c.log.Warn("group offsets past the end of the log: committing the log's start failed; retrying at the next lag read",
			"topic", c.cfg.Topic, "partitions", parts, "err", err)
		return
	}
	// Counted here for a partition this consumer has not read: for one it
	// has, the records then read start its next generation, which counts
	// the reset (once).
	for _, p := range parts {
		if !c.track.known(p) {
			c.m.offsetResets.WithLabelValues(c.cfg.Topic, strconv.Itoa(p)).Inc()
		}
	}
	c.log.Warn("group offsets past the end of the log (a broker replaced, a topic recreated): reading again from the log's start",
		"topic", c.cfg.Topic, "partitions", parts, "from", past)
	c.wentBackwards(parts)
}

// restartReader replaces the reader after the lag watch found partitions
// gone backwards under it, so that the group hands them again from its
// committed offsets (none, when the topic was recreated); the records then
// fetched tell a changed log from a redelivery (tracker.add). False when
// ctx ended first.
func (c *Consumer) restartReader(ctx context.Context) bool {
	c.readerMu.Lock()
	parts := c.backwards
	c.backwards = nil
	old := c.reader
	c.readerMu.Unlock()
	c.track.rewind(parts)
	c.log.Warn("partition offsets went backwards under the reader: reading again from the group's committed offsets",
		"topic", c.cfg.Topic, "partitions", parts)
	if err := old.Close(); err != nil {
		c.log.Debug("close replaced reader", "err", err)
	}
	r := c.newReader()
	c.readerMu.Lock()
	c.reader = r
	c.readerMu.Unlock()
	return ctx.Err() == nil
}

// loadMark reads a partition's mark the first time this consumer sees the
// partition, retrying until it succeeds; false when ctx ended first.
func (c *Consumer) loadMark(ctx context.Context, partition int) bool {
	return c.retry(ctx, c.cfg.Workers, nil, func() error {
		mk, err := c.cfg.Marks.LoadMark(ctx, partition)
		if err != nil {
			return err // names the partition
		}
		c.track.init(partition, mk)
		return nil
	})
}

// offsetsReset reports a partition whose offsets went backwards and stores
// its new generation before any of its events is applied; false when ctx
// ended first.
func (c *Consumer) offsetsReset(ctx context.Context, partition int, offset int64, a added) bool {
	c.m.offsetResets.WithLabelValues(c.cfg.Topic, strconv.Itoa(partition)).Inc()
	c.log.Warn("partition offsets went backwards: new generation, events applied as new",
		"topic", c.cfg.Topic, "partition", partition, "offset", offset,
		"committed", a.from, "watermark", a.to, "generation", a.gen)
	return c.retry(ctx, c.cfg.Workers, nil, func() error { return c.saveMarks(ctx, true) })
}

// saveMarks stores the partitions' marks (only those whose generation is not
// stored yet when onlyUnsaved).
func (c *Consumer) saveMarks(ctx context.Context, onlyUnsaved bool) error {
	marks := c.track.marks(make(map[int]PartitionMark), onlyUnsaved)
	if len(marks) == 0 {
		return nil
	}
	if err := c.cfg.Marks.SaveMarks(ctx, marks); err != nil {
		return err
	}
	c.track.marksSaved(marks)
	return nil
}

// retry calls f until it succeeds, waiting with doubling backoff between
// attempts and reporting the failure in Ready under slot; failed, when not
// nil, is the error of an attempt the caller already made. False when ctx
// ended first.
func (c *Consumer) retry(ctx context.Context, slot int, failed error, f func() error) bool {
	backoff := c.cfg.HandlerBackoff
	for attempt := 1; ; attempt++ {
		err := failed
		if attempt > 1 || err == nil {
			err = f()
		}
		if err == nil {
			if attempt > 1 {
				c.stalls.clear(slot)
				c.log.Info("ingest resumed", "attempts", attempt)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		c.m.handlerErrors.Inc()
		c.stalls.set(slot, err)
		// Log the first failures and then about every minute, not every
		// attempt.
		if attempt <= 3 || attempt%max(1, int(time.Minute/c.cfg.MaxBackoff)) == 0 {
			c.log.Warn("ingest paused: retrying", "err", err, "attempt", attempt, "backoff", backoff)
		}
		if !sleepCtx(ctx, backoff) {
			return false
		}
		c.m.handlerRetries.Inc()
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// workerOf picks the worker of a message: by the event's user id, so one
// user's clicks stay in order on one worker whatever the message keys
// (producers may key a user's events differently); by key when the value
// has no user id to read (the worker rejects it, so any worker will do),
// or by partition for a message without either. The choice is stable
// within a process (hashSeed), which is all ordering needs.
func workerOf(user string, key []byte, partition, n int) int {
	switch {
	case user != "":
		return int(maphash.String(hashSeed, user) % uint64(n))
	case len(key) > 0:
		return int(hashBytes(key) % uint64(n))
	}
	return partition % n
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

// finished collects a worker's finished messages and reports them
// together: one tracker lock for up to doneFlush messages.
type finished struct {
	c    *Consumer
	done []partSeq
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
}

// row is one event of a run handed to the handler, and its outcome.
type row struct {
	ev   Event
	meta Meta
	job  int   // index of its job (Kafka) or of its raw event (Apply)
	err  error // outcome: nil (applied), a duplicate, a rejection or a failure
}

// runner holds the scratch slices of the handler's batch interface.
type runner struct {
	evs   []Event
	metas []Meta
	errs  []error
}

// apply hands rows to the handler and settles their bookkeeping (metrics
// and event ids), the one place that does so for Kafka and Apply alike. It
// fills each row's err and returns the index of the first row that failed
// with a transient error (its err set; rows after it are not settled and
// their event ids are released), or len(rows).
func (c *Consumer) apply(ctx context.Context, rn *runner, rows []row) int {
	rn.evs, rn.metas, rn.errs = rn.evs[:0], rn.metas[:0], rn.errs[:0]
	for i := range rows {
		rn.evs = append(rn.evs, rows[i].ev)
		rn.metas = append(rn.metas, rows[i].meta)
		rn.errs = append(rn.errs, nil)
	}
	n := min(max(c.handler.HandleEvents(ctx, rn.evs, rn.metas, rn.errs), 0), len(rows))
	applied := 0
	for i := range rows {
		r := &rows[i]
		switch err := rn.errs[i]; {
		case i > n:
			r.err = nil
			c.ids.release(r.ev.UserID, r.ev.EventID)
		case i == n:
			// The first transient failure: retried by the caller.
			if err == nil || Final(err) {
				err = fmt.Errorf("event of %s: handler stopped without a transient error (%v)", r.ev.UserID, err)
			}
			r.err = err
			c.ids.release(r.ev.UserID, r.ev.EventID)
		case err == nil:
			r.err = nil
			applied++
		case errors.Is(err, ErrDuplicate):
			r.err = err
			c.m.duplicates.Inc()
		case errors.Is(err, ErrRejected):
			r.err = err
			c.m.rejected(asReject(err).Reason).Inc()
			c.ids.release(r.ev.UserID, r.ev.EventID)
		default:
			// A transient error before n breaks the contract; stop there
			// rather than settle it (the rows after it are handed again).
			r.err = err
			c.ids.release(r.ev.UserID, r.ev.EventID)
			for k := i + 1; k < len(rows); k++ {
				c.ids.release(rows[k].ev.UserID, rows[k].ev.EventID)
			}
			n = i
			c.m.events.Add(float64(applied))
			return n
		}
	}
	c.m.events.Add(float64(applied))
	return n
}

// work is a worker: it decodes its queued messages and hands the valid
// events to the handler in runs of up to BatchSize. A run that stops at a
// transient failure has that event retried alone until it settles, then
// the events after it start the next run, so one user's events are applied
// in order and none is skipped.
func (c *Consumer) work(ctx context.Context, slot int, q *workQueue) {
	buf := make([]job, 0, q.limit)
	fin := c.newFinished()
	defer fin.flush()
	size := c.cfg.BatchSize
	rows := make([]row, 0, size)
	var rn runner
	for {
		fin.flush()
		jobs := q.take(ctx, buf)
		if jobs == nil {
			return
		}
		for i := 0; i < len(jobs); {
			if ctx.Err() != nil {
				// Stopping: the rest stays uncommitted and is redelivered.
				return
			}
			rows = rows[:0]
			now := time.Unix(0, c.clock.Load())
			for ; i < len(jobs) && len(rows) < size; i++ {
				j := &jobs[i]
				if IsControlRecord(j.msg.Key, j.msg.Value) {
					c.m.controlRecords.Inc()
					fin.mark(j)
					continue
				}
				ev, err := c.dec.decodeParsed(j.msg.Value, now, true, j.parsed)
				if err != nil && j.redelivery {
					// Rejected and dead-lettered when it came first.
					c.m.duplicates.Inc()
					fin.mark(j)
					continue
				}
				if err != nil {
					rej := asReject(err)
					c.m.rejected(rej.Reason).Inc()
					if !c.settled(ctx, fin, j, err) {
						return
					}
					continue
				}
				if !c.ids.reserve(ev.UserID, ev.EventID) {
					c.m.duplicates.Inc()
					fin.mark(j)
					continue
				}
				rows = append(rows, row{ev: ev, meta: c.metaOf(&j.msg), job: i})
			}
			if !c.settle(ctx, slot, &rn, rows, jobs, fin) {
				return
			}
		}
		clear(jobs) // drop the messages for the garbage collector
		buf = jobs
	}
}

// settle applies a run until every row is settled, retrying a failing row
// alone with backoff; false when ctx ended first.
func (c *Consumer) settle(ctx context.Context, slot int, rn *runner, rows []row, jobs []job, fin *finished) bool {
	for len(rows) > 0 {
		n := c.apply(ctx, rn, rows)
		for k := range rows[:n] {
			if !c.settled(ctx, fin, &jobs[rows[k].job], rows[k].err) {
				return false
			}
		}
		if n == len(rows) {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		r := rows[n : n+1]
		failed := func() error {
			return fmt.Errorf("apply partition %d offset %d: %w", r[0].meta.Partition, r[0].meta.Offset, r[0].err)
		}
		ok := c.retry(ctx, slot, failed(), func() error {
			if !c.ids.reserve(r[0].ev.UserID, r[0].ev.EventID) {
				r[0].err = fmt.Errorf("event %s of %s: %w", r[0].ev.EventID, r[0].ev.UserID, ErrDuplicate)
				c.m.duplicates.Inc()
				return nil
			}
			if c.apply(ctx, rn, r) == 1 {
				return nil
			}
			return failed()
		})
		if !ok || !c.settled(ctx, fin, &jobs[r[0].job], r[0].err) {
			return false
		}
		rows = rows[n+1:]
	}
	return true
}

// settled finishes a message whose event has its final outcome: done now,
// or once its dead letter is written when err is a rejection. False when ctx
// ended first.
func (c *Consumer) settled(ctx context.Context, fin *finished, j *job, err error) bool {
	if err == nil || !errors.Is(err, ErrRejected) || c.dlq == nil || j.redelivery {
		if errors.Is(err, ErrRejected) {
			rej := asReject(err)
			c.log.Debug("event rejected", "reason", rej.Reason, "detail", rej.Detail,
				"partition", j.msg.Partition, "offset", j.msg.Offset)
		}
		fin.mark(j)
		return true
	}
	rej := asReject(err)
	return c.dlq.add(ctx, deadLetter{msg: j.msg, seq: j.seq, reason: rej.Reason, detail: rej.Detail})
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

func (c *Consumer) metaOf(msg *fetched) Meta {
	return Meta{Topic: c.cfg.Topic, Partition: int32(msg.Partition), Offset: msg.Offset, Time: msg.Time, Gen: c.topicTag ^ msg.Gen}
}

// TopicGen is Meta.Gen of generation gen of a partition of topic: the
// generation XOR the FNV-1a hash (32 bits) of the topic's name.
func TopicGen(topic string, gen uint32) uint32 {
	h := fnv.New32a()
	_, _ = io.WriteString(h, topic)
	return h.Sum32() ^ gen
}

// asReject returns the *RejectError in err, or one with reason "handler" for
// another error wrapping ErrRejected.
func asReject(err error) *RejectError {
	var rej *RejectError
	if errors.As(err, &rej) {
		return rej
	}
	return &RejectError{Reason: ReasonHandler, Detail: err.Error()}
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

// commit commits every done offset not yet committed, then stores the
// partitions' marks. Only one goroutine calls it at a time.
func (c *Consumer) commit(ctx context.Context) error {
	offs := c.track.pending(nil)
	if c.noCommit {
		return nil
	}
	if len(offs) == 0 {
		if c.marksBehind.Load() {
			// The marks of the last commit were not stored (Redis failed,
			// or the consumer stopped meanwhile): nothing new is committed
			// to store them with.
			return c.saveCommittedMarks(ctx)
		}
		return nil
	}
	msgs := make([]kafka.Message, len(offs))
	for i, o := range offs {
		msgs[i] = kafka.Message{Topic: c.cfg.Topic, Partition: o.partition, Offset: o.offset}
	}
	start := time.Now()
	err := c.currentReader().CommitMessages(ctx, msgs...)
	c.m.commitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		c.m.commitErrors.Inc()
		return fmt.Errorf("commit %d partitions of %s: %w", len(msgs), c.cfg.Topic, err)
	}
	c.m.commits.Inc()
	c.track.committed(offs)
	// A mark that lags the commit is harmless for clicks (a later reset is
	// still seen against it; the histories tell their redeliveries), not
	// for the malformed records after it, which would be dead-lettered again:
	// it is stored at the next commit even when nothing new is committed.
	// One saved ahead of a commit would not be harmless.
	c.marksBehind.Store(true)
	return c.saveCommittedMarks(ctx)
}

// saveCommittedMarks stores the marks after a commit.
func (c *Consumer) saveCommittedMarks(ctx context.Context) error {
	if err := c.saveMarks(ctx, false); err != nil {
		return fmt.Errorf("after committing %s: %w", c.cfg.Topic, err)
	}
	c.marksBehind.Store(false)
	return nil
}

// Apply runs one raw event in the wire format through the same decoding,
// validation, metrics and handler as a Kafka message, in the caller's
// goroutine, with Meta{Partition: -1, Offset: -1}. It is ApplyMany of one
// event: a bad event returns a *RejectError (wrapping ErrRejected); an
// event whose (user_id, event_id) was applied recently (EventIDCache), by
// Apply or from Kafka, returns an error wrapping ErrDuplicate and is not
// applied again; a transient handler error is returned wrapped, without
// retry (the client retries). Apply does not order itself with the Kafka
// events of the same user.
func (c *Consumer) Apply(ctx context.Context, data []byte) error {
	var errs [1]error
	c.ApplyMany(ctx, [][]byte{data}, errs[:])
	return errs[0]
}

// ApplyMany is Apply for several raw events: errs[i] (len(errs) >=
// len(data)) is event i's outcome as Apply would return it. The valid
// events go to the handler together, in runs of up to BatchSize, each
// user's in order. When an event fails with a transient error ApplyMany
// returns its index: every event before it is settled, later ones may or
// may not have been applied (their errs are nil and their event ids
// forgotten: a resend is applied, or found a duplicate by the store). Else
// it returns len(data).
func (c *Consumer) ApplyMany(ctx context.Context, data [][]byte, errs []error) int {
	var rn runner
	rows := make([]row, 0, min(len(data), c.cfg.BatchSize))
	now := time.Now()
	for off := 0; off < len(data); {
		rows = rows[:0]
		for ; off < len(data) && len(rows) < c.cfg.BatchSize; off++ {
			ev, err := c.dec.Decode(data[off], now)
			switch {
			case err != nil:
				c.m.rejected(asReject(err).Reason).Inc()
				errs[off] = err
			case !c.ids.reserve(ev.UserID, ev.EventID):
				c.m.duplicates.Inc()
				errs[off] = fmt.Errorf("apply event %s of %s: %w", ev.EventID, ev.UserID, ErrDuplicate)
			default:
				errs[off] = nil
				rows = append(rows, row{ev: ev, meta: Meta{Partition: -1, Offset: -1, Time: now, Receipt: true}, job: off})
			}
		}
		if len(rows) == 0 {
			continue
		}
		n := c.apply(ctx, &rn, rows)
		for k := range rows[:min(n+1, len(rows))] {
			if err := rows[k].err; err != nil {
				errs[rows[k].job] = fmt.Errorf("apply event of %s: %w", rows[k].ev.UserID, err)
			}
		}
		if n < len(rows) {
			return rows[n].job
		}
	}
	return len(data)
}

// waitingRecord is a record waiting in a partition whose fetching stopped.
type waitingRecord struct {
	offset int64
	ts     time.Time
}

// fetchStallAfter is how long a held partition may go without a fetch while
// records wait in it before findWaiting reads the age of the first of them:
// well above a fetch's MaxWait, so that a consumer that keeps up is never
// asked.
const fetchStallAfter = 2 * time.Second

// findWaiting is given each lag reading: the partitions this consumer holds
// whose high-water mark is past what it fetched, with nothing fetched from
// them for fetchStallAfter (a fetch blocked in a group rejoin, a broker
// that stopped answering fetches), have records waiting unfetched, which
// the tracker knows nothing of. It reads the timestamp of the first such
// record of each, so that lagSeconds is the age of the oldest record not
// yet processed, fetched or not.
func (c *Consumer) findWaiting(ctx context.Context, before map[int]position, views map[int]brokerView) {
	now := time.Now()
	c.waitingMu.Lock()
	prev := c.waiting
	c.waitingMu.Unlock()
	found := map[int]waitingRecord{}
	for p, pos := range before {
		v, ok := views[p]
		if !ok || v.hwm <= pos.fetched+1 || now.Sub(pos.seenAt) < fetchStallAfter || !c.assign.holds(p) {
			continue
		}
		off := pos.fetched + 1
		if w, ok := prev[p]; ok && w.offset == off {
			found[p] = w
			continue
		}
		ts, err := c.lag.recordTime(ctx, p, off)
		if err != nil {
			c.log.Debug("age of a waiting record", "partition", p, "offset", off, "err", err)
			continue
		}
		found[p] = waitingRecord{offset: off, ts: ts}
	}
	c.waitingMu.Lock()
	c.waiting = found
	c.waitingMu.Unlock()
}

// lagSeconds is the age of the oldest record not processed yet: fetched
// and not yet settled, or waiting unfetched in a partition whose fetching
// stopped (found by findWaiting and not fetched since); 0 when none.
func (c *Consumer) lagSeconds() float64 {
	ts, ok := c.track.oldest()
	if !ok || ts.IsZero() || ts.Unix() <= 0 {
		ok = false
	}
	c.waitingMu.Lock()
	for p, w := range c.waiting {
		if c.track.fetchedUpTo(p) >= w.offset || w.ts.IsZero() || w.ts.Unix() <= 0 {
			continue // fetched since
		}
		if !ok || w.ts.Before(ts) {
			ts, ok = w.ts, true
		}
	}
	c.waitingMu.Unlock()
	if !ok {
		return 0
	}
	return max(time.Since(ts).Seconds(), 0)
}

// LagSeconds is prefetchd_ingest_lag_seconds: the age, by its Kafka
// timestamp, of the oldest record not processed yet, fetched and not yet
// settled or (within about a LagInterval) waiting in a partition whose
// fetching stopped (0 when none is waiting).
func (c *Consumer) LagSeconds() float64 { return c.lagSeconds() }

// Lag is the number of messages of the topic above the group's committed
// offsets, as last read from the brokers (every LagInterval); -1 before the
// first reading or while the brokers cannot be read.
func (c *Consumer) Lag() int64 { return c.lag.total() }

// Close releases the reader (leaving the group) and the dead-letter writer.
// Call it after Run returned; it is safe to call more than once.
func (c *Consumer) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	err := c.currentReader().Close()
	c.lag.close()
	if c.dlq != nil {
		err = errors.Join(err, c.dlq.close())
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
