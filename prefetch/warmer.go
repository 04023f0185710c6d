package prefetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Mode selects what the Warmer stores under a key.
type Mode string

// Warming modes.
const (
	// ModeHint stores a small JSON HintRecord per page for the web tier; no
	// origin is contacted.
	ModeHint Mode = "hint"
	// ModeOrigin fetches the page from Config.OriginURL and stores the body
	// of a 2xx answer.
	ModeOrigin Mode = "origin"
)

// Warmer defaults.
const (
	DefaultTTL               = 5 * time.Minute
	DefaultKeyTemplate       = "page:{page}"
	DefaultOriginTimeout     = 2 * time.Second
	DefaultMaxBodyBytes      = 1 << 20
	DefaultOriginConcurrency = 8
	DefaultBreakerFailures   = 5
	DefaultBreakerCooldown   = 10 * time.Second
	DefaultBreakerProbes     = 1
	DefaultQueueSize         = 4096
	DefaultWorkers           = 2
	DefaultPipelineSize      = 128
	DefaultWriteTimeout      = time.Second
	DefaultFlushTimeout      = 2 * time.Second
	DefaultMaxTracked        = 100_000
	DefaultCheckInterval     = time.Second
	DefaultPresenceTimeout   = 200 * time.Millisecond
)

// Template placeholders.
const (
	placeholderPage = "{page}"
	placeholderUser = "{user}"
)

// Config configures a Warmer. Zero fields take the documented defaults,
// except where 0 is a valid value: such a field has a companion XSet flag,
// and it is used as given when it is non-zero or XSet is true (so
// FlushTimeout: 0 with FlushTimeoutSet: true means "no flush"). Fields
// without a Set flag do not accept 0 as a value (or 0 is their default).
type Config struct {
	// Mode is ModeHint (default) or ModeOrigin.
	Mode Mode
	// TTL is how long a warmed key lives in Redis (SET ... EX ttl NX).
	// Default DefaultTTL (5m); at least 1ms.
	TTL time.Duration
	// KeyTemplate names the Redis key of a page: "{page}" is replaced by the
	// page and "{user}" by the user id. Default "page:{page}", a key shared by
	// all users; "user:{user}:page:{page}" warms per user. It must contain
	// "{page}".
	KeyTemplate string

	// OriginURL is the URL fetched in origin mode, with "{page}" replaced by
	// the page, each path segment escaped; a leading "/" of the page is
	// dropped when the template already has one before "{page}", so
	// "https://origin/{page}" and page "/a/b" give "https://origin/a/b". A
	// page with a "." or ".." segment is not fetched (dropped as invalid);
	// after a "?" the page is query-escaped whole.
	// Required in origin mode.
	OriginURL string
	// OriginTimeout bounds one origin request, body included. Default 2s.
	OriginTimeout time.Duration
	// MaxBodyBytes is the largest body stored; larger bodies are dropped.
	// Default 1 MiB.
	MaxBodyBytes int64
	// OriginConcurrency is the most origin requests in flight. Default 8.
	OriginConcurrency int
	// BreakerFailures is how many consecutive origin failures (transport
	// errors, timeouts, 5xx) open the circuit breaker. Default 5.
	BreakerFailures int
	// BreakerCooldown is how long the breaker stays open before it lets trial
	// requests through (half-open). Default 10s.
	BreakerCooldown time.Duration
	// BreakerProbes is how many trial requests a half-open breaker allows at
	// once. Default 1.
	BreakerProbes int

	// QueueSize bounds the pages waiting to be written; Warm drops pages
	// when it is full (or waits, with Block). Default 4096.
	QueueSize int
	// Workers is the number of goroutines writing to Redis, each with one
	// pipeline in flight. Default 2.
	Workers int
	// Block makes Warm wait for room in a full queue (until its ctx ends or
	// the Warmer closes) instead of dropping the page: backpressure into
	// the caller, the consumer, whose lag then shows it. While Redis writes
	// are failing it drops all the same, so an outage does not stall the
	// caller. Default false.
	Block bool
	// ShedFrom is the queue fill, a fraction of QueueSize in [0, 1], from
	// which Warm sheds pages of low probability: past it a page is shed
	// when its probability is below (fill - ShedFrom) / (1 - ShedFrom), so
	// the least likely go first and, near full, all but each request's most
	// likely page (which is never shed). Default 1 (no shedding); 0 with
	// ShedFromSet sheds from an empty queue.
	ShedFrom    float64
	ShedFromSet bool
	// PipelineSize is the most SET commands sent in one pipeline. Default 128.
	PipelineSize int
	// Linger is how long a worker holding a partial pipeline waits for more
	// pages before sending it: larger pipelines for a little latency.
	// Default 0 (send at once); negative is invalid.
	Linger time.Duration
	// WriteTimeout bounds one pipeline round trip. Default 1s. The Redis
	// client should have ContextTimeoutEnabled so that it applies to socket
	// reads and writes as well.
	WriteTimeout time.Duration
	// FlushTimeout bounds the flush of queued pages at shutdown. Default 2s;
	// 0 with FlushTimeoutSet drops what is queued at shutdown without
	// writing it.
	FlushTimeout    time.Duration
	FlushTimeoutSet bool

	// CheckInterval is how often the Warmer checks that the Redis serving
	// now is the one that acknowledged its writes (run_id and a sentinel
	// key); a restart, failover or flush makes it forget every key it
	// believed warm. It also checks at once after a new connection and
	// after a failed write. Default 1s.
	CheckInterval time.Duration
	// PresenceTimeout bounds Present, the EXISTS round trip behind the warm
	// flag of hint answers. Default 200ms.
	PresenceTimeout time.Duration

	// PerUserRate is the most prefetches per second for one user, 0 for no
	// limit; PerUserBurst is its bucket size (default max(1, PerUserRate)).
	PerUserRate  float64
	PerUserBurst int
	// GlobalRate is the most prefetches per second over all users (a token
	// bucket), 0 for no limit; GlobalBurst is its bucket size (default
	// max(1, GlobalRate)).
	GlobalRate  float64
	GlobalBurst int
	// BudgetKeys and BudgetBytes cap the keys and value bytes written per
	// BudgetWindow, 0 for no cap. With BudgetWindow equal to TTL (the
	// default) they bound what the prefetcher holds in Redis at any time.
	BudgetKeys   int
	BudgetBytes  int64
	BudgetWindow time.Duration

	// MaxTracked bounds the keys remembered as warm and the users with a rate
	// limit bucket. Default 100000; at least 1.
	MaxTracked int
}

