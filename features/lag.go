package features

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// lagWatch reads, every LagInterval, the group's committed offsets and the
// topic's high-water marks from the brokers: the lag is what Kafka says, not
// what the consumer believes it did.
type lagWatch struct {
	cfg       ConsumerConfig
	log       *slog.Logger
	client    *kafka.Client
	transport *kafka.Transport
	lag       atomic.Int64 // -1: unknown
	// kick asks for a reading now, not at the next LagInterval (see soon).
	kick chan struct{}
}

// soon asks for a reading now and another a second later: after the group
// hands out partitions, offsets gone backwards or past the end of a
// replaced log are found within about a second, not a LagInterval.
func (w *lagWatch) soon() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
	time.AfterFunc(time.Second, func() {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	})
}

func newLagWatch(cfg ConsumerConfig, log *slog.Logger) *lagWatch {
	transport := cfg.transport()
	w := &lagWatch{cfg: cfg, log: log, transport: transport, kick: make(chan struct{}, 1),
		client: &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 5 * time.Second, Transport: transport}}
	w.lag.Store(-1)
	return w
}

func (w *lagWatch) total() int64 { return w.lag.Load() }

// run reads the lag every LagInterval until ctx ends. positions gives what
// this consumer committed and fetched per partition, read before the
// brokers are asked; a partition whose group offset or high-water mark is
// now below that went backwards under the reader (a topic deleted and
// created again keeps kafka-go reading at its old position): backwards is
// told which.
//
// waiting, when not nil, is given each reading with the positions read
// before it (see Consumer.findWaiting).
func (w *lagWatch) run(ctx context.Context, m *ingestMetrics, positions func() map[int]position, backwards func([]int), beyond func(map[int]int64), waiting func(context.Context, map[int]position, map[int]brokerView)) {
	t := time.NewTicker(w.cfg.LagInterval)
	defer t.Stop()
	failing := false
	for {
		before := positions()
		n, parts, err := w.read(ctx)
		if err == nil {
			if past := beyondEnd(parts); len(past) > 0 {
				beyond(past)
			}
			if gone := wentBack(before, parts); len(gone) > 0 {
				backwards(gone)
			}
			if waiting != nil {
				waiting(ctx, before, parts)
			}
		}
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			w.lag.Store(-1)
			m.lagErrors.Inc()
			if !failing {
				w.log.Warn("read consumer lag", "err", err, "topic", w.cfg.Topic, "group", w.cfg.GroupID)
			}
			failing = true
		default:
			w.lag.Store(n)
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
		}
	}
}

// brokerView is a partition as the brokers see it: the group's committed
// offset (the next to read, -1 when none) and the high-water mark.
type brokerView struct {
	committed, hwm, first int64
}

// beyondEnd returns the partitions whose group offset is past the end of
// their log, with the log's start: the log was replaced by a shorter one (a
// broker replaced empty, a topic recreated) after the offset was committed.
// A reader started there waits for the log to grow past it, skipping every
// record before, so the group must start such a partition again from the
// log's start.
func beyondEnd(now map[int]brokerView) map[int]int64 {
	var out map[int]int64
	for p, v := range now {
		if v.committed > v.hwm {
			if out == nil {
				out = map[int]int64{}
			}
			out[p] = v.first
		}
	}
	return out
}

// wentBack returns the partitions whose group offset fell below what this
// consumer committed, or whose high-water mark fell below what it fetched.
func wentBack(before map[int]position, now map[int]brokerView) []int {
	var out []int
	for p, pos := range before {
		v, ok := now[p]
		if !ok {
			continue
		}
		if (pos.committed >= 0 && v.committed < pos.committed+1) || (pos.fetched >= 0 && v.hwm < pos.fetched+1) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// read returns the sum over the topic's partitions of the high-water mark
// minus the group's committed offset (minus the log start when the group has
// committed nothing there), and each partition's view.
func (w *lagWatch) read(ctx context.Context) (int64, map[int]brokerView, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	meta, err := w.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{w.cfg.Topic}})
	if err != nil {
		return 0, nil, fmt.Errorf("metadata of %s: %w", w.cfg.Topic, err)
	}
	var parts []int
	for _, t := range meta.Topics {
		if t.Name != w.cfg.Topic {
			continue
		}
		if t.Error != nil {
			return 0, nil, fmt.Errorf("metadata of %s: %w", w.cfg.Topic, t.Error)
		}
		for _, p := range t.Partitions {
			parts = append(parts, p.ID)
		}
	}
	if len(parts) == 0 {
		return 0, nil, fmt.Errorf("topic %s has no partitions", w.cfg.Topic)
	}
	reqs := make([]kafka.OffsetRequest, 0, 2*len(parts))
	for _, p := range parts {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	offs, err := w.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{w.cfg.Topic: reqs}})
	if err != nil {
		return 0, nil, fmt.Errorf("list offsets of %s: %w", w.cfg.Topic, err)
	}
	committed, err := w.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: w.cfg.GroupID, Topics: map[string][]int{w.cfg.Topic: parts}})
	if err != nil {
		return 0, nil, fmt.Errorf("committed offsets of group %s: %w", w.cfg.GroupID, err)
	}
	if committed.Error != nil && !errors.Is(committed.Error, kafka.GroupIdNotFound) {
		// (A group the brokers do not know yet has committed nothing:
		// the whole log is lag, as for a partition without an offset.)
		return 0, nil, fmt.Errorf("committed offsets of group %s: %w", w.cfg.GroupID, committed.Error)
	}
	next := make(map[int]int64, len(parts))
	for _, p := range committed.Topics[w.cfg.Topic] {
		if p.Error != nil {
			return 0, nil, fmt.Errorf("committed offset of %s/%d: %w", w.cfg.Topic, p.Partition, p.Error)
		}
		next[p.Partition] = p.CommittedOffset
	}
	var total int64
	views := make(map[int]brokerView, len(parts))
	for _, po := range offs.Topics[w.cfg.Topic] {
		if po.Error != nil {
			return 0, nil, fmt.Errorf("offsets of %s/%d: %w", w.cfg.Topic, po.Partition, po.Error)
		}
		com, ok := next[po.Partition]
		if !ok {
			com = -1
		}
		views[po.Partition] = brokerView{committed: com, hwm: po.LastOffset, first: po.FirstOffset}
		from := com
		if from < po.FirstOffset || from > po.LastOffset {
			// Nothing committed, committed before the log's start, or past
			// its end (a replaced log): the whole log is unread.
			from = po.FirstOffset
		}
		total += max(po.LastOffset-from, 0)
	}
	return total, views, nil
}

