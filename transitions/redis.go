package transitions

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// NewRedis returns statistics kept in Redis, shared by every replica using
// the same client and KeyPrefix. reg may be nil.
//
// Layout: one hash per source page, <prefix>p:<page>, whose fields are the
// next pages with their counts (stored with forward decay, see decay) and
// two fields of its own, "\x00b" (the base time, unix seconds) and "\x00n"
// (the total); it expires once unchanged for Config.Retention. The pages
// outside the vocabulary are a sorted set, <prefix>online-only, scored by
// the time last seen, trimmed to the retention and to MaxPages.
func NewRedis(cfg Config, client redis.UniversalClient, reg prometheus.Registerer) (*Stats, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, fmt.Errorf("transitions: no redis client: %w", ErrInvalidConfig)
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &redisStore{cfg: cfg, c: client, d: newDecay(cfg.HalfLife), m: m}
	return &Stats{Store: s, Blend: Blend{k: cfg.Evidence}, m: m}, nil
}

type redisStore struct {
	cfg Config
	c   redis.UniversalClient
	d   decay
	m   *metrics
	// loaded says the script is believed loaded in the servers.
	loaded atomic.Bool
}

// observeScript adds one wave's transitions out of one source page.
// KEYS[1] the page's hash; ARGV: lambda, max next, ttl seconds, then
// (time, next page) pairs. Counts are added as exp(λ (t - base)); past
// e^rebase the hash is scaled back and its base moved. Past max next pages
// the smallest counts of pages this call did not touch are dropped first,
// so that a newcomer takes the place of the smallest, as in memory (the
// total keeps the dropped counts).
var observeScript = redis.NewScript(`
local k = KEYS[1]
local lambda, maxn, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local base = tonumber(redis.call('HGET', k, '\0b'))
local first = tonumber(ARGV[4])
if not base then
  base = first
  redis.call('HSET', k, '\0b', string.format('%.17g', base))
end
local newest = first
for i = 4, #ARGV, 2 do
  local t = tonumber(ARGV[i])
  if t > newest then newest = t end
end
if lambda * (newest - base) > ` + strconv.Itoa(rebase) + ` then
  local f = math.exp(-lambda * (newest - base))
  local all = redis.call('HGETALL', k)
  for i = 1, #all, 2 do
    if all[i] ~= '\0b' then
      redis.call('HSET', k, all[i], string.format('%.17g', tonumber(all[i+1]) * f))
    end
  end
  base = newest
  redis.call('HSET', k, '\0b', string.format('%.17g', base))
end
local total = 0
for i = 4, #ARGV, 2 do
  local w = math.exp(lambda * (tonumber(ARGV[i]) - base))
  total = total + w
  redis.call('HINCRBYFLOAT', k, ARGV[i+1], string.format('%.17g', w))
end
redis.call('HINCRBYFLOAT', k, '\0n', string.format('%.17g', total))
local over = redis.call('HLEN', k) - 2 - maxn
if over > 0 then
  local all = redis.call('HGETALL', k)
  local touched = {}
  for i = 5, #ARGV, 2 do touched[ARGV[i]] = 1 end
  local rows = {}
  for i = 1, #all, 2 do
    if string.byte(all[i], 1) ~= 0 then
      rows[#rows+1] = {all[i], tonumber(all[i+1]), touched[all[i]] or 0}
    end
  end
  table.sort(rows, function(a, b) return a[3] < b[3] or (a[3] == b[3] and a[2] < b[2]) end)
  for i = 1, over do
    redis.call('HDEL', k, rows[i][1])
  end
end
redis.call('EXPIRE', k, ttl)
return 0
`)

// Observe adds the transitions: one script per source page, and the
// online-only pages, in one pipeline.
func (s *redisStore) Observe(ctx context.Context, ts []Transition) error {
	if len(ts) == 0 {
		return nil
	}
	bySource := make(map[string][]any, len(ts))
	var fresh []redis.Z
	var newest float64
	ttl := int64(math.Ceil(s.cfg.Retention().Seconds()))
	for _, t := range ts {
		at := unix(t.At)
		newest = max(newest, at)
		args, ok := bySource[t.From]
		if !ok {
			args = []any{strconv.FormatFloat(s.d.lambda, 'g', -1, 64), s.cfg.MaxNext, ttl}
		}
		bySource[t.From] = append(args, strconv.FormatFloat(at, 'f', 6, 64), t.To)
		if t.FromUnknown {
			fresh = append(fresh, redis.Z{Score: at, Member: t.From})
		}
		if t.ToUnknown {
			fresh = append(fresh, redis.Z{Score: at, Member: t.To})
		}
	}
	// Load the script once (again after a server lost it) so that the
	// pipeline can use EVALSHA.
	if !s.loaded.Load() {
		if err := observeScript.Load(ctx, s.c).Err(); err != nil {
			return fmt.Errorf("load transitions script: %w", err)
		}
		s.loaded.Store(true)
	}
	freshKey := s.cfg.KeyPrefix + "online-only"
	pipe := s.c.Pipeline()
	for from, args := range bySource {
		observeScript.EvalSha(ctx, pipe, []string{s.cfg.KeyPrefix + "p:" + from}, args...)
	}
	if len(fresh) > 0 {
		pipe.ZAdd(ctx, freshKey, fresh...)
	}
	pipe.ZRemRangeByScore(ctx, freshKey, "-inf", "("+strconv.FormatFloat(newest-s.cfg.Retention().Seconds(), 'f', 6, 64))
	pipe.ZRemRangeByRank(ctx, freshKey, 0, int64(-s.cfg.MaxPages-1))
	card := pipe.ZCard(ctx, freshKey)
	if _, err := pipe.Exec(ctx); err != nil {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			s.loaded.Store(false)
		}
		return fmt.Errorf("observe transitions: %w", err)
	}
	s.m.observed.Add(float64(len(ts)))
	s.m.onlineOnly.Set(float64(card.Val()))
	return nil
}

// Lookup reads the pages' hashes in one pipeline.
func (s *redisStore) Lookup(ctx context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	dst = grow(dst, len(from))
	if len(from) == 0 {
		return dst, nil
	}
	pipe := s.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(from))
	for i, p := range from {
		cmds[i] = pipe.HGetAll(ctx, s.cfg.KeyPrefix+"p:"+p)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return dst, fmt.Errorf("look up transitions: %w", err)
	}
	now := unix(at)
	for i, cmd := range cmds {
		h := cmd.Val()
		base, err := strconv.ParseFloat(h["\x00b"], 64)
		if err != nil {
			continue // no such page (or a hash being created)
		}
		f := 1 / s.d.weight(base, max(now, base))
		d := &dst[i]
		for field, v := range h {
			c, err := strconv.ParseFloat(v, 64)
			if err != nil || len(field) == 0 {
				continue
			}
			switch {
			case field == "\x00n":
				d.N = c * f
			case field[0] != 0:
				d.Next = append(d.Next, Next{Page: field, Count: c * f})
			}
		}
		sortNext(d.Next)
	}
	return dst, nil
}
