package embedded

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/training"
)

// ReplayConfig describes a replay of sessions into a Kafka topic.
type ReplayConfig struct {
	// Brokers and Topic receive the events.
	Brokers []string
	Topic   string
	// Rate is the number of events per second. Default 200.
	Rate float64
	// Concurrent is how many sessions are in progress at once; their clicks
	// interleave as they would on a live site. Default 50.
	Concurrent int
	// Loop restarts from the first session when the data runs out.
	Loop bool
	// TLS and SASL secure the connections; nil is plaintext without
	// authentication.
	TLS  *tls.Config
	SASL sasl.Mechanism
}

// Validate checks the configuration.
func (c *ReplayConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("replay: no brokers")
	case c.Topic == "":
		return errors.New("replay: topic is empty")
	case c.Rate < 0:
		return fmt.Errorf("replay: rate %v is negative", c.Rate)
	case c.Concurrent < 0:
		return fmt.Errorf("replay: concurrent %d is negative", c.Concurrent)
	}
	return nil
}

// Replayer writes sessions to Kafka as click events.
type Replayer struct {
	cfg      ReplayConfig
	sessions []training.Session
	log      *slog.Logger
}

// NewReplayer builds a replayer of sessions (as NASASessions returns them).
func NewReplayer(cfg ReplayConfig, sessions []training.Session, log *slog.Logger) (*Replayer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Rate == 0 {
		cfg.Rate = 200
	}
	if cfg.Concurrent == 0 {
		cfg.Concurrent = 50
	}
	if len(sessions) == 0 {
		return nil, errors.New("replay: no sessions")
	}
	return &Replayer{cfg: cfg, sessions: sessions, log: log}, nil
}

// Run writes events at the configured rate until the data runs out (or,
// with Loop, until ctx ends). It returns nil when ctx ends. Brokers refusing
// writes pause it (see write); they never stop it.
func (r *Replayer) Run(ctx context.Context) error {
	// Our own connection pool, closed when the replay ends.
	transport := &kafka.Transport{TLS: r.cfg.TLS, SASL: r.cfg.SASL}
	defer transport.CloseIdleConnections()
	w := &kafka.Writer{
		Addr:                   kafka.TCP(r.cfg.Brokers...),
		Topic:                  r.cfg.Topic,
		Balancer:               &kafka.Hash{},
		BatchTimeout:           time.Millisecond,
		AllowAutoTopicCreation: true,
		Transport:              transport,
	}
	defer func() {
		// Close flushes what is pending: not waited for beyond a second,
		// as an unresponsive broker would hold the shutdown.
		done := make(chan struct{})
		go func() {
			_ = w.Close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(time.Second):
			r.log.Warn("replay writer did not close in time", "waited", "1s")
		}
	}()

	// Event ids carry this run's start, so that a replay into a topic that
	// holds an earlier one's events is not taken for its duplicates.
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	type cursor struct{ session, pos, round int }
	active := make([]cursor, 0, r.cfg.Concurrent)
	next, round, sent := 0, 0, 0
	refill := func() bool {
		for len(active) < r.cfg.Concurrent {
			if next == len(r.sessions) {
				if !r.cfg.Loop {
					return len(active) > 0
				}
				next = 0
				round++
			}
			active = append(active, cursor{session: next, round: round})
			next++
		}
		return true
	}
	interval := time.Duration(float64(time.Second) / r.cfg.Rate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	for i := 0; refill(); i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-report.C:
			r.log.Info("replay progress", "events", sent, "next_session", next, "round", round)
			continue
		case <-tick.C:
		}
		k := i % len(active)
		c := &active[k]
		page := r.sessions[c.session].Pages[c.pos]
		user := "nasa-" + strconv.Itoa(c.session)
		if c.round > 0 {
			user += "-r" + strconv.Itoa(c.round)
		}
		b, err := features.Encode(features.Event{
			UserID:  user,
			Page:    page,
			TS:      time.Now(),
			EventID: user + "-" + strconv.Itoa(c.pos) + "-" + run,
		})
		if err != nil {
			return fmt.Errorf("encode replay event: %w", err)
		}
		if !r.write(ctx, w, kafka.Message{Key: []byte(user), Value: b}) {
			return nil
		}
		sent++
		c.pos++
		if c.pos == len(r.sessions[c.session].Pages) {
			active[k] = active[len(active)-1]
			active = active[:len(active)-1]
		}
	}
	r.log.Info("replay finished", "events", sent)
	return nil
}

// write writes msg, retrying with backoff (up to 5 s) while the brokers
// refuse it, for as long as it takes: a broker away for a while pauses the
// replay, which then goes on from the same event. False when ctx ended
// first.
func (r *Replayer) write(ctx context.Context, w *kafka.Writer, msg kafka.Message) bool {
	backoff := 100 * time.Millisecond
	failures := 0
	for {
		err := w.WriteMessages(ctx, msg)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			if failures > 0 {
				r.log.Info("replay resumed", "failed_writes", failures)
			}
			return true
		}
		if failures == 0 {
			r.log.Warn("replay paused: writing to kafka failed; retrying", "err", err)
		}
		failures++
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