// withDefaults returns c with zero fields replaced by defaults.
func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Mode == "" {
		c.Mode = ModeHint
	}
	defDur(&c.TTL, DefaultTTL)
	if c.KeyTemplate == "" {
		c.KeyTemplate = DefaultKeyTemplate
	}
	defDur(&c.OriginTimeout, DefaultOriginTimeout)
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	def(&c.OriginConcurrency, DefaultOriginConcurrency)
	def(&c.BreakerFailures, DefaultBreakerFailures)
	defDur(&c.BreakerCooldown, DefaultBreakerCooldown)
	def(&c.BreakerProbes, DefaultBreakerProbes)
	def(&c.QueueSize, DefaultQueueSize)
	if c.ShedFrom == 0 && !c.ShedFromSet {
		c.ShedFrom = 1
	}
	def(&c.Workers, DefaultWorkers)
	def(&c.PipelineSize, DefaultPipelineSize)
	defDur(&c.WriteTimeout, DefaultWriteTimeout)
	if !c.FlushTimeoutSet {
		defDur(&c.FlushTimeout, DefaultFlushTimeout)
	}
	defDur(&c.CheckInterval, DefaultCheckInterval)
	defDur(&c.PresenceTimeout, DefaultPresenceTimeout)
	defDur(&c.BudgetWindow, c.TTL)
	def(&c.MaxTracked, DefaultMaxTracked)
	return c
}

// Validate reports a configuration error wrapping ErrInvalidConfig. Zero
// fields are valid (they mean the defaults, or 0 where the Set flag says so).
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("warmer "+format+": %w", append(args, ErrInvalidConfig)...))
	}
	switch c.Mode {
	case ModeHint:
	case ModeOrigin:
		if c.OriginURL == "" {
			bad("origin mode needs an origin URL")
		} else if !strings.Contains(c.OriginURL, placeholderPage) {
			bad("origin URL %q has no %s", c.OriginURL, placeholderPage)
		} else if !strings.HasPrefix(c.OriginURL, "http://") && !strings.HasPrefix(c.OriginURL, "https://") {
			bad("origin URL %q is not http or https", c.OriginURL)
		}
	default:
		bad("mode %q is neither %q nor %q", c.Mode, ModeHint, ModeOrigin)
	}
	if c.TTL < time.Millisecond {
		bad("ttl %v below 1ms", c.TTL)
	}
	if !strings.Contains(c.KeyTemplate, placeholderPage) {
		bad("key template %q has no %s", c.KeyTemplate, placeholderPage)
	}
	for name, d := range map[string]time.Duration{
		"origin timeout": c.OriginTimeout, "breaker cooldown": c.BreakerCooldown,
		"write timeout": c.WriteTimeout, "flush timeout": c.FlushTimeout, "budget window": c.BudgetWindow,
		"linger": c.Linger, "check interval": c.CheckInterval, "presence timeout": c.PresenceTimeout,
	} {
		if d < 0 {
			bad("%s %v is negative", name, d)
		}
	}
	for name, n := range map[string]int{
		"origin concurrency": c.OriginConcurrency, "breaker failures": c.BreakerFailures,
		"breaker probes": c.BreakerProbes, "queue size": c.QueueSize, "workers": c.Workers,
		"pipeline size": c.PipelineSize, "max tracked": c.MaxTracked,
	} {
		if n < 1 {
			bad("%s %d below 1", name, n)
		}
	}
	if !(c.ShedFrom >= 0 && c.ShedFrom <= 1) {
		bad("shed from %v is not within [0, 1]", c.ShedFrom)
	}
	if c.MaxBodyBytes < 1 {
		bad("max body bytes %d below 1", c.MaxBodyBytes)
	}
	if c.PerUserRate < 0 || c.GlobalRate < 0 || c.PerUserBurst < 0 || c.GlobalBurst < 0 {
		bad("rates and bursts must not be negative")
	}
	if c.BudgetKeys < 0 || c.BudgetBytes < 0 {
		bad("budget caps must not be negative")
	}
	return errors.Join(errs...)
}

// Page is one page to warm.
type Page struct {
	// Key is the page as the model's vocabulary names it, e.g. "/page/12".
	Key string
	// Probability is the model's probability for the page.
	Probability float32
}

