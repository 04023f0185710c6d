package features

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// deadLetter is a rejected message waiting for its copy in the dead-letter
// topic; its offset is done once the copy is written.
type deadLetter struct {
	msg    fetched
	seq    int64
	reason string
	detail string
	// limit is the most bytes of key, value and headers this letter may
	// take at the next attempt.
	limit int
}

// deadLetters writes rejected messages to the dead-letter topic in
// batches, retrying a failed write until it succeeds: a rejected message is
// done only once it is durably in that topic. A letter over the size limit
// (ConsumerConfig.DeadLetterMaxBytes, or the broker's, learnt from its
// refusal) is cut, never dropped.
type deadLetters struct {
	cfg       ConsumerConfig
	log       *slog.Logger
	m         *ingestMetrics
	stalls    *stalls
	slot      int
	writer    *kafka.Writer
	transport *kafka.Transport
	queue     chan deadLetter
}

func newDeadLetters(cfg ConsumerConfig, log *slog.Logger, m *ingestMetrics, st *stalls, slot int) *deadLetters {
	// An own transport (not kafka-go's process-wide default) so that close
	// can release its connections.
	transport := cfg.transport()
	return &deadLetters{
		cfg: cfg, log: log, m: m, stalls: st, slot: slot, transport: transport,
		writer: &kafka.Writer{
			Addr:                   kafka.TCP(cfg.Brokers...),
			Topic:                  cfg.DeadLetterTopic,
			Balancer:               &kafka.Hash{},
			BatchTimeout:           5 * time.Millisecond,
			BatchBytes:             int64(cfg.DeadLetterMaxBytes) + 4096,
			RequiredAcks:           kafka.RequireAll,
			AllowAutoTopicCreation: true,
			MaxAttempts:            3,
			WriteTimeout:           5 * time.Second,
			Transport:              transport,
		},
		queue: make(chan deadLetter, 1024),
	}
}

// add queues a letter, waiting while the queue is full (the writer is
// retrying); false when ctx ended first.
func (d *deadLetters) add(ctx context.Context, dl deadLetter) bool {
	select {
	case d.queue <- dl:
		return true
	case <-ctx.Done():
		return false
	}
}

// headerBudget bounds the detail header, which quotes the bad input, and
// the letter's key.
const headerBudget = 1024

// message builds the letter's Kafka message within its limit: the value is
// cut first, then the detail header, then the key (down to keyFloor bytes),
// each only as far as the letter needs; a cut key or value is named with
// its original size.
func (d *deadLetters) message(dl *deadLetter) (kafka.Message, bool) {
	detail := dl.detail
	if len(detail) > headerBudget {
		detail = detail[:headerBudget]
	}
	key := dl.msg.Key
	if len(key) > headerBudget {
		// A key beyond any sane user id would not fit a topic's limit
		// either.
		key = key[:headerBudget]
	}
	headers := []kafka.Header{
		{Key: "reason", Value: []byte(dl.reason)},
		{Key: "source_topic", Value: []byte(d.cfg.Topic)},
		{Key: "source_partition", Value: []byte(strconv.Itoa(dl.msg.Partition))},
		{Key: "source_offset", Value: []byte(strconv.FormatInt(dl.msg.Offset, 10))},
	}
	// Room for key, value and detail: the limit less the other headers,
	// the detail's name and the two size headers that cuts may add.
	room := dl.limit - len("detail") - 2*sizeHeader
	for _, h := range headers {
		room -= len(h.Key) + len(h.Value)
	}
	value := dl.msg.Value
	value = value[:min(len(value), max(room-len(key)-len(detail), 0))]
	detail = detail[:min(len(detail), max(room-len(key), 0))]
	key = key[:min(len(key), max(room, keyFloor))]
	headers = slices.Insert(headers, 1, kafka.Header{Key: "detail", Value: []byte(detail)})
	if len(key) < len(dl.msg.Key) {
		headers = append(headers, kafka.Header{Key: "original_key_size", Value: []byte(strconv.Itoa(len(dl.msg.Key)))})
	}
	cut := len(value) < len(dl.msg.Value)
	if cut {
		headers = append(headers, kafka.Header{Key: "original_size", Value: []byte(strconv.Itoa(len(dl.msg.Value)))})
	}
	return kafka.Message{Key: key, Value: value, Headers: headers}, cut || len(key) < len(dl.msg.Key)
}

// keyFloor is the part of a key never cut: a topic whose limit cannot hold
// that much beside the headers refuses the letter until it is raised, as
// before any cut.
const keyFloor = 64

// sizeHeader bounds an original_size or original_key_size header (name and
// decimal value).
const sizeHeader = 40

