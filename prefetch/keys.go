package prefetch

// keyTable is the Warmer's memory of its keys: which are queued or being
// written (in flight) and until when each key it wrote stays warm. Expiries
// come in nearly the order keys are written (one TTL, a wall clock), so a
// ring in write order finds the expired and the oldest keys. It holds at
// most max written keys plus the keys in flight, which the queue bounds.
// Not safe for concurrent use.
type keyTable struct {
	max     int
	state   map[string]int64 // key -> expiry in Unix nanoseconds, or inFlight
	ring    []ringEntry      // written keys in write order; an entry is stale once state disagrees
	head    int
	written int // entries in state that are not in flight
}

type ringEntry struct {
	key string
	at  int64
}

// inFlight marks a key queued or being written.
const inFlight = int64(-1)

func newKeyTable(max int) *keyTable {
	return &keyTable{max: max, state: make(map[string]int64)}
}

// lookup returns the key's expiry (0 when unknown) and whether it is in flight.
func (t *keyTable) lookup(key string) (expires int64, flying bool) {
	v, ok := t.state[key]
	if !ok {
		return 0, false
	}
	if v == inFlight {
		return 0, true
	}
	return v, false
}

// start marks key in flight.
func (t *keyTable) start(key string) {
	if v, ok := t.state[key]; ok && v != inFlight {
		t.written--
	}
	t.state[key] = inFlight
}

// abort forgets a key in flight that was not written.
func (t *keyTable) abort(key string) {
	if v, ok := t.state[key]; ok && v == inFlight {
		delete(t.state, key)
	}
}

// done records that key, which is in flight, is warm until at (Unix
// nanoseconds).
func (t *keyTable) done(key string, at int64) {
	t.written++
	t.state[key] = at
	t.ring = append(t.ring, ringEntry{key: key, at: at})
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
	if v, found := t.state[e.key]; found && v == e.at {
		delete(t.state, e.key)
		t.written--
	}
	t.ring[t.head] = ringEntry{}
	t.head++
	if t.head == len(t.ring) {
		t.ring, t.head = t.ring[:0], 0
	} else if t.head > 1024 && t.head > len(t.ring)/2 {
		n := copy(t.ring, t.ring[t.head:])
		clear(t.ring[n:])
		t.ring, t.head = t.ring[:n], 0
	}
	return true
}

// Len is the number of written keys remembered.
func (t *keyTable) Len() int { return t.written }

// flying is the number of keys in flight.
func (t *keyTable) flying() int { return len(t.state) - t.written }
