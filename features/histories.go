package features

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of HistoryConfig.
const (
	DefaultMaxLen     = 20
	DefaultMaxUsers   = 1 << 20
	DefaultIdleTTL    = 24 * time.Hour
	DefaultSessionGap = 30 * time.Minute
	// MaxHistoryLen bounds MaxLen.
	MaxHistoryLen = 4096
)

// HistoryConfig bounds the per-user histories. Zero fields take the defaults.
type HistoryConfig struct {
	// MaxLen is the number of pages kept per user; use the model manifest's
	// max_seq_len. Default 20, at most MaxHistoryLen.
	MaxLen int
	// MaxUsers bounds the number of users held; the least recently used user
	// is evicted to make room. Default 1,048,576.
	MaxUsers int
	// IdleTTL evicts a user not seen for this long (wall clock). Default 24 h;
	// negative disables idle eviction.
	IdleTTL time.Duration
	// SessionGap starts a new session (empty history, no state) when a click's
	// event time is this much after the previous one. Default 30 min; negative
	// disables sessions.
	SessionGap time.Duration
	// Shards is the number of independently locked shards, a power of two.
	// Default: up to 32, fewer when MaxUsers is small, so that every shard
	// holds at least 256 users (LRU order is kept per shard).
	Shards int
	// Now is the wall clock for idle eviction. Default time.Now at
	// construction plus the monotonic time since (cheaper than time.Now),
	// or, while Run runs, a copy of it refreshed every 10 ms.
	Now func() time.Time
}

// Validate reports a configuration error.
func (c HistoryConfig) Validate() error {
	switch {
	case c.MaxLen < 0 || c.MaxLen > MaxHistoryLen:
		return fmt.Errorf("history max length %d outside 0..%d", c.MaxLen, MaxHistoryLen)
	case c.MaxUsers < 0:
		return fmt.Errorf("history max users %d is negative", c.MaxUsers)
	case c.Shards < 0 || c.Shards&(c.Shards-1) != 0:
		return fmt.Errorf("history shards %d is not a power of two", c.Shards)
	case c.Shards > 0 && c.MaxUsers > 0 && c.Shards > c.MaxUsers:
		return fmt.Errorf("history shards %d exceed max users %d", c.Shards, c.MaxUsers)
	}
	return nil
}

