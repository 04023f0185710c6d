package features

import (
	"fmt"
	"sync"
	"testing"
)

func TestRecentIDs(t *testing.T) {
	r := newRecentIDs(3200) // 100 per generation per shard
	if !r.reserve("u", "e1") || r.reserve("u", "e1") {
		t.Fatal("second reserve of the same pair must report a duplicate")
	}
	if !r.reserve("v", "e1") || !r.reserve("u", "e2") {
		t.Fatal("another user or another id is new")
	}
	r.release("u", "e1")
	if !r.reserve("u", "e1") {
		t.Fatal("a released pair is new again")
	}
	for range 2 {
		if !r.reserve("u", "") {
			t.Fatal("events without an id are never duplicates")
		}
	}
	var none *recentIDs
	for range 2 {
		if !none.reserve("u", "e1") {
			t.Fatal("a nil set deduplicates nothing")
		}
	}
	// Bounded: after many more ids the first ones are forgotten, the
	// latest half of the capacity is still remembered.
	for i := range 10_000 {
		r.reserve("w", fmt.Sprint(i))
	}
	if !r.reserve("u", "e2") {
		t.Fatal("an old pair must be forgotten once the set turned over")
	}
	kept := 0
	for i := 10_000 - 1600; i < 10_000; i++ {
		if !r.reserve("w", fmt.Sprint(i)) {
			kept++
		}
	}
	if kept < 1400 {
		t.Fatalf("only %d of the latest 1600 ids remembered", kept)
	}
	total := 0
	for i := range r.shards {
		total += len(r.shards[i].cur) + len(r.shards[i].prev)
	}
	if total > 3200 {
		t.Fatalf("%d ids held, capacity 3200", total)
	}
}

func TestRecentIDsConcurrent(t *testing.T) {
	r := newRecentIDs(100_000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := map[string]int{}
	for range 8 {
		wg.Go(func() {
			for i := range 1000 {
				id := fmt.Sprint(i)
				if r.reserve("u", id) {
					mu.Lock()
					won[id]++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for id, n := range won {
		if n != 1 {
			t.Fatalf("id %s reserved %d times", id, n)
		}
	}
	if len(won) != 1000 {
		t.Fatalf("%d ids reserved, want 1000", len(won))
	}
}