// Request asks the Warmer to warm pages predicted for a user.
type Request struct {
	UserID string
	Pages  []Page
	// ModelVersion is the version of the model that made the prediction.
	ModelVersion string
	// At is the event time of the click that led to the prediction; the
	// Evaluator joins prefetches and clicks on it. Zero means now.
	At time.Time
	// Recorded is the time the click was recorded upstream (the Kafka
	// record timestamp), zero if unknown. The click's time (ClickTime) is
	// At, or Recorded when At is after it or more than MaxClockSkew before
	// it (a client clock that is off).
	Recorded time.Time
	// Receipt tells that Recorded is when the service received the click
	// (gRPC Ingest), not a record timestamp: the click is then judged at
	// ClickTime (see JudgeTime).
	Receipt bool
	// Page is the page clicked, as the model's vocabulary names it; empty
	// if unknown. A click on a page whose prefetch for the user is still on
	// its way to Redis is counted in prefetchd_prefetch_late_total.
	Page string
}

// MaxClockSkew is how far a click's event time may lie before its record
// timestamp before the click is taken to have happened at the record
// timestamp instead (a client clock that is off, or a replay of old events).
const MaxClockSkew = time.Minute

// ClickTime is when a click happened, as prefetchd_click_to_warm_seconds
// counts it: its event time at, except that no click happens after it was
// recorded (recorded, the Kafka record timestamp, or the time gRPC Ingest
// received it), so an event time after recorded, or more than MaxClockSkew
// before it, gives recorded. Either may be zero (unknown); with neither it
// is now.
func ClickTime(at, recorded, now time.Time) time.Time {
	switch {
	case at.IsZero() && recorded.IsZero():
		return now
	case at.IsZero():
		return recorded
	case recorded.IsZero():
		return at
	}
	if at.After(recorded) || recorded.Sub(at) > MaxClockSkew {
		return recorded
	}
	return at
}

// JudgeTime is the time a click is judged warm or late at (the Evaluator,
// prefetchd_prefetch_late_total). With a record timestamp (Kafka, receipt
// false) it is recorded: a prefetch lands on this host's clock (Redis's
// acknowledgement) and recorded is taken on a server's clock (the
// producer's or the broker's), while an event time comes from whatever
// clock the client has; a few seconds off, it would put every click within
// those seconds of a landing on the wrong side of it. A receipt (gRPC
// Ingest) is stamped when the service takes the click in, which may be
// long after a client sent it when the service is behind, so the click is
// judged at ClickTime then: its event time, bounded by the receipt.
func JudgeTime(at, recorded, now time.Time, receipt bool) time.Time {
	if !recorded.IsZero() && !receipt {
		return recorded
	}
	return ClickTime(at, recorded, now)
}

// clickTime is ClickTime of req.
func (req *Request) clickTime(now time.Time) time.Time {
	return ClickTime(req.At, req.Recorded, now)
}

// HintRecord is the value stored in hint mode, JSON encoded.
type HintRecord struct {
	Page         string    `json:"page"`
	Probability  float32   `json:"probability"`
	ModelVersion string    `json:"model_version"`
	ExpiresAt    time.Time `json:"expires_at"`
}

// Observer is told about every page the Warmer writes to Redis;
// *Evaluator satisfies it.
type Observer interface {
	// ObservePrefetchBytes records a prefetch of page for user made by model
	// version at event time at, warm for ttl, holding bytes in the cache.
	ObservePrefetchBytes(user, page, version string, at time.Time, ttl time.Duration, bytes int64)
	// ForgetPrefetches drops every prefetch reported so far: the Redis
	// serving now does not hold them (it restarted, failed over or was
	// flushed).
	ForgetPrefetches()
}

// Warmer writes predicted pages to Redis in the background. Warm never
// blocks; Run drains the queue with pipelined SET key value EX ttl NX. Pages
// still warm (acknowledged by the Redis serving now less than a TTL ago) are
// skipped and a page already queued or being written is not queued twice.
// When Redis is down or slow, pages are dropped and counted, never retried,
// and writing resumes by itself when Redis answers again. When the Redis
// serving now is not the one that acknowledged the writes (a restart,
// failover or flush, seen by Run's checks), the Warmer forgets them, so the
// pages are warmed again on their next prediction.
type Warmer struct {
	cfg     Config
	rdb     redis.UniversalClient
	log     *slog.Logger
	m       *warmerMetrics
	key     template
	origin  *originClient // nil in hint mode
	queue   chan item
	done    chan struct{} // closed by Close
	stopped chan struct{} // closed when Run returns
	now     func() time.Time
	// ttlUnit and ttlValue are the SET expiry arguments: "ex" and seconds,
	// or "px" and milliseconds when the TTL is not whole seconds.
	ttlUnit, ttlValue any

	closeOnce sync.Once
	started   atomic.Bool
	// inFlight counts pages queued or being written, and lastLanded is
	// when Redis last acknowledged a write of ours (Unix nanoseconds): a
	// click before it, or while pages fly, may be late (the late check).
	inFlight   atomic.Int64
	lastLanded atomic.Int64
	// failure is the run of failed writes under way: when it started and
	// its latest error; nil when writes succeed.
	failure  atomic.Pointer[writeFailure]
	observer atomic.Pointer[Observer]
	wake     chan struct{} // asks the watcher for a check now
	sentinel string        // this Warmer's sentinel key
	// gen counts resets; a write that straddles one is not believed.
	gen atomic.Uint64
	// resetMu orders resets against recording writes: write holds it for
	// reading from its check of gen to its report to the observer, reset
	// for writing.
	resetMu sync.RWMutex

	// mu guards the fields below.
	mu     sync.Mutex
	closed bool
	keys   *keyTable // keys in flight, and until when written keys stay warm
	users  *userLimiter
	global tokenBucket
	budget budget
}

