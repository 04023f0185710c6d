package features

import (
	"sync"
	"time"
)

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
	seenAt    int64 // when maxSeen last grew (Unix ns, wall clock)
	ready     int64 // highest offset with it and everything before done, -1 when none
	committed int64 // highest offset committed, -1 when none
	// maxTS is the newest record timestamp (Unix ns) fetched in this
	// generation, or stored in the mark; 0 when unknown.
	maxTS int64
	gen   uint32
	// ours is the highest offset committed by this consumer (or stored in
	// the mark) in this generation, -1 when none; committed may also be
	// inferred from where the group started the partition.
	ours int64
	// markSaved is false while the partition's mark (generation) has
	// changed and is not yet stored.
	markSaved bool
	// rewound is set when the reader was replaced because this partition
	// went backwards under it, until its next record: till then its old
	// positions say nothing about the new log (snapshot leaves it out, so
	// that an empty recreated partition does not replace the reader again
	// at every lag read).
	rewound bool
	// redelivered is the highest offset known applied before a group
	// reset on an unchanged log (the committed offset the reset went back
	// from), -1 when none: the records up to it are redeliveries.
	redelivered int64
}

type trackEntry struct {
	offset int64
	ts     int64 // the message's timestamp, Unix ns
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

// known reports whether the partition's mark was given (init).
func (t *tracker) known(p int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lookup(p) != nil
}

// init starts tracking a partition from its stored mark.
func (t *tracker) init(p int, mk PartitionMark) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(p)
	pt.gen, pt.committed, pt.ours, pt.markSaved = mk.Gen, mk.Committed, mk.Committed, true
	if mk.MaxTime > 0 {
		pt.maxTS = mk.MaxTime * int64(time.Millisecond)
	}
}

func (t *tracker) part(p int) *partTrack {
	if pt := t.lookup(p); pt != nil {
		return pt
	}
	pt := &partTrack{maxSeen: -1, ready: -1, committed: -1, ours: -1, markSaved: true, redelivered: -1}
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

// added is what add tells of a fetched message.
type added struct {
	seq int64
	gen uint32
	// dup: the offset is at or below the partition's watermark, a
	// redelivery of a message this consumer already took (not tracked).
	dup bool
	// reset: the partition's log changed under its offsets (a topic
	// recreated, a partition truncated): the partition starts a new
	// generation with this message.
	reset bool
	// rewound: the group's offset went back on an unchanged log (a group
	// reset): the message is a redelivery; the generation stays.
	rewound bool
	// from is the committed offset and to the watermark before a reset.
	from, to int64
	// redelivery: the message is at or below the offset a group reset went
	// back from, on an unchanged log: it was applied before (a rejected one
	// was dead-lettered then).
	redelivery bool
}

// add registers a fetched message and returns its sequence number and
// generation, or tells it is a redelivery.
//
// A message at or below the offset committed in this generation means the
// offsets went backwards: the group restarts after its committed offset.
// Either the log changed (a topic recreated, a partition truncated) or the
// group's offsets were reset on the same log. The record tells which: a
// record newer than every record seen in this generation cannot be one of
// them again (a redelivery keeps its timestamp), nor can any record once the
// high-water mark fell to or below the watermark (the log lost its end);
// then the partition starts a new generation, what is in flight of the old
// one is forgotten (its completions no longer count), and the message is
// tracked as new. Otherwise (a group reset) the generation stays, so the
// stores take the records for the redeliveries they are, and the committed
// offset is lowered to the group's, to be committed forward again. A record
// without a timestamp, or a partition whose newest timestamp is unknown,
// counts as a changed log.
func (t *tracker) add(partition int, offset, hwm int64, ts time.Time) added {
	t.mu.Lock()
	defer t.mu.Unlock()
	pt := t.part(partition)
	pt.rewound = false
	var out added
	truncated := pt.maxSeen >= 0 && offset <= pt.maxSeen && hwm > 0 && hwm <= pt.maxSeen
	if offset <= pt.committed || truncated {
		tsn := ts.UnixNano()
		if truncated || ts.IsZero() || tsn <= 0 || pt.maxTS == 0 || tsn > pt.maxTS {
			out = pt.newGeneration()
		} else {
			out.rewound, out.from, out.to = true, pt.committed, pt.maxSeen
			pt.redelivered = max(pt.redelivered, pt.committed)
			pt.committed, pt.ours = offset-1, offset-1
		}
	}
	if tsn := ts.UnixNano(); tsn > pt.maxTS {
		pt.maxTS = tsn
	}
	out.gen = pt.gen
	out.redelivery = offset <= pt.redelivered
	if offset <= pt.maxSeen {
		out.dup = true
		return out
	}
	// Offsets skipped while nothing is in flight were never delivered to this
	// consumer in this assignment (processed elsewhere, or not data): they
	// count as done. The first fetch of a partition starts at its committed
	// offset.
	if pt.head == len(pt.q) && offset-1 > pt.ready {
		pt.ready = offset - 1
	}
	if pt.maxSeen < 0 {
		pt.committed = max(pt.committed, offset-1)
	}
	pt.maxSeen, pt.seenAt = offset, time.Now().UnixNano()
	pt.q = append(pt.q, trackEntry{offset: offset, ts: ts.UnixNano()})
	out.seq = pt.base + int64(len(pt.q)-pt.head) - 1
	return out
}

// newGeneration starts the partition's next generation: what is in flight
// is forgotten (its completions no longer count), nothing is committed or
// fetched in it yet.
func (pt *partTrack) newGeneration() added {
	out := added{reset: true, from: pt.committed, to: pt.maxSeen}
	pt.gen++
	out.gen = pt.gen
	pt.markSaved = false
	pt.base += int64(len(pt.q) - pt.head)
	pt.q, pt.head = pt.q[:0], 0
	pt.maxSeen, pt.ready, pt.committed, pt.ours, pt.maxTS, pt.redelivered = -1, -1, -1, -1, 0, -1
	return out
}

// position is what a partition's reader has reached: the highest offset
// this consumer committed and the highest it fetched, -1 when none.
type position struct {
	committed, fetched int64
	// seenAt is when fetched last grew (wall clock).
	seenAt time.Time
}

// snapshot returns every partition's position.
func (t *tracker) snapshot() map[int]position {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int]position)
	t.each(func(p int, pt *partTrack) {
		if pt.maxSeen >= 0 && !pt.rewound { // partitions this process has read, in the log it reads now
			out[p] = position{committed: pt.ours, fetched: pt.maxSeen, seenAt: time.Unix(0, pt.seenAt)}
		}
	})
	return out
}

