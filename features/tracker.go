package features

import "sync"

// tracker follows, per partition, the offsets handed to workers in fetch
// order and which of them are done, so that only an offset whose message and
// all earlier ones of its partition are done gets committed. It also holds
// the per-partition watermark (highest offset fetched) that absorbs
// redeliveries after a rebalance.
type tracker struct {
	mu sync.Mutex
	// parts holds partitions 0..len-1 (Kafka numbers them densely from 0);
	// far holds any other (not expected; kept correct anyway).
	parts []*partTrack
	far   map[int]*partTrack
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

// maxDensePartition bounds the partitions held in tracker.parts.
const maxDensePartition = 1 << 16

func newTracker() *tracker { return &tracker{far: make(map[int]*partTrack)} }

// lookup returns the partition's state or nil.
func (t *tracker) lookup(p int) *partTrack {
	if p >= 0 && p < len(t.parts) {
		return t.parts[p]
	}
	return t.far[p]
}

func (t *tracker) part(p int) *partTrack {
	if pt := t.lookup(p); pt != nil {
		return pt
	}
	pt := &partTrack{maxSeen: -1, ready: -1, committed: -1}
	if p >= 0 && p < maxDensePartition {
		for len(t.parts) <= p {
			t.parts = append(t.parts, nil)
		}
		t.parts[p] = pt
	} else {
		t.far[p] = pt
	}
	return pt
}

// each calls f for every partition.
func (t *tracker) each(f func(p int, pt *partTrack)) {
	for p, pt := range t.parts {
		if pt != nil {
			f(p, pt)
		}
	}
	for p, pt := range t.far {
		f(p, pt)
	}
}

// add registers a fetched message and returns its sequence number, or
// dup=true when the offset is at or below the partition's watermark (a
// redelivery of a message this consumer already took; it is not tracked).
func (t *tracker) add(partition int, offset, hwm int64) (seq int64, dup bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(partition)
	// A fetched message is below the high-water mark whatever the fetch
	// reported (a response may carry none), so the lag counts it until done.
	if hwm = max(hwm, offset+1); hwm > pt.hwm {
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
	t.doneLocked(partition, seq)
	return t.doneSinceCommit
}

func (t *tracker) doneLocked(partition int, seq int64) {
	pt := t.lookup(partition)
	if pt == nil || seq < pt.base || seq-pt.base >= int64(len(pt.q)-pt.head) {
		return
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
}

// partSeq is a message handed out by add: its partition and sequence number.
type partSeq struct {
	partition int
	seq       int64
}

// doneMany is done for several messages under one lock; it returns how many
// messages are done since the last commit.
func (t *tracker) doneMany(msgs []partSeq) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range msgs {
		t.doneLocked(m.partition, m.seq)
	}
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
	t.each(func(p int, pt *partTrack) {
		if pt.ready > pt.committed {
			dst = append(dst, commitOffset{partition: p, offset: pt.ready})
		}
	})
	return dst
}

// committed records a successful commit.
func (t *tracker) committed(offsets []commitOffset) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range offsets {
		if pt := t.lookup(o.partition); pt != nil && o.offset > pt.committed {
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
	t.each(func(_ int, pt *partTrack) {
		if l := pt.hwm - pt.ready - 1; l > 0 {
			n += l
		}
	})
	return n
}