// item is one page on its way to Redis.
type item struct {
	key     string
	slot    int32 // in the key table
	user    string
	page    string
	prob    float32
	version string
	at      time.Time // the click's time (ClickTime), for the latency
	judged  time.Time // its JudgeTime: the prefetch lands no earlier for the Evaluator
}

// landedAt is when the page became warm: acked, Redis's acknowledgement,
// and never before the click it was made for. A click the consumer applies
// after the write but made (JudgeTime) before it thus finds the page cold.
func (it *item) landedAt(acked time.Time) time.Time {
	if acked.IsZero() {
		return it.judged
	}
	return maxTime(it.judged, acked)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// NewWarmer validates cfg and builds a Warmer writing through rdb. logger may
// be nil (logs are discarded); reg may be nil (metrics are not registered).
// Call Run to start writing. It returns an error wrapping ErrInvalidConfig
// for a bad cfg or a nil rdb, or the registerer's error when the metrics
// are already registered.
func NewWarmer(cfg Config, rdb redis.UniversalClient, logger *slog.Logger, reg prometheus.Registerer) (*Warmer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if rdb == nil {
		return nil, fmt.Errorf("warmer needs a redis client: %w", ErrInvalidConfig)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Warmer{
		cfg:     cfg,
		rdb:     rdb,
		log:     logger,
		key:     parseTemplate(cfg.KeyTemplate),
		queue:   make(chan item, cfg.QueueSize),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
		now:     time.Now,
		wake:    make(chan struct{}, 1),
		keys:    newKeyTable(cfg.MaxTracked),
		users:   newUserLimiter(cfg.PerUserRate, cfg.PerUserBurst, cfg.MaxTracked),
		global:  newTokenBucket(cfg.GlobalRate, cfg.GlobalBurst),
		budget:  budget{window: cfg.BudgetWindow, maxKeys: cfg.BudgetKeys, maxBytes: cfg.BudgetBytes},
	}
	if cfg.TTL%time.Second == 0 {
		w.ttlUnit, w.ttlValue = "ex", strconv.FormatInt(int64(cfg.TTL/time.Second), 10)
	} else {
		w.ttlUnit, w.ttlValue = "px", strconv.FormatInt(int64(cfg.TTL/time.Millisecond), 10)
	}
	m, err := newWarmerMetrics(reg, w)
	if err != nil {
		return nil, err
	}
	w.m = m
	w.sentinel = newSentinelKey(w.key)
	if cfg.Mode == ModeOrigin {
		w.origin = newOriginClient(cfg, w.m, w.now)
	}
	return w, nil
}

// SetObserver makes the Warmer report every page it writes to o (usually the
// Evaluator). Call it before Run; nil stops reporting.
func (w *Warmer) SetObserver(o Observer) {
	if o == nil {
		w.observer.Store(nil)
		return
	}
	w.observer.Store(&o)
}

// PerUser reports whether keys are per user (the key template has {user}).
func (w *Warmer) PerUser() bool { return w.key.hasUser }

// Key returns the Redis key under which page is warmed for user.
func (w *Warmer) Key(user, page string) string { return w.key.render(user, page) }

// BreakerState is the state of the origin circuit breaker; always
// BreakerClosed in hint mode.
func (w *Warmer) BreakerState() BreakerState {
	if w.origin == nil {
		return BreakerClosed
	}
	return w.origin.breaker.current()
}

// Warm queues req's pages for writing and returns how many it queued.
// Pages that are still warm or already queued are skipped. Pages over a rate
// limit, shed (see Config.ShedFrom), or that find the queue full (without
// Config.Block), the Warmer closed (by Close, or by Run returning) or ctx
// done, are dropped and counted in prefetchd_prefetch_dropped_total. It
// blocks only with Config.Block, while the queue is full, until there is
// room, ctx ends or the Warmer closes. A click (req.Page) on a page whose
// prefetch is still on its way is counted as late.
func (w *Warmer) Warm(ctx context.Context, req Request) int {
	now := w.now()
	clicked := req.clickTime(now)
	judged := JudgeTime(req.At, req.Recorded, now, req.Receipt)
	if req.Page != "" && (w.inFlight.Load() > 0 || w.lastLanded.Load() > judged.UnixNano()) {
		w.countLate(req.UserID, req.Page, judged.UnixNano())
	}
	if len(req.Pages) == 0 {
		return 0
	}
	w.m.requested.Add(float64(len(req.Pages)))
	if ctx.Err() != nil {
		w.m.drop(dropCanceled, len(req.Pages))
		return 0
	}
	var buf [8]item
	items := buf[:0]
	var kb [128]byte // a page's key, spelled before it is known to be new
	nowNs := now.UnixNano()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.m.drop(dropClosed, len(req.Pages))
		return 0
	}
	for _, p := range req.Pages {
		if p.Key == "" {
			w.m.drop(dropInvalid, 1)
			continue
		}
		spelled := w.key.appendTo(kb[:0], req.UserID, p.Key)
		slot, exp, flying := w.keys.lookupBytes(spelled)
		if flying {
			w.m.skippedCoalesced.Inc()
			continue
		}
		if exp > nowNs {
			w.m.skippedWarm.Inc()
			continue
		}
		if !w.users.allow(req.UserID, now) {
			w.m.drop(dropUserRate, 1)
			continue
		}
		if !w.global.allow(now) {
			w.m.drop(dropGlobalRate, 1)
			continue
		}
		key := string(spelled) // only a page queued keeps its key
		slot = w.keys.start(key, slot)
		items = append(items, item{key: key, slot: slot, user: req.UserID, page: p.Key, prob: p.Probability, version: req.ModelVersion, at: clicked, judged: judged})
	}
	w.inFlight.Add(int64(len(items)))
	w.mu.Unlock()
	top := 0
	for i := range items {
		if items[i].prob > items[top].prob {
			top = i
		}
	}
	queued := 0
	for i, it := range items {
		if reason := w.enqueue(ctx, it, i == top); reason != "" {
			w.m.drop(reason, 1)
			w.finish(it.slot)
			continue
		}
		queued++
	}
	return queued
}

// enqueue puts it on the queue and returns "", or the reason it was
// dropped. top is the request's most likely page, which is never shed.
func (w *Warmer) enqueue(ctx context.Context, it item, top bool) string {
	if !top && w.shed(it.prob) {
		return dropShed
	}
	select {
	case w.queue <- it:
		return ""
	default:
	}
	if !w.cfg.Block || w.failure.Load() != nil {
		// While Redis writes fail, waiting would stall the consumer on an
		// outage: drop instead.
		return dropQueueFull
	}
	w.m.blocked.Inc()
	select {
	case w.queue <- it:
		return ""
	case <-ctx.Done():
		return dropCanceled
	case <-w.done:
		return dropClosed
	}
}

// shed reports whether a page of probability prob is shed at the queue's
// present fill (Config.ShedFrom).
func (w *Warmer) shed(prob float32) bool {
	from := w.cfg.ShedFrom
	if from >= 1 {
		return false
	}
	fill := float64(len(w.queue)) / float64(cap(w.queue))
	if fill < from {
		return false
	}
	return float64(prob) < (fill-from)/(1-from)
}

// countLate counts a click by user on page at clicked (Unix nanoseconds)
// as late when the page's prefetch for the user was still queued or being
// written when the user clicked: it is in flight now, or Redis acknowledged
// it after clicked (a consumer behind its stream applies the click after
// the write landed, but the user did not find the page warm).
func (w *Warmer) countLate(user, page string, clicked int64) {
	var buf [128]byte
	key := w.key.appendTo(buf[:0], user, page)
	w.mu.Lock()
	late := w.keys.lateFor(key, clicked)
	w.mu.Unlock()
	if late {
		w.m.late.Inc()
	}
}

// ErrRunning is returned by a second call to Run.
var ErrRunning = errors.New("warmer already running")

// Run writes queued pages until ctx ends or Close is called, then flushes
// what is still queued within Config.FlushTimeout and returns nil. While it
// runs it checks every Config.CheckInterval that the Redis serving now is
// the one that acknowledged the writes (see Config.CheckInterval). Redis and
// origin errors are counted and logged, never returned. A second call while
// running returns ErrRunning; a call after Close returns nil at once.
func (w *Warmer) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		select {
		case <-w.done:
			return nil // closed before it ran
		default:
			return ErrRunning
		}
	}
	defer close(w.stopped)
	w.addDialHook(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.watch(ctx) })
	for range w.cfg.Workers {
		wg.Go(func() { w.work(ctx) })
	}
	wg.Wait()
	if w.origin != nil {
		w.origin.close()
	}
	return nil
}

