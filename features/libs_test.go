package features

import (
	"container/list"
	"math/rand"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The hand-written code that maintained libraries replaced here, kept as the
// baselines of BenchmarkKeyHash and BenchmarkRecordCache (features/README.md
// has the figures and the choice).

// fnv64 is the FNV-1a hash workerOf used before hash/maphash.
func fnv64(key []byte) uint64 {
	x := uint64(14695981039346656037)
	for _, b := range key {
		x ^= uint64(b)
		x *= 1099511628211
	}
	return x
}

// fnv32 is the FNV-1a hash recentIDs.shard used before hash/maphash.
func fnv32(key string) uint32 {
	x := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		x ^= uint32(key[i])
		x *= 16777619
	}
	return x
}

// listCache is the LRU recordCache was before hashicorp/golang-lru.
type listCache struct {
	mu    sync.Mutex
	max   int
	items map[string]*list.Element
	lru   list.List
}

type listItem struct {
	user   string
	rec    Record
	exists bool
	at     time.Time
}

func newListCache(max int) *listCache {
	return &listCache{max: max, items: make(map[string]*list.Element)}
}

func (c *listCache) get(user string, maxAge time.Duration, dst *Record) (exists, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[user]
	if !ok {
		return false, false
	}
	it := e.Value.(*listItem)
	if time.Since(it.at) > maxAge {
		return false, false
	}
	c.lru.MoveToFront(e)
	copyRecord(dst, &it.rec)
	return it.exists, true
}

func (c *listCache) put(user string, rec *Record, exists bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[user]; ok {
		it := e.Value.(*listItem)
		copyRecord(&it.rec, rec)
		it.exists, it.at = exists, time.Now()
		c.lru.MoveToFront(e)
		return
	}
	if len(c.items) >= c.max {
		if e := c.lru.Back(); e != nil {
			delete(c.items, e.Value.(*listItem).user)
			c.lru.Remove(e)
		}
	}
	it := &listItem{user: user, exists: exists, at: time.Now()}
	copyRecord(&it.rec, rec)
	c.items[user] = c.lru.PushFront(it)
}

// TestWorkerOf checks that a key always goes to the same worker within the
// process, that keys spread over every worker, and that messages without a
// key go by partition.
func TestWorkerOf(t *testing.T) {
	const n = 4
	hits := make([]int, n)
	for i := range 4000 {
		key := []byte("user-" + strconv.Itoa(i))
		w := workerOf("", key, 0, n)
		if again := workerOf("", key, 3, n); again != w {
			t.Fatalf("key %q went to worker %d, then %d", key, w, again)
		}
		hits[w]++
	}
	for w, h := range hits {
		if h < 800 || h > 1200 {
			t.Errorf("worker %d got %d of 4000 keys, want about 1000 (all: %v)", w, h, hits)
		}
	}
	if got := workerOf("", nil, 6, n); got != 2 {
		t.Errorf("no key, partition 6: worker %d, want 2", got)
	}
	// The user id wins over the key: one user's events under other keys
	// (or none) go to one worker.
	for i := range 100 {
		user := "user-" + strconv.Itoa(i)
		w := workerOf(user, nil, 0, n)
		for j, key := range [][]byte{[]byte(user), []byte("device-" + strconv.Itoa(i+1)), nil} {
			if got := workerOf(user, key, j, n); got != w {
				t.Fatalf("user %s with key %q went to worker %d, without a key to %d", user, key, got, w)
			}
		}
	}
}

