package features

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Defaults of StoreConfig.
const (
	DefaultKeyPrefix  = "prefetchd:h:"
	DefaultCacheSize  = 100_000
	DefaultCacheTTL   = time.Second
	DefaultOpTimeout  = 500 * time.Millisecond
	DefaultCASRetries = 8
)

// StoreConfig selects and configures the history store.
type StoreConfig struct {
	// Backend is BackendMemory (the default: Histories, per process) or
	// BackendRedis (RedisStore, shared by replicas).
	Backend string
	// History bounds the histories. With Redis, MaxUsers and Shards apply to
	// nothing (Redis holds every user until IdleTTL, its key TTL) and Now is unused.
	History HistoryConfig
	// KeyPrefix of Redis keys; a user's key is KeyPrefix + "{" + user + "}",
	// hash-tagged so that Redis Cluster keeps it on one slot. Default "prefetchd:h:".
	KeyPrefix string
	// CacheSize is the number of records kept in the in-process cache in front
	// of Redis (LRU). Default 100,000; negative disables the cache.
	CacheSize int
	// CacheTTL is how long a cached record answers Get and Load without asking
	// Redis; it bounds how stale a read may be after another replica wrote.
	// Writes are never based on a stale record: Append compares and sets.
	// Default 1 s.
	CacheTTL time.Duration
	// OpTimeout bounds each Redis round trip. Default 500 ms.
	OpTimeout time.Duration
	// CASRetries bounds the compare-and-set attempts of Append when other
	// writers race on the same user. Default 8.
	CASRetries int
}

// Validate reports a configuration error.
func (c StoreConfig) Validate() error {
	switch c.Backend {
	case "", BackendMemory, BackendRedis:
	default:
		return fmt.Errorf("history backend %q is neither %q nor %q", c.Backend, BackendMemory, BackendRedis)
	}
	if c.CacheTTL < 0 || c.OpTimeout < 0 || c.CASRetries < 0 {
		return errors.New("history store: negative cache TTL, op timeout or CAS retries")
	}
	return c.History.Validate()
}

