package prefetch

import (
	"math"
	"time"
)

// expiryGrainShift sets the span of an expirySet bucket: 2^20 ns, about a
// millisecond of expiry time.
const expiryGrainShift = 20

// maxSpareBuckets bounds the emptied buckets an expirySet keeps for reuse.
const maxSpareBuckets = 64

// expirySet maps keys to values that expire, with bounded size. Expired
// entries are removed by expire; when the set is full the entry expiring
// first is evicted. It is not safe for concurrent use.
//
// Expiries come nearly in order (one TTL after event times that are nearly
// ordered), so the set files each entry in a bucket of expiry time
// (expiryGrainShift) kept sorted by insertion from its back, which moves
// nothing for entries that arrive in order and at most a bucket's worth for
// those that do not; a small min-heap orders the bucket ids. expire removes
// exactly the entries a heap over all entries would, at a constant cost per
// entry instead of a sift through the whole set. Entries live in slots
// reused through a free list, so a steady stream allocates only its keys.
type expirySet[V any] struct {
	max   int
	index map[string]int32 // key -> slot
	slots []expiryEntry[V]
	free  []int32
	live  int

	buckets map[int64]*expiryBucket // by expiry >> expiryGrainShift
	order   []bucketRef             // min-heap of the buckets by id
	spare   []*expiryBucket
	lastID  int64 // id of last, the bucket filed into most recently
	last    *expiryBucket
}

// expiryEntry is a slot of an expirySet. Pointers to it are valid until the
// set is next changed.
type expiryEntry[V any] struct {
	key   string
	at    int64  // expiry, Unix nanoseconds
	gen   uint32 // bumped when the slot is released
	value V
}

// expiryRef files a slot in a bucket; it is stale once the slot was released
// or refiled with another expiry.
type expiryRef struct {
	at   int64
	slot int32
	gen  uint32
}

// expiryBucket holds refs sorted by expiry; refs[:head] are consumed.
type expiryBucket struct {
	refs []expiryRef
	head int
}

// bucketRef is a bucket with its id, in the heap of buckets.
type bucketRef struct {
	id int64
	b  *expiryBucket
}

func newExpirySet[V any](max int) *expirySet[V] {
	return &expirySet[V]{max: max, index: make(map[string]int32), buckets: make(map[int64]*expiryBucket)}
}

// Len is the number of entries, expired or not.
func (s *expirySet[V]) Len() int { return s.live }

// get returns the entry for key whether or not it has expired.
func (s *expirySet[V]) get(key string) (*expiryEntry[V], bool) {
	i, ok := s.index[key]
	if !ok {
		return nil, false
	}
	return &s.slots[i], true
}

// getBytes is get for the key spelled by b, without allocating.
func (s *expirySet[V]) getBytes(b []byte) (*expiryEntry[V], bool) {
	i, ok := s.index[string(b)]
	if !ok {
		return nil, false
	}
	return &s.slots[i], true
}

// put inserts or replaces key with the given value and expiry (Unix
// nanoseconds). When the set is full, the entry expiring first is evicted
// and passed to evicted (which may be nil).
func (s *expirySet[V]) put(key string, v V, at int64, evicted func(*expiryEntry[V])) {
	if i, ok := s.index[key]; ok {
		e := &s.slots[i]
		e.value, e.at = v, at
		s.file(i)
		return
	}
	s.insert(key, v, at, evicted)
}

// insert is put for a key known to be absent: one map operation fewer.
func (s *expirySet[V]) insert(key string, v V, at int64, evicted func(*expiryEntry[V])) {
	for s.max > 0 && s.live >= s.max && s.pop(math.MaxInt64, evicted) {
	}
	i := takeSlot(&s.slots, &s.free)
	e := &s.slots[i]
	e.key, e.at, e.value = key, at, v
	s.index[key] = i
	s.live++
	s.file(i)
}

// file adds a ref to slot i, at its expiry, to the bucket of that expiry.
func (s *expirySet[V]) file(i int32) {
	e := &s.slots[i]
	r := expiryRef{at: e.at, slot: i, gen: e.gen}
	id := r.at >> expiryGrainShift
	b := s.last
	if b == nil || id != s.lastID {
		var ok bool
		if b, ok = s.buckets[id]; !ok {
			b = s.newBucket()
			s.buckets[id] = b
			s.push(bucketRef{id, b})
		}
		s.last, s.lastID = b, id
	}
	b.refs = append(b.refs, r)
	for j := len(b.refs) - 1; j > b.head && b.refs[j-1].at > r.at; j-- {
		b.refs[j], b.refs[j-1] = b.refs[j-1], b.refs[j]
	}
}

