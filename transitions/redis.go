package transitions

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// NewRedis returns statistics kept in Redis, shared by every replica using
// the same client and KeyPrefix. reg may be nil.
//
// Layout: one hash per source page, <prefix>c:<page>, whose fields are the
// next pages with their counts (integers, see fixedScale, stored with
// forward decay, see decay) and two fields of its own, "\x00b" (the base
// time, unix seconds) and "\x00n" (the total); it expires once unchanged
// for Config.Retention. A hash holds up to MaxNext + MaxNext/4 next pages
// between trims (Lookup returns the MaxNext highest). The pages outside the
// vocabulary are a sorted set, <prefix>online-only, scored by the time
// last seen, trimmed to the retention and to MaxPages.
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
	s := &redisStore{
		cfg: cfg, c: client, d: newDecay(cfg.HalfLife), m: m,
		retention: cfg.Retention().Seconds(),
		freshKey:  cfg.KeyPrefix + "online-only",
	}
	s.consts = []any{
		strconv.FormatFloat(s.d.lambda, 'g', -1, 64),
		cfg.MaxNext,
		cfg.MaxNext / 4,
		int64(math.Ceil(s.retention)),
		fixedScale,
	}
	return &Stats{Store: s, Blend: Blend{k: cfg.Evidence}, m: m}, nil
}

type redisStore struct {
	cfg       Config
	c         redis.UniversalClient
	d         decay
	m         *metrics
	retention float64 // seconds
	freshKey  string
	// consts are the script's first arguments, the same in every call.
	consts []any
	// loaded says the script is believed loaded in the servers.
	loaded atomic.Bool
	// freshSent is the score last written for each online-only page, so
	// that a page seen again is re-scored only after freshRefresh: a
	// ZADD of every page of every batch costs Redis milliseconds in one
	// command. Reset when it outgrows 2 * MaxPages.
	freshMu   sync.Mutex
	freshSent map[string]float64
}

// freshRefresh is how stale (seconds, against the retention) an
// online-only page's score may get before it is written again.
func (s *redisStore) freshRefresh() float64 { return s.retention / 1000 }

// Counts in Redis are integers, in units of 1/fixedScale of a click at the
// hash's base time, so that the script adds them with HINCRBY (a float
// addition, HINCRBYFLOAT, costs Redis several times more). A click weighs
// at most e^redisRebase · fixedScale units before the hash is rebased,
// which leaves room for 4·10^11 clicks per hash and rebase in an int64.
const (
	fixedScale  = 1000
	redisRebase = 10
)

// key is the hash of source page from. (Hashes of counts in floating
// point, of earlier versions, were named <prefix>p:<page>.)
func (s *redisStore) key(from string) string { return s.cfg.KeyPrefix + "c:" + from }

// observeScript adds one batch's transitions out of source pages, one
// hash per key. ARGV: lambda, max next, slack, ttl seconds, fixedScale,
// then for each key: the batch's time t_ref for the page (unix seconds),
// the number of pairs, and (next page, weight) pairs, a weight being the
// sum of exp(λ (t - t_ref)) over the page's transitions in the batch.
// Counts are added as weight · exp(λ (t_ref - base)) · fixedScale,
// rounded; past e^redisRebase the hash is scaled back and its base moved.
// Past max next pages plus the slack, the smallest counts are dropped down
// to max next (the total keeps them), except the largest page this call
// touched: as in memory, where each newcomer takes the place of the
// smallest page at that moment, so a burst of newcomers pushes out one
// established page and then each other, not every page with a real count.
// The sort that finds them runs once per slack newcomers.
var observeScript = redis.NewScript(`
local lambda, maxn, slack, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local scale = tonumber(ARGV[5])
local a = 6
for _, k in ipairs(KEYS) do
  local ref = tonumber(ARGV[a])
  local first = a + 2
  local last = a + 1 + 2 * tonumber(ARGV[a+1])
  local base = tonumber(redis.call('HGET', k, '\0b'))
  if not base then
    base = ref
    redis.call('HSET', k, '\0b', ARGV[a])
  elseif lambda * (ref - base) > ` + strconv.Itoa(redisRebase) + ` then
    local f = math.exp(-lambda * (ref - base))
    local all = redis.call('HGETALL', k)
    for i = 1, #all, 2 do
      if all[i] ~= '\0b' then
        redis.call('HSET', k, all[i], string.format('%d', math.floor(tonumber(all[i+1]) * f + 0.5)))
      end
    end
    base = ref
    redis.call('HSET', k, '\0b', ARGV[a])
  end
  a = last + 1
  local g = math.exp(lambda * (ref - base)) * scale
  local total = 0
  for i = first, last, 2 do
    local w = math.floor(tonumber(ARGV[i+1]) * g + 0.5)
    total = total + w
    redis.call('HINCRBY', k, ARGV[i], w)
  end
  redis.call('HINCRBY', k, '\0n', total)
  local over = redis.call('HLEN', k) - 2 - maxn
  if over > slack then
    local all = redis.call('HGETALL', k)
    local touched = {}
    for i = first, last, 2 do touched[ARGV[i]] = 1 end
    local rows = {}
    for i = 1, #all, 2 do
      if string.byte(all[i], 1) ~= 0 then
        rows[#rows+1] = {all[i], tonumber(all[i+1]), touched[all[i]] or 0}
      end
    end
    table.sort(rows, function(x, y) return x[2] < y[2] or (x[2] == y[2] and x[3] < y[3]) end)
    local keep = 0
    for i = #rows, 1, -1 do
      if rows[i][3] == 1 then keep = i; break end
    end
    local dropped, i = 0, 1
    while dropped < over and i <= #rows do
      if i ~= keep then
        redis.call('HDEL', k, rows[i][1])
        dropped = dropped + 1
      end
      i = i + 1
    end
  end
  redis.call('EXPIRE', k, ttl)
end
return 0
`)