// TestRecordCache checks the cache's LRU order, expiry, drop, and that it
// holds copies.
func TestRecordCache(t *testing.T) {
	rec := func(p int32) *Record { return &Record{Pages: []int32{p}, Offset: int64(p)} }
	t.Run("evicts the least recently used", func(t *testing.T) {
		c := newRecordCache(2)
		c.put("a", rec(1), true)
		c.put("b", rec(2), true)
		var dst Record
		if _, ok := c.get("a", time.Hour, &dst); !ok { // a is now the most recent
			t.Fatal("a not cached")
		}
		c.put("c", rec(3), false)
		if _, ok := c.get("b", time.Hour, &dst); ok {
			t.Error("b still cached after c was added to a full cache; want it evicted")
		}
		for user, want := range map[string]int32{"a": 1, "c": 3} {
			exists, ok := c.get(user, time.Hour, &dst)
			if !ok || dst.Pages[0] != want || exists != (user == "a") {
				t.Errorf("get %s = %v, %v, pages %v; want cached pages [%d], exists %v", user, exists, ok, dst.Pages, want, user == "a")
			}
		}
	})
	t.Run("expires by age", func(t *testing.T) {
		c := newRecordCache(2)
		c.put("a", rec(1), true)
		time.Sleep(2 * time.Millisecond)
		var dst Record
		if _, ok := c.get("a", time.Millisecond, &dst); ok {
			t.Error("a 2 ms old served with maxAge 1 ms")
		}
	})
	t.Run("drop and update", func(t *testing.T) {
		c := newRecordCache(2)
		c.put("a", rec(1), true)
		c.drop("a")
		var dst Record
		if _, ok := c.get("a", time.Hour, &dst); ok {
			t.Error("a served after drop")
		}
		r := rec(5)
		c.put("a", r, true)
		r.Pages[0] = 9 // the cache holds a copy
		c.put("b", rec(6), true)
		c.put("b", rec(7), true)
		if _, ok := c.get("a", time.Hour, &dst); !ok || dst.Pages[0] != 5 {
			t.Errorf("a = %v, %v; want pages [5]", dst.Pages, ok)
		}
		if _, ok := c.get("b", time.Hour, &dst); !ok || dst.Pages[0] != 7 {
			t.Errorf("b = %v, %v; want pages [7] (the update)", dst.Pages, ok)
		}
	})
	t.Run("nil caches nothing", func(t *testing.T) {
		var c *recordCache
		c.put("a", rec(1), true)
		c.drop("a")
		var dst Record
		if _, ok := c.get("a", time.Hour, &dst); ok {
			t.Error("nil cache served a record")
		}
	})
}

// BenchmarkKeyHash compares hash/maphash with the inline FNV-1a hashes it
// replaced, on a typical Kafka key (workerOf) and dedupe key (shard).
func BenchmarkKeyHash(b *testing.B) {
	key := []byte("nasa-pm-1-ppp.com")
	idk := idKey("nasa-pm-1-ppp.com", "0f8fad5b-d9cb-469f-a165-70867728950e")
	var sink uint64
	b.Run("worker/maphash", func(b *testing.B) {
		for range b.N {
			sink += uint64(workerOf("", key, 0, 4))
		}
	})
	b.Run("worker/fnv", func(b *testing.B) {
		for range b.N {
			sink += fnv64(key) % 4
		}
	})
	var shard *idShard
	b.Run("shard/maphash", func(b *testing.B) {
		r := newRecentIDs(1000)
		for range b.N {
			shard = r.shard(idk)
		}
	})
	b.Run("shard/fnv", func(b *testing.B) {
		r := newRecentIDs(1000)
		for range b.N {
			shard = &r.shards[fnv32(idk)%uint32(len(r.shards))]
		}
	})
	_ = shard
	_ = sink
}

// BenchmarkRecordCache compares the golang-lru cache with the list-based one
// it replaced: a get, and a put on a miss, per click, users drawn from a
// Zipf law over 1,000,000 users in a cache of 100,000 (the default), so that
// the cache both hits and evicts.
func BenchmarkRecordCache(b *testing.B) {
	const users, size, draws = 1_000_000, 100_000, 1 << 20
	z := rand.NewZipf(rand.New(rand.NewSource(1)), 1.1, 1, users-1)
	seq := make([]string, draws)
	for i := range seq {
		seq[i] = "user-" + strconv.FormatUint(z.Uint64(), 10)
	}
	rec := &Record{Pages: make([]int32, 20), Offset: 1}
	type cache interface {
		get(string, time.Duration, *Record) (bool, bool)
		put(string, *Record, bool)
	}
	for _, tc := range []struct {
		name string
		c    cache
	}{{"lru", newRecordCache(size)}, {"list", newListCache(size)}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var dst Record
			hits := 0
			for i := range b.N {
				u := seq[i%draws]
				if _, ok := tc.c.get(u, time.Hour, &dst); ok {
					hits++
				} else {
					tc.c.put(u, rec, true)
				}
			}
			b.ReportMetric(float64(hits)/float64(b.N), "hits/op")
		})
	}
}