func (c HistoryConfig) withDefaults() HistoryConfig {
	if c.MaxLen == 0 {
		c.MaxLen = DefaultMaxLen
	}
	if c.MaxUsers == 0 {
		c.MaxUsers = DefaultMaxUsers
	}
	if c.IdleTTL == 0 {
		c.IdleTTL = DefaultIdleTTL
	}
	if c.SessionGap == 0 {
		c.SessionGap = DefaultSessionGap
	}
	if c.Shards == 0 {
		c.Shards = 32
		for c.Shards > 1 && c.MaxUsers/c.Shards < 256 {
			c.Shards /= 2
		}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Histories is the in-memory Store: a sharded hash map with an LRU list per
// shard, and page indices in one flat array per shard so that a user costs
// no allocation of its own besides the user id. Memory is bounded by MaxUsers
// and IdleTTL. Its methods never fail and ignore ctx.
type Histories struct {
	cfg    HistoryConfig
	mask   uint64
	shards []shard
	users  atomic.Int64
	// start and clock give the time of idle eviction: clock (a configured
	// Now) when set, else start plus the monotonic time since, which costs
	// half a time.Now call.
	start time.Time
	clock func() time.Time
	// coarse is the wall clock in Unix ns that Run refreshes every
	// coarseTick; now reads it instead of the clock while runs > 0.
	coarse atomic.Int64
	runs   atomic.Int32

	evictions   *prometheus.CounterVec
	evictedLRU  prometheus.Counter
	evictedIdle prometheus.Counter
	sessions    prometheus.Counter
}

type shard struct {
	mu       sync.Mutex
	index    map[string]int32
	slots    []slot
	pages    []int32 // slot i owns pages[i*maxLen : (i+1)*maxLen]
	free     []int32
	head     int32 // most recently used, -1 when empty
	tail     int32 // least recently used, -1 when empty
	maxUsers int
}

type slot struct {
	user      string
	last      int64 // event time of the latest click, Unix ns
	touched   int64 // wall clock of the latest access, Unix ns
	offset    int64
	state     []float32
	prior     []Position // nil until the user's clicks change partition
	prev      int32
	next      int32
	partition int32
	gen       uint32
	epoch     uint32
	seq       uint32
	stateSeq  uint32
	n         uint16
}

// NewHistories validates cfg and builds an empty in-memory store. Metrics
// (prefetchd_histories_*) are registered on reg when it is not nil.
func NewHistories(cfg HistoryConfig, reg prometheus.Registerer) (*Histories, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	customClock := cfg.Now != nil
	cfg = cfg.withDefaults()
	h := &Histories{
		cfg:    cfg,
		start:  time.Now(),
		mask:   uint64(cfg.Shards - 1),
		shards: make([]shard, cfg.Shards),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prefetchd_histories_evictions_total",
			Help: "Users evicted from the in-memory histories, by reason (lru, idle).",
		}, []string{"reason"}),
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prefetchd_histories_sessions_total",
			Help: "Sessions started (first click of a user or after the session gap).",
		}),
	}
	if customClock {
		h.clock = cfg.Now
	}
	h.evictedLRU = h.evictions.WithLabelValues("lru")
	h.evictedIdle = h.evictions.WithLabelValues("idle")
	for i := range h.shards {
		s := &h.shards[i]
		s.index = make(map[string]int32)
		s.head, s.tail = -1, -1
		s.maxUsers = cfg.MaxUsers / cfg.Shards
	}
	if reg != nil {
		users := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "prefetchd_histories_users",
			Help: "Users held in the in-memory histories.",
		}, func() float64 { return float64(h.users.Load()) })
		for _, c := range []prometheus.Collector{h.evictions, h.sessions, users} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register history metrics: %w", err)
			}
		}
	}
	return h, nil
}

// Config returns the configuration in effect, defaults applied.
func (h *Histories) Config() HistoryConfig { return h.cfg }

// Len is the number of users held.
func (h *Histories) Len() int { return int(h.users.Load()) }

func (h *Histories) shardOf(user string) *shard {
	// FNV-1a, inlined to avoid allocating a hasher.
	x := uint64(14695981039346656037)
	for i := 0; i < len(user); i++ {
		x ^= uint64(user[i])
		x *= 1099511628211
	}
	return &h.shards[x&h.mask]
}

// view returns slot i as a Record aliasing the shard's arrays.
func (s *shard) view(i int32, maxLen int, r *Record) {
	sl := &s.slots[i]
	base := int(i) * maxLen
	r.Pages = s.pages[base : base+int(sl.n) : base+maxLen]
	r.State = sl.state
	r.Epoch = sl.epoch
	r.Last = time.Unix(0, sl.last)
	r.Partition = sl.partition
	r.Gen = sl.gen
	r.Offset = sl.offset
	r.Prior = sl.prior
	r.Seq = sl.seq
	r.StateSeq = sl.stateSeq
}

// store writes the fields of a Record view back into slot i.
func (s *shard) store(i int32, r *Record) {
	sl := &s.slots[i]
	sl.n = uint16(len(r.Pages))
	sl.state = r.State
	sl.epoch = r.Epoch
	sl.last = r.Last.UnixNano()
	sl.partition = r.Partition
	sl.gen = r.Gen
	sl.offset = r.Offset
	sl.prior = r.Prior
	sl.seq = r.Seq
	sl.stateSeq = r.StateSeq
}

func copyRecord(dst *Record, src *Record) {
	dst.Pages = append(dst.Pages[:0], src.Pages...)
	dst.State = append(dst.State[:0], src.State...)
	dst.Epoch = src.Epoch
	dst.Last = src.Last
	dst.Partition = src.Partition
	dst.Gen = src.Gen
	dst.Offset = src.Offset
	dst.Prior = append(dst.Prior[:0], src.Prior...)
	dst.Seq = src.Seq
	dst.StateSeq = src.StateSeq
}