// maxScriptKeys bounds the source pages of one script call, which holds
// the server for its duration, and of one round trip.
const maxScriptKeys = 8

// sourceBatch is one source page's part of an Observe: the newest time of
// its transitions, and its next pages with their weights (see
// observeScript).
type sourceBatch struct {
	from string
	ref  float64 // unix seconds
	next []nextWeight
}

type nextWeight struct {
	page string
	w    float64
}

// Observe adds the transitions: a script call per maxScriptKeys source
// pages (per page with a cluster), with the transitions to one next page
// summed into one weight, and the online-only pages, in one pipeline.
func (s *redisStore) Observe(ctx context.Context, ts []Transition) error {
	if len(ts) == 0 {
		return nil
	}
	// The sources, each with its newest time, then each (source, next)
	// pair's weight relative to it.
	var batches []sourceBatch
	bySource := make(map[string]int, len(ts))
	for i := range ts {
		at := unix(ts[i].At)
		j, ok := bySource[ts[i].From]
		if !ok {
			j = len(batches)
			bySource[ts[i].From] = j
			batches = append(batches, sourceBatch{from: ts[i].From, ref: at})
		}
		batches[j].ref = max(batches[j].ref, at)
	}
	byPair := make(map[[2]string]int, len(ts))
	freshAt := make(map[string]float64)
	var newest float64
	for i := range ts {
		t := &ts[i]
		at := unix(t.At)
		newest = max(newest, at)
		src := &batches[bySource[t.From]]
		w := s.d.weight(src.ref, at)
		if j, ok := byPair[[2]string{t.From, t.To}]; ok {
			src.next[j].w += w
		} else {
			byPair[[2]string{t.From, t.To}] = len(src.next)
			src.next = append(src.next, nextWeight{page: t.To, w: w})
		}
		if t.FromUnknown {
			freshAt[t.From] = max(freshAt[t.From], at)
		}
		if t.ToUnknown {
			freshAt[t.To] = max(freshAt[t.To], at)
		}
	}
	// The online-only pages whose score is missing or older than
	// freshRefresh; recorded as sent once the pipeline succeeds.
	var fresh []redis.Z
	if len(freshAt) > 0 {
		s.freshMu.Lock()
		for p, at := range freshAt {
			if last, ok := s.freshSent[p]; !ok || at-last >= s.freshRefresh() {
				fresh = append(fresh, redis.Z{Score: at, Member: p})
			}
		}
		s.freshMu.Unlock()
	}
	// Load the script once (again after a server lost it) so that the
	// pipeline can use EVALSHA.
	if !s.loaded.Load() {
		if err := observeScript.Load(ctx, s.c).Err(); err != nil {
			return fmt.Errorf("load transitions script: %w", err)
		}
		s.loaded.Store(true)
	}
	// A plain client sends up to maxScriptKeys sources per script call; a
	// cluster or ring sends one, as the keys live on different nodes.
	per := 1
	if _, plain := s.c.(*redis.Client); plain {
		per = maxScriptKeys
	}
	// Each round trip carries up to maxScriptKeys source pages (one call
	// on a plain client, a call per page on a cluster): Redis runs the
	// commands of one read from a connection back to back, so script calls
	// pipelined together would hold it (and every click's warm write behind
	// them) for all their time at once.
	type call struct {
		keys []string
		args []any
	}
	for len(batches) > 0 {
		var calls []call
		for n := 0; n < maxScriptKeys && len(batches) > 0; {
			srcs := batches[:min(per, len(batches))]
			batches = batches[len(srcs):]
			n += len(srcs)
			c := call{keys: make([]string, 0, len(srcs)), args: append(make([]any, 0, 2*len(ts)), s.consts...)}
			for _, src := range srcs {
				c.keys = append(c.keys, s.key(src.from))
				c.args = append(c.args, strconv.FormatFloat(src.ref, 'g', -1, 64), len(src.next))
				for _, n := range src.next {
					c.args = append(c.args, n.page, strconv.FormatFloat(n.w, 'g', -1, 64))
				}
			}
			calls = append(calls, c)
		}
		// A call refused with NOSCRIPT (the server restarted or its
		// scripts were flushed) did not run: the script is loaded again
		// and those calls alone go again, once. Other failures may have
		// run part of the trip, which cannot go again without counting it
		// twice.
		for attempt := 0; ; attempt++ {
			trip := s.c.Pipeline()
			cmds := make([]*redis.Cmd, len(calls))
			for i, c := range calls {
				cmds[i] = observeScript.EvalSha(ctx, trip, c.keys, c.args...)
			}
			_, err := trip.Exec(ctx)
			if err == nil {
				break
			}
			var missing []call
			other := false
			for i, cmd := range cmds {
				switch e := cmd.Err(); {
				case e == nil:
				case redis.HasErrorPrefix(e, "NOSCRIPT"):
					missing = append(missing, calls[i])
				default:
					other = true
				}
			}
			if len(missing) == 0 || other || attempt > 0 {
				if len(missing) > 0 {
					s.loaded.Store(false)
				}
				return fmt.Errorf("observe transitions: %w", err)
			}
			if lerr := observeScript.Load(ctx, s.c).Err(); lerr != nil {
				s.loaded.Store(false)
				return fmt.Errorf("observe transitions: %w (loading the script again: %v)", err, lerr)
			}
			calls = missing
		}
	}
	pipe := s.c.Pipeline()
	if len(fresh) > 0 {
		pipe.ZAdd(ctx, s.freshKey, fresh...)
	}
	pipe.ZRemRangeByScore(ctx, s.freshKey, "-inf", "("+strconv.FormatFloat(newest-s.retention, 'f', 6, 64))
	pipe.ZRemRangeByRank(ctx, s.freshKey, 0, int64(-s.cfg.MaxPages-1))
	card := pipe.ZCard(ctx, s.freshKey)
	if _, err := pipe.Exec(ctx); err != nil {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			s.loaded.Store(false)
		}
		return fmt.Errorf("observe transitions: %w", err)
	}
	if len(freshAt) > 0 {
		s.freshMu.Lock()
		if s.freshSent == nil || len(s.freshSent)+len(fresh) > 2*s.cfg.MaxPages {
			s.freshSent = make(map[string]float64, len(fresh))
		}
		for _, z := range fresh {
			p := z.Member.(string)
			s.freshSent[p] = max(s.freshSent[p], z.Score)
		}
		// Fewer pages in Redis than written: trimmed, or lost with the
		// server (a restart, a flush). Write every page again.
		if card.Val() < int64(len(s.freshSent)) {
			s.freshSent = nil
		}
		s.freshMu.Unlock()
	}
	s.m.observed.Add(float64(len(ts)))
	s.m.onlineOnly.Set(float64(card.Val()))
	return nil
}

