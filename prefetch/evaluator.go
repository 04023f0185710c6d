package prefetch

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxEntries bounds the prefetches an Evaluator tracks when
// EvaluatorConfig.MaxEntries is 0.
const DefaultMaxEntries = 1 << 20

// NoVersion labels clicks seen before any model version is known.
const NoVersion = "none"

// EvaluatorConfig configures an Evaluator. The zero value is valid.
type EvaluatorConfig struct {
	// KeyTemplate is the Warmer's key template (default "page:{page}"). It
	// decides what "warm" means: with a shared key such as "page:{page}" a
	// warmed page is warm for every user, so a click by anyone uses the
	// prefetch; with "{user}" in the template a page is warm only for the
	// user it was prefetched for.
	KeyTemplate string
	// MaxEntries bounds the prefetches tracked at once (default 1<<20). When
	// full, the entry expiring first is evicted and, if unused, counted as
	// wasted.
	MaxEntries int
}

// Validate reports a configuration error wrapping ErrInvalidConfig.
func (c EvaluatorConfig) Validate() error {
	if c.KeyTemplate != "" && !strings.Contains(c.KeyTemplate, placeholderPage) {
		return fmt.Errorf("evaluator key template %q has no %s: %w", c.KeyTemplate, placeholderPage, ErrInvalidConfig)
	}
	if c.MaxEntries < 0 {
		return fmt.Errorf("evaluator max entries %d is negative: %w", c.MaxEntries, ErrInvalidConfig)
	}
	return nil
}

// VersionStats are the online figures for one model version.
type VersionStats struct {
	ModelVersion string
	// Issued counts prefetches made (pages that became warm).
	Issued uint64
	// Used counts prefetches clicked at least once while warm.
	Used uint64
	// Clicks counts clicks attributed to the version: clicks on a page it
	// warmed, and cold clicks while it was the active version.
	Clicks uint64
	// WarmClicks counts clicks on a page this version warmed, while warm.
	WarmClicks uint64
	// Wasted counts prefetches that expired (or were evicted) unused, and
	// WastedBytes their bytes.
	Wasted      uint64
	WastedBytes uint64
	// Precision is Used / Issued (0 when nothing was issued).
	Precision float64
	// Coverage is WarmClicks / Clicks (0 without clicks).
	Coverage float64
}

// Evaluator joins prefetches with the clicks that follow them within the TTL
// and keeps, per model version, the figures in VersionStats, exported as
// Prometheus metrics labelled model_version:
//
//	prefetchd_prefetch_issued_total        prefetches issued
//	prefetchd_prefetch_used_total          prefetches clicked while warm
//	prefetchd_clicks_total                 clicks
//	prefetchd_clicks_warm_total            clicks on a warm page
//	prefetchd_prefetch_wasted_total        prefetches expired unused
//	prefetchd_prefetch_wasted_bytes_total  their bytes
//
// Rules. Time is event time: the at arguments, not the wall clock. A
// prefetch of a key that is still warm is ignored, as SET NX would ignore
// it. A click on a warm key counts for the version that warmed it (a warm
// click, and the prefetch's first such click makes it used); a click on a
// cold key counts for the active version, which is the one set with
// SetModelVersion or else the version of the latest prefetch. Entries are
// removed when they expire, so memory follows the prefetches made within
// one TTL, capped by MaxEntries. Events may arrive slightly out of order; a
// click older than the latest event sees entries as of the latest event.
// Prefetches are those the Warmer reports as acknowledged by Redis; when the
// Warmer sees that Redis lost them (restart, failover, flush) it calls
// ForgetPrefetches, and clicks on those pages count as cold from then on.
// While the Warmer cannot reach Redis at all (SetCacheReachable(false)),
// clicks count as cold too: no page is served from a cache that does not
// answer. Whether the keys survived is told when it answers again.
//
// Safe for concurrent use.
type Evaluator struct {
	perUser bool
	tmpl    template // the key template, to spell per-user keys
	tmplStr string
	m       evaluatorMetrics

	mu       sync.Mutex
	now      int64 // latest event time seen, Unix nanoseconds
	ticked   int64 // now at the latest Tick
	active   string
	explicit bool // active was set by SetModelVersion
	entries  *expirySet[evalEntry]
	versions map[string]*versionCounters
	kb       []byte // scratch for per-user keys
	retireFn func(*expiryEntry[evalEntry])
	// wall is the wall clock that caps event times (time.Now; tests set
	// their own).
	wall func() time.Time
	// unreachable is set while the Warmer cannot reach the cache Redis.
	unreachable atomic.Bool
}