// now is the wall clock of idle eviction in Unix ns; 0 when idle eviction is
// off.
func (h *Histories) now() int64 {
	switch {
	case h.cfg.IdleTTL < 0:
		return 0
	case h.clock != nil:
		return h.clock().UnixNano()
	case h.runs.Load() > 0:
		return h.coarse.Load()
	}
	return h.start.UnixNano() + int64(time.Since(h.start))
}

// coarseTick is how often Run refreshes the clock that Append reads (one
// atomic load per click instead of a clock read).
const coarseTick = 10 * time.Millisecond

// slotFor returns user's slot in s, inserting one when the user is new, and
// whether the user was already held. s.mu must be held.
func (h *Histories) slotFor(s *shard, user string, now int64) (int32, bool) {
	if i, ok := h.lookup(s, user, now); ok {
		return i, true
	}
	return h.insert(s, user, now), false
}

// Append implements Store. It never fails except with ErrDuplicate or
// ErrUnsettled.
func (h *Histories) Append(_ context.Context, user string, c Click, rec *Record) error {
	now := h.now()
	s := h.shardOf(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := h.slotFor(s, user, now)
	var view Record
	s.view(i, h.cfg.MaxLen, &view)
	if out := applyClick(&view, c, h.cfg.MaxLen, h.cfg.SessionGap, ok); out != clickApplied {
		copyRecord(rec, &view)
		return out.err()
	}
	if len(view.Pages) == 1 {
		h.sessions.Inc()
	}
	s.store(i, &view)
	copyRecord(rec, &view)
	h.evictIdleTail(s, now, 2)
	return nil
}

// Get implements Store.
func (h *Histories) Get(_ context.Context, user string, dst []int32) ([]int32, error) {
	now := h.now()
	s := h.shardOf(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	dst = dst[:0]
	i, ok := h.lookup(s, user, now)
	if !ok {
		return dst, nil
	}
	base := int(i) * h.cfg.MaxLen
	return append(dst, s.pages[base:base+int(s.slots[i].n)]...), nil
}

// Load implements Store.
func (h *Histories) Load(_ context.Context, user string, rec *Record) (bool, error) {
	now := h.now()
	s := h.shardOf(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := h.lookup(s, user, now)
	if !ok {
		copyRecord(rec, &Record{Offset: -1})
		return false, nil
	}
	var view Record
	s.view(i, h.cfg.MaxLen, &view)
	copyRecord(rec, &view)
	return true, nil
}

// Save implements Store.
func (h *Histories) Save(_ context.Context, user string, rec *Record) error {
	now := h.now()
	s := h.shardOf(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := h.slotFor(s, user, now)
	if ok && s.slots[i].seq != rec.Seq {
		return ErrStale
	}
	var view Record
	s.view(i, h.cfg.MaxLen, &view)
	pages := rec.Pages
	if len(pages) > h.cfg.MaxLen {
		pages = pages[len(pages)-h.cfg.MaxLen:]
	}
	view.Pages = append(view.Pages[:0], pages...)
	view.State = append(view.State[:0], rec.State...)
	view.Epoch, view.Last = rec.Epoch, rec.Last
	view.Partition, view.Gen, view.Offset = rec.Partition, rec.Gen, rec.Offset
	view.Seq, view.StateSeq = rec.Seq, rec.StateSeq
	s.store(i, &view)
	return nil
}

// EvictIdle evicts every user idle for longer than IdleTTL and returns how
// many it evicted. Append already evicts idle users lazily; call EvictIdle
// periodically to return memory when traffic stops.
func (h *Histories) EvictIdle() int {
	if h.cfg.IdleTTL < 0 {
		return 0
	}
	now := h.now()
	n := 0
	h.evictedLRU = h.evictions.WithLabelValues("lru")
	h.evictedIdle = h.evictions.WithLabelValues("idle")
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		n += h.evictIdleTail(s, now, -1)
		s.mu.Unlock()
	}
	return n
}

// Run calls EvictIdle every interval (a minute when interval <= 0) until ctx
// ends, then returns nil. It is optional: Append and Get evict idle users
// lazily; Run returns their memory when traffic stops. While it runs, and
// unless HistoryConfig.Now is set (which always wins), the wall clock of
// idle eviction is read from a value it refreshes every 10 ms (cheaper per
// click than reading the clock).
func (h *Histories) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	tick := time.NewTicker(coarseTick)
	defer tick.Stop()
	h.coarse.Store(h.start.UnixNano() + int64(time.Since(h.start)))
	h.runs.Add(1)
	defer h.runs.Add(-1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			h.coarse.Store(h.start.UnixNano() + int64(time.Since(h.start)))
		case <-t.C:
			h.EvictIdle()
		}
	}
}

// lookup finds user, drops it when idle and moves it to the LRU head.
func (h *Histories) lookup(s *shard, user string, now int64) (int32, bool) {
	i, ok := s.index[user]
	if !ok {
		return 0, false
	}
	if h.idle(&s.slots[i], now) {
		h.remove(s, i, true)
		return 0, false
	}
	s.slots[i].touched = now
	s.moveToHead(i)
	return i, true
}

func (h *Histories) idle(sl *slot, now int64) bool {
	return h.cfg.IdleTTL > 0 && now-sl.touched > int64(h.cfg.IdleTTL)
}

// evictIdleTail evicts up to max idle users from the LRU tail (all when max < 0).
func (h *Histories) evictIdleTail(s *shard, now int64, max int) int {
	n := 0
	for s.tail >= 0 && (max < 0 || n < max) && h.idle(&s.slots[s.tail], now) {
		h.remove(s, s.tail, true)
		n++
	}
	return n
}

// insert adds an empty record for user at the LRU head, evicting the least
// recently used user when the shard is full.
func (h *Histories) insert(s *shard, user string, now int64) int32 {
	if len(s.index) >= s.maxUsers && s.tail >= 0 {
		h.remove(s, s.tail, false)
	}
	var i int32
	if n := len(s.free); n > 0 {
		i = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		i = int32(len(s.slots))
		// Grow by doubling, up to the shard's bound: append grows large
		// slices by a quarter, and every growth copies the shard's slots
		// and pages.
		if len(s.slots) == cap(s.slots) {
			n := max(min(2*cap(s.slots), s.maxUsers), 64, len(s.slots)+1)
			s.slots = slices.Grow(s.slots, n-len(s.slots))
		}
		if need := len(s.pages) + h.cfg.MaxLen; need > cap(s.pages) {
			n := max(min(2*cap(s.pages), s.maxUsers*h.cfg.MaxLen), 64*h.cfg.MaxLen, need)
			s.pages = slices.Grow(s.pages, n-len(s.pages))
		}
		s.slots = append(s.slots, slot{})
		s.pages = s.pages[:len(s.pages)+h.cfg.MaxLen]
	}
	user = strings.Clone(user) // do not retain the decoded message the id was sliced from
	s.slots[i] = slot{user: user, touched: now, offset: -1, prev: -1, next: -1}
	s.index[user] = i
	s.pushHead(i)
	h.users.Add(1)
	return i
}

func (h *Histories) remove(s *shard, i int32, idle bool) {
	s.unlink(i)
	delete(s.index, s.slots[i].user)
	s.slots[i] = slot{}
	s.free = append(s.free, i)
	h.users.Add(-1)
	if idle {
		h.evictedIdle.Inc()
	} else {
		h.evictedLRU.Inc()
	}
}

func (s *shard) unlink(i int32) {
	sl := &s.slots[i]
	if sl.prev >= 0 {
		s.slots[sl.prev].next = sl.next
	} else {
		s.head = sl.next
	}
	if sl.next >= 0 {
		s.slots[sl.next].prev = sl.prev
	} else {
		s.tail = sl.prev
	}
	sl.prev, sl.next = -1, -1
}

func (s *shard) pushHead(i int32) {
	sl := &s.slots[i]
	sl.prev, sl.next = -1, s.head
	if s.head >= 0 {
		s.slots[s.head].prev = i
	}
	s.head = i
	if s.tail < 0 {
		s.tail = i
	}
}

func (s *shard) moveToHead(i int32) {
	if s.head == i {
		return
	}
	s.unlink(i)
	s.pushHead(i)
}