// Close stops accepting pages, lets Run flush the queue (bounded by
// Config.FlushTimeout and ctx) and waits for Run to return; if Run was never
// started, Close flushes the queue itself. It is safe to call more than
// once; it returns an error only if ctx ends before Run has returned.
func (w *Warmer) Close(ctx context.Context) error {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		close(w.done)
	})
	if !w.started.CompareAndSwap(false, true) {
		select {
		case <-w.stopped:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("close warmer: %w", ctx.Err())
		}
	}
	// Run was never started and now never will: flush here.
	defer close(w.stopped)
	w.flush(ctx)
	if w.origin != nil {
		w.origin.close()
	}
	return nil
}

// work is one writer goroutine.
func (w *Warmer) work(ctx context.Context) {
	batch := make([]item, 0, w.cfg.PipelineSize)
	var sc scratch
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case <-ctx.Done():
			w.flush(ctx)
			return
		case <-w.done:
			w.flush(ctx)
			return
		case it := <-w.queue:
			batch = w.fill(append(batch[:0], it))
			if len(batch) < w.cfg.PipelineSize && w.cfg.Linger > 0 {
				batch = w.linger(ctx, batch, linger)
			}
			w.process(ctx, batch, &sc)
		}
	}
}

// linger waits up to Config.Linger for the batch to fill.
func (w *Warmer) linger(ctx context.Context, batch []item, t *time.Timer) []item {
	t.Reset(w.cfg.Linger)
	defer t.Stop()
	for len(batch) < w.cfg.PipelineSize {
		select {
		case it := <-w.queue:
			batch = w.fill(append(batch, it))
		case <-t.C:
			return batch
		case <-ctx.Done():
			return batch
		case <-w.done:
			return batch
		}
	}
	return batch
}