// SetCacheReachable tells the Evaluator whether the cache Redis answers
// (the Warmer's check): while it does not, clicks count as cold.
func (e *Evaluator) SetCacheReachable(ok bool) { e.unreachable.Store(!ok) }

// eventTime is at in Unix nanoseconds, capped at the wall clock. A click
// stamped later (a client whose clock runs ahead, within the consumer's
// skew limit) counts as made now, which is when its prefetch reaches
// Redis: it cannot move event time on and expire every other prefetch
// early. Older event times (a replay of a past day) are taken as they are.
// Callers hold mu.
func (e *Evaluator) eventTime(at time.Time) int64 {
	return min(unixNanos(at), unixNanos(e.wall()))
}

type evalEntry struct {
	v     *versionCounters
	bytes int64
	used  bool
	// from is the event time (unix ns) of the click the prefetch was made
	// for: a click before it cannot have found the page warm, whatever the
	// order in which the two reach the Evaluator.
	from int64
}

type versionCounters struct {
	s                         VersionStats
	issued, used, clicks      prometheus.Counter
	warmClicks, wasted, bytes prometheus.Counter
}

type evaluatorMetrics struct {
	issued, used, clicks, warmClicks, wasted, wastedBytes *prometheus.CounterVec
}

// NewEvaluator validates cfg and builds an Evaluator registering its metrics
// with reg (nil: not registered). It returns an error wrapping
// ErrInvalidConfig for a bad cfg, or the registerer's error.
func NewEvaluator(cfg EvaluatorConfig, reg prometheus.Registerer) (*Evaluator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.KeyTemplate == "" {
		cfg.KeyTemplate = DefaultKeyTemplate
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	vec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"model_version"})
	}
	m := evaluatorMetrics{
		issued:      vec("prefetchd_prefetch_issued_total", "Prefetches issued (pages made warm), by model version."),
		used:        vec("prefetchd_prefetch_used_total", "Prefetches the user opened while warm, by model version."),
		clicks:      vec("prefetchd_clicks_total", "Clicks, by the model version that warmed the page or, if cold, the active version."),
		warmClicks:  vec("prefetchd_clicks_warm_total", "Clicks on a warm page, by the model version that warmed it."),
		wasted:      vec("prefetchd_prefetch_wasted_total", "Prefetches that expired unused, by model version."),
		wastedBytes: vec("prefetchd_prefetch_wasted_bytes_total", "Bytes of prefetches that expired unused, by model version."),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.issued, m.used, m.clicks, m.warmClicks, m.wasted, m.wastedBytes} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register evaluator metrics: %w", err)
			}
		}
	}
	e := &Evaluator{
		wall:     time.Now,
		perUser:  strings.Contains(cfg.KeyTemplate, placeholderUser),
		tmpl:     parseTemplate(cfg.KeyTemplate),
		tmplStr:  cfg.KeyTemplate,
		m:        m,
		now:      math.MinInt64,
		active:   NoVersion,
		entries:  newExpirySet[evalEntry](cfg.MaxEntries),
		versions: make(map[string]*versionCounters),
	}
	e.retireFn = e.retire
	return e, nil
}

// PerUser reports whether warmth is per user (the key template has {user}).
func (e *Evaluator) PerUser() bool { return e.perUser }

// key spells the entry key of user and page into e.kb and returns it: the
// Redis key the template gives when it names the user (two users whose
// keys are spelled alike share them in Redis too), else the page. Callers
// hold mu; the result is valid until the next call.
func (e *Evaluator) key(user, page string) []byte {
	if e.perUser {
		e.kb = e.tmpl.appendTo(e.kb[:0], user, page)
	} else {
		e.kb = append(e.kb[:0], page...)
	}
	return e.kb
}