// expire removes every entry whose expiry is at or before now (Unix
// nanoseconds), in expiry order, passing each to fn (which may be nil).
func (s *expirySet[V]) expire(now int64, fn func(*expiryEntry[V])) {
	for len(s.order) > 0 && s.order[0].id<<expiryGrainShift <= now && s.pop(now, fn) {
	}
}

// drain removes every entry, in expiry order, passing each to fn (which may
// be nil).
func (s *expirySet[V]) drain(fn func(*expiryEntry[V])) {
	for s.pop(math.MaxInt64, fn) {
	}
}

// pop removes the entry expiring first if it expires at or before limit,
// passing it to fn (which may be nil), and reports whether it removed one.
func (s *expirySet[V]) pop(limit int64, fn func(*expiryEntry[V])) bool {
	for len(s.order) > 0 {
		b := s.order[0].b
		for b.head < len(b.refs) {
			r := b.refs[b.head]
			if r.at > limit {
				return false
			}
			b.head++
			e := &s.slots[r.slot]
			if e.gen != r.gen || e.at != r.at {
				continue // released or refiled since
			}
			if fn != nil {
				fn(e)
			}
			s.release(r.slot)
			if b.head == len(b.refs) {
				s.dropFirstBucket()
			}
			return true
		}
		s.dropFirstBucket()
	}
	return false
}

// takeSlot returns the index of a slot to fill: the last freed one, else
// a new one at the end of slots.
func takeSlot[T any](slots *[]T, free *[]int32) int32 {
	if n := len(*free); n > 0 {
		i := (*free)[n-1]
		*free = (*free)[:n-1]
		return i
	}
	var zero T
	*slots = append(*slots, zero)
	return int32(len(*slots) - 1)
}

// release frees a slot and forgets its key.
func (s *expirySet[V]) release(i int32) {
	e := &s.slots[i]
	delete(s.index, e.key)
	var zero V
	e.key, e.at, e.value = "", 0, zero
	e.gen++
	s.free = append(s.free, i)
	s.live--
}

func (s *expirySet[V]) newBucket() *expiryBucket {
	if n := len(s.spare); n > 0 {
		b := s.spare[n-1]
		s.spare = s.spare[:n-1]
		return b
	}
	return &expiryBucket{}
}

// dropFirstBucket removes the bucket of the smallest id, keeping it for reuse.
func (s *expirySet[V]) dropFirstBucket() {
	id, b := s.order[0].id, s.order[0].b
	delete(s.buckets, id)
	if s.last == b {
		s.last = nil
	}
	s.popOrder()
	if len(s.spare) < maxSpareBuckets {
		clear(b.refs)
		b.refs, b.head = b.refs[:0], 0
		s.spare = append(s.spare, b)
	}
}

// push adds r to the heap of buckets.
func (s *expirySet[V]) push(r bucketRef) {
	h := append(s.order, r)
	for j := len(h) - 1; j > 0; {
		p := (j - 1) / 2
		if h[p].id <= h[j].id {
			break
		}
		h[p], h[j] = h[j], h[p]
		j = p
	}
	s.order = h
}

// popOrder removes the bucket of the smallest id from the heap of buckets.
func (s *expirySet[V]) popOrder() {
	h := s.order
	n := len(h) - 1
	h[0] = h[n]
	h[n] = bucketRef{}
	h = h[:n]
	for j := 0; ; {
		l := 2*j + 1
		if l >= n {
			break
		}
		if r := l + 1; r < n && h[r].id < h[l].id {
			l = r
		}
		if h[j].id <= h[l].id {
			break
		}
		h[j], h[l] = h[l], h[j]
		j = l
	}
	s.order = h
}

// Bounds of the times unixNanos represents exactly.
var (
	minNanosTime = time.Unix(0, math.MinInt64)
	maxNanosTime = time.Unix(0, math.MaxInt64)
)

// unixNanos is t in Unix nanoseconds, clamped to the int64 range (years
// 1678 to 2262) so that far-off times keep their order.
func unixNanos(t time.Time) int64 {
	switch {
	case t.Before(minNanosTime):
		return math.MinInt64
	case t.After(maxNanosTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// addNanos is a + d without overflow.
func addNanos(a int64, d time.Duration) int64 {
	if d > 0 && a > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	if d < 0 && a < math.MinInt64-int64(d) {
		return math.MinInt64
	}
	return a + int64(d)
}
