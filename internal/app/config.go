package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"time"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/internal/server"
	"github.com/prefetchd/prefetchd/prefetch"
	"github.com/prefetchd/prefetchd/transitions"
)

// EnvPrefix starts the environment variable that matches each flag: --kafka-brokers
// is also read from PREFETCHD_KAFKA_BROKERS. A flag on the command line wins
// over the environment, which wins over the default.
const EnvPrefix = "PREFETCHD_"

// Replay sources.
const (
	ReplayEmbedded = "embedded" // the bundled NASA July 1995 sessions
	ReplayNone     = "none"
)

// Config is everything the service is told at start.
//
// Zero is a value: Default holds every default, so a field's value is
// always what is meant, 0 included. Where 0 is meaningful it is honoured
// (--threshold 0 admits every page; rates and budgets of 0 mean no limit);
// where the component behind a field cannot take 0, Validate rejects it
// rather than letting it silently become the default.
type Config struct {
	// Kafka. Empty KafkaBrokers starts an in-process broker (the embedded default).
	KafkaBrokers []string
	Topic        string
	Group        string

	// Kafka security: TLS (with an optional CA file) and SASL (PLAIN,
	// SCRAM-SHA-256 or SCRAM-SHA-512).
	KafkaTLS           bool
	KafkaCA            string
	KafkaSASLMechanism string
	KafkaUsername      string
	KafkaPassword      string
	DeadLetterTopic    string
	// Consumer tuning: workers (a user always goes to the same one), the
	// most events scored in one model run, commit interval and batch size,
	// and the accepted clock skew of event times.
	Workers        int
	IngestBatch    int
	EventIDCache   int
	CommitInterval time.Duration
	CommitBatch    int
	MaxSkew        time.Duration
	// Group membership: how long the group waits for a silent member
	// (failover gap when a replica dies) and how often members heartbeat.
	KafkaSessionTimeout    time.Duration
	KafkaHeartbeatInterval time.Duration

	// Redis. Empty RedisAddr starts an in-process Redis-protocol store.
	RedisAddr     string
	RedisUsername string
	RedisPassword string
	RedisTLS      bool
	RedisCA       string
	// StateRedisAddr, when set, holds the shared state of the Redis history
	// store (histories, partition marks, online statistics) instead of
	// RedisAddr, which then holds only the warmed pages; same credentials
	// and TLS. Empty: everything in RedisAddr.
	StateRedisAddr string

	// Histories: "memory" (per process) or "redis" (shared by replicas).
	HistoryStore    string
	HistoryMaxUsers int
	SessionGap      time.Duration
	HistoryIdleTTL  time.Duration
	// CanonicalConfig is a JSON file of page canonicalization settings
	// (features.CanonicalizerConfig); empty keeps the defaults.
	CanonicalConfig string

	// Model: a bundle folder, or empty for the bundled model. ModelRepo, when
	// set, is a repository <repo>/<name>/<version>/ watched for new versions.
	Model     string
	ModelRepo string
	ModelName string
	// AutoRollback rolls a new version back when its live prefetch precision
	// over RollbackWindow falls below RollbackMinFraction of its predecessor's.
	AutoRollback        bool
	RollbackMinFraction float64
	RollbackWindow      time.Duration

	// Online transition statistics (package transitions): learned from the
	// clicks, kept where the histories are (in process, or in Redis shared
	// by replicas), blended into every prediction with the online share
	// n / (n + OnlineEvidence) for a page with n decayed transitions out.
	// On by default.
	Online         bool
	OnlineEvidence float64 // 0: the online statistics alone once a page has any
	OnlineHalfLife time.Duration
	OnlineMaxPages int
	OnlineMaxNext  int
	// With shared (Redis) statistics: how often a replica sends the
	// transitions it observed, and how long it reuses a page's statistics
	// read from Redis (0: every click waits for its round trips).
	OnlineFlushInterval time.Duration
	OnlineCacheTTL      time.Duration

	// Prefetch policy.
	Threshold float64
	K         int
	TTL       time.Duration
	// KeyTemplate names warmed keys: "page:{page}" (shared) or
	// "user:{user}:page:{page}" (per user).
	KeyTemplate string
	// PrefetchMode is "hint" (store a hint record) or "origin" (store the
	// page body fetched from OriginURL).
	PrefetchMode string
	OriginURL    string
	// Origin mode's limits: per request, per body, requests in flight.
	OriginTimeout     time.Duration
	OriginMaxBody     int64
	OriginConcurrency int
	// BudgetBytes caps the bytes written per TTL window (0: no cap).
	BudgetBytes int64
	GlobalRate  float64
	// CostWeights is a JSON file {"page": weight, ...}; when set, pages are
	// ranked and thresholded by probability × weight (expected utility).
	CostWeights string
	PerUserRate float64
	BudgetKeys  int
	// The warmer: queue length and writers (each with a pipeline in
	// flight); WarmBackpressure makes a full queue slow the consumer down
	// instead of dropping pages; past WarmShedFrom (a fraction of the
	// queue) pages of low probability are shed, the least likely first
	// (prefetch.Config.ShedFrom; 1 never sheds).
	WarmQueue        int
	WarmWorkers      int
	WarmPipeline     int
	WarmBackpressure bool
	WarmShedFrom     float64
	// OverloadLag fails the "overloaded" readiness check while the oldest
	// unsettled record is older than this (prefetchd_ingest_lag_seconds);
	// 0 turns the check off.
	OverloadLag time.Duration

	// Servers.
	Listen         string // gRPC
	AdminListen    string // HTTP: /metrics, /healthz, /readyz
	AdminTokenFile string
	TLSCert        string
	TLSKey         string
	TLSClientCA    string
	// AdminClientCNs are client certificate common names (mutual TLS) that
	// may call ModelService without a bearer token.
	AdminClientCNs []string
	// MaxWatchers caps the WatchHints streams open at once.
	MaxWatchers int
	Pprof       bool

	// Replay into Kafka: "embedded", "none" or a SPMF file. Default: embedded
	// when the broker is in-process, none otherwise.
	Replay     string
	ReplayRate float64

	LogLevel string
}