// fill adds queued items to batch without waiting, up to PipelineSize.
func (w *Warmer) fill(batch []item) []item {
	for len(batch) < w.cfg.PipelineSize {
		select {
		case it := <-w.queue:
			batch = append(batch, it)
		default:
			return batch
		}
	}
	return batch
}

// flush stops Warm from queueing, then writes what is queued within
// FlushTimeout and drops the rest.
func (w *Warmer) flush(ctx context.Context) {
	// No more pages from now on: what is queued is all there is to flush.
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.FlushTimeout)
	defer cancel()
	batch := make([]item, 0, w.cfg.PipelineSize)
	var sc scratch
	for {
		batch = w.fill(batch[:0])
		if len(batch) == 0 {
			return
		}
		if fctx.Err() != nil {
			w.m.drop(dropShutdown, len(batch))
			for _, it := range batch {
				w.finish(it.slot)
			}
			continue
		}
		w.process(fctx, batch, &sc)
	}
}

// finish forgets that the key in slot is in flight.
func (w *Warmer) finish(slot int32) {
	w.mu.Lock()
	w.keys.abort(slot)
	w.mu.Unlock()
	w.inFlight.Add(-1)
}

// scratch is a worker's reusable batch state.
type scratch struct {
	values [][]byte
	skip   []bool // not to be fetched: over the budget
	// reserved tells that the budget holds a key for each page not
	// skipped, reserved in the window that started at window.
	reserved bool
	window   time.Time
	ends     []int
	buf      []byte
	exp      []byte // the batch's expiry, formatted
	cmds     []*redis.BoolCmd
	args     []any // the commands' arguments, setArgs per command
}

// setArgs is the number of words of SET key value EX ttl NX.
const setArgs = 6

func (sc *scratch) reset(n int) {
	sc.values = slices.Grow(sc.values[:0], n)[:n]
	clear(sc.values)
	sc.cmds = slices.Grow(sc.cmds[:0], n)[:n]
	clear(sc.cmds)
	sc.skip = slices.Grow(sc.skip[:0], n)[:n]
	clear(sc.skip)
	sc.reserved, sc.window = false, time.Time{}
	clear(sc.args)
	sc.args = slices.Grow(sc.args[:0], setArgs*n)[:setArgs*n]
	sc.ends = sc.ends[:0]
	sc.buf = sc.buf[:0]
}

// originBatchBytes bounds the bodies a worker holds at once in origin
// mode: a batch is fetched and written in parts of at most this many
// bytes of MaxBodyBytes each, so that memory and a pipeline's size stay
// bounded however large the pages (a backlog of 512 pages of 1 MiB once
// held 4 GB and timed out its pipelines).
const originBatchBytes = 16 << 20

// process fetches (origin mode) or encodes (hint mode) the batch's values
// and writes them in one pipeline (origin mode: one per part of the batch,
// see originBatchBytes).
func (w *Warmer) process(ctx context.Context, batch []item, sc *scratch) {
	if w.origin != nil {
		part := int(max(1, originBatchBytes/max(1, w.cfg.MaxBodyBytes)))
		for len(batch) > part {
			w.processPart(ctx, batch[:part], sc)
			batch = batch[part:]
		}
	}
	w.processPart(ctx, batch, sc)
}

// processPart is process for one part of a batch.
func (w *Warmer) processPart(ctx context.Context, batch []item, sc *scratch) {
	sc.reset(len(batch))
	if w.origin != nil {
		if w.failure.Load() != nil {
			// Writes are failing (Redis down, out of memory): spare the
			// origin bodies that could not be stored. The cache check ends
			// the run as soon as Redis takes a write again.
			for i := range batch {
				sc.skip[i] = true
			}
			w.m.drop(dropRedis, len(batch))
		} else {
			w.overBudget(batch, sc)
			w.origin.fetchAll(ctx, batch, sc.values, sc.skip)
		}
	} else {
		sc.exp = w.now().Add(w.cfg.TTL).UTC().AppendFormat(sc.exp[:0], time.RFC3339Nano)
		for _, it := range batch {
			sc.buf = appendHint(sc.buf, it.page, it.prob, it.version, sc.exp)
			sc.ends = append(sc.ends, len(sc.buf))
		}
		begin := 0
		for i, end := range sc.ends {
			if end > begin {
				sc.values[i] = sc.buf[begin:end:end]
			} else {
				w.m.drop(dropInvalid, 1) // a NaN or infinite probability
			}
			begin = end
		}
	}
	w.write(ctx, batch, sc)
}

// overBudget reserves in the budget's window a key for each page of batch
// it has room for, and marks the others in sc.skip, the least likely first,
// counted as dropped for the budget: the origin is not asked for pages that
// could not be stored, and workers fetching at once share the room rather
// than each taking all of it. The bytes are taken once the values are known
// (write), which gives back the keys of pages not fetched.
func (w *Warmer) overBudget(batch []item, sc *scratch) {
	if w.budget.maxKeys <= 0 && w.budget.maxBytes <= 0 {
		return
	}
	w.mu.Lock()
	room, start := w.budget.reserveKeys(len(batch), w.now())
	w.mu.Unlock()
	sc.reserved, sc.window = true, start
	for over := len(batch) - room; over > 0; over-- {
		low := -1
		for i := range batch {
			if !sc.skip[i] && (low < 0 || batch[i].prob < batch[low].prob) {
				low = i
			}
		}
		sc.skip[low] = true
		w.m.drop(dropBudget, 1)
	}
}

