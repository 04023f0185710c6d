package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// readiness is the list of named checks behind /readyz and the gRPC health
// service: the service is ready when every check passes. Components add their
// own with add, at any time; watch runs them all every interval and on kick.
type readiness struct {
	// mu guards checks.
	mu     sync.Mutex
	checks []readyCheck

	last atomic.Pointer[readyState] // nil before the first evaluation
	kick chan struct{}

	ready   prometheus.Gauge     // prefetchd_ready
	failing *prometheus.GaugeVec // prefetchd_ready_check_failing{check}
}

// readyCheck is one named condition; fn returns why it fails, or nil.
type readyCheck struct {
	name string
	fn   func(ctx context.Context) error
}

// readyState is the outcome of one evaluation.
type readyState struct {
	failures []string // "name: reason", in the order the checks were added
}

func (s *readyState) ok() bool { return s != nil && len(s.failures) == 0 }

// newReadiness returns an empty list of checks whose outcome is exported to
// reg (nil allowed) as prefetchd_ready and prefetchd_ready_check_failing.
func newReadiness(reg prometheus.Registerer) (*readiness, error) {
	r := &readiness{
		kick: make(chan struct{}, 1),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "prefetchd_ready", Help: "1 while every readiness check passes (/readyz is 200), else 0.",
		}),
		failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "prefetchd_ready_check_failing", Help: "1 while the named readiness check fails.",
		}, []string{"check"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{r.ready, r.failing} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register readiness metrics: %w", err)
			}
		}
	}
	return r, nil
}

// add appends a check. fn gets a context bounded by checkTimeout and should
// return quickly; its error text is what /readyz shows under name.
func (r *readiness) add(name string, fn func(ctx context.Context) error) {
	r.mu.Lock()
	r.checks = append(r.checks, readyCheck{name, fn})
	r.mu.Unlock()
	r.failing.WithLabelValues(name) // present at zero from the first scrape
	r.poke()
}

// poke asks watch to evaluate now rather than at the next tick.
func (r *readiness) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// checkTimeout bounds one check.
const checkTimeout = time.Second

// evaluate runs every check in order and records the outcome.
func (r *readiness) evaluate(ctx context.Context) *readyState {
	r.mu.Lock()
	checks := append([]readyCheck(nil), r.checks...)
	r.mu.Unlock()
	st := &readyState{}
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		err := c.fn(cctx)
		cancel()
		fail := 0.0
		if err != nil {
			st.failures = append(st.failures, c.name+": "+strings.ReplaceAll(err.Error(), "\n", " "))
			fail = 1
		}
		r.failing.WithLabelValues(c.name).Set(fail)
	}
	r.last.Store(st)
	if st.ok() {
		r.ready.Set(1)
	} else {
		r.ready.Set(0)
	}
	return st
}

// watch evaluates the checks every interval and on poke until ctx ends,
// calling serving with each outcome and logging each change.
func (r *readiness) watch(ctx context.Context, log *slog.Logger, every time.Duration, serving func(bool)) {
	t := time.NewTicker(every)
	defer t.Stop()
	var prev string
	first := true
	for {
		st := r.evaluate(ctx)
		if ctx.Err() != nil {
			return
		}
		now := strings.Join(st.failures, "; ")
		if now != prev || first {
			if st.ok() {
				log.Info("ready", "serving", true)
			} else {
				log.Warn("not ready", "reasons", now)
			}
			prev, first = now, false
		}
		serving(st.ok())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
	}
}

// serve answers /readyz: 200 with the model version when every check passed
// at the last evaluation, otherwise 503 with one line per failing check.
func (r *readiness) serve(w http.ResponseWriter, version func() string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	st := r.last.Load()
	switch {
	case st == nil:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready\nstarting: first checks not run yet")
	case !st.ok():
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
		for _, f := range st.failures {
			fmt.Fprintln(w, f)
		}
	default:
		fmt.Fprintln(w, "ready model_version="+version())
	}
}

// overloaded is the "overloaded" readiness check: it fails while the oldest
// unsettled click (lagSeconds, prefetchd_ingest_lag_seconds) is older than
// limit, the service then falling behind the click stream.
func overloaded(lagSeconds float64, limit time.Duration) error {
	if lag := time.Duration(lagSeconds * float64(time.Second)); lag > limit {
		return fmt.Errorf("oldest unsettled click %s old, over --overload-lag %s", lag.Round(time.Millisecond), limit)
	}
	return nil
}
