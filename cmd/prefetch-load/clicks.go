package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/model"
)

// clicksConfig holds the flags of the clicks mode.
type clicksConfig struct {
	brokers     []string
	topic       string
	redisAddr   string
	keyTemplate string
	rates       []int
	duration    time.Duration
	warmup      time.Duration
	drain       time.Duration
	userGap     time.Duration
	metricsURL  string
	jsonOut     bool
}

const clicksUsage = `usage: prefetch-load clicks --kafka-brokers host:port --redis-addr host:port [flags]

Produces clicks at steady rates (ts = send time, keyed by user) into the topic
a prefetchd consumes, and measures for each rate the time from sending a click
to Redis setting a key warmed for its user (keyspace notifications, which it
turns on), beside a bare kafka-go group reader of the same stream on the same
broker (its own group, the service's fetch settings and batched commits), in
the same run. prefetchd is run separately, with --key-template
'user:{user}:page:{page}' (or the template given here) and a --ttl shorter
than --user-gap, so that every click warms fresh keys. Each rate also shows
Redis's longest stall in its window and the cause (LATENCY LATEST; the latency
monitor is turned on at 1 ms when it is off).`

func parseClicksFlags(args []string, stdout io.Writer) (clicksConfig, error) {
	c := clicksConfig{}
	fs := flag.NewFlagSet("prefetch-load clicks", flag.ContinueOnError)
	brokers := fs.String("kafka-brokers", "", "comma-separated Kafka brokers (required)")
	fs.StringVar(&c.topic, "topic", "clicks", "topic prefetchd consumes")
	fs.StringVar(&c.redisAddr, "redis-addr", "", "Redis host:port prefetchd warms (required)")
	fs.StringVar(&c.keyTemplate, "key-template", "user:{user}:page:{page}", "prefetchd's --key-template; must name {user} before {page}")
	rates := fs.String("rates", "1000,5000,10000,20000", "comma-separated clicks per second, one phase each")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "measured time per rate")
	fs.DurationVar(&c.warmup, "warmup", 3*time.Second, "unmeasured time per rate before the measured time")
	fs.DurationVar(&c.drain, "drain", 3*time.Second, "wait after each rate for late keys")
	fs.DurationVar(&c.userGap, "user-gap", 3*time.Second, "time between two clicks of one user (users = rate × gap)")
	fs.StringVar(&c.metricsURL, "metrics-url", "", "prefetchd's /metrics; when set, each row adds the service's drops, sheds, late clicks and its click-to-warm p99")
	fs.BoolVar(&c.jsonOut, "json", false, "print results as JSON lines instead of a table")
	if err := cli.Parse(fs, args, stdout, cli.Help{Usage: clicksUsage}); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, cli.Usagef("unexpected arguments %q", fs.Args())
	}
	for _, b := range strings.Split(*brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.brokers = append(c.brokers, b)
		}
	}
	for _, s := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return c, cli.Usagef("--rates: %q is not a positive integer", s)
		}
		c.rates = append(c.rates, n)
	}
	ui, pi := strings.Index(c.keyTemplate, "{user}"), strings.Index(c.keyTemplate, "{page}")
	switch {
	case len(c.brokers) == 0:
		return c, cli.Usagef("--kafka-brokers is required")
	case c.redisAddr == "":
		return c, cli.Usagef("--redis-addr is required")
	case ui < 0 || pi < ui:
		return c, cli.Usagef("--key-template %q must name {user} before {page}", c.keyTemplate)
	case c.duration <= 0 || c.userGap <= 0:
		return c, cli.Usagef("--duration and --user-gap must be positive")
	case c.warmup < 0 || c.drain < 0:
		return c, cli.Usagef("--warmup and --drain must not be negative")
	}
	return c, nil
}