// refreshShared brings prefetchd_transitions_online_only_pages up to date
// with Redis as of now: the pages past the retention leave the set, and the
// gauge takes its size, which the replicas share. Observe does the same
// when it sends; a replica with nothing to send relies on this.
func (s *redisStore) refreshShared(ctx context.Context, now time.Time) error {
	pipe := s.c.Pipeline()
	pipe.ZRemRangeByScore(ctx, s.freshKey, "-inf", "("+strconv.FormatFloat(unix(now)-s.retention, 'f', 6, 64))
	card := pipe.ZCard(ctx, s.freshKey)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("count online-only pages: %w", err)
	}
	s.m.onlineOnly.Set(float64(card.Val()))
	return nil
}

// Lookup reads the pages' hashes in one pipeline.
func (s *redisStore) Lookup(ctx context.Context, from []string, at time.Time, dst []Dist) ([]Dist, error) {
	dst = grow(dst, len(from))
	if len(from) == 0 {
		return dst, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	pipe := s.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(from))
	for i, p := range from {
		cmds[i] = pipe.HGetAll(ctx, s.key(p))
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
		f := 1 / s.d.weight(base, max(now, base)) / fixedScale
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
				d.Next = append(d.Next, Next{Page: field, Count: c * f, hash: PageHash(field)})
			}
		}
		sortNext(d.Next)
		d.Next = d.Next[:min(len(d.Next), s.cfg.MaxNext)] // between trims
	}
	return dst, nil
}
