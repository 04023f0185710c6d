package lifecycle

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Prometheus series of one Manager.
type metrics struct {
	active     *prometheus.GaugeVec
	swaps      *prometheus.CounterVec
	refused    *prometheus.CounterVec
	skipped    *prometheus.CounterVec
	unserved   prometheus.GaugeFunc
	rollbacks  *prometheus.CounterVec
	loaded     prometheus.Gauge
	validation prometheus.Histogram
	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	issued     *prometheus.CounterVec
	used       *prometheus.CounterVec
	precision  precisionCollector
}

// precisionCollector is prefetchd_model_precision, computed at each scrape
// from every held version's window, so that it falls as the window moves on
// while no prefetch comes.
type precisionCollector struct {
	desc *prometheus.Desc
	each func(f func(version string, precision float64))
}

// Describe implements prometheus.Collector.
func (c precisionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c precisionCollector) Collect(ch chan<- prometheus.Metric) {
	c.each(func(version string, p float64) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, p, version)
	})
}

// newMetrics builds the lifecycle's metrics; unserved is read at each
// scrape for prefetchd_model_unserved_folders, and precisions for
// prefetchd_model_precision.
func newMetrics(reg prometheus.Registerer, unserved func() float64, precisions func(f func(version string, precision float64))) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "prefetchd_model_active", Help: "1 for the model version serving now.",
		}, []string{"version"}),
		swaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_model_swaps_total", Help: "Model swaps by cause (publish, activate, rollback, auto_rollback, static).",
		}, []string{"cause"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_model_refused_total", Help: "Model versions refused by validation, by reason.",
		}, []string{"reason"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_model_skipped_total",
			Help: "Version folders found not servable by a scan, counted once per folder and reason (incomplete, manifest, settling), or valid but not served as older than the version serving (older).",
		}, []string{"reason"}),
		unserved: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "prefetchd_model_unserved_folders", Help: "Version folders not served: skipped by the last scan (incomplete, manifest, settling), refused (validation, automatic rollback), or published while a version created later served (older).",
		}, unserved),
		rollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_model_rollbacks_total", Help: "Rollbacks by cause (manual, auto).",
		}, []string{"cause"}),
		loaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "prefetchd_model_loaded_versions", Help: "Model versions held in memory.",
		}),
		validation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "prefetchd_model_validation_seconds", Help: "Time to load and validate a model version.",
			Buckets: prometheus.ExponentialBuckets(0.005, 3, 9),
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_model_requests_total", Help: "Predictions served, by model version.",
		}, []string{"version"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "prefetchd_model_request_seconds", Help: "Prediction latency, by model version.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2.5, 12),
		}, []string{"version"}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_model_prefetch_issued_total", Help: "Prefetches issued from a model version's predictions.",
		}, []string{"version"}),
		used: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_model_prefetch_used_total", Help: "Prefetched pages the user then visited, by model version.",
		}, []string{"version"}),
		precision: precisionCollector{
			desc: prometheus.NewDesc("prefetchd_model_precision",
				"Live prefetch precision (used/issued) of a model version over the auto-rollback window (0 with no prefetch in it), as of the scrape.",
				[]string{"version"}, nil),
			each: precisions,
		},
	}
	for _, r := range []string{SkipIncomplete, SkipManifest, SkipSettling, SkipOlder} {
		m.skipped.WithLabelValues(r) // present at zero from the first scrape
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.active, m.swaps, m.refused, m.skipped, m.unserved, m.rollbacks, m.loaded,
		m.validation, m.requests, m.latency, m.issued, m.used, m.precision} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register model lifecycle metrics: %w", err)
		}
	}
	return m, nil
}

// forget drops the per-version series of a version that is no longer held.
func (m *metrics) forget(version string) {
	m.active.DeleteLabelValues(version)
	m.requests.DeleteLabelValues(version)
	m.latency.DeleteLabelValues(version)
	m.issued.DeleteLabelValues(version)
	m.used.DeleteLabelValues(version)
}

// stats are the serving figures of one version. Its fields are updated on the
// request path without the Manager's locks.
type stats struct {
	requests atomic.Uint64
	issued   atomic.Uint64
	used     atomic.Uint64
	wasted   atomic.Uint64
	win      *window

	reqCounter prometheus.Counter
	latency    prometheus.Observer
	issuedC    prometheus.Counter
	usedC      prometheus.Counter
}

func (m *metrics) newStats(version string, w time.Duration) *stats {
	return &stats{
		win:        newWindow(w),
		reqCounter: m.requests.WithLabelValues(version),
		latency:    m.latency.WithLabelValues(version),
		issuedC:    m.issued.WithLabelValues(version),
		usedC:      m.used.WithLabelValues(version),
	}
}

// windowBuckets is the resolution of a precision window.
const windowBuckets = 10

// window counts prefetches issued, used and wasted (expired unused) over a
// sliding time window, in windowBuckets buckets.
type window struct {
	span time.Duration // of one bucket

	mu      sync.Mutex
	buckets [windowBuckets]struct {
		start time.Time
		counts
	}
}

// counts are prefetches issued, used and wasted (expired or evicted unused).
// Used and wasted are the prefetches whose fate is known.
type counts struct {
	issued, used, wasted uint64
}

// decided is the precision of the prefetches whose fate is known, and how
// many they are.
func (c counts) decided() (float64, uint64) {
	n := c.used + c.wasted
	if n == 0 {
		return 0, 0
	}
	return float64(c.used) / float64(n), n
}

func newWindow(d time.Duration) *window {
	return &window{span: max(d/windowBuckets, time.Nanosecond)}
}

// add counts prefetches at now.
func (w *window) add(now time.Time, c counts) {
	start := now.Truncate(w.span)
	i := int(start.UnixNano()/int64(w.span)) % windowBuckets
	w.mu.Lock()
	b := &w.buckets[i]
	if !b.start.Equal(start) {
		b.start, b.counts = start, counts{}
	}
	b.issued += c.issued
	b.used += c.used
	b.wasted += c.wasted
	w.mu.Unlock()
}

// sum returns the prefetches counted in the window ending at now.
func (w *window) sum(now time.Time) counts {
	oldest := now.Truncate(w.span).Add(-w.span * (windowBuckets - 1))
	w.mu.Lock()
	defer w.mu.Unlock()
	var c counts
	for _, b := range w.buckets {
		if !b.start.Before(oldest) && !b.start.After(now) {
			c.issued += b.issued
			c.used += b.used
			c.wasted += b.wasted
		}
	}
	return c
}

// probation watches a version activated after a predecessor, for the
// automatic rollback.
type probation struct {
	version     string
	predecessor string
	baseline    float64 // the predecessor's precision before the swap, of its prefetches used or wasted
	win         *window
	fired       atomic.Bool
}

func precisionOf(issued, used uint64) float64 {
	if issued == 0 {
		return 0
	}
	return float64(used) / float64(issued)
}