// clickResult is the measurement of one rate.
type clickResult struct {
	Rate      int     `json:"rate"`
	SentRate  float64 `json:"sent_per_second"`
	Clicks    int     `json:"clicks"`
	Warmed    int     `json:"clicks_warmed"`
	Keys      int     `json:"keys"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	P999      float64 `json:"p999_ms"`
	BareP50   float64 `json:"bare_p50_ms"`
	BareP99   float64 `json:"bare_p99_ms"`
	Ratio     float64 `json:"p99_ratio"`
	QueueFull float64 `json:"queue_full"`
	Shed      float64 `json:"shed"`
	Late      float64 `json:"late"`
	MetricP99 float64 `json:"metric_p99_ms"`
	RedisHz   string  `json:"redis_hz"` // Redis's hz setting, "?" when unreadable
	// StallMs is the longest latency event Redis recorded in the measured
	// window (LATENCY LATEST: an expiry cycle, a slow command, a fork...),
	// StallEvent its name; NaN and "" when Redis refuses LATENCY.
	StallMs    float64 `json:"redis_stall_ms"`
	StallEvent string  `json:"redis_stall_event"`
}

// phase is the state of one rate: users c<phase>-<n>, the send time of
// each user's latest click and the latencies measured.
type phase struct {
	from, to int64 // the measured window, by send time (unix ns)

	sent   []atomic.Int64 // per user: send time of the latest click
	warmed []atomic.Int64 // per user: the send time whose click has a key
	clicks atomic.Int64   // clicks sent in the window

	mu        sync.Mutex
	lat, bare []time.Duration // guarded by mu
	nwarmed   int             // guarded by mu
}

func (p *phase) inWindow(ns int64) bool { return ns >= p.from && ns < p.to }

// runClicks is the clicks mode.
// addNotifyFlags adds the notify-keyspace-events classes of add to have,
// keeping the operator's: "Kx" and "E$" give "Kx" plus "E$".
func addNotifyFlags(have, add string) string {
	for _, c := range add {
		if !strings.ContainsRune(have, c) {
			have += string(c)
		}
	}
	return have
}

func runClicks(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseClicksFlags(args, out)
	if err != nil {
		return err
	}
	pages, err := bundledPages()
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: cfg.redisAddr})
	defer rdb.Close()
	// The settings changed below are put back as they were when the run
	// ends (a shared Redis keeps its operator's notifications).
	prev, err := rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return fmt.Errorf("read keyspace notifications at %s: %w", cfg.redisAddr, err)
	}
	notify := addNotifyFlags(prev["notify-keyspace-events"], "E$")
	if err := rdb.ConfigSet(ctx, "notify-keyspace-events", notify).Err(); err != nil {
		return fmt.Errorf("turn on keyspace notifications at %s: %w", cfg.redisAddr, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = rdb.ConfigSet(rctx, "notify-keyspace-events", prev["notify-keyspace-events"]).Err()
	}()
	// Redis's hz sets how long its expiry cycles block it (up to 25 ms at
	// the default 10 with many keys expiring): part of the tail measured.
	hz := "?"
	if v, err := rdb.ConfigGet(ctx, "hz").Result(); err == nil && v["hz"] != "" {
		hz = v["hz"]
	}
	// Redis's latency monitor names its stalls; on at 1 ms unless set.
	if v, err := rdb.ConfigGet(ctx, "latency-monitor-threshold").Result(); err == nil && v["latency-monitor-threshold"] == "0" {
		if rdb.ConfigSet(ctx, "latency-monitor-threshold", "1").Err() == nil {
			defer func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				defer cancel()
				_ = rdb.ConfigSet(rctx, "latency-monitor-threshold", "0").Err()
			}()
		}
	}
	nonce := make([]byte, 4)
	_, _ = rand.Read(nonce)
	run := hex.EncodeToString(nonce)

	var (
		phasesMu sync.Mutex
		phases   []*phase
	)
	lookup := func(user string) (*phase, int) {
		// users are "c<run>-<phase>-<n>"
		f := strings.Split(user, "-")
		if len(f) != 3 || f[0] != "c"+run {
			return nil, 0
		}
		pi, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(f[2])
		phasesMu.Lock()
		defer phasesMu.Unlock()
		if err1 != nil || err2 != nil || pi >= len(phases) || n >= len(phases[pi].sent) {
			return nil, 0
		}
		return phases[pi], n
	}

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()

	// Keys set in Redis: the service's latency.
	ps := rdb.PSubscribe(wctx, "__keyevent@*__:set")
	defer ps.Close()
	if _, err := ps.Receive(wctx); err != nil {
		return fmt.Errorf("subscribe to keyspace notifications: %w", err)
	}
	prefix, sep := userDelims(cfg.keyTemplate)
	wg.Go(func() {
		for {
			msg, err := ps.ReceiveMessage(wctx)
			if err != nil {
				return
			}
			now := time.Now().UnixNano()
			key, ok := strings.CutPrefix(msg.Payload, prefix)
			if !ok {
				continue
			}
			user, _, ok := strings.Cut(key, sep)
			if !ok {
				continue
			}
			p, n := lookup(user)
			if p == nil {
				continue
			}
			sent := p.sent[n].Load()
			if !p.inWindow(sent) {
				continue
			}
			first := p.warmed[n].Swap(sent) != sent
			p.mu.Lock()
			p.lat = append(p.lat, time.Duration(now-sent))
			if first {
				p.nwarmed++
			}
			p.mu.Unlock()
		}
	})

	// The bare consumer: the baseline.
	bareSeen := make(chan struct{})
	var seenOnce sync.Once
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers: cfg.brokers, GroupID: "prefetch-load-bare-" + run, Topic: cfg.topic,
		QueueCapacity: features.DefaultQueueCapacity, MinBytes: features.DefaultMinBytes,
		MaxBytes: features.DefaultMaxBytes, MaxWait: features.DefaultMaxWait,
		HeartbeatInterval: features.DefaultHeartbeatInterval, SessionTimeout: features.DefaultSessionTimeout,
		JoinGroupBackoff: 500 * time.Millisecond, StartOffset: kafka.LastOffset, CommitInterval: 0,
	})
	defer reader.Close()
	commits := newBareCommits()
	wg.Go(func() { commits.run(wctx, reader) })
	wg.Go(func() {
		var ev struct {
			UserID string    `json:"user_id"`
			TS     time.Time `json:"ts"`
		}
		for {
			msg, err := reader.FetchMessage(wctx)
			if err != nil {
				return
			}
			now := time.Now()
			commits.add(msg)
			if json.Unmarshal(msg.Value, &ev) != nil {
				continue
			}
			seenOnce.Do(func() { close(bareSeen) })
			p, _ := lookup(ev.UserID)
			if p == nil || !p.inWindow(ev.TS.UnixNano()) {
				continue
			}
			p.mu.Lock()
			p.bare = append(p.bare, now.Sub(ev.TS))
			p.mu.Unlock()
		}
	})

	var produceErrs atomic.Int64
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	writer := &kafka.Writer{
		Transport: transport,
		Addr:      kafka.TCP(cfg.brokers...), Topic: cfg.topic, Balancer: &kafka.Hash{},
		BatchTimeout: time.Millisecond, BatchSize: 64, RequiredAcks: kafka.RequireOne, Async: true,
		Completion: func(_ []kafka.Message, err error) {
			if err != nil {
				produceErrs.Add(1)
			}
		},
	}
	defer writer.Close()

	// Probe clicks until the bare reader has joined its group and reads.
	phasesMu.Lock()
	phases = append(phases, &phase{sent: make([]atomic.Int64, 1), warmed: make([]atomic.Int64, 1)})
	phasesMu.Unlock()
	if err := waitBare(ctx, writer, bareSeen, run, pages); err != nil {
		return err
	}
	if !cfg.jsonOut {
		fmt.Fprintf(out, "clicks to %s topic %s, keys in redis %s (%s, hz %s); %s measured per rate after %s warm-up, %s drain; a user clicks every %s\n",
			strings.Join(cfg.brokers, ","), cfg.topic, cfg.redisAddr, cfg.keyTemplate, hz, cfg.duration, cfg.warmup, cfg.drain, cfg.userGap)
		fmt.Fprintf(out, "%7s %9s %8s %7s %8s %9s %9s %9s %9s %9s %6s %10s %8s %8s %10s  %s\n",
			"rate", "sent/s", "clicks", "warmed", "keys", "p50", "p99", "p99.9", "bare p50", "bare p99", "ratio", "queue_full", "shed", "late", "metric p99", "redis stall")
	}
	for _, rate := range cfg.rates {
		users := max(int(float64(rate)*cfg.userGap.Seconds()), 1)
		start := time.Now()
		p := &phase{
			from: start.Add(cfg.warmup).UnixNano(), to: start.Add(cfg.warmup + cfg.duration).UnixNano(),
			sent: make([]atomic.Int64, users), warmed: make([]atomic.Int64, users),
		}
		phasesMu.Lock()
		idx := len(phases)
		phases = append(phases, p)
		phasesMu.Unlock()
		var before map[string]float64
		sent, err := produce(ctx, writer, p, idx, run, rate, pages, cfg.warmup, func() {
			_ = rdb.Do(ctx, "latency", "reset").Err()
			if cfg.metricsURL != "" {
				before, _ = scrape(ctx, cfg.metricsURL)
			}
		}, cfg.warmup+cfg.duration)
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.drain):
		}
		res := p.result(rate, sent, cfg.duration)
		res.RedisHz = hz
		res.StallMs, res.StallEvent = redisStall(ctx, rdb)
		if cfg.metricsURL != "" {
			after, err := scrape(ctx, cfg.metricsURL)
			if err != nil {
				return err
			}
			res.addMetrics(before, after)
		}
		if err := printClicks(out, cfg.jsonOut, res); err != nil {
			return err
		}
	}
	if n := produceErrs.Load(); n > 0 {
		return fmt.Errorf("%d produce batches failed", n)
	}
	return nil
}

// waitBare produces a click every 100 ms until the bare reader reads one
// (it joins its group after the first run's start).
func waitBare(ctx context.Context, w *kafka.Writer, seen <-chan struct{}, run string, pages []string) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(60 * time.Second)
	for {
		now := time.Now()
		if err := w.WriteMessages(ctx, clickMessage("c"+run+"-0-0", pages[0], now)); err != nil {
			return fmt.Errorf("produce: %w", err)
		}
		select {
		case <-seen:
			return nil
		case <-deadline:
			return errors.New("the bare reader read nothing in 60s: is the broker up and the topic there?")
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// produce sends rate clicks per second for total, user after user, and
// returns the clicks sent in p's window; at calls mark once warmup has
// passed.
func produce(ctx context.Context, w *kafka.Writer, p *phase, idx int, run string, rate int, pages []string, warmup time.Duration, mark func(), total time.Duration) (int, error) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	start := time.Now()
	sent, marked := 0, false
	rng := mrand.New(mrand.NewPCG(uint64(idx), uint64(rate)))
	batch := make([]kafka.Message, 0, 256)
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
		}
		el := time.Since(start)
		if el >= total {
			return int(p.clicks.Load()), nil
		}
		if !marked && el >= warmup {
			marked = true
			mark()
		}
		due := int(el.Seconds()*float64(rate)) - sent
		batch = batch[:0]
		for range due {
			n := sent % len(p.sent)
			now := time.Now()
			user := "c" + run + "-" + strconv.Itoa(idx) + "-" + strconv.Itoa(n)
			p.sent[n].Store(now.UnixNano())
			if p.inWindow(now.UnixNano()) {
				p.clicks.Add(1)
			}
			batch = append(batch, clickMessage(user, pages[rng.IntN(len(pages))], now))
			sent++
		}
		if len(batch) > 0 {
			if err := w.WriteMessages(ctx, batch...); err != nil {
				return 0, fmt.Errorf("produce: %w", err)
			}
		}
	}
}

func clickMessage(user, page string, ts time.Time) kafka.Message {
	v := `{"user_id":"` + user + `","page":"` + page + `","ts":"` + ts.UTC().Format(time.RFC3339Nano) + `"}`
	return kafka.Message{Key: []byte(user), Value: []byte(v)}
}

// result computes the row of a phase.
func (p *phase) result(rate, clicks int, d time.Duration) clickResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	slices.Sort(p.lat)
	slices.Sort(p.bare)
	ms := func(sorted []time.Duration, q float64) float64 {
		if len(sorted) == 0 {
			return math.NaN()
		}
		return float64(quantile(sorted, q)) / float64(time.Millisecond)
	}
	r := clickResult{
		Rate: rate, SentRate: float64(clicks) / d.Seconds(), Clicks: clicks, Warmed: p.nwarmed, Keys: len(p.lat),
		P50: ms(p.lat, 0.5), P99: ms(p.lat, 0.99), P999: ms(p.lat, 0.999),
		BareP50: ms(p.bare, 0.5), BareP99: ms(p.bare, 0.99),
		QueueFull: math.NaN(), Shed: math.NaN(), Late: math.NaN(), MetricP99: math.NaN(),
	}
	r.Ratio = r.P99 / r.BareP99
	return r
}

// addMetrics fills the service's figures from two scrapes of /metrics.
func (r *clickResult) addMetrics(before, after map[string]float64) {
	delta := func(k string) float64 { return after[k] - before[k] }
	r.QueueFull = delta(`prefetchd_prefetch_dropped_total{reason="queue_full"}`)
	r.Shed = delta(`prefetchd_prefetch_dropped_total{reason="shed"}`)
	r.Late = delta(`prefetchd_prefetch_late_total`)
	// p99 of the histogram's increase: the first bucket holding 99%.
	const name = "prefetchd_click_to_warm_seconds_bucket"
	var les []float64
	for k := range after {
		if le, ok := strings.CutPrefix(k, name+`{le="`); ok {
			if v, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64); err == nil {
				les = append(les, v)
			}
		}
	}
	slices.Sort(les)
	key := func(le float64) string {
		return name + `{le="` + strconv.FormatFloat(le, 'g', -1, 64) + `"}`
	}
	total := delta(name + `{le="+Inf"}`)
	for _, le := range les {
		if total > 0 && delta(key(le)) >= 0.99*total {
			r.MetricP99 = le * 1000
			break
		}
	}
}