// Warmer and overload defaults of the service.
const (
	// Upper bounds of the sizes Validate accepts.
	maxWorkers      = 4096
	maxBatch        = 1 << 16
	maxQueue        = 1 << 22
	maxKafkaTimeout = math.MaxInt32 * time.Millisecond
	maxOriginBody   = 512 << 20

	DefaultWarmQueue    = 8192
	DefaultWarmWorkers  = 4
	DefaultWarmPipeline = 512
	DefaultWarmShedFrom = 0.5
	DefaultOverloadLag  = 10 * time.Second
)

// Default returns the configuration of `make run`.
func Default() Config {
	return Config{
		Topic:          "clicks",
		Group:          "prefetchd",
		ModelName:      "default",
		Threshold:      prefetch.DefaultThreshold,
		K:              prefetch.DefaultK,
		TTL:            5 * time.Minute,
		KeyTemplate:    "page:{page}",
		PrefetchMode:   "hint",
		HistoryStore:   "memory",
		SessionGap:     30 * time.Minute,
		HistoryIdleTTL: features.DefaultIdleTTL,
		Listen:         "127.0.0.1:50051",
		AdminListen:    "127.0.0.1:8081",
		ReplayRate:     200,

		WarmQueue:         DefaultWarmQueue,
		OriginTimeout:     prefetch.DefaultOriginTimeout,
		OriginMaxBody:     prefetch.DefaultMaxBodyBytes,
		OriginConcurrency: prefetch.DefaultOriginConcurrency,
		WarmWorkers:       DefaultWarmWorkers,
		WarmPipeline:      DefaultWarmPipeline,
		WarmBackpressure:  true,
		WarmShedFrom:      DefaultWarmShedFrom,
		OverloadLag:       DefaultOverloadLag,
		MaxSkew:           24 * time.Hour,
		LogLevel:          "info",

		Workers:                features.DefaultWorkers,
		KafkaSessionTimeout:    features.DefaultSessionTimeout,
		KafkaHeartbeatInterval: features.DefaultHeartbeatInterval,
		IngestBatch:            features.DefaultBatchSize,
		EventIDCache:           features.DefaultEventIDCache,
		CommitInterval:         features.DefaultCommitInterval,
		CommitBatch:            features.DefaultCommitBatch,
		HistoryMaxUsers:        features.DefaultMaxUsers,
		MaxWatchers:            server.DefaultMaxWatchers,
		Online:                 true,
		OnlineEvidence:         transitions.DefaultEvidence,
		OnlineHalfLife:         transitions.DefaultHalfLife,
		OnlineMaxPages:         transitions.DefaultMaxPages,
		OnlineMaxNext:          transitions.DefaultMaxNext,
		OnlineFlushInterval:    100 * time.Millisecond,
		OnlineCacheTTL:         time.Second,
		RollbackMinFraction:    lifecycle.DefaultMinFraction,
		RollbackWindow:         lifecycle.DefaultWindow,
	}
}

