package features

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Defaults of StoreConfig.
const (
	DefaultKeyPrefix = "prefetchd:h:"
	DefaultCacheSize = 100_000
	DefaultCacheTTL  = time.Second
	DefaultOpTimeout = 500 * time.Millisecond
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
	// Writes are never based on a stale record: Append runs in Redis.
	// Default 1 s.
	CacheTTL time.Duration
	// OpTimeout bounds each Redis round trip. Default 500 ms.
	OpTimeout time.Duration
}

// Validate reports a configuration error.
func (c StoreConfig) Validate() error {
	switch c.Backend {
	case "", BackendMemory, BackendRedis:
	default:
		return fmt.Errorf("history backend %q is neither %q nor %q", c.Backend, BackendMemory, BackendRedis)
	}
	if c.CacheTTL < 0 || c.OpTimeout < 0 {
		return errors.New("history store: negative cache TTL or op timeout")
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

// appendScript applies one click to the record hash KEYS[1] inside Redis,
// with the same rules as applyClick, and returns {outcome (1 applied, 0
// duplicate, 2 unsettled), e, l, p, o, h, s, g, q, c, x}: the record's fields
// (see fieldNames; x the prior positions, "partition gen offset" entries
// joined by commas, newest first). ARGV: page (4 bytes), ts (Unix µs), epoch, partition,
// offset, max length, session gap (µs, 0 = none), TTL (ms, 0 = none),
// generation. A record without q (written before stamps) reads as q 1, c 0.
//
// ARGV[10], when given, is the caller's foresight (see foreseenArgs): 'f'
// or 'n', then the fields q c l p o g h x it expects the stored record to
// have, then the record it computed with the click applied: all ten fields
// after 'f' (a new session), l p o h g q x after 'n'. When the stored fields
// are those, the record is the one the caller holds (e and s are kept by
// both paths; c changes with s) and the click is applied by writing those
// fields alone, and the script returns {3}: no parsing or sending back the
// record. Otherwise it goes on as without them. A record whose fields the
// service could not read is dropped and started again.
var appendScript = redis.NewScript(`
local k = KEYS[1]
-- A record this script cannot read as the service does (a field another
-- writer damaged) is dropped and started again, as a wrong type is:
-- retrying could never get past it. (A missing field reads as false.)
local function int(v, lo, hi)
  if not v or #v > 20 or not string.find(v, '^%-?%d+$') then return false end
  local n = tonumber(v)
  return n >= lo and n <= hi
end
local U32, I32, I64 = 4294967295, 2147483647, 9.2e18
local function opt(v, lo, hi) return not v or int(v, lo, hi) end
local function prior(x)
  if not x or x == '' then return true end
  for entry in string.gmatch(x .. ',', '([^,]*),') do
    if not string.find(entry, '^%-?%d+ %d+ %-?%d+$') then return false end
  end
  return true
end
local mode = ARGV[10]
if mode == 'f' or mode == 'n' then
  local cur = redis.pcall('HMGET', k, 'q', 'c', 'l', 'p', 'o', 'g', 'h', 'x', 'e', 's')
  local same = not cur['err']
  for i = 1, 8 do
    if same and cur[i] ~= ARGV[10 + i] then same = false end
  end
  -- e and s are kept as they are (by the other path too): readable is enough.
  if same and int(cur[9], 0, U32) and #(cur[10] or '') % 4 == 0 then
    if mode == 'f' then
      redis.call('HSET', k, 'e', ARGV[19], 'l', ARGV[20], 'p', ARGV[21], 'o', ARGV[22], 'h', ARGV[23], 's', ARGV[24], 'g', ARGV[25], 'q', ARGV[26], 'c', ARGV[27], 'x', ARGV[28])
    else
      redis.call('HSET', k, 'l', ARGV[19], 'p', ARGV[20], 'o', ARGV[21], 'h', ARGV[22], 'g', ARGV[23], 'q', ARGV[24], 'x', ARGV[25])
    end
    if tonumber(ARGV[8]) > 0 then redis.call('PEXPIRE', k, ARGV[8]) end
    return {3}
  end
end
local r = redis.pcall('HMGET', k, 'e', 'l', 'p', 'o', 'h', 's', 'g', 'q', 'c', 'x')
if r['err'] then redis.call('DEL', k); r = {} end
local exists = false
for i = 1, 10 do if r[i] then exists = true; break end end
if exists and not (int(r[1], 0, U32) and int(r[2], -I64, I64) and int(r[3], -I32 - 1, I32) and int(r[4], -I64, I64)
    and #(r[5] or '') % 4 == 0 and #(r[6] or '') % 4 == 0
    and opt(r[7], 0, U32) and opt(r[8], 0, U32) and opt(r[9], 0, U32) and prior(r[10])) then
  redis.call('DEL', k); r = {}; exists = false
end
local ts, off = tonumber(ARGV[2]), tonumber(ARGV[5])
local maxlen, gap, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local e, l, p, o, h, s, g = r[1] or ARGV[3], r[2] or ARGV[2], r[3] or '0', r[4] or '-1', r[5] or '', r[6] or '', r[7] or '0'
local q, c = tonumber(r[8] or '1'), tonumber(r[9] or '0')
local x = r[10] or ''
if not exists then q, c, x = 0, 0, '' end
if exists and off >= 0 and tonumber(o) >= 0 and p == ARGV[4] and g == ARGV[9] and off <= tonumber(o) then
  local out = 0
  if off == tonumber(o) and q ~= c then out = 2 end
  return {out, e, l, p, o, h, s, g, tostring(q), tostring(c), x}
end
if exists and off >= 0 then
  for xp, xg, xo in string.gmatch(x, '(%d+) (%d+) (%d+)') do
    if xp == ARGV[4] and xg == ARGV[9] and off <= tonumber(xo) then
      return {0, e, l, p, o, h, s, g, tostring(q), tostring(c), x}
    end
  end
end
local fresh = (not exists) or (gap > 0 and ts - tonumber(l) > gap)
if fresh then
  h, s, e = '', '', ARGV[3]
end
h = h .. ARGV[1]
if #h > 4 * maxlen then h = string.sub(h, #h - 4 * maxlen + 1) end
if (not exists) or ts > tonumber(l) then l = ARGV[2] end
if off >= 0 then
  if exists and tonumber(o) >= 0 and p ~= ARGV[4] then
    local keep = {p .. ' ' .. g .. ' ' .. o}
    for xp, xg, xo in string.gmatch(x, '(%d+) (%d+) (%d+)') do
      if xp ~= p and xp ~= ARGV[4] and #keep < 3 then keep[#keep + 1] = xp .. ' ' .. xg .. ' ' .. xo end
    end
    x = table.concat(keep, ',')
  end
  p, o, g = ARGV[4], ARGV[5], ARGV[9]
end
q = (q + 1) % 4294967296
if fresh then
  redis.call('HSET', k, 'e', e, 'l', l, 'p', p, 'o', o, 'h', h, 's', s, 'g', g, 'q', tostring(q), 'c', tostring(c), 'x', x)
else
  redis.call('HSET', k, 'e', e, 'l', l, 'p', p, 'o', o, 'h', h, 'g', g, 'q', tostring(q), 'x', x)
end
if ttl > 0 then redis.call('PEXPIRE', k, ttl) end
return {1, e, l, p, o, h, s, g, tostring(q), tostring(c), x}
`)

// saveScript replaces the record hash KEYS[1] and returns 1, unless its q
// differs from the one saved (ARGV[8]): then it returns 0. ARGV: the fields
// in the order of fieldNames, TTL (ms, 0 = none).
var saveScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  local q = redis.call('HGET', KEYS[1], 'q')
  if q and q ~= ARGV[8] then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'l', ARGV[2], 'p', ARGV[3], 'o', ARGV[4], 'h', ARGV[5], 's', ARGV[6], 'g', ARGV[7], 'q', ARGV[8], 'c', ARGV[9], 'x', ARGV[10])
if tonumber(ARGV[11]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[11]) end
return 1
`)

// fieldNames are the hash fields of a record: epoch, last event time in µs,
// Kafka partition and offset, packed pages, packed state, generation, Seq,
// StateSeq and the prior positions (Record.Prior as "partition gen offset"
// joined by commas).
var fieldNames = [numFields]string{"e", "l", "p", "o", "h", "s", "g", "q", "c", "x"}

const numFields = 10

// RedisStore is a Store in Redis (standalone, Sentinel or Cluster through
// go-redis's UniversalClient), so that every replica sees every user's
// history and a partition moved by a rebalance resumes where it was. Each
// user is one hash (fieldNames: epoch, last event time in µs, Kafka
// position, packed pages, packed state, Seq and StateSeq) under a
// hash-tagged key, expiring after IdleTTL. Append runs entirely inside Redis
// as one Lua script (one round trip, atomic), so concurrent replicas never
// lose or double a click. Get and Load are served from an in-process LRU cache of
// records up to CacheTTL old, then from Redis. Save replaces the record in
// one script, unless another writer appended since (ErrStale). Errors from Redis (including timeouts,
// OpTimeout per round trip) are returned wrapped; build the client with
// ContextTimeoutEnabled so that go-redis honours OpTimeout (otherwise its own
// ReadTimeout, 3 s by default, applies).
type RedisStore struct {
	cfg    StoreConfig
	client redis.UniversalClient
	cache  *recordCache
	gapArg string
	ttlArg string

	seconds *prometheus.HistogramVec
	errors  *prometheus.CounterVec
	hits    prometheus.Counter
	misses  prometheus.Counter

	// foreseen counts the clicks the script applied as foreseen (reply {3}).
	foreseen atomic.Int64
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
		gapArg: "0",
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
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_histories_cache_hits_total",
			Help: "History reads answered by the in-process cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_histories_cache_misses_total",
			Help: "History reads that went to Redis.",
		}),
	}
	if cfg.History.SessionGap > 0 {
		s.gapArg = strconv.FormatInt(cfg.History.SessionGap.Microseconds(), 10)
	}
	if cfg.History.IdleTTL > 0 {
		s.ttlArg = strconv.FormatInt(max(1, cfg.History.IdleTTL.Milliseconds()), 10)
	}
	if cfg.CacheSize > 0 {
		s.cache = newRecordCache(cfg.CacheSize)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{s.seconds, s.errors, s.hits, s.misses} {
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

// appendArgs are the script arguments of Append.
func (s *RedisStore) appendArgs(c Click) []any {
	page := binary.LittleEndian.AppendUint32(nil, uint32(c.Page))
	// Room for the foresight too (foreseenArgs).
	args := make([]any, 0, 9+7+numFields)
	return append(args, page, c.TS.UnixMicro(), c.Epoch, c.Partition, c.Offset, s.cfg.History.MaxLen, s.gapArg, s.ttlArg, c.Gen)
}

// foreseenArgs are the script arguments of Append(user, c): appendArgs,
// then, when the cache holds user's record and c would be applied to it,
// the foresight of appendScript (ARGV[10] on): the stamps of the cached
// record and the record with c applied, which it leaves in rec. The script
// checks the stamps against the stored record and writes the new fields
// alone when they match (one hash read of six short fields, no reply to
// build or parse), and applies c itself otherwise.
func (s *RedisStore) foreseenArgs(user string, c Click, rec *Record) []any {
	args := s.appendArgs(c)
	exists, ok := s.cache.get(user, math.MaxInt64, rec)
	if !ok || !exists {
		return args
	}
	gap := s.cfg.History.SessionGap
	n := len(args)
	args = append(args, "n", rec.Seq, rec.StateSeq, lastMicros(rec.Last), rec.Partition, rec.Offset, rec.Gen, packPages(rec.Pages), formatPrior(rec.Prior))
	c.TS = c.TS.Truncate(time.Microsecond) // as the script sees it
	fresh := gap > 0 && c.TS.Sub(rec.Last) > gap
	if applyClick(rec, c, s.cfg.History.MaxLen, gap, true) != clickApplied {
		return args[:n]
	}
	if fresh {
		args[n] = "f"
		return appendFields(args, rec)
	}
	return append(args, lastMicros(rec.Last), rec.Partition, rec.Offset, packPages(rec.Pages), rec.Gen, rec.Seq, formatPrior(rec.Prior))
}

// Append implements Store in one round trip.
func (s *RedisStore) Append(ctx context.Context, user string, c Click, rec *Record) error {
	args := s.foreseenArgs(user, c, rec)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	res, err := appendScript.Run(ctx, s.client, []string{s.Key(user)}, args...).Slice()
	s.observe("append", start, err)
	return s.appendResult(user, res, err, rec)
}

// AppendMany implements BatchStore: every row's append script in one
// pipeline (one round trip per Redis node).
func (s *RedisStore) AppendMany(ctx context.Context, rows []*BatchRow) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	args := make([][]any, len(rows))
	for i, row := range rows {
		args[i] = s.foreseenArgs(row.User, row.Click, &row.Rec)
	}
	start := time.Now()
	cmds, err := s.pipeline(ctx, appendScript, len(rows), func(pipe redis.Pipeliner, i int) *redis.Cmd {
		return appendScript.EvalSha(ctx, pipe, []string{s.Key(rows[i].User)}, args[i]...)
	})
	s.observe("append_many", start, err)
	perr := err
	for i, cmd := range cmds {
		res, err := cmd.Slice()
		if perr != nil && cmd.Err() == nil {
			// The pipeline failed before this command ran (a connection
			// refused at AUTH, say): its error, not "unexpected type".
			err = perr
		}
		rows[i].Err = s.appendResult(rows[i].User, res, err, &rows[i].Rec)
	}
}

// pipeline queues n commands of script and runs them in one pipeline. Rows
// that find the script missing from a server's cache (NOSCRIPT: the server
// restarted or was flushed) were not run: the script is loaded and those
// rows alone go again, once.
func (s *RedisStore) pipeline(ctx context.Context, script *redis.Script, n int, queue func(redis.Pipeliner, int) *redis.Cmd) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, n)
	pipe := s.client.Pipeline()
	for i := range n {
		cmds[i] = queue(pipe, i)
	}
	_, err := pipe.Exec(ctx)
	var missing []int
	for i, cmd := range cmds {
		if e := cmd.Err(); e != nil && redis.HasErrorPrefix(e, "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return cmds, err
	}
	if lerr := script.Load(ctx, s.client).Err(); lerr != nil {
		return cmds, err
	}
	pipe = s.client.Pipeline()
	for _, i := range missing {
		cmds[i] = queue(pipe, i)
	}
	_, _ = pipe.Exec(ctx)
	err = nil
	for _, cmd := range cmds {
		if e := cmd.Err(); e != nil && !errors.Is(e, redis.Nil) {
			err = e
			break
		}
	}
	return cmds, err
}

// appendResult turns the append script's reply into rec and the result of
// Append.
func (s *RedisStore) appendResult(user string, res []any, err error, rec *Record) error {
	if err != nil {
		s.cache.drop(user)
		return fmt.Errorf("append history of %q: %w", user, err)
	}
	if len(res) == 1 && res[0] == int64(3) {
		// Applied as foreseen: rec holds the record the script wrote.
		s.foreseen.Add(1)
		s.cache.put(user, rec, true)
		return nil
	}
	if len(res) != numFields+1 {
		s.cache.drop(user)
		return fmt.Errorf("append history of %q: script returned %d values", user, len(res))
	}
	var f [numFields]string
	for i := range f {
		f[i], _ = res[i+1].(string)
	}
	if err := decodeFields(f, rec); err != nil {
		s.cache.drop(user)
		return fmt.Errorf("append history of %q: %w", user, err)
	}
	s.cache.put(user, rec, true)
	switch n, _ := res[0].(int64); n {
	case 1:
		return nil
	case 2:
		return ErrUnsettled
	}
	return ErrDuplicate
}

// Foresee implements Foresight from the cached record of user, whatever
// its age (a guess, checked by the caller against Append's reply), with c
// applied by the script's rules.
func (s *RedisStore) Foresee(user string, c Click, rec *Record) bool {
	exists, ok := s.cache.get(user, math.MaxInt64, rec)
	if !ok || !exists {
		return false
	}
	c.TS = c.TS.Truncate(time.Microsecond) // as the script sees it
	return applyClick(rec, c, s.cfg.History.MaxLen, s.cfg.History.SessionGap, true) == clickApplied
}

// load reads user's record from the cache (at most CacheTTL old) or Redis.
func (s *RedisStore) load(ctx context.Context, user string, rec *Record) (bool, error) {
	if exists, ok := s.cache.get(user, s.cfg.CacheTTL, rec); ok {
		s.hits.Inc()
		return exists, nil
	}
	s.misses.Inc()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	vals, err := s.client.HMGet(ctx, s.Key(user), fieldNames[:]...).Result()
	s.observe("load", start, err)
	if err != nil {
		resetRecord(rec)
		return false, fmt.Errorf("load history of %q: %w", user, err)
	}
	var f [numFields]string
	exists := false
	for i := range f {
		if v, ok := vals[i].(string); ok {
			f[i] = v
			exists = true
		}
	}
	if !exists {
		resetRecord(rec)
		s.cache.put(user, rec, false)
		return false, nil
	}
	if err := decodeFields(f, rec); err != nil {
		resetRecord(rec)
		return false, fmt.Errorf("load history of %q: %w", user, err)
	}
	s.cache.put(user, rec, true)
	return true, nil
}

// Get implements Store. It may answer from a cached record up to CacheTTL old.
func (s *RedisStore) Get(ctx context.Context, user string, dst []int32) ([]int32, error) {
	var rec Record
	rec.Pages = dst[:0]
	_, err := s.load(ctx, user, &rec)
	return rec.Pages, err
}

// Load implements Store. It may answer from a cached record up to CacheTTL old.
func (s *RedisStore) Load(ctx context.Context, user string, rec *Record) (bool, error) {
	return s.load(ctx, user, rec)
}

// saveArgs are the script arguments of Save for r, cut to MaxLen pages.
func (s *RedisStore) saveArgs(r *Record) []any {
	if n := s.cfg.History.MaxLen; len(r.Pages) > n {
		r.Pages = r.Pages[len(r.Pages)-n:]
	}
	return append(appendFields(make([]any, 0, numFields+1), r), s.ttlArg)
}

// Save implements Store in one round trip.
func (s *RedisStore) Save(ctx context.Context, user string, rec *Record) error {
	r := *rec
	args := s.saveArgs(&r)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	cmd := saveScript.Run(ctx, s.client, []string{s.Key(user)}, args...)
	s.observe("save", start, cmd.Err())
	return s.saveResult(user, &r, cmd)
}

// SaveMany implements BatchStore: every row's save in one pipeline.
func (s *RedisStore) SaveMany(ctx context.Context, rows []*BatchRow) {
	rs := make([]Record, len(rows))
	args := make([][]any, len(rows))
	for i, row := range rows {
		rs[i] = row.Rec
		args[i] = s.saveArgs(&rs[i])
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	start := time.Now()
	cmds, err := s.pipeline(ctx, saveScript, len(rows), func(pipe redis.Pipeliner, i int) *redis.Cmd {
		return saveScript.EvalSha(ctx, pipe, []string{s.Key(rows[i].User)}, args[i]...)
	})
	s.observe("save_many", start, err)
	for i, cmd := range cmds {
		rows[i].Err = s.saveResult(rows[i].User, &rs[i], cmd)
	}
}

// saveResult turns the save script's reply into the result of Save.
func (s *RedisStore) saveResult(user string, r *Record, cmd *redis.Cmd) error {
	n, err := cmd.Int()
	if err == nil && n != 1 {
		err = ErrStale
	}
	if err != nil {
		s.cache.drop(user)
		return fmt.Errorf("save history of %q: %w", user, err)
	}
	s.cache.put(user, r, true)
	return nil
}

func resetRecord(r *Record) {
	r.Pages = r.Pages[:0]
	r.State = r.State[:0]
	r.Epoch, r.Last, r.Partition, r.Gen, r.Offset, r.Seq, r.StateSeq = 0, time.Time{}, 0, 0, -1, 0, 0
	r.Prior = r.Prior[:0]
}

// appendFields appends the hash fields of fieldNames for r to dst, as
// script arguments: integers (Redis stores them in decimal) and pages and
// state packed little endian.
func appendFields(dst []any, r *Record) []any {
	st := make([]byte, 0, 4*len(r.State))
	for _, v := range r.State {
		st = binary.LittleEndian.AppendUint32(st, math.Float32bits(v))
	}
	return append(dst, r.Epoch, lastMicros(r.Last), r.Partition, r.Offset, packPages(r.Pages), st, r.Gen, r.Seq, r.StateSeq, formatPrior(r.Prior))
}

// lastMicros is the l field of a record: Last in µs, 0 when unset.
func lastMicros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// packPages is the h field of a record: the pages little endian.
func packPages(pages []int32) []byte {
	h := make([]byte, 0, 4*len(pages))
	for _, p := range pages {
		h = binary.LittleEndian.AppendUint32(h, uint32(p))
	}
	return h
}

// formatPrior is the x field of a record: "partition gen offset" per
// position, joined by commas.
func formatPrior(prior []Position) string {
	var b []byte
	for i, p := range prior {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(p.Partition), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(p.Gen), 10)
		b = append(b, ' ')
		b = strconv.AppendInt(b, p.Offset, 10)
	}
	return string(b)
}

// parsePrior parses the x field into dst (reused); "" is none.
func parsePrior(x string, dst []Position) ([]Position, error) {
	dst = dst[:0]
	for x != "" {
		entry, rest, _ := strings.Cut(x, ",")
		x = rest
		f := strings.Fields(entry)
		if len(f) != 3 {
			return dst, errCorrupt
		}
		p, err1 := strconv.ParseInt(f[0], 10, 32)
		g, err2 := strconv.ParseUint(f[1], 10, 32)
		o, err3 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return dst, errCorrupt
		}
		dst = append(dst, Position{Partition: int32(p), Gen: uint32(g), Offset: o})
	}
	return dst, nil
}

var errCorrupt = errors.New("corrupt history record")

// decodeFields parses the hash fields of fieldNames into r (reusing its
// slices). A missing (empty) g reads as 0, and missing q and c as 1 and 0:
// a record written before stamps, whose state is unknown.
func decodeFields(f [numFields]string, r *Record) error {
	epoch, err1 := strconv.ParseUint(f[0], 10, 32)
	last, err2 := strconv.ParseInt(f[1], 10, 64)
	part, err3 := strconv.ParseInt(f[2], 10, 32)
	off, err4 := strconv.ParseInt(f[3], 10, 64)
	gen, err5 := parseUint32(f[6], 0)
	seq, err6 := parseUint32(f[7], 1)
	stateSeq, err7 := parseUint32(f[8], 0)
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil || len(f[4])%4 != 0 || len(f[5])%4 != 0 {
		return errCorrupt
	}
	prior, err := parsePrior(f[9], r.Prior)
	if err != nil {
		return errCorrupt
	}
	r.Epoch, r.Partition, r.Gen, r.Offset, r.Prior = uint32(epoch), int32(part), gen, off, prior
	r.Seq, r.StateSeq = seq, stateSeq
	r.Last = time.Time{}
	if last != 0 {
		r.Last = time.UnixMicro(last)
	}
	r.Pages = r.Pages[:0]
	for i := 0; i < len(f[4]); i += 4 {
		r.Pages = append(r.Pages, int32(uint32(f[4][i])|uint32(f[4][i+1])<<8|uint32(f[4][i+2])<<16|uint32(f[4][i+3])<<24))
	}
	r.State = r.State[:0]
	for i := 0; i < len(f[5]); i += 4 {
		bits := uint32(f[5][i]) | uint32(f[5][i+1])<<8 | uint32(f[5][i+2])<<16 | uint32(f[5][i+3])<<24
		r.State = append(r.State, math.Float32frombits(bits))
	}
	return nil
}

// parseUint32 parses a decimal field, def when it is missing.
func parseUint32(s string, def uint32) (uint32, error) {
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseUint(s, 10, 32)
	return uint32(v), err
}

// recordCache is a bounded LRU (hashicorp/golang-lru's simplelru, under
// the cache's own mutex so that an update copies into the cached item's
// buffers) of record copies with their fetch time. A nil *recordCache caches
// nothing.
type recordCache struct {
	// mu guards lru and spare.
	mu  sync.Mutex
	lru *simplelru.LRU[string, *cacheItem]
	// spare is the item last evicted or dropped, whose buffers the next new
	// entry reuses.
	spare *cacheItem
}

type cacheItem struct {
	rec    Record
	exists bool
	at     time.Time
}

func newRecordCache(size int) *recordCache {
	c := &recordCache{}
	// NewLRU fails only for a size below 1, which the caller rules out.
	c.lru, _ = simplelru.NewLRU(max(1, size), func(_ string, it *cacheItem) { c.spare = it })
	return c
}

// get copies user's record into dst when it is cached and at most maxAge
// old (ok), and reports whether the record exists in Redis.
func (c *recordCache) get(user string, maxAge time.Duration, dst *Record) (exists, ok bool) {
	if c == nil {
		return false, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	it, ok := c.lru.Get(user)
	if !ok || time.Since(it.at) > maxAge {
		return false, false
	}
	copyRecord(dst, &it.rec)
	return it.exists, true
}

func (c *recordCache) put(user string, rec *Record, exists bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if it, ok := c.lru.Get(user); ok {
		copyRecord(&it.rec, rec)
		it.exists, it.at = exists, time.Now()
		return
	}
	it := c.spare
	c.spare = nil
	if it == nil {
		it = &cacheItem{}
	}
	copyRecord(&it.rec, rec)
	it.exists, it.at = exists, time.Now()
	// A copy of the id: the decoded message it was sliced from (up to the
	// message size limit) must not live as long as the cache entry.
	c.lru.Add(strings.Clone(user), it)
}

func (c *recordCache) drop(user string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(user)
}