// scrape reads a Prometheus text exposition into series → value.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	return m, nil
}

func printClicks(out io.Writer, jsonOut bool, r clickResult) error {
	if jsonOut {
		b, err := json.Marshal(nanToNull(r))
		if err != nil {
			return fmt.Errorf("encode result: %w", err)
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	f := func(v float64, unit string) string {
		if math.IsNaN(v) {
			return "-"
		}
		return strconv.FormatFloat(v, 'f', 1, 64) + unit
	}
	warmed := "-"
	if r.Clicks > 0 {
		warmed = strconv.FormatFloat(100*float64(r.Warmed)/float64(r.Clicks), 'f', 1, 64) + "%"
	}
	stall := f(r.StallMs, "ms")
	if r.StallEvent != "" {
		stall += " " + r.StallEvent
	}
	_, err := fmt.Fprintf(out, "%7d %9.0f %8d %7s %8d %9s %9s %9s %9s %9s %6s %10s %8s %8s %10s  %s\n",
		r.Rate, r.SentRate, r.Clicks, warmed, r.Keys, f(r.P50, "ms"), f(r.P99, "ms"), f(r.P999, "ms"),
		f(r.BareP50, "ms"), f(r.BareP99, "ms"), f(r.Ratio, ""), f(r.QueueFull, ""), f(r.Shed, ""), f(r.Late, ""), f(r.MetricP99, "ms"), stall)
	return err
}

// redisStall returns the longest latency event Redis recorded since the
// last LATENCY RESET and its name (0 and "" when none), or NaN when Redis
// refuses LATENCY. Each LATENCY LATEST entry is [event, time, latest ms,
// max ms].
func redisStall(ctx context.Context, rdb *redis.Client) (float64, string) {
	entries, err := rdb.Do(ctx, "latency", "latest").Slice()
	if err != nil {
		return math.NaN(), ""
	}
	var worst float64
	var event string
	for _, e := range entries {
		fields, ok := e.([]any)
		if !ok || len(fields) < 4 {
			continue
		}
		name, _ := fields[0].(string)
		if ms, ok := fields[3].(int64); ok && float64(ms) > worst {
			worst, event = float64(ms), name
		}
	}
	return worst, event
}

// nanToNull is r as a map with NaN (not measured) as null, for JSON.
func nanToNull(r clickResult) map[string]any {
	out := map[string]any{
		"rate": r.Rate, "sent_per_second": r.SentRate, "clicks": r.Clicks, "clicks_warmed": r.Warmed, "keys": r.Keys,
		"redis_hz": r.RedisHz, "redis_stall_event": r.StallEvent,
	}
	for k, v := range map[string]float64{
		"p50_ms": r.P50, "p99_ms": r.P99, "p999_ms": r.P999, "bare_p50_ms": r.BareP50, "bare_p99_ms": r.BareP99,
		"p99_ratio": r.Ratio, "queue_full": r.QueueFull, "shed": r.Shed, "late": r.Late, "metric_p99_ms": r.MetricP99,
		"redis_stall_ms": r.StallMs,
	} {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			out[k] = nil
		} else {
			out[k] = v
		}
	}
	return out
}

// userDelims returns what comes before {user} in the key template and the
// literal that follows it.
func userDelims(tmpl string) (prefix, sep string) {
	prefix, rest, _ := strings.Cut(tmpl, "{user}")
	sep, _, _ = strings.Cut(rest, "{")
	return prefix, sep
}

// bundledPages are the pages of the bundled model's vocabulary, which
// prefetchd on its defaults scores.
func bundledPages() ([]string, error) {
	fsys, dir := embedded.Model()
	b, err := model.LoadBundleFS(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("load the bundled model: %w", err)
	}
	v := b.Vocab()
	pages := make([]string, 0, v.Len())
	for i := 2; i < v.Len(); i++ { // past padding and unknown
		pages = append(pages, v.Page(int64(i)))
	}
	if len(pages) == 0 {
		return nil, errors.New("the bundled model has no pages")
	}
	return pages, nil
}

// bareCommits commits the bare reader's offsets every second, off the
// fetch loop, as the service does.
type bareCommits struct {
	mu     sync.Mutex
	latest map[int]kafka.Message // guarded by mu
}

func newBareCommits() *bareCommits { return &bareCommits{latest: make(map[int]kafka.Message)} }

func (c *bareCommits) add(m kafka.Message) {
	c.mu.Lock()
	c.latest[m.Partition] = m
	c.mu.Unlock()
}

func (c *bareCommits) run(ctx context.Context, r *kafka.Reader) {
	t := time.NewTicker(features.DefaultCommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		msgs := make([]kafka.Message, 0, len(c.latest))
		for _, m := range c.latest {
			msgs = append(msgs, m)
		}
		clear(c.latest)
		c.mu.Unlock()
		if len(msgs) > 0 {
			_ = r.CommitMessages(ctx, msgs...) // a lost commit only re-reads on restart
		}
	}
}