// remaining asks Redis, in one pipeline, how long each key that SET NX
// found existing has left (PTTL: -1 none, -2 gone), by batch index; nil when
// no key was found existing or the round trip failed. A page found warm is
// then believed warm only that long, not a whole TTL.
func (w *Warmer) remaining(ctx context.Context, batch []item, values [][]byte, cmds []*redis.BoolCmd) map[int]time.Duration {
	var idx []int
	for i := range batch {
		if values[i] != nil && cmds[i] != nil {
			if set, err := cmds[i].Result(); err == nil && !set {
				idx = append(idx, i)
			}
		}
	}
	if len(idx) == 0 || ctx.Err() != nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, w.cfg.WriteTimeout)
	defer cancel()
	pipe := w.rdb.Pipeline()
	pcmds := make([]*redis.DurationCmd, len(idx))
	for j, i := range idx {
		pcmds[j] = pipe.PTTL(pctx, batch[i].key)
	}
	_, _ = pipe.Exec(pctx)
	left := make(map[int]time.Duration, len(idx))
	for j, i := range idx {
		if d, err := pcmds[j].Result(); err == nil {
			left[i] = d
		}
	}
	return left
}

// write sends SET key value EX ttl NX for every item with a value, in one
// pipeline, and records the outcome. Items without a value were already
// counted as dropped.
func (w *Warmer) write(ctx context.Context, batch []item, sc *scratch) {
	values, cmds, args := sc.values, sc.cmds, sc.args
	now := w.now()
	budgeted := w.budget.maxKeys > 0 || w.budget.maxBytes > 0
	var window time.Time // the budget window the batch's keys were taken in
	if budgeted {
		w.mu.Lock()
		for i, v := range values {
			switch {
			case sc.reserved && sc.skip[i]: // never reserved
			case sc.reserved && v == nil: // reserved, not fetched
				w.budget.releaseKeys(1, sc.window)
			case sc.reserved && !w.budget.takeBytes(int64(len(v)), now, sc.window):
				w.m.drop(dropBudget, 1)
				values[i] = nil
			case !sc.reserved && v != nil && !w.budget.take(int64(len(v)), now):
				w.m.drop(dropBudget, 1)
				values[i] = nil
			}
		}
		window = w.budget.start
		w.mu.Unlock()
	}

	n := 0
	var acked time.Time // when Redis answered the pipeline
	gen := w.gen.Load()
	if ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, w.cfg.WriteTimeout)
		pipe := w.rdb.Pipeline()
		for i, it := range batch {
			if values[i] != nil {
				// SET key value EX ttl NX, as SetNX sends it, with the
				// TTL argument formatted once and the arguments in the
				// worker's scratch (no slice allocated per command).
				a := args[setArgs*i : setArgs*(i+1) : setArgs*(i+1)]
				a[0], a[1], a[2], a[3], a[4], a[5] = "set", it.key, values[i], w.ttlUnit, w.ttlValue, "nx"
				cmds[i] = redis.NewBoolCmd(wctx, a...)
				_ = pipe.Process(wctx, cmds[i])
				n++
			}
		}
		if n > 0 {
			start := time.Now()
			_, _ = pipe.Exec(wctx) // errors are per command, below
			w.m.writeSeconds.Observe(time.Since(start).Seconds())
			acked = w.now()
		}
		cancel()
	}

	expires := now.Add(w.cfg.TTL).UnixNano()
	left := w.remaining(ctx, batch, values, cmds)
	var firstErr error
	failed, written, exists, bytes := 0, 0, 0, 0
	// A reset since the pipeline was sent means the keys may have been
	// acknowledged by the Redis that was lost: written, but not believed.
	w.resetMu.RLock()
	defer w.resetMu.RUnlock()
	stale := w.gen.Load() != gen
	w.mu.Lock()
	w.keys.expire(now.UnixNano())
	for i, it := range batch {
		if values[i] == nil {
			w.keys.abort(it.slot)
			continue
		}
		cmd := cmds[i]
		if cmd == nil { // ctx ended before the write
			w.m.drop(dropCanceled, 1)
			w.keys.abort(it.slot)
			values[i] = nil
			continue
		}
		set, err := cmd.Result()
		switch {
		case err != nil:
			failed++
			if firstErr == nil {
				firstErr = err
			}
			w.keys.abort(it.slot)
			if budgeted {
				w.budget.giveBack(int64(len(values[i])), window)
			}
			values[i] = nil
		case set:
			written++
			bytes += len(values[i])
			w.m.clickToWarm.Observe(max(acked.Sub(it.at), 0).Seconds())
			if stale {
				w.keys.abort(it.slot)
				values[i] = nil
			} else {
				w.keys.done(it.slot, expires, acked.UnixNano())
			}
		default:
			// Someone else holds the key (another instance, or ours after
			// the local memory forgot it, as after a restart): it is warm,
			// leave it alone, and believe it only for the time it has left.
			exists++
			exp, gone := expires, false
			if d, ok := left[i]; ok {
				switch {
				case d == -2: // expired since
					gone = true
				case d > 0:
					exp = now.Add(d).UnixNano()
				}
			}
			if stale || gone {
				w.keys.abort(it.slot)
			} else {
				w.keys.done(it.slot, exp, 0)
			}
			if budgeted {
				w.budget.giveBack(int64(len(values[i])), window)
			}
			values[i] = nil
		}
	}
	if written > 0 {
		// Before inFlight falls, so the late check never sees neither.
		w.lastLanded.Store(max(w.lastLanded.Load(), acked.UnixNano()))
	}
	w.mu.Unlock()
	w.inFlight.Add(-int64(len(batch)))
	w.m.written.Add(float64(written))
	w.m.writtenBytes.Add(float64(bytes))
	w.m.skippedExists.Add(float64(exists))
	if failed > 0 {
		w.m.drop(dropRedis, failed)
		f := &writeFailure{since: now, err: firstErr}
		if prev := w.failure.Load(); prev != nil {
			f.since = prev.since
		}
		if w.failure.Swap(f) == nil {
			w.log.Warn("prefetch writes failing, dropping", "err", firstErr)
		}
		// Redis may be restarting: check its identity as soon as it answers.
		w.wakeWatcher()
	} else if written+exists > 0 && w.failure.Swap(nil) != nil {
		w.log.Info("prefetch writes recovered")
		w.wakeWatcher()
	}
	if o := w.observer.Load(); o != nil && written > 0 && !stale {
		if ev, ok := (*o).(*Evaluator); ok {
			ev.observeWritten(batch, values, acked, w.cfg.TTL, w.cfg.KeyTemplate) // one lock for the pipeline
			return
		}
		for i, it := range batch {
			if values[i] != nil {
				(*o).ObservePrefetchBytes(it.user, it.page, it.version, it.landedAt(acked), w.cfg.TTL, int64(len(values[i])))
			}
		}
	}
}