// recordTime returns the Kafka timestamp of the record at offset off of
// partition p (the first one at or after it, as read_committed sees them).
func (w *lagWatch) recordTime(ctx context.Context, p int, off int64) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := w.client.Fetch(ctx, &kafka.FetchRequest{Topic: w.cfg.Topic, Partition: p, Offset: off,
		MinBytes: 1, MaxBytes: 64 << 10, MaxWait: 100 * time.Millisecond, IsolationLevel: kafka.ReadCommitted})
	if err != nil {
		return time.Time{}, fmt.Errorf("fetch %s/%d at %d: %w", w.cfg.Topic, p, off, err)
	}
	if res.Error != nil {
		return time.Time{}, fmt.Errorf("fetch %s/%d at %d: %w", w.cfg.Topic, p, off, res.Error)
	}
	for {
		rec, err := res.Records.ReadRecord()
		if err != nil {
			return time.Time{}, fmt.Errorf("read %s/%d at %d: %w", w.cfg.Topic, p, off, err)
		}
		if rec.Offset >= off {
			return rec.Time, nil
		}
	}
}

func (w *lagWatch) close() { w.transport.CloseIdleConnections() }

// assignments follows the partitions the group gives this consumer, from
// kafka-go's log line at each new generation (kafka-go has no callback for
// it), and logs what was gained and lost.
type assignments struct {
	topic      string
	log        *slog.Logger
	rebalances prometheus.Counter
	// onAssign, when set, is given the group's committed offsets of the
	// partitions assigned, before they are fetched.
	onAssign func(next map[int]int64)
	mu       sync.Mutex
	owned    []int // guarded by mu
}

// holds reports whether partition p is assigned to this consumer.
func (a *assignments) holds(p int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.owned, p)
}

func newAssignments(topic string, log *slog.Logger, rebalances prometheus.Counter) *assignments {
	return &assignments{topic: topic, log: log, rebalances: rebalances}
}

// subscribedLine matches kafka-go's "subscribed to topics and partitions:
// map[{topic:clicks partition:0}:-2 ...]" (offsets are the group's committed
// offsets, negative when none).
var (
	subscribedLine = regexp.MustCompile(`^subscribed to topics and partitions: `)
	subscribedPart = regexp.MustCompile(`\{topic:(\S+) partition:(\d+)\}:(-?\d+)`)
)

// observe is kafka-go's Logger.
func (a *assignments) observe(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	if !subscribedLine.MatchString(line) {
		return
	}
	var now []int
	offsets := map[int]int64{}
	for _, m := range subscribedPart.FindAllStringSubmatch(line, -1) {
		if m[1] != a.topic {
			continue
		}
		p, err1 := strconv.Atoi(m[2])
		o, err2 := strconv.ParseInt(m[3], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		now = append(now, p)
		offsets[p] = o
	}
	slices.Sort(now)
	a.mu.Lock()
	before := a.owned
	a.owned = now
	a.mu.Unlock()
	var gained, lost []int
	for _, p := range now {
		if !slices.Contains(before, p) {
			gained = append(gained, p)
		}
	}
	for _, p := range before {
		if !slices.Contains(now, p) {
			lost = append(lost, p)
		}
	}
	a.rebalances.Inc()
	a.log.Info("partitions assigned", "topic", a.topic, "partitions", now, "gained", gained, "lost", lost, "committed", offsets)
	if a.onAssign != nil {
		a.onAssign(offsets)
	}
}

// transport is an own kafka-go transport (not kafka-go's process-wide
// default, so that its connections can be released) with the Dialer's TLS
// and SASL.
func (c ConsumerConfig) transport() *kafka.Transport {
	if c.Dialer == nil {
		return &kafka.Transport{}
	}
	return &kafka.Transport{Dial: c.Dialer.DialFunc, TLS: c.Dialer.TLS, SASL: c.Dialer.SASLMechanism}
}
