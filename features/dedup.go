package features

import (
	"hash/maphash"
	"sync"
)

// recentIDs remembers recently applied (user, event id) pairs so that an
// event sent twice under different Kafka positions (a producer's retry, a
// gRPC client's resend) is applied once. It is bounded: each shard keeps two
// generations of at most per entries; when the current one is full it
// becomes the previous one and the older is dropped, so between half and
// all of the capacity is remembered. Safe for concurrent use.
type recentIDs struct {
	per    int
	shards [16]idShard
}

type idShard struct {
	mu        sync.Mutex
	cur, prev map[string]struct{}
}

// newRecentIDs returns a set for about capacity pairs, or nil when capacity
// is not positive (no deduplication by event id).
func newRecentIDs(capacity int) *recentIDs {
	if capacity <= 0 {
		return nil
	}
	r := &recentIDs{per: max(1, capacity/(2*len(recentIDs{}.shards)))}
	for i := range r.shards {
		r.shards[i].cur = make(map[string]struct{})
	}
	return r
}

func idKey(user, id string) string { return user + "\x00" + id }

func (r *recentIDs) shard(key string) *idShard {
	return &r.shards[maphash.String(hashSeed, key)%uint64(len(r.shards))]
}

// hashSeed seeds the hashes that spread keys over workers and shards; it is
// chosen once per process and never changes.
var hashSeed = maphash.MakeSeed()

// hashBytes hashes b with hashSeed.
func hashBytes(b []byte) uint64 { return maphash.Bytes(hashSeed, b) }

// reserve records the pair and reports whether it was new. A nil set or an
// empty id always reports new.
func (r *recentIDs) reserve(user, id string) bool {
	if r == nil || id == "" {
		return true
	}
	key := idKey(user, id)
	s := r.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.cur[key]; ok {
		return false
	}
	if _, ok := s.prev[key]; ok {
		return false
	}
	if len(s.cur) >= r.per {
		s.prev, s.cur = s.cur, make(map[string]struct{}, r.per)
	}
	s.cur[key] = struct{}{}
	return true
}

// release forgets the pair (its event was not applied after all).
func (r *recentIDs) release(user, id string) {
	if r == nil || id == "" {
		return
	}
	key := idKey(user, id)
	s := r.shard(key)
	s.mu.Lock()
	delete(s.cur, key)
	delete(s.prev, key)
	s.mu.Unlock()
}
