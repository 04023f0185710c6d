package server

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// metrics are the server's Prometheus metrics, all named prefetchd_grpc_*.
type metrics struct {
	requests     *prometheus.CounterVec   // method, code
	seconds      *prometheus.HistogramVec // method
	inFlight     prometheus.Gauge
	panics       prometheus.Counter
	authFailures *prometheus.CounterVec // method, code
	ingestEvents *prometheus.CounterVec // result, reason
	watchClosed  prometheus.Counter
	certReloads  *prometheus.CounterVec // result
}

// newMetrics builds the metrics and registers them on reg unless it is nil.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	f := factory{}
	m := &metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_grpc_requests_total",
			Help: "gRPC calls handled, by full method and status code.",
		}, []string{"method", "code"}),
		seconds: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "prefetchd_grpc_request_duration_seconds",
			Help:    "Time from receiving a gRPC call to its status (for streams, the stream's life), by full method.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 18), // 25 µs .. 3.3 s
		}, []string{"method"}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{
			Name: "prefetchd_grpc_in_flight_requests",
			Help: "gRPC calls and streams being handled now.",
		}),
		panics: f.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_grpc_panics_total",
			Help: "Handler panics recovered into INTERNAL.",
		}),
		authFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_grpc_auth_failures_total",
			Help: "ModelService calls refused, by full method and status code (Unauthenticated or PermissionDenied).",
		}, []string{"method", "code"}),
		ingestEvents: f.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_grpc_ingest_events_total",
			Help: "Click events received by HintService.Ingest, by result (accepted, duplicate, rejected) and rejection reason.",
		}, []string{"result", "reason"}),
		watchClosed: f.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_grpc_watch_closed_total",
			Help: "WatchHints streams ended by the server (shutdown or subscription closed).",
		}),
		certReloads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_grpc_tls_reloads_total",
			Help: "Server certificate reloads after its files changed, by result (ok, failed: the previous certificate stays).",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range f.all {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("server: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// factory builds collectors and remembers them for registration.
type factory struct{ all []prometheus.Collector }

func (f *factory) NewCounterVec(o prometheus.CounterOpts, labels []string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(o, labels)
	f.all = append(f.all, c)
	return c
}

func (f *factory) NewHistogramVec(o prometheus.HistogramOpts, labels []string) *prometheus.HistogramVec {
	c := prometheus.NewHistogramVec(o, labels)
	f.all = append(f.all, c)
	return c
}

func (f *factory) NewCounter(o prometheus.CounterOpts) prometheus.Counter {
	c := prometheus.NewCounter(o)
	f.all = append(f.all, c)
	return c
}

func (f *factory) NewGauge(o prometheus.GaugeOpts) prometheus.Gauge {
	c := prometheus.NewGauge(o)
	f.all = append(f.all, c)
	return c
}

// methodMetrics holds the children of the metric vectors for one method, so
// that the hot path does no label lookup for successful calls.
type methodMetrics struct {
	method  string
	seconds prometheus.Observer
	ok      prometheus.Counter
	m       *metrics
}

func (m *metrics) forMethod(method string) *methodMetrics {
	return &methodMetrics{
		method:  method,
		seconds: m.seconds.WithLabelValues(method),
		ok:      m.requests.WithLabelValues(method, codes.OK.String()),
		m:       m,
	}
}

// observe records one finished call.
func (mm *methodMetrics) observe(elapsed time.Duration, code codes.Code) {
	mm.seconds.Observe(elapsed.Seconds())
	if code == codes.OK {
		mm.ok.Inc()
		return
	}
	mm.m.requests.WithLabelValues(mm.method, code.String()).Inc()
}