// lookup returns the entry for user and page, whether or not it expired.
// Callers hold mu.
func (e *Evaluator) lookup(user, page string) (*expiryEntry[evalEntry], bool) {
	if !e.perUser {
		return e.entries.get(page)
	}
	return e.entries.getBytes(e.key(user, page))
}

// version returns the counters of v, creating them. Callers hold mu.
func (e *Evaluator) version(v string) *versionCounters {
	if c, ok := e.versions[v]; ok {
		return c
	}
	c := &versionCounters{
		s:          VersionStats{ModelVersion: v},
		issued:     e.m.issued.WithLabelValues(v),
		used:       e.m.used.WithLabelValues(v),
		clicks:     e.m.clicks.WithLabelValues(v),
		warmClicks: e.m.warmClicks.WithLabelValues(v),
		wasted:     e.m.wasted.WithLabelValues(v),
		bytes:      e.m.wastedBytes.WithLabelValues(v),
	}
	e.versions[v] = c
	return c
}

// SetModelVersion names the active model version, to which cold clicks are
// attributed from now on.
func (e *Evaluator) SetModelVersion(v string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.active, e.explicit = v, true
	e.version(v)
}

// ObservePrefetch records that page was warmed for user by model version at
// event time at, for ttl, with an unknown size.
func (e *Evaluator) ObservePrefetch(user, page, version string, at time.Time, ttl time.Duration) {
	e.ObservePrefetchBytes(user, page, version, at, ttl, 0)
}

// ObservePrefetchBytes is ObservePrefetch with the bytes the prefetch holds
// in the cache, counted as wasted if it expires unused.
func (e *Evaluator) ObservePrefetchBytes(user, page, version string, at time.Time, ttl time.Duration, bytes int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.observePrefetch(user, page, "", version, at, ttl, bytes)
}

// observeChunk is how many written pages observeWritten takes under one
// lock: few enough that a click waiting for the lock waits microseconds.
const observeChunk = 64

// observeWritten is ObservePrefetchBytes for each page of a pipeline the
// Warmer wrote (values[i] nil: not written) and Redis acknowledged at
// acked, observeChunk pages per lock: each is warm from its click's event
// time plus the time its write took to land. keyTemplate is the Warmer's:
// when it is the Evaluator's, the items' keys are reused.
func (e *Evaluator) observeWritten(batch []item, values [][]byte, acked time.Time, ttl time.Duration, keyTemplate string) {
	reuse := e.perUser && keyTemplate == e.tmplStr
	for start := 0; start < len(batch); start += observeChunk {
		end := min(start+observeChunk, len(batch))
		e.mu.Lock()
		for i := start; i < end; i++ {
			if values[i] != nil {
				it := &batch[i]
				key := ""
				if reuse {
					key = it.key
				}
				e.observePrefetch(it.user, it.page, key, it.version, it.landedAt(acked), ttl, int64(len(values[i])))
			}
		}
		e.mu.Unlock()
	}
}

// observePrefetch is ObservePrefetchBytes; key, when not empty, is the
// entry key of user and page already spelled. Callers hold mu.
func (e *Evaluator) observePrefetch(user, page, key, version string, at time.Time, ttl time.Duration, bytes int64) {
	t := e.advance(at)
	if !e.explicit {
		e.active = version
	}
	var found bool
	if key != "" && e.perUser {
		_, found = e.entries.get(key)
	} else {
		_, found = e.lookup(user, page)
	}
	if found {
		// Present after advance means still warm (advance removed every
		// expiry up to the latest event time, at least t): SET NX would
		// not have set it.
		return
	}
	switch {
	case !e.perUser:
		key = page
	case key == "":
		key = string(e.key(user, page))
	}
	c := e.version(version)
	e.entries.insert(key, evalEntry{v: c, bytes: bytes, from: t}, addNanos(t, ttl), e.retireFn)
	c.s.Issued++
	c.issued.Inc()
}

