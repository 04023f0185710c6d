package features

import "sync"

// tracker follows, per partition, the offsets handed to workers in fetch
// order and which of them are done, so that only an offset whose message and
// all earlier ones of its partition are done gets committed. It also holds
// the per-partition watermark (highest offset fetched) that absorbs
// redeliveries after a rebalance.
type tracker struct {
	mu    sync.Mutex
	parts map[int]*partTrack
	// doneSinceCommit counts messages done since the last commit.
	doneSinceCommit int
}

type partTrack struct {
	base      int64 // sequence number of q[head]
	q         []trackEntry
	head      int   // q[:head] is done and dropped
	maxSeen   int64 // highest offset fetched, -1 before the first
	ready     int64 // highest offset with it and everything before done, -1 when none
	committed int64 // highest offset committed, -1 when none
	hwm       int64 // high-water mark reported by the last fetch
}

type trackEntry struct {
	offset int64
	done   bool
}

func newTracker() *tracker { return &tracker{parts: make(map[int]*partTrack)} }

func (t *tracker) part(p int) *partTrack {
	pt := t.parts[p]
	if pt == nil {
		pt = &partTrack{maxSeen: -1, ready: -1, committed: -1}
		t.parts[p] = pt
	}
	return pt
}

// add registers a fetched message and returns its sequence number, or
// dup=true when the offset is at or below the partition's watermark (a
// redelivery of a message this consumer already took; it is not tracked).
func (t *tracker) add(partition int, offset, hwm int64) (seq int64, dup bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(partition)
	if hwm > pt.hwm {
		pt.hwm = hwm
	}
	if offset <= pt.maxSeen {
		return 0, true
	}
	// Offsets skipped while nothing is in flight were never delivered to this
	// consumer in this assignment (processed elsewhere, or not data): they
	// count as done. The first fetch of a partition starts at its committed
	// offset.
	if pt.head == len(pt.q) && offset-1 > pt.ready {
		pt.ready = offset - 1
	}
	if pt.maxSeen < 0 {
		pt.committed = offset - 1
	}
	pt.maxSeen = offset
	pt.q = append(pt.q, trackEntry{offset: offset})
	return pt.base + int64(len(pt.q)-pt.head) - 1, false
}

// done marks a message finished and returns how many messages are done since
// the last commit.
func (t *tracker) done(partition int, seq int64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.parts[partition]
	if pt == nil || seq < pt.base || seq-pt.base >= int64(len(pt.q)-pt.head) {
		return t.doneSinceCommit
	}
	pt.q[pt.head+int(seq-pt.base)].done = true
	start := pt.head
	for pt.head < len(pt.q) && pt.q[pt.head].done {
		pt.ready = pt.q[pt.head].offset
		pt.head++
	}
	pt.base += int64(pt.head - start)
	switch {
	case pt.head == len(pt.q):
		// Everything done: reuse the array from its start.
		pt.q, pt.head = pt.q[:0], 0
	case pt.head > 1024 && pt.head > len(pt.q)/2:
		// Mostly done: move the pending tail to the front.
		n := copy(pt.q, pt.q[pt.head:])
		pt.q, pt.head = pt.q[:n], 0
	}
	t.doneSinceCommit++
	return t.doneSinceCommit
}

// commitOffset is a committable position: the last done message's offset.
type commitOffset struct {
	partition int
	offset    int64
}

// pending appends to dst the partitions whose ready offset is past the
// committed one.
func (t *tracker) pending(dst []commitOffset) []commitOffset {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, pt := range t.parts {
		if pt.ready > pt.committed {
			dst = append(dst, commitOffset{partition: p, offset: pt.ready})
		}
	}
	return dst
}

// committed records a successful commit.
func (t *tracker) committed(offsets []commitOffset) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range offsets {
		if pt := t.parts[o.partition]; pt != nil && o.offset > pt.committed {
			pt.committed = o.offset
		}
	}
	t.doneSinceCommit = 0
}

// lag is the number of messages below the high-water marks that are not done.
func (t *tracker) lag() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, pt := range t.parts {
		if l := pt.hwm - pt.ready - 1; l > 0 {
			n += l
		}
	}
	return n
}