// appendHint appends the JSON HintRecord for a page to b; it appends
// nothing when the probability is not finite.
// expires is the expiry formatted as RFC 3339.
func appendHint(b []byte, page string, prob float32, version string, expires []byte) []byte {
	if math.IsNaN(float64(prob)) || math.IsInf(float64(prob), 0) {
		return b
	}
	b = append(b, `{"page":`...)
	b = appendJSONString(b, page)
	b = append(b, `,"probability":`...)
	b = strconv.AppendFloat(b, float64(prob), 'g', -1, 32)
	b = append(b, `,"model_version":`...)
	b = appendJSONString(b, version)
	b = append(b, `,"expires_at":"`...)
	b = append(b, expires...)
	return append(b, `"}`...)
}

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// template is a parsed key or URL template.
type template struct {
	parts   []tmplPart
	hasUser bool
}

type tmplPart struct {
	lit string
	ph  byte // 0 literal, 'p' page, 'u' user
}

func parseTemplate(s string) template {
	var t template
	for s != "" {
		ip, iu := strings.Index(s, placeholderPage), strings.Index(s, placeholderUser)
		i, ph, n := -1, byte(0), 0
		switch {
		case ip >= 0 && (iu < 0 || ip < iu):
			i, ph, n = ip, 'p', len(placeholderPage)
		case iu >= 0:
			i, ph, n = iu, 'u', len(placeholderUser)
			t.hasUser = true
		}
		if i < 0 {
			t.parts = append(t.parts, tmplPart{lit: s})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, tmplPart{lit: s[:i]})
		}
		t.parts = append(t.parts, tmplPart{ph: ph})
		s = s[i+n:]
	}
	return t
}

// appendTo appends the filled template to b.
func (t template) appendTo(b []byte, user, page string) []byte {
	for _, p := range t.parts {
		switch p.ph {
		case 'p':
			b = append(b, page...)
		case 'u':
			b = append(b, user...)
		default:
			b = append(b, p.lit...)
		}
	}
	return b
}

// render fills the template verbatim.
func (t template) render(user, page string) string {
	n := 0
	for _, p := range t.parts {
		switch p.ph {
		case 'p':
			n += len(page)
		case 'u':
			n += len(user)
		default:
			n += len(p.lit)
		}
	}
	var b strings.Builder
	b.Grow(n)
	for _, p := range t.parts {
		switch p.ph {
		case 'p':
			b.WriteString(page)
		case 'u':
			b.WriteString(user)
		default:
			b.WriteString(p.lit)
		}
	}
	return b.String()
}

// httpClient builds the origin HTTP client; its idle connections are closed
// when Run returns so that no goroutine outlives the Warmer.
func httpClient(cfg Config) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = cfg.OriginConcurrency
	tr.MaxConnsPerHost = cfg.OriginConcurrency
	return &http.Client{Transport: tr, Timeout: cfg.OriginTimeout,
		// A redirect is the origin's answer for the page, not a 2xx: it
		// is not followed (a login page would be stored for every page).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// writeFailure is a run of failed warm writes.
type writeFailure struct {
	since time.Time
	err   error
}

// WriteFailureGrace is how long warm writes must have kept failing, none
// succeeding, before WriteErr reports it.
const WriteFailureGrace = 5 * time.Second

// WriteErr reports why warm writes have failed for WriteFailureGrace with
// none succeeding since (Redis answering PING but refusing writes: out of
// memory with noeviction, an ACL without write rights), or nil. A write
// that succeeds ends the run, and so does the cache check's write of its
// sentinel key (every CheckInterval), so a Warmer given nothing to write
// does not keep reporting a run that has ended.
func (w *Warmer) WriteErr() error {
	f := w.failure.Load()
	if f == nil {
		return nil
	}
	if d := w.now().Sub(f.since); d >= WriteFailureGrace {
		return fmt.Errorf("warm writes failing for %s: %w", d.Round(time.Second), f.err)
	}
	return nil
}
