package prefetch

import (
	"container/heap"
	"time"
)

// expirySet maps keys to values that expire, with bounded size. Expired
// entries are removed in expiry order by expire; when the set is full the
// entry expiring first is evicted. It is not safe for concurrent use.
type expirySet[V any] struct {
	max   int
	byKey map[string]*expiryEntry[V]
	order expiryHeap[V]
}

type expiryEntry[V any] struct {
	key   string
	at    time.Time // expiry
	value V
	index int // position in the heap
}

func newExpirySet[V any](max int) *expirySet[V] {
	return &expirySet[V]{max: max, byKey: make(map[string]*expiryEntry[V])}
}

// Len is the number of entries, expired or not.
func (s *expirySet[V]) Len() int { return len(s.byKey) }

// get returns the entry for key whether or not it has expired.
func (s *expirySet[V]) get(key string) (*expiryEntry[V], bool) {
	e, ok := s.byKey[key]
	return e, ok
}

// put inserts or replaces key with the given value and expiry. When the set
// is full, the entry expiring first is evicted and passed to evicted (which
// may be nil).
func (s *expirySet[V]) put(key string, v V, at time.Time, evicted func(*expiryEntry[V])) {
	if e, ok := s.byKey[key]; ok {
		e.value, e.at = v, at
		heap.Fix(&s.order, e.index)
		return
	}
	for s.max > 0 && len(s.byKey) >= s.max {
		e := heap.Pop(&s.order).(*expiryEntry[V])
		delete(s.byKey, e.key)
		if evicted != nil {
			evicted(e)
		}
	}
	e := &expiryEntry[V]{key: key, value: v, at: at}
	s.byKey[key] = e
	heap.Push(&s.order, e)
}

// expire removes every entry whose expiry is at or before now, in expiry
// order, passing each to fn (which may be nil).
func (s *expirySet[V]) expire(now time.Time, fn func(*expiryEntry[V])) {
	for len(s.order) > 0 && !s.order[0].at.After(now) {
		e := heap.Pop(&s.order).(*expiryEntry[V])
		delete(s.byKey, e.key)
		if fn != nil {
			fn(e)
		}
	}
}

// drain removes every entry, in expiry order, passing each to fn (which may
// be nil).
func (s *expirySet[V]) drain(fn func(*expiryEntry[V])) {
	for len(s.order) > 0 {
		e := heap.Pop(&s.order).(*expiryEntry[V])
		delete(s.byKey, e.key)
		if fn != nil {
			fn(e)
		}
	}
}

type expiryHeap[V any] []*expiryEntry[V]

func (h expiryHeap[V]) Len() int           { return len(h) }
func (h expiryHeap[V]) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap[V]) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *expiryHeap[V]) Push(x any) {
	e := x.(*expiryEntry[V])
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap[V]) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	e.index = -1
	return e
}
