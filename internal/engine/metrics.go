package engine

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of prefetchd_engine_early_warms_total.
const (
	earlyConfirmed = "confirmed"
	earlyCorrected = "corrected"
	earlyUnapplied = "unapplied"
)

type metrics struct {
	handle       prometheus.Histogram
	predict      prometheus.Histogram
	remapped     prometheus.Counter
	unknownVocab prometheus.Counter
	watchDropped prometheus.Counter
	stateRebuilt prometheus.Counter
	// early counts the warms sent before the store's reply (warmEarly), by
	// what the reply made of them.
	early *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	buckets := prometheus.ExponentialBuckets(10e-6, 2, 16)
	m := &metrics{
		handle: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "prefetchd_engine_event_seconds", Help: "Time to apply one click: history, prediction, prefetch decision (for clicks applied in a wave, the wave's time per click).", Buckets: buckets,
		}),
		predict: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "prefetchd_engine_predict_seconds", Help: "Time to answer one hint query inside the engine.", Buckets: buckets,
		}),
		remapped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_engine_histories_remapped_total", Help: "Histories translated to a new model vocabulary.",
		}),
		unknownVocab: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_engine_histories_vocab_unknown_total", Help: "Histories read under a model vocabulary this replica does not know (another replica's model, or one served before a restart): a click keeps only itself, a hint query answers none.",
		}),
		watchDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_engine_watch_dropped_total", Help: "Hint updates dropped because a watcher fell behind.",
		}),
		stateRebuilt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_engine_states_rebuilt_total", Help: "Recurrent states recomputed from a history (new session, swapped model, evicted state).",
		}),
		early: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_engine_early_warms_total", Help: "Clicks warmed before the history store's reply, on the history the replica foresaw, by outcome: confirmed (the stored history was that one), corrected (it was not: predicted and warmed again), unapplied (the click was not applied: a duplicate, or a failure to retry).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{earlyConfirmed, earlyCorrected, earlyUnapplied} {
		m.early.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.handle, m.predict, m.remapped, m.unknownVocab, m.watchDropped, m.stateRebuilt, m.early} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