// run writes letters until ctx ends, calling done for each once written.
// Letters not written when ctx ends stay uncommitted and are redelivered.
func (d *deadLetters) run(ctx context.Context, done func(partition int, seq int64)) {
	batch := make([]deadLetter, 0, 128)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case dl := <-d.queue:
			batch = append(batch, dl)
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case dl := <-d.queue:
				batch = append(batch, dl)
			default:
				break fill
			}
		}
		if !d.write(ctx, batch) {
			return
		}
		for _, dl := range batch {
			done(dl.msg.Partition, dl.seq)
		}
	}
}

// write writes the batch, retrying with backoff until every letter is in;
// false when ctx ended first. A batch the broker refuses as too large is
// cut to the topic's max.message.bytes, read from the broker, and written
// again at once, each letter alone from then on (the limit holds for a
// record batch, which letters written together share); the limit is read
// again before every later attempt, so a topic whose limit is raised
// meanwhile gets the letters whole.
func (d *deadLetters) write(ctx context.Context, batch []deadLetter) bool {
	backoff := d.cfg.HandlerBackoff
	limit := d.cfg.DeadLetterMaxBytes
	tooLarge := false
	alone := false // since a refusal as too large: one letter per write
	sent := 0      // letters of the batch written so, not to write again
	for attempt := 1; ; attempt++ {
		if tooLarge {
			if l, err := d.topicLimit(ctx); err == nil {
				limit = min(d.cfg.DeadLetterMaxBytes, max(l-recordOverhead, 0))
			}
		}
		msgs := make([]kafka.Message, len(batch))
		truncated := 0
		for i := range batch {
			batch[i].limit = limit
			var cut bool
			msgs[i], cut = d.message(&batch[i])
			if cut {
				truncated++
			}
		}
		var err error
		if alone {
			// The broker's limit applies to a record batch, and letters
			// written together may share one: once refused as too large,
			// each letter goes alone.
			for ; sent < len(msgs); sent++ {
				if err = d.writer.WriteMessages(ctx, msgs[sent]); err != nil {
					break
				}
			}
		} else {
			err = d.writer.WriteMessages(ctx, msgs...)
		}
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			d.m.deadLetters.WithLabelValues("written").Add(float64(len(batch)))
			d.m.deadLetters.WithLabelValues("truncated").Add(float64(truncated))
			if attempt > 1 {
				d.stalls.clear(d.slot)
				d.log.Info("dead letters written after retries", "count", len(batch), "attempts", attempt)
			}
			return true
		}
		d.m.deadLetters.WithLabelValues("failed").Add(float64(len(batch)))
		d.stalls.set(d.slot, fmt.Errorf("write %d dead letters to %s: %w", len(batch), d.cfg.DeadLetterTopic, err))
		if attempt <= 3 || attempt%12 == 0 {
			d.log.Warn("write dead letters: retrying", "err", err, "topic", d.cfg.DeadLetterTopic,
				"count", len(batch), "attempt", attempt, "limit", limit)
		}
		wasTooLarge := tooLarge
		tooLarge = isTooLarge(err)
		alone = alone || tooLarge
		if tooLarge && !wasTooLarge {
			continue // at once, cut to the topic's limit
		}
		if !sleepCtx(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, d.cfg.MaxBackoff)
	}
}

// recordOverhead is what a record batch of one letter takes beside the
// letter's key, value and headers (batch header, record framing).
const recordOverhead = 256

// isTooLarge reports whether a write failed because a message was over the
// broker's or the writer's size limit.
func isTooLarge(err error) bool {
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if e != nil && isTooLarge(e) {
				return true
			}
		}
		return false
	}
	var mtl kafka.MessageTooLargeError
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.As(err, &mtl)
}

// topicLimit reads the dead-letter topic's max.message.bytes.
func (d *deadLetters) topicLimit(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl := &kafka.Client{Addr: kafka.TCP(d.cfg.Brokers...), Transport: d.transport}
	res, err := cl.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: d.cfg.DeadLetterTopic, ConfigNames: []string{"max.message.bytes"}}}})
	if err != nil {
		return 0, fmt.Errorf("describe %s: %w", d.cfg.DeadLetterTopic, err)
	}
	for _, r := range res.Resources {
		if r.Error != nil {
			return 0, fmt.Errorf("describe %s: %w", d.cfg.DeadLetterTopic, r.Error)
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName == "max.message.bytes" {
				n, err := strconv.Atoi(e.ConfigValue)
				if err != nil {
					return 0, fmt.Errorf("max.message.bytes of %s: %w", d.cfg.DeadLetterTopic, err)
				}
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("describe %s: no max.message.bytes", d.cfg.DeadLetterTopic)
}

func (d *deadLetters) close() error {
	err := d.writer.Close()
	d.transport.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("close dead-letter writer: %w", err)
	}
	return nil
}
