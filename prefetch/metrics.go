package prefetch

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a page is dropped (label reason of prefetchd_prefetch_dropped_total).
const (
	dropInvalid        = "invalid"
	dropCanceled       = "canceled"
	dropClosed         = "closed"
	dropUserRate       = "user_rate"
	dropGlobalRate     = "global_rate"
	dropQueueFull      = "queue_full"
	dropShed           = "shed"
	dropBudget         = "budget"
	dropRedis          = "redis"
	dropShutdown       = "shutdown"
	dropBreakerOpen    = "breaker_open"
	dropOriginError    = "origin_error"
	dropOriginTimeout  = "origin_timeout"
	dropOrigin5xx      = "origin_5xx"
	dropOriginStatus   = "origin_status"
	dropOriginTooLarge = "origin_too_large"
)

var dropReasons = []string{
	dropInvalid, dropCanceled, dropClosed, dropUserRate, dropGlobalRate, dropQueueFull, dropShed,
	dropBudget, dropRedis, dropShutdown, dropBreakerOpen, dropOriginError, dropOriginTimeout,
	dropOrigin5xx, dropOriginStatus, dropOriginTooLarge,
}

// Results of origin requests (label result of prefetchd_prefetch_origin_requests_total).
const (
	originOK          = "ok"
	originBadURL      = "bad_url"
	originError       = "error"
	originTimeout     = "timeout"
	origin5xx         = "5xx"
	originOtherStatus = "other_status"
	originTooLarge    = "too_large"
)

var originResults = []string{originOK, originBadURL, originError, originTimeout, origin5xx, originOtherStatus, originTooLarge}

// warmerMetrics are the Warmer's Prometheus metrics.
type warmerMetrics struct {
	requested        prometheus.Counter
	dropped          map[string]prometheus.Counter
	skippedWarm      prometheus.Counter
	skippedCoalesced prometheus.Counter
	skippedExists    prometheus.Counter
	written          prometheus.Counter
	writtenBytes     prometheus.Counter
	writeSeconds     prometheus.Histogram
	// clickToWarm is the time from a click to Redis acknowledging the
	// write of a page predicted from it.
	clickToWarm prometheus.Histogram
	// late counts clicks on a page whose prefetch had not landed yet.
	late prometheus.Counter
	// blocked counts pages that waited for room in a full queue (Block).
	blocked        prometheus.Counter
	originRequests map[string]prometheus.Counter
	breakerState   prometheus.Gauge
	// resets counts the times the Warmer forgot its keys because the Redis
	// serving now is not the one that acknowledged them.
	resets map[string]prometheus.Counter
	// presenceErrors counts Present calls answered cold because Redis failed.
	presenceErrors prometheus.Counter
}

// Reasons the Warmer forgets its keys (label reason of
// prefetchd_prefetch_cache_resets_total).
const (
	resetRestart = "restart" // the server's run_id changed: restart or failover
	resetFlush   = "flush"   // the sentinel key is gone: FLUSHALL, FLUSHDB or eviction
)

func newWarmerMetrics(reg prometheus.Registerer, w *Warmer) (*warmerMetrics, error) {
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prefetchd_prefetch_dropped_total",
		Help: "Pages the warmer did not write, by reason.",
	}, []string{"reason"})
	skipped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prefetchd_prefetch_skipped_total",
		Help: "Pages not written because they were warm already (warm), queued already (coalesced) or held in Redis by someone else (exists).",
	}, []string{"reason"})
	resets := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prefetchd_prefetch_cache_resets_total",
		Help: "Times the warmer forgot every key it believed warm: the cache Redis restarted or failed over (restart) or lost the warmer's sentinel key (flush).",
	}, []string{"reason"})
	origin := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prefetchd_prefetch_origin_requests_total",
		Help: "Origin requests in origin mode, by result.",
	}, []string{"result"})
	m := &warmerMetrics{
		requested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_prefetch_requested_total",
			Help: "Pages offered to the warmer.",
		}),
		dropped:          make(map[string]prometheus.Counter, len(dropReasons)),
		skippedWarm:      skipped.WithLabelValues("warm"),
		skippedCoalesced: skipped.WithLabelValues("coalesced"),
		skippedExists:    skipped.WithLabelValues("exists"),
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_prefetch_written_total",
			Help: "Keys the warmer set in Redis.",
		}),
		writtenBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_prefetch_written_bytes_total",
			Help: "Value bytes the warmer set in Redis.",
		}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "prefetchd_prefetch_write_seconds",
			Help:    "Duration of one pipelined write to Redis.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}),
		clickToWarm: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "prefetchd_click_to_warm_seconds",
			Help:    "Time from a click (its event ts, or its Kafka record timestamp when ts is more than a minute off) to Redis acknowledging the write of a page predicted from it.",
			Buckets: roundBuckets(prometheus.ExponentialBucketsRange(0.0001, 10, 36)), // ~1.4× apart
		}),
		late: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_prefetch_late_total",
			Help: "Clicks on a page whose prefetch for the user was issued but not yet acknowledged by Redis.",
		}),
		blocked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_prefetch_blocked_total",
			Help: "Pages that waited for room in the warmer's full queue (backpressure into the consumer).",
		}),
		originRequests: make(map[string]prometheus.Counter, len(originResults)),
		resets: map[string]prometheus.Counter{
			resetRestart: resets.WithLabelValues(resetRestart),
			resetFlush:   resets.WithLabelValues(resetFlush),
		},
		presenceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_prefetch_presence_errors_total",
			Help: "Hint queries whose pages were reported cold because the presence check in Redis failed.",
		}),
		breakerState: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "prefetchd_prefetch_breaker_state",
			Help: "Origin circuit breaker: 0 closed, 1 open, 2 half-open.",
		}),
	}
	for _, r := range dropReasons {
		m.dropped[r] = dropped.WithLabelValues(r)
	}
	for _, r := range originResults {
		m.originRequests[r] = origin.WithLabelValues(r)
	}
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "prefetchd_prefetch_queue_length",
		Help: "Pages waiting to be written.",
	}, func() float64 { return float64(len(w.queue)) })
	tracked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "prefetchd_prefetch_tracked_keys",
		Help: "Keys the warmer remembers as warm.",
	}, func() float64 {
		w.mu.Lock()
		defer w.mu.Unlock()
		// Keys expire by the clock, not only when new ones are written:
		// forget those past their TTL before counting.
		w.keys.expire(w.now().UnixNano())
		return float64(w.keys.Len())
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requested, dropped, skipped, m.written, m.writtenBytes, m.writeSeconds, m.clickToWarm, m.late, m.blocked, origin, m.breakerState, queue, tracked, resets, m.presenceErrors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register warmer metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *warmerMetrics) drop(reason string, n int) { m.dropped[reason].Add(float64(n)) }

func (m *warmerMetrics) origin(result string) { m.originRequests[result].Inc() }

// roundBuckets rounds bucket bounds to 4 significant digits, so that their
// le labels read 0.0001 ... 10 rather than 9.999999999999948.
func roundBuckets(b []float64) []float64 {
	for i, v := range b {
		b[i], _ = strconv.ParseFloat(strconv.FormatFloat(v, 'g', 4, 64), 64)
	}
	return b
}
