package features

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// ingestMetrics are the consumer's prefetchd_ingest_* metrics.
type ingestMetrics struct {
	messages, events, duplicates       prometheus.Counter
	controlRecords                     prometheus.Counter
	handlerRetries, handlerErrors      prometheus.Counter
	fetchErrors, commits, commitErrors prometheus.Counter
	rebalances, lagErrors              prometheus.Counter
	rejectedVec, deadLetters           *prometheus.CounterVec
	offsetResets                       *prometheus.CounterVec
	commitSeconds                      prometheus.Histogram
}

func (m *ingestMetrics) rejected(reason string) prometheus.Counter {
	return m.rejectedVec.WithLabelValues(reason)
}

// newIngestMetrics builds the metrics and registers them with reg (nil: not
// registered). lag gives prefetchd_ingest_lag_messages (negative: unknown),
// lagSeconds prefetchd_ingest_lag_seconds and stalled the number of paused workers.
func newIngestMetrics(reg prometheus.Registerer, topic string, lag func() int64, lagSeconds func() float64, stalled func() int) (*ingestMetrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &ingestMetrics{
		messages:       counter("prefetchd_ingest_messages_total", "Messages fetched from Kafka."),
		events:         counter("prefetchd_ingest_events_total", "Events applied by the handler."),
		controlRecords: counter("prefetchd_ingest_control_records_total", "Transaction markers (the commit or abort records of transactional producers) fetched and skipped: not events, neither rejected nor dead-lettered."),
		duplicates:     counter("prefetchd_ingest_duplicates_total", "Events not applied again: Kafka redeliveries, and repeats of a recent (user_id, event_id) from Kafka or gRPC."),
		handlerRetries: counter("prefetchd_ingest_handler_retries_total", "Retries after a transient failure (handler, dead-letter write, partition mark)."),
		handlerErrors:  counter("prefetchd_ingest_handler_errors_total", "Transient failures (handler, dead-letter write, partition mark); each is retried, no event is skipped."),
		fetchErrors:    counter("prefetchd_ingest_fetch_errors_total", "Errors fetching from Kafka."),
		commits:        counter("prefetchd_ingest_commits_total", "Offset commits."),
		commitErrors:   counter("prefetchd_ingest_commit_errors_total", "Failed offset commits."),
		rebalances:     counter("prefetchd_ingest_rebalances_total", "Partition assignments received from the consumer group."),
		lagErrors:      counter("prefetchd_ingest_lag_errors_total", "Failed readings of the group's committed offsets and high-water marks."),
		rejectedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_ingest_rejected_total",
			Help: "Messages rejected, by reason.",
		}, []string{"reason"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_ingest_deadletter_total",
			Help: "Dead letters by result: written; failed (a write attempt that failed and is retried); truncated (written with the value or the key cut to fit: headers original_size, original_key_size).",
		}, []string{"result"}),
		offsetResets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_ingest_offset_resets_total",
			Help: "Times a partition's offsets went backwards (topic recreated, partition truncated, broker replaced, group reset), or its group offset was found past the end of its log and reset to the log's start: the records of a new log are then applied as new, those of a reset group dropped as redeliveries.",
		}, []string{"topic", "partition"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "prefetchd_ingest_commit_seconds",
			Help:    "Time to commit offsets.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
	}
	for _, r := range []string{ReasonEmpty, ReasonTooLarge, ReasonUTF8, ReasonJSON, ReasonMissingUserID,
		ReasonMissingPage, ReasonMissingTS, ReasonUserIDTooLong, ReasonPageTooLong, ReasonFieldTooLong,
		ReasonBadTS, ReasonTSSkew, ReasonModel, ReasonHandler} {
		m.rejectedVec.WithLabelValues(r)
	}
	for _, r := range []string{"written", "failed", "truncated"} {
		m.deadLetters.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	lagGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "prefetchd_ingest_lag_messages",
		Help: "Messages of the topic above the group's committed offsets (high-water mark minus committed offset, summed over partitions), as last read from the brokers; NaN while they cannot be read.",
	}, func() float64 {
		if n := lag(); n >= 0 {
			return float64(n)
		}
		return nan
	})
	lagSecondsGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "prefetchd_ingest_lag_seconds",
		Help: "Age (by its Kafka timestamp) of the oldest record fetched and not yet settled; 0 when none is waiting.",
	}, lagSeconds)
	stalledGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "prefetchd_ingest_paused",
		Help: "Ingest loops (workers, dead-letter writer) paused, retrying after a transient failure.",
	}, func() float64 { return float64(stalled()) })
	for _, col := range []prometheus.Collector{m.messages, m.events, m.controlRecords, m.duplicates, m.handlerRetries,
		m.handlerErrors, m.fetchErrors, m.commits, m.commitErrors, m.rebalances, m.lagErrors,
		m.rejectedVec, m.deadLetters, m.offsetResets, m.commitSeconds, lagGauge, lagSecondsGauge, stalledGauge} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register ingest metrics: %w", err)
		}
	}
	return m, nil
}