// Embedded reports whether the service runs its own broker.
func (c *Config) Embedded() bool { return len(c.KafkaBrokers) == 0 }

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Topic == "" {
		errs = append(errs, errors.New("--topic is empty"))
	}
	if c.Group == "" {
		errs = append(errs, errors.New("--group is empty"))
	}
	if math.IsNaN(c.Threshold) || c.Threshold < 0 || c.Threshold > 1 {
		errs = append(errs, fmt.Errorf("--threshold %v outside [0, 1]", c.Threshold))
	}
	if c.K < 1 || c.K > 100 {
		errs = append(errs, fmt.Errorf("--k %d outside 1..100", c.K))
	}
	if c.TTL < time.Millisecond {
		errs = append(errs, fmt.Errorf("--ttl %v below 1ms (Redis keeps TTLs in milliseconds)", c.TTL))
	}
	for name, addr := range map[string]string{"--listen": c.Listen, "--admin-listen": c.AdminListen} {
		if _, port, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", name, addr, err))
		} else if _, err := net.LookupPort("tcp", port); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: port %q is not a number from 0 to 65535", name, addr, port))
		}
	}
	switch c.HistoryStore {
	case "memory", "redis":
	default:
		errs = append(errs, fmt.Errorf("--history-store %q is neither memory nor redis", c.HistoryStore))
	}
	if c.StateRedisAddr != "" && c.HistoryStore != "redis" {
		errs = append(errs, errors.New("--state-redis-addr needs --history-store redis (with the memory store there is no shared state)"))
	}
	switch c.PrefetchMode {
	case "hint":
		if c.OriginURL != "" {
			errs = append(errs, errors.New("--origin-url is fetched only with --prefetch-mode origin"))
		}
	case "origin":
		switch {
		case c.OriginURL == "":
			errs = append(errs, errors.New("--prefetch-mode origin needs --origin-url"))
		case !strings.Contains(c.OriginURL, "{page}"):
			errs = append(errs, errors.New("--origin-url lacks {page}: every page would get the same body"))
		case !strings.HasPrefix(c.OriginURL, "http://") && !strings.HasPrefix(c.OriginURL, "https://"):
			errs = append(errs, errors.New("--origin-url must be an http:// or https:// URL"))
		}
	default:
		errs = append(errs, fmt.Errorf("--prefetch-mode %q is neither hint nor origin", c.PrefetchMode))
	}
	if !strings.Contains(c.KeyTemplate, "{page}") {
		errs = append(errs, fmt.Errorf("--key-template %q lacks {page}", c.KeyTemplate))
	}
	if err := c.kafkaSec().Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DeadLetterTopic != "" && c.DeadLetterTopic == c.Topic {
		errs = append(errs, fmt.Errorf("--dead-letter-topic %q is the click topic (--topic)", c.DeadLetterTopic))
	}
	// The components behind these fields read 0 as "use the default", so
	// an explicit 0 is refused here rather than silently changed.
	for name, v := range map[string]float64{
		"--workers": float64(c.Workers), "--ingest-batch": float64(c.IngestBatch),
		"--commit-batch":      float64(c.CommitBatch),
		"--history-max-users": float64(c.HistoryMaxUsers),
		"--online-max-pages":  float64(c.OnlineMaxPages),
		"--online-max-next":   float64(c.OnlineMaxNext),
		"--warm-queue":        float64(c.WarmQueue), "--warm-workers": float64(c.WarmWorkers),
		"--warm-pipeline": float64(c.WarmPipeline), "--max-watchers": float64(c.MaxWatchers),
		"--origin-max-body": float64(c.OriginMaxBody), "--origin-concurrency": float64(c.OriginConcurrency),
	} {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s %v is not positive", name, v))
		}
	}
	for name, d := range map[string]time.Duration{
		"--commit-interval": c.CommitInterval, "--session-gap": c.SessionGap,
		"--history-idle-ttl": c.HistoryIdleTTL, "--rollback-window": c.RollbackWindow,
		"--online-half-life": c.OnlineHalfLife, "--origin-timeout": c.OriginTimeout,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s %v is not positive", name, d))
		}
	}
	// Upper bounds: beyond them a value allocates what no machine has, or
	// the Kafka client refuses it (by a panic) after start.
	for _, b := range []struct {
		name     string
		v, limit int
	}{
		{"--workers", c.Workers, maxWorkers}, {"--ingest-batch", c.IngestBatch, maxBatch},
		{"--commit-batch", c.CommitBatch, maxQueue}, {"--warm-queue", c.WarmQueue, maxQueue},
		{"--warm-workers", c.WarmWorkers, maxWorkers}, {"--warm-pipeline", c.WarmPipeline, maxBatch},
		{"--max-watchers", c.MaxWatchers, maxQueue}, {"--origin-concurrency", c.OriginConcurrency, maxWorkers},
	} {
		if b.v > b.limit {
			errs = append(errs, fmt.Errorf("%s %d above %d", b.name, b.v, b.limit))
		}
	}
	for name, d := range map[string]time.Duration{"--kafka-session-timeout": c.KafkaSessionTimeout, "--kafka-heartbeat-interval": c.KafkaHeartbeatInterval} {
		if d > maxKafkaTimeout {
			errs = append(errs, fmt.Errorf("%s %s above %s, the most the Kafka protocol carries", name, d, maxKafkaTimeout))
		}
	}
	if c.KafkaSessionTimeout < features.MinSessionTimeout {
		errs = append(errs, fmt.Errorf("--kafka-session-timeout %s below %s, the brokers' default minimum (group.min.session.timeout.ms)", c.KafkaSessionTimeout, features.MinSessionTimeout))
	}
	if c.KafkaHeartbeatInterval <= 0 || c.KafkaHeartbeatInterval >= c.KafkaSessionTimeout {
		errs = append(errs, fmt.Errorf("--kafka-heartbeat-interval %s must be positive and below the session timeout", c.KafkaHeartbeatInterval))
	}
	if c.OnlineFlushInterval < 0 || c.OnlineCacheTTL < 0 {
		errs = append(errs, errors.New("--online-flush-interval and --online-cache-ttl must not be negative (0: off)"))
	}
	if math.IsNaN(c.OnlineEvidence) || math.IsInf(c.OnlineEvidence, 0) || c.OnlineEvidence < 0 {
		errs = append(errs, fmt.Errorf("--online-evidence %v is not a finite number >= 0", c.OnlineEvidence))
	}
	if c.EventIDCache == 0 {
		errs = append(errs, errors.New("--event-id-cache 0: give a negative value to turn the cache off"))
	}
	if c.MaxSkew == 0 {
		errs = append(errs, errors.New("--max-skew 0: give a negative value to turn the check off"))
	}
	if math.IsNaN(c.RollbackMinFraction) || c.RollbackMinFraction <= 0 || c.RollbackMinFraction > 1 {
		errs = append(errs, fmt.Errorf("--rollback-min-fraction %v outside (0, 1] (turn rollback off with --auto-rollback=false)", c.RollbackMinFraction))
	}
	if math.IsNaN(c.GlobalRate) || math.IsInf(c.GlobalRate, 0) || math.IsNaN(c.PerUserRate) || math.IsInf(c.PerUserRate, 0) {
		errs = append(errs, errors.New("--global-rate and --per-user-rate must be finite numbers (0 means no limit)"))
	}
	for name, v := range map[string]float64{"--global-rate": c.GlobalRate, "--per-user-rate": c.PerUserRate, "--budget-keys": float64(c.BudgetKeys), "--budget-bytes": float64(c.BudgetBytes)} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative (0 means no limit)", name, v))
		}
	}
	if math.IsNaN(c.WarmShedFrom) || c.WarmShedFrom < 0 || c.WarmShedFrom > 1 {
		errs = append(errs, fmt.Errorf("--warm-shed-from %v outside [0, 1] (1: never shed)", c.WarmShedFrom))
	}
	if c.OverloadLag < 0 {
		errs = append(errs, fmt.Errorf("--overload-lag %v is negative (0: no check)", c.OverloadLag))
	}
	if c.OriginMaxBody > maxOriginBody {
		errs = append(errs, fmt.Errorf("--origin-max-body %d above %d (512 MiB, Redis's largest value)", c.OriginMaxBody, maxOriginBody))
	}
	if c.ModelName == "" {
		errs = append(errs, errors.New(`--model-name is empty (the default is "default")`))
	}
	if c.Model != "" && c.ModelRepo != "" {
		errs = append(errs, errors.New("--model and --model-repo are exclusive"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if len(c.AdminClientCNs) > 0 && c.TLSClientCA == "" {
		errs = append(errs, errors.New("--admin-client-cn needs --tls-client-ca"))
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key"))
	}
	if math.IsNaN(c.ReplayRate) || c.ReplayRate <= 0 || c.ReplayRate > MaxReplayRate {
		errs = append(errs, fmt.Errorf("--replay-rate %v outside (0, %g] events per second", c.ReplayRate, float64(MaxReplayRate)))
	}
	for name, addrs := range map[string][]string{"--kafka-brokers": c.KafkaBrokers, "--redis-addr": splitAddrs(c.RedisAddr), "--state-redis-addr": splitAddrs(c.StateRedisAddr)} {
		for _, a := range addrs {
			if err := cli.CheckHostPort(a); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q is not debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// Usage is the first part of `prefetchd --help`; the flags follow.
const Usage = `usage: prefetchd [flags]

Predicts each user's next pages from a Kafka click stream and warms them in
Redis. With no flags it runs on embedded defaults (in-process broker and store,
bundled model, replay of the NASA July 1995 sessions). Every flag can also be
set by the environment variable shown beside it; a flag given on the command
line wins. An unknown PREFETCHD_* variable is an error.`

// ParseFlags reads the configuration from flags and, for flags not given,
// from PREFETCHD_* variables in environ ("KEY=value" entries, as
// os.Environ). --help and --version print to stdout and return
// cli.ErrPrinted; a mistake in the flags, the environment or the resulting
// configuration returns an error matching cli.ErrUsage.
func ParseFlags(args []string, environ []string, stdout io.Writer) (Config, error) {
	c := Default()
	fs := flag.NewFlagSet("prefetchd", flag.ContinueOnError)
	brokers := fs.String("kafka-brokers", "", "comma-separated Kafka brokers; empty starts an in-process broker")
	fs.StringVar(&c.Topic, "topic", c.Topic, "Kafka topic of click events")
	fs.StringVar(&c.Group, "group", c.Group, "Kafka consumer group")
	fs.BoolVar(&c.KafkaTLS, "kafka-tls", c.KafkaTLS, "connect to Kafka over TLS")
	fs.StringVar(&c.KafkaCA, "kafka-ca", c.KafkaCA, "CA bundle (PEM) for Kafka TLS; default the system roots")
	fs.StringVar(&c.KafkaSASLMechanism, "kafka-sasl-mechanism", c.KafkaSASLMechanism, "Kafka SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	fs.StringVar(&c.KafkaUsername, "kafka-username", c.KafkaUsername, "Kafka SASL user")
	fs.StringVar(&c.KafkaPassword, "kafka-password", c.KafkaPassword, "Kafka SASL password (prefer the environment variable)")
	fs.StringVar(&c.DeadLetterTopic, "dead-letter-topic", c.DeadLetterTopic, "topic receiving rejected events with the reason in a header; empty drops them after counting")
	fs.IntVar(&c.Workers, "workers", c.Workers, "goroutines applying events; one user always goes to the same one")
	fs.IntVar(&c.EventIDCache, "event-id-cache", c.EventIDCache, "recent (user_id, event_id) pairs remembered to drop an event sent twice, from Kafka or gRPC (negative: off)")
	fs.IntVar(&c.IngestBatch, "ingest-batch", c.IngestBatch, "most clicks a worker scores in one run of a step-form model, clicks of distinct users sharing it (1: one by one)")
	fs.DurationVar(&c.CommitInterval, "commit-interval", c.CommitInterval, "longest time between offset commits")
	fs.IntVar(&c.CommitBatch, "commit-batch", c.CommitBatch, "commit early after this many events")
	fs.DurationVar(&c.KafkaSessionTimeout, "kafka-session-timeout", c.KafkaSessionTimeout, "consumer group session timeout: a replica that stops heartbeating loses its partitions after this (at least 6s, the brokers' default minimum)")
	fs.DurationVar(&c.KafkaHeartbeatInterval, "kafka-heartbeat-interval", c.KafkaHeartbeatInterval, "consumer group heartbeat interval, below the session timeout")
	fs.DurationVar(&c.MaxSkew, "max-skew", c.MaxSkew, "events whose ts is further than this from now are rejected (negative: no check)")
	fs.StringVar(&c.RedisAddr, "redis-addr", c.RedisAddr, "Redis host:port, or several comma-separated for a Redis Cluster; empty starts an in-process store")
	fs.StringVar(&c.RedisUsername, "redis-username", c.RedisUsername, "Redis ACL user")
	fs.StringVar(&c.RedisPassword, "redis-password", c.RedisPassword, "Redis ACL password (prefer the environment variable)")
	fs.BoolVar(&c.RedisTLS, "redis-tls", c.RedisTLS, "connect to Redis over TLS")
	fs.StringVar(&c.RedisCA, "redis-ca", c.RedisCA, "CA bundle (PEM) for Redis TLS; default the system roots")
	fs.StringVar(&c.StateRedisAddr, "state-redis-addr", c.StateRedisAddr, "with --history-store redis: Redis (host:port, or comma-separated for a Cluster) for histories, partition marks and online statistics, apart from the warmed pages in --redis-addr; same credentials and TLS (empty: --redis-addr)")
	fs.StringVar(&c.HistoryStore, "history-store", c.HistoryStore, "where histories live: memory (per process) or redis (shared by replicas)")
	fs.IntVar(&c.HistoryMaxUsers, "history-max-users", c.HistoryMaxUsers, "most users held in memory, least recently seen evicted first")
	fs.DurationVar(&c.SessionGap, "session-gap", c.SessionGap, "inactivity that starts a new session")
	fs.DurationVar(&c.HistoryIdleTTL, "history-idle-ttl", c.HistoryIdleTTL, "a user not seen for this long is forgotten: evicted from the memory store, the key's TTL in the redis store (about 2 KB per user there)")
	fs.StringVar(&c.CanonicalConfig, "canonical-config", c.CanonicalConfig, "JSON file of page canonicalization settings (keep_host, query_allow, rules)")
	fs.StringVar(&c.Model, "model", c.Model, "model bundle folder; empty uses the bundled model")
	fs.StringVar(&c.ModelRepo, "model-repo", c.ModelRepo, "model repository folder <repo>/<name>/<version>/, watched for new versions")
	fs.StringVar(&c.ModelName, "model-name", c.ModelName, "model name inside --model-repo")
	fs.BoolVar(&c.AutoRollback, "auto-rollback", c.AutoRollback, "roll a new model version back when its live precision falls below --rollback-min-fraction of its predecessor's")
	fs.Float64Var(&c.RollbackMinFraction, "rollback-min-fraction", c.RollbackMinFraction, "fraction of the predecessor's precision a new version must keep, in (0, 1]")
	fs.DurationVar(&c.RollbackWindow, "rollback-window", c.RollbackWindow, "window over which live precision is judged")
	fs.BoolVar(&c.Online, "online", c.Online, "learn page transitions from the clicks (pages outside the model's vocabulary too) and blend them into every prediction (--online=false: the model alone)")
	fs.Float64Var(&c.OnlineEvidence, "online-evidence", c.OnlineEvidence, "k of the online share n/(n+k) of a page with n decayed transitions out of it (0: the online statistics alone once there are any)")
	fs.DurationVar(&c.OnlineHalfLife, "online-half-life", c.OnlineHalfLife, "time after which an observed transition counts half")
	fs.IntVar(&c.OnlineMaxPages, "online-max-pages", c.OnlineMaxPages, "most source pages held in memory (least recently updated evicted first) and online-only pages remembered")
	fs.IntVar(&c.OnlineMaxNext, "online-max-next", c.OnlineMaxNext, "most next pages kept per source page (the smallest count makes room)")
	fs.DurationVar(&c.OnlineFlushInterval, "online-flush-interval", c.OnlineFlushInterval, "with --history-store redis: how often observed transitions are sent to Redis in one batch (0: with every click)")
	fs.DurationVar(&c.OnlineCacheTTL, "online-cache-ttl", c.OnlineCacheTTL, "with --history-store redis: how long a page's statistics read from Redis are reused (0: read with every click)")
	fs.Float64Var(&c.Threshold, "threshold", c.Threshold, "minimum probability (or expected utility) for a prefetch, in [0, 1]; 0 admits every page, --k still applying")
	fs.IntVar(&c.K, "k", c.K, "maximum prefetches per click, 1..100")
	fs.DurationVar(&c.TTL, "ttl", c.TTL, "time a warmed key lives in Redis")
	fs.StringVar(&c.KeyTemplate, "key-template", c.KeyTemplate, "Redis key of a warmed page: page:{page} (shared) or user:{user}:page:{page}")
	fs.StringVar(&c.PrefetchMode, "prefetch-mode", c.PrefetchMode, "hint (store a hint record) or origin (store the body fetched from --origin-url)")
	fs.StringVar(&c.OriginURL, "origin-url", c.OriginURL, "origin URL template for --prefetch-mode origin, e.g. https://origin/{page}")
	fs.StringVar(&c.CostWeights, "cost-weights", c.CostWeights, "JSON file of per-page cost weights; turns on the expected-utility rule (probability × weight ≥ threshold)")
	fs.Float64Var(&c.GlobalRate, "global-rate", c.GlobalRate, "most prefetches per second over all users (0: no limit)")
	fs.Float64Var(&c.PerUserRate, "per-user-rate", c.PerUserRate, "most prefetches per second for one user (0: no limit)")
	fs.IntVar(&c.BudgetKeys, "budget-keys", c.BudgetKeys, "most keys the prefetcher writes per TTL window (0: no cap)")
	fs.Int64Var(&c.BudgetBytes, "budget-bytes", c.BudgetBytes, "most bytes of values the prefetcher writes per TTL window (0: no cap)")
	fs.DurationVar(&c.OriginTimeout, "origin-timeout", c.OriginTimeout, "origin mode: time limit of one page's request, body included")
	fs.Int64Var(&c.OriginMaxBody, "origin-max-body", c.OriginMaxBody, "origin mode: largest page body stored, in bytes (larger ones are dropped as origin_too_large)")
	fs.IntVar(&c.OriginConcurrency, "origin-concurrency", c.OriginConcurrency, "origin mode: most requests to the origin in flight")
	fs.IntVar(&c.WarmQueue, "warm-queue", c.WarmQueue, "pages waiting to be written to Redis")
	fs.IntVar(&c.WarmWorkers, "warm-workers", c.WarmWorkers, "goroutines writing to Redis, each with one pipeline in flight")
	fs.IntVar(&c.WarmPipeline, "warm-pipeline", c.WarmPipeline, "most SET commands a warm writer sends in one pipeline (one round trip)")
	fs.BoolVar(&c.WarmBackpressure, "warm-backpressure", c.WarmBackpressure, "a full warm queue slows the consumer down instead of dropping pages")
	fs.Float64Var(&c.WarmShedFrom, "warm-shed-from", c.WarmShedFrom, "warm queue fill, in [0, 1], past which pages of low probability are shed, least likely first (1: never)")
	fs.DurationVar(&c.OverloadLag, "overload-lag", c.OverloadLag, "readiness check overloaded fails while the oldest unsettled click is older than this (0: no check)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "gRPC listen address")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "HTTP admin listen address (/metrics, /healthz, /readyz, /stats; /debug/pprof with --pprof)")
	fs.StringVar(&c.AdminTokenFile, "admin-token-file", c.AdminTokenFile, "file holding the bearer token ModelService requires")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "gRPC server certificate (PEM)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "gRPC server key (PEM)")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", c.TLSClientCA, "CA that signs client certificates; set to require mutual TLS")
	fs.IntVar(&c.MaxWatchers, "max-watchers", c.MaxWatchers, "most WatchHints streams open at once, over every client; more get RESOURCE_EXHAUSTED")
	adminCNs := fs.String("admin-client-cn", "", "comma-separated client certificate common names allowed to call ModelService (needs --tls-client-ca)")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve /debug/pprof on the admin port")
	fs.StringVar(&c.Replay, "replay", c.Replay, "replay sessions into Kafka: embedded, none or a SPMF file (default: embedded with the in-process broker)")
	fs.Float64Var(&c.ReplayRate, "replay-rate", c.ReplayRate, "replayed events per second")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")

	if err := cli.Parse(fs, args, stdout, cli.Help{Usage: Usage, EnvPrefix: EnvPrefix}); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, cli.Usagef("unexpected arguments %q", fs.Args())
	}
	onCmdline := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCmdline[f.Name] = true })
	if err := cli.ApplyEnv(fs, EnvPrefix, environ); err != nil {
		return Config{}, cli.UsageError(err)
	}
	for _, b := range strings.Split(*brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.KafkaBrokers = append(c.KafkaBrokers, b)
		}
	}
	for _, cn := range strings.Split(*adminCNs, ",") {
		if cn = strings.TrimSpace(cn); cn != "" {
			c.AdminClientCNs = append(c.AdminClientCNs, cn)
		}
	}
	if c.Replay == "" {
		c.Replay = ReplayNone
		if c.Embedded() {
			c.Replay = ReplayEmbedded
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, cli.UsageError(cli.NameVariables(err, fs, EnvPrefix, onCmdline))
	}
	return c, nil
}

// MaxReplayRate bounds --replay-rate: events per second the replay can pace.
const MaxReplayRate = 1_000_000

// splitAddrs is the comma-separated addresses of a Redis flag, none when
// empty.
func splitAddrs(v string) []string {
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}