func (c StoreConfig) withDefaults() StoreConfig {
	if c.KeyPrefix == "" {
		c.KeyPrefix = DefaultKeyPrefix
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = DefaultCacheTTL
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	if c.CASRetries == 0 {
		c.CASRetries = DefaultCASRetries
	}
	c.History = c.History.withDefaults()
	return c
}

// NewStore builds the Store named by cfg.Backend. client is required for
// BackendRedis and ignored otherwise; reg may be nil.
func NewStore(cfg StoreConfig, client redis.UniversalClient, reg prometheus.Registerer) (Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Backend == BackendRedis {
		return NewRedisStore(cfg, client, reg)
	}
	return NewHistories(cfg.History, reg)
}

// casScript sets KEYS[1] to ARGV[2] (with a TTL of ARGV[3] ms, none when 0)
// if it still holds ARGV[1] ("" meaning absent) and returns 1; otherwise it
// returns the current value ("" when absent).
var casScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == false then cur = '' end
if cur ~= ARGV[1] then return {0, cur} end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return {1, ''}
`)

// RedisStore is a Store in Redis (standalone, Sentinel or Cluster through
// go-redis's UniversalClient), so that every replica sees every user's
// history and a partition moved by a rebalance resumes where it was. Each
// user is one string key holding a compact binary record, expiring after
// IdleTTL. Append reads the record (from the in-process cache when present),
// applies the click and writes it back with a compare-and-set script, retrying
// on a conflict, so concurrent writers never lose a click. Errors from Redis
// (including timeouts, OpTimeout per round trip) are returned wrapped; build
// the client with ContextTimeoutEnabled so that go-redis honours OpTimeout
// (otherwise its own ReadTimeout, 3 s by default, applies).
type RedisStore struct {
	cfg    StoreConfig
	client redis.UniversalClient
	cache  *recordCache
	ttlArg string

	seconds   *prometheus.HistogramVec
	errors    *prometheus.CounterVec
	conflicts prometheus.Counter
	corrupt   prometheus.Counter
	hits      prometheus.Counter
	misses    prometheus.Counter
}

// NewRedisStore validates cfg and builds a store on client. The client's
// lifetime stays with the caller. Metrics are prefetchd_histories_redis_* and
// prefetchd_histories_cache_*.
func NewRedisStore(cfg StoreConfig, client redis.UniversalClient, reg prometheus.Registerer) (*RedisStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("redis history store: nil client")
	}
	cfg = cfg.withDefaults()
	s := &RedisStore{
		cfg:    cfg,
		client: client,
		ttlArg: "0",
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "prefetchd_histories_redis_seconds",
			Help:    "Redis round trips of the history store, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_histories_redis_errors_total",
			Help: "Failed Redis round trips of the history store, by operation.",
		}, []string{"op"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_histories_redis_conflicts_total",
			Help: "Appends retried because another writer changed the record.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_histories_redis_corrupt_total",
			Help: "Records in Redis that did not decode and were replaced.",
		}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_histories_cache_hits_total",
			Help: "History reads answered by the in-process cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_histories_cache_misses_total",
			Help: "History reads that went to Redis.",
		}),
	}
	if cfg.History.IdleTTL > 0 {
		s.ttlArg = strconv.FormatInt(max(1, cfg.History.IdleTTL.Milliseconds()), 10)
	}
	if cfg.CacheSize > 0 {
		s.cache = newRecordCache(cfg.CacheSize)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.seconds, s.errors, s.conflicts, s.corrupt, s.hits, s.misses} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register redis history metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Key is the Redis key of user's record.
func (s *RedisStore) Key(user string) string { return s.cfg.KeyPrefix + "{" + user + "}" }

func (s *RedisStore) observe(op string, start time.Time, err error) {
	s.seconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		s.errors.WithLabelValues(op).Inc()
	}
}

// fetch returns the encoded record ("" when absent), from the cache when it
// is at most maxAge old (maxAge < 0: any age).
func (s *RedisStore) fetch(ctx context.Context, user string, maxAge time.Duration) (string, error) {
	if s.cache != nil {
		if blob, ok := s.cache.get(user, maxAge); ok {
			s.hits.Inc()
			return blob, nil
		}
	}
	s.misses.Inc()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	blob, err := s.client.Get(ctx, s.Key(user)).Result()
	if errors.Is(err, redis.Nil) {
		blob, err = "", nil
	}
	s.observe("get", start, err)
	if err != nil {
		return "", fmt.Errorf("get history of %q: %w", user, err)
	}
	s.cache.put(user, blob)
	return blob, nil
}

// decode fills r from blob and reports whether a record exists; a corrupt
// record counts as absent.
func (s *RedisStore) decode(blob string, r *Record) bool {
	if blob == "" {
		resetRecord(r)
		return false
	}
	if err := decodeRecord(blob, r); err != nil {
		s.corrupt.Inc()
		resetRecord(r)
		return false
	}
	return true
}

// Append implements Store.
func (s *RedisStore) Append(ctx context.Context, user string, c Click, rec *Record) error {
	old, err := s.fetch(ctx, user, -1)
	if err != nil {
		return err
	}
	var r Record
	for attempt := range s.cfg.CASRetries {
		exists := s.decode(old, &r)
		if !applyClick(&r, c, s.cfg.History.MaxLen, s.cfg.History.SessionGap, exists) {
			copyRecord(rec, &r)
			return ErrDuplicate
		}
		blob := encodeRecord(&r)
		cur, ok, err := s.compareAndSet(ctx, user, old, blob)
		if err != nil {
			s.cache.drop(user)
			return err
		}
		if ok {
			s.cache.put(user, blob)
			copyRecord(rec, &r)
			return nil
		}
		s.conflicts.Inc()
		s.cache.put(user, cur)
		old = cur
		// Writers in lock step would keep colliding: back off a random while.
		if !sleepCtx(ctx, time.Duration(rand.Int64N(int64(attempt+1)*int64(time.Millisecond)))) {
			return fmt.Errorf("append history of %q: %w", user, ctx.Err())
		}
	}
	return fmt.Errorf("append history of %q: %d conflicting writers in a row", user, s.cfg.CASRetries)
}

func (s *RedisStore) compareAndSet(ctx context.Context, user, old, blob string) (cur string, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	res, err := casScript.Run(ctx, s.client, []string{s.Key(user)}, old, blob, s.ttlArg).Slice()
	s.observe("cas", start, err)
	if err != nil {
		return "", false, fmt.Errorf("set history of %q: %w", user, err)
	}
	if len(res) != 2 {
		return "", false, fmt.Errorf("set history of %q: script returned %d values", user, len(res))
	}
	if n, _ := res[0].(int64); n == 1 {
		return "", true, nil
	}
	cur, _ = res[1].(string)
	return cur, false, nil
}

// Get implements Store. It may answer from a cached record up to CacheTTL old.
func (s *RedisStore) Get(ctx context.Context, user string, dst []int32) ([]int32, error) {
	blob, err := s.fetch(ctx, user, s.cfg.CacheTTL)
	if err != nil {
		return dst[:0], err
	}
	var r Record
	s.decode(blob, &r)
	return append(dst[:0], r.Pages...), nil
}

// Load implements Store. It may answer from a cached record up to CacheTTL old.
func (s *RedisStore) Load(ctx context.Context, user string, rec *Record) (bool, error) {
	blob, err := s.fetch(ctx, user, s.cfg.CacheTTL)
	if err != nil {
		resetRecord(rec)
		return false, err
	}
	return s.decode(blob, rec), nil
}

// Save implements Store: an unconditional write.
func (s *RedisStore) Save(ctx context.Context, user string, rec *Record) error {
	r := *rec
	if n := s.cfg.History.MaxLen; len(r.Pages) > n {
		r.Pages = r.Pages[len(r.Pages)-n:]
	}
	blob := encodeRecord(&r)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	var ttl time.Duration
	if s.cfg.History.IdleTTL > 0 {
		ttl = s.cfg.History.IdleTTL
	}
	start := time.Now()
	err := s.client.Set(ctx, s.Key(user), blob, ttl).Err()
	s.observe("set", start, err)
	if err != nil {
		s.cache.drop(user)
		return fmt.Errorf("save history of %q: %w", user, err)
	}
	s.cache.put(user, blob)
	return nil
}

func resetRecord(r *Record) {
	r.Pages = r.Pages[:0]
	r.State = r.State[:0]
	r.Epoch, r.Last, r.Partition, r.Offset = 0, time.Time{}, 0, -1
}

// Record encoding, little endian: version byte 1, epoch u32, last Unix ns
// i64, partition i32, offset i64, page count u16, pages i32..., state count
// u16, state f32....
const recordVersion = 1

func encodeRecord(r *Record) string {
	b := make([]byte, 0, 1+4+8+4+8+2+4*len(r.Pages)+2+4*len(r.State))
	b = append(b, recordVersion)
	b = binary.LittleEndian.AppendUint32(b, r.Epoch)
	var last int64
	if !r.Last.IsZero() {
		last = r.Last.UnixNano()
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(last))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.Partition))
	b = binary.LittleEndian.AppendUint64(b, uint64(r.Offset))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.Pages)))
	for _, p := range r.Pages {
		b = binary.LittleEndian.AppendUint32(b, uint32(p))
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.State)))
	for _, f := range r.State {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return string(b)
}

var errCorrupt = errors.New("corrupt history record")

func decodeRecord(s string, r *Record) error {
	const head = 1 + 4 + 8 + 4 + 8 + 2
	if len(s) < head || s[0] != recordVersion {
		return errCorrupt
	}
	b := []byte(s)
	r.Epoch = binary.LittleEndian.Uint32(b[1:])
	last := int64(binary.LittleEndian.Uint64(b[5:]))
	r.Last = time.Time{}
	if last != 0 {
		r.Last = time.Unix(0, last)
	}
	r.Partition = int32(binary.LittleEndian.Uint32(b[13:]))
	r.Offset = int64(binary.LittleEndian.Uint64(b[17:]))
	n := int(binary.LittleEndian.Uint16(b[25:]))
	b = b[head:]
	if len(b) < 4*n+2 {
		return errCorrupt
	}
	r.Pages = r.Pages[:0]
	for i := range n {
		r.Pages = append(r.Pages, int32(binary.LittleEndian.Uint32(b[4*i:])))
	}
	b = b[4*n:]
	m := int(binary.LittleEndian.Uint16(b))
	b = b[2:]
	if len(b) != 4*m {
		return errCorrupt
	}
	r.State = r.State[:0]
	for i := range m {
		r.State = append(r.State, math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	}
	return nil
}

// recordCache is a bounded LRU of encoded records with their fetch time. A
// nil *recordCache caches nothing.
type recordCache struct {
	mu    sync.Mutex
	max   int
	items map[string]*list.Element
	lru   list.List // front is most recent
}

type cacheItem struct {
	user string
	blob string
	at   time.Time
}

func newRecordCache(max int) *recordCache {
	return &recordCache{max: max, items: make(map[string]*list.Element)}
}

func (c *recordCache) get(user string, maxAge time.Duration) (string, bool) {
	if c == nil {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[user]
	if !ok {
		return "", false
	}
	it := e.Value.(*cacheItem)
	if maxAge >= 0 && time.Since(it.at) > maxAge {
		return "", false
	}
	c.lru.MoveToFront(e)
	return it.blob, true
}

func (c *recordCache) put(user, blob string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[user]; ok {
		it := e.Value.(*cacheItem)
		it.blob, it.at = blob, time.Now()
		c.lru.MoveToFront(e)
		return
	}
	if len(c.items) >= c.max {
		if e := c.lru.Back(); e != nil {
			delete(c.items, e.Value.(*cacheItem).user)
			c.lru.Remove(e)
		}
	}
	c.items[user] = c.lru.PushFront(&cacheItem{user: user, blob: blob, at: time.Now()})
}

func (c *recordCache) drop(user string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[user]; ok {
		delete(c.items, user)
		c.lru.Remove(e)
	}
}
