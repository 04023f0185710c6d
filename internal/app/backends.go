package app

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/kafkasec"
)

// kafkaSec are cfg's Kafka security settings.
func (c Config) kafkaSec() kafkasec.Config {
	return kafkasec.Config{TLS: c.KafkaTLS, CA: c.KafkaCA, Mechanism: c.KafkaSASLMechanism, Username: c.KafkaUsername, Password: c.KafkaPassword}
}

// kafkaSecurity returns the TLS and SASL settings for Kafka connections
// (nil, nil for plaintext without authentication).
func kafkaSecurity(cfg Config) (*tls.Config, sasl.Mechanism, error) {
	return cfg.kafkaSec().Build()
}

// kafkaDialer is the dialer of the consumer and the health check.
func kafkaDialer(tc *tls.Config, mech sasl.Mechanism) *kafka.Dialer {
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: tc, SASLMechanism: mech}
}

// redisClient connects to the Redis named by addr with cfg's credentials.
func redisClient(cfg Config, addr string) (redis.UniversalClient, error) {
	opts := &redis.UniversalOptions{
		Addrs:                 splitAddrs(addr),
		Username:              cfg.RedisUsername,
		Password:              cfg.RedisPassword,
		ContextTimeoutEnabled: true,
		DialTimeout:           2 * time.Second,
		ReadTimeout:           time.Second,
		WriteTimeout:          time.Second,
		MaxRetries:            1,
	}
	if cfg.RedisTLS || cfg.RedisCA != "" {
		tc, err := kafkasec.ClientTLS(cfg.RedisCA)
		if err != nil {
			return nil, fmt.Errorf("redis tls: %w", err)
		}
		opts.TLSConfig = tc
	}
	if len(opts.Addrs) == 1 && clusterEnabled(opts) {
		// One seed address of a Redis Cluster: without cluster mode every
		// command on a key of another master would fail with MOVED.
		opts.IsClusterMode = true
	}
	c := redis.NewUniversalClient(opts)
	if cc, ok := c.(*redis.ClusterClient); ok {
		cc.OnNewNode(func(n *redis.Client) { n.AddHook(reloadOnDialError{reload: cc.ReloadState}) })
	}
	return c, nil
}

// reloadOnDialError asks a Redis Cluster client to reload its slot map as
// soon as a node cannot be dialled. go-redis reloads it on MOVED replies
// and otherwise once a minute; after a master fails over, the client kept
// dialling the dead address until then (ingest paused 26–36 s after the
// cluster had recovered, in a black-box test). The reload is lazy: one at
// a time, at most every 200 ms.
type reloadOnDialError struct {
	reload func(ctx context.Context)
}

func (h reloadOnDialError) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			h.reload(context.WithoutCancel(ctx))
		}
		return conn, err
	}
}

func (h reloadOnDialError) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h reloadOnDialError) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// clusterEnabled asks the single Redis in opts whether it is a cluster
// node. A server that does not answer within a few seconds is taken for a
// standalone one; commands then fail (and are retried) rather than go to
// the wrong node silently.
func clusterEnabled(opts *redis.UniversalOptions) bool {
	c := redis.NewClient(opts.Simple())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	info, err := c.Info(ctx, "cluster").Result()
	return err == nil && strings.Contains(info, "cluster_enabled:1")
}

// canonicalizer builds the page canonicalization from the JSON file named by
// cfg.CanonicalConfig, or the defaults.
func canonicalizer(cfg Config) (*features.Canonicalizer, error) {
	var cc features.CanonicalizerConfig
	if cfg.CanonicalConfig != "" {
		var err error
		if cc, err = features.ReadCanonicalizerConfig(cfg.CanonicalConfig); err != nil {
			return nil, err
		}
	}
	return features.NewCanonicalizer(cc)
}

// readWeights reads the per-page cost weights of the expected-utility rule.
func readWeights(path string) (map[string]float64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read cost weights: %w", err)
	}
	var w map[string]float64
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("cost weights %s: %w", path, err)
	}
	return w, nil
}

// hzAdvisedBelow is the Redis hz under which short TTLs get advice: Redis
// expires keys in cycles run hz times a second, each allowed up to 25 ms at
// the default hz 10, and with thousands of keys expiring a second those
// cycles make most of the warm writes' tail (README: Click to warm).
const hzAdvisedBelow = 50

// shortTTL is the key TTL at or under which the advice applies.
const shortTTL = 30 * time.Second

// redisHzAdvice reads Redis's hz and reports whether, with keys living
// ttl, it is worth raising (to 100). A Redis that refuses CONFIG GET
// (managed services, the in-process store) returns the error.
func redisHzAdvice(ctx context.Context, rdb redis.UniversalClient, ttl time.Duration) (hz int, advise bool, err error) {
	v, err := rdb.ConfigGet(ctx, "hz").Result()
	if err != nil {
		return 0, false, fmt.Errorf("read redis hz: %w", err)
	}
	hz, err = strconv.Atoi(v["hz"])
	if err != nil {
		return 0, false, fmt.Errorf("read redis hz %q: %w", v["hz"], err)
	}
	return hz, ttl <= shortTTL && hz < hzAdvisedBelow, nil
}

// redisEvicts reads the memory limit and eviction policy of the Redis
// holding the shared state and reports the policy when Redis may evict
// keys: a maxmemory set and a policy other than noeviction. With CONFIG GET
// refused (managed services) it returns the error. On a Cluster the node
// that answers speaks for all.
func redisEvicts(ctx context.Context, rdb redis.UniversalClient) (policy string, evicts bool, err error) {
	v, err := rdb.ConfigGet(ctx, "maxmemory*").Result()
	if err != nil {
		return "", false, fmt.Errorf("read redis eviction policy: %w", err)
	}
	policy = v["maxmemory-policy"]
	limit, err := strconv.ParseInt(v["maxmemory"], 10, 64)
	if err != nil || policy == "" {
		return "", false, fmt.Errorf("read redis eviction policy: maxmemory %q, policy %q", v["maxmemory"], policy)
	}
	return policy, limit > 0 && policy != "noeviction", nil
}
