package prefetch

// keyTable is the Warmer's memory of its keys: which are queued or being
// written (in flight) and until when each key it wrote stays warm. Keys live
// in slots so that a page in flight carries its slot and the writer updates
// it without hashing the key again. Expiries come in nearly the order keys
// are written (one TTL, a wall clock), so a ring in write order finds the
// expired and the oldest keys. It holds at most max written keys plus the
// keys in flight, which the queue bounds. Not safe for concurrent use.
type keyTable struct {
	max     int
	index   map[string]int32 // key -> slot
	slots   []keySlot
	free    []int32
	ring    []ringEntry // written slots in write order; stale once the slot changed
	head    int
	written int // slots written and not in flight
}

type keySlot struct {
	key    string
	at     int64  // expiry in Unix nanoseconds, or inFlight
	landed int64  // when Redis acknowledged our write, Unix nanoseconds; 0: unknown
	gen    uint32 // bumped when the slot is released
}

type ringEntry struct {
	slot int32
	gen  uint32
	at   int64
}

// inFlight marks a key queued or being written.
const inFlight = int64(-1)

// noSlot is lookup's answer for an unknown key.
const noSlot = int32(-1)

func newKeyTable(max int) *keyTable {
	return &keyTable{max: max, index: make(map[string]int32)}
}

// lookup returns key's slot (noSlot when unknown), its expiry (0 when
// unknown or in flight) and whether it is in flight.
func (t *keyTable) lookup(key string) (slot int32, expires int64, flying bool) {
	i, ok := t.index[key]
	return t.state(i, ok)
}

// lookupBytes is lookup for the key spelled by b, without allocating.
func (t *keyTable) lookupBytes(b []byte) (slot int32, expires int64, flying bool) {
	i, ok := t.index[string(b)]
	return t.state(i, ok)
}

// state is lookup's answer for slot i, found or not.
func (t *keyTable) state(i int32, found bool) (slot int32, expires int64, flying bool) {
	if !found {
		return noSlot, 0, false
	}
	if at := t.slots[i].at; at != inFlight {
		return i, at, false
	}
	return i, 0, true
}

// lateFor reports whether a click at clicked (Unix nanoseconds) on the key
// spelled by b came before its write landed: the key is in flight, or
// Redis acknowledged it after clicked. It does not allocate.
func (t *keyTable) lateFor(b []byte, clicked int64) bool {
	i, ok := t.index[string(b)]
	return ok && (t.slots[i].at == inFlight || t.slots[i].landed > clicked)
}

// start marks key in flight and returns its slot; slot is what lookup
// returned for key.
func (t *keyTable) start(key string, slot int32) int32 {
	if slot != noSlot {
		s := &t.slots[slot]
		if s.at != inFlight {
			t.written--
		}
		s.at = inFlight
		return slot
	}
	slot = takeSlot(&t.slots, &t.free)
	t.slots[slot].key, t.slots[slot].at = key, inFlight
	t.index[key] = slot
	return slot
}

// abort forgets a key in flight that was not written.
func (t *keyTable) abort(slot int32) {
	if t.slots[slot].at == inFlight {
		t.release(slot)
	}
}

// done records that the key in flight in slot is warm until at (Unix
// nanoseconds), written at landed (0: not by us, or unknown), forgetting
// the oldest keys beyond max.
func (t *keyTable) done(slot int32, at, landed int64) {
	s := &t.slots[slot]
	s.at, s.landed = at, landed
	t.written++
	t.ring = append(t.ring, ringEntry{slot: slot, gen: s.gen, at: at})
	for t.written > t.max && t.pop(func(int64) bool { return true }) {
	}
}

// expire forgets the keys expired at now (Unix nanoseconds).
func (t *keyTable) expire(now int64) {
	for t.pop(func(at int64) bool { return at <= now }) {
	}
}

// pop removes the oldest ring entry if ok accepts its expiry, forgetting its
// key unless a later write or a new flight superseded it. It reports
// whether it removed an entry.
func (t *keyTable) pop(ok func(at int64) bool) bool {
	if t.head == len(t.ring) || !ok(t.ring[t.head].at) {
		return false
	}
	e := t.ring[t.head]
	if s := &t.slots[e.slot]; s.gen == e.gen && s.at == e.at {
		t.written--
		t.release(e.slot)
	}
	t.ring[t.head] = ringEntry{}
	t.head++
	if t.head == len(t.ring) {
		t.ring, t.head = t.ring[:0], 0
	} else if t.head > 1024 && t.head > len(t.ring)/2 {
		n := copy(t.ring, t.ring[t.head:])
		t.ring, t.head = t.ring[:n], 0
	}
	return true
}

// release frees a slot and forgets its key.
func (t *keyTable) release(slot int32) {
	s := &t.slots[slot]
	delete(t.index, s.key)
	s.key, s.at, s.landed = "", 0, 0
	s.gen++
	t.free = append(t.free, slot)
}

// Len is the number of written keys remembered.
func (t *keyTable) Len() int { return t.written }

// flying is the number of keys in flight.
func (t *keyTable) flying() int { return len(t.index) - t.written }

// forgetWritten forgets every written key, keeping the keys in flight: after
// Redis comes back it may have lost them.
func (t *keyTable) forgetWritten() {
	for i := range t.slots {
		if s := &t.slots[i]; s.key != "" && s.at != inFlight {
			t.release(int32(i))
		}
	}
	clear(t.ring)
	t.ring, t.head, t.written = t.ring[:0], 0, 0
}