// rewind marks parts as gone backwards under a reader that is being
// replaced: snapshot leaves them out until their next record.
func (t *tracker) rewind(parts []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range parts {
		if pt := t.lookup(p); pt != nil {
			pt.rewound = true
		}
	}
}

// marks returns the marks of partitions whose generation changed or whose
// committed offset moved, for storing.
func (t *tracker) marks(dst map[int]PartitionMark, onlyUnsaved bool) map[int]PartitionMark {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.each(func(p int, pt *partTrack) {
		if !onlyUnsaved || !pt.markSaved {
			dst[p] = PartitionMark{Gen: pt.gen, Committed: pt.committed, MaxTime: pt.maxTS / int64(time.Millisecond)}
		}
	})
	return dst
}

// marksSaved records that the given marks are stored.
func (t *tracker) marksSaved(marks map[int]PartitionMark) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, mk := range marks {
		if pt := t.lookup(p); pt != nil && pt.gen == mk.Gen {
			pt.markSaved = true
		}
	}
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

// commitOffset is a committable position: the last done message's offset,
// in generation gen.
type commitOffset struct {
	partition int
	offset    int64
	gen       uint32
}

// pending appends to dst the partitions whose ready offset is past the
// committed one.
func (t *tracker) pending(dst []commitOffset) []commitOffset {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.each(func(p int, pt *partTrack) {
		// A rewound partition's positions are of a log that may be gone
		// (a broker replaced empty): committed into the new one, they
		// would skip its records. They wait for its next record.
		if pt.ready > pt.committed && !pt.rewound {
			dst = append(dst, commitOffset{partition: p, offset: pt.ready, gen: pt.gen})
		}
	})
	return dst
}

// assigned takes the group's committed offsets (the next to read, negative
// when none) of partitions just assigned to this consumer: a partition
// whose offset is below what this consumer committed there went backwards
// under it (its log replaced, or the group reset), and is held as rewound
// until its next record tells which.
func (t *tracker) assigned(next map[int]int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, off := range next {
		if pt := t.lookup(p); pt != nil && pt.committed >= 0 && off < pt.committed+1 {
			pt.rewound = true
		}
	}
}

// committed records a successful commit.
func (t *tracker) committed(offsets []commitOffset) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range offsets {
		if pt := t.lookup(o.partition); pt != nil && pt.gen == o.gen && o.offset > pt.committed {
			pt.committed = o.offset
			pt.ours = o.offset
		}
	}
	t.doneSinceCommit = 0
}

// oldest returns the timestamp of the oldest message fetched and not done,
// and false when none is in flight.
// fetchedUpTo is the highest offset of partition p fetched, -1 before
// the first.
func (t *tracker) fetchedUpTo(p int) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if pt := t.lookup(p); pt != nil {
		return pt.maxSeen
	}
	return -1
}

func (t *tracker) oldest() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var min int64
	found := false
	t.each(func(_ int, pt *partTrack) {
		for i := pt.head; i < len(pt.q); i++ {
			if !pt.q[i].done {
				if !found || pt.q[i].ts < min {
					min, found = pt.q[i].ts, true
				}
				break
			}
		}
	})
	return time.Unix(0, min), found
}