// ObserveClick records that user opened page at event time at.
func (e *Evaluator) ObserveClick(user, page string, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.advance(at)
	if en, ok := e.lookup(user, page); ok && en.at > t && en.value.from <= t && !e.unreachable.Load() {
		c := en.value.v
		c.s.Clicks++
		c.clicks.Inc()
		c.s.WarmClicks++
		c.warmClicks.Inc()
		if !en.value.used {
			en.value.used = true
			c.s.Used++
			c.used.Inc()
		}
		return
	}
	c := e.version(e.active)
	c.s.Clicks++
	c.clicks.Inc()
}

// IsWarm reports whether page is warm for user at time at, as the Evaluator
// believes from the prefetches reported to it. Hint answers ask Redis
// instead (Warmer.Present).
func (e *Evaluator) IsWarm(user, page string, at time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	en, ok := e.lookup(user, page)
	t := unixNanos(at)
	return ok && en.at > t && en.value.from <= t
}

// Advance expires the prefetches whose TTL ended by at, counting the unused
// ones as wasted. Observations advance time themselves; call Advance on a
// timer (or at the end of a replay) to settle figures while no events come.
func (e *Evaluator) Advance(at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.advance(at)
}

// TickInterval is how often Run calls Tick.
const TickInterval = time.Second

// Tick lets event time go on while no event comes: when no observation has
// moved it since the previous Tick, it advances by elapsed (the wall time
// since that Tick) and expires what that reaches. In a live stream the
// prefetches of a quiet spell are thus counted wasted within a tick of
// their expiry instead of at the next click; a replay of old events, whose
// clock runs ahead of the wall's, is not hurried.
func (e *Evaluator) Tick(elapsed time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.now != 0 && e.now == e.ticked && elapsed > 0 {
		// Never past the wall clock: Redis's keys live by it.
		e.now = max(e.now, min(addNanos(e.now, elapsed), unixNanos(e.wall())))
		e.entries.expire(e.now, e.retireFn)
	}
	e.ticked = e.now
}

// Run calls Tick every TickInterval until ctx ends, then returns nil.
func (e *Evaluator) Run(ctx context.Context) error {
	t := time.NewTicker(TickInterval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			e.Tick(now.Sub(last))
			last = now
		}
	}
}

// advance moves event time forward to at, expires entries and returns at in
// Unix nanoseconds. Callers hold mu.
func (e *Evaluator) advance(at time.Time) int64 {
	t := e.eventTime(at)
	if t > e.now {
		e.now = t
	}
	e.entries.expire(e.now, e.retireFn)
	return t
}

// retire accounts for an entry leaving the set. Callers hold mu.
func (e *Evaluator) retire(en *expiryEntry[evalEntry]) {
	if en.value.used {
		return
	}
	c := en.value.v
	c.s.Wasted++
	c.wasted.Inc()
	if en.value.bytes > 0 {
		c.s.WastedBytes += uint64(en.value.bytes)
		c.bytes.Add(float64(en.value.bytes))
	}
}

// ForgetPrefetches drops every prefetch tracked, counting the unused ones
// as wasted: the Warmer calls it when the Redis serving now has lost them
// (restart, failover, flush), so that later clicks on those pages count as
// cold.
func (e *Evaluator) ForgetPrefetches() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.entries.drain(e.retireFn)
}

// Tracked is the number of prefetches currently tracked.
func (e *Evaluator) Tracked() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.entries.Len()
}

// Stats returns the figures per model version, sorted by version.
func (e *Evaluator) Stats() []VersionStats {
	e.mu.Lock()
	out := make([]VersionStats, 0, len(e.versions))
	for _, c := range e.versions {
		s := c.s
		if s.Issued > 0 {
			s.Precision = float64(s.Used) / float64(s.Issued)
		}
		if s.Clicks > 0 {
			s.Coverage = float64(s.WarmClicks) / float64(s.Clicks)
		}
		out = append(out, s)
	}
	e.mu.Unlock()
	slices.SortFunc(out, func(a, b VersionStats) int { return strings.Compare(a.ModelVersion, b.ModelVersion) })
	return out
}
