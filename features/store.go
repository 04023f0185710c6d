package features

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrDuplicate is returned by Store.Append when the click's Kafka position is
// not after the last position applied to the user's record: a redelivery that
// must not be applied twice. The record is still filled in.
var ErrDuplicate = errors.New("duplicate click")

// ErrUnsettled is returned by Store.Append for a redelivery of the record's
// latest positioned click whose effect is not settled (Record.StateSeq !=
// Record.Seq): an earlier attempt appended it and stopped before saving the
// state. The click is not appended again; the record is filled in, and the
// caller finishes the click (state, Save with StateSeq = Seq) without
// counting it again. It wraps ErrDuplicate, so a caller that keeps no state
// may treat it as one.
var ErrUnsettled = fmt.Errorf("unsettled click: %w", ErrDuplicate)

// ErrStale is returned by Store.Save when the stored record has moved on
// since rec was read (its Seq differs: another writer appended a click in
// between). Nothing is written; the newer click's state is rebuilt from the
// history when it is saved.
var ErrStale = errors.New("stale record")

// Click is one page view to append to a user's history.
type Click struct {
	// Page is the page's index in the model vocabulary of epoch Epoch.
	Page int32
	// TS is the event time; a gap above SessionGap since the previous click
	// starts a new session.
	TS time.Time
	// Epoch tags the vocabulary Page belongs to. It becomes the record's epoch
	// when the click starts a new record or a new session.
	Epoch uint32
	// Partition, Gen and Offset locate the event in Kafka: Gen is the
	// partition's generation (Meta.Gen). Offset < 0 means the click has no
	// position (gRPC Ingest) and is never a duplicate.
	Partition int32
	Gen       uint32
	Offset    int64
}

// Record is a user's stored history.
type Record struct {
	// Pages are the current session's page indices, oldest first, at most MaxLen.
	Pages []int32
	// State is the model's opaque recurrent state after click StateSeq;
	// empty when none. A new session clears it.
	State []float32
	// Epoch is the vocabulary epoch of the indices in Pages (and of State).
	Epoch uint32
	// Last is the event time of the latest click.
	Last time.Time
	// Partition, Gen and Offset are the Kafka position of the latest click
	// applied with a position; Offset is -1 when there is none.
	Partition int32
	Gen       uint32
	Offset    int64
	// Prior are the positions of the latest clicks applied from other
	// partitions, newest first, at most MaxPrior: a user's clicks move to
	// another partition when partitions are added to the topic, and a click
	// redelivered from the former one must still be told a duplicate.
	Prior []Position
	// Seq counts the clicks applied to the record (Append adds one, modulo
	// 2^32). StateSeq is the Seq of the click that State covers: the caller
	// stamps it when it saves a state. StateSeq == Seq means the latest
	// click is settled; after Append, State is usable for the new click only
	// when StateSeq == Seq-1, and is rebuilt from Pages otherwise. A record
	// stored before stamps existed reads as Seq 1, StateSeq 0 (state unknown).
	Seq      uint32
	StateSeq uint32
}

// Position is where a click was in Kafka: partition, the partition's
// generation and offset.
type Position struct {
	Partition int32
	Gen       uint32
	Offset    int64
}

// MaxPrior bounds Record.Prior.
const MaxPrior = 3

// Store keeps bounded per-user histories. Implementations are safe for
// concurrent use; callers keep the clicks of one user in order (the Consumer
// does, by routing a user to one worker).
//
// A click's effect is Append (history, position, Seq) and, for a model with
// recurrent state, a Save of the new state stamped StateSeq = Seq. Retrying
// after any prefix of that work converges: a redelivery of the latest click
// finds it in the history and gets ErrUnsettled until the stamped Save is
// done, ErrDuplicate after. Without a state nothing stamps a click, so a
// redelivery of the latest click always gets ErrUnsettled.
//
// Remapping after a vocabulary change: each record carries the Epoch of its
// indices. Append stores Click.Page as given and only sets the record's epoch
// when it starts a new record or session; so when Append returns a record whose
// Epoch differs from Click.Epoch, every page but the last belongs to the old
// vocabulary. The caller remaps them (and drops or converts State), sets
// Epoch, and calls Save.
type Store interface {
	// Append applies c to user's record and fills rec with the result (reusing
	// rec's slices). A click whose position is not after the record's
	// position in the same partition and generation is not applied: Append
	// fills rec and returns ErrUnsettled when it is the record's latest
	// click and unsettled, ErrDuplicate otherwise. A click of another
	// generation is applied whatever its offset.
	Append(ctx context.Context, user string, c Click, rec *Record) error
	// Get appends user's current-session pages, oldest first, to dst[:0]. An
	// unknown or evicted user has an empty history and no error.
	Get(ctx context.Context, user string, dst []int32) ([]int32, error)
	// Load fills rec with user's record and reports whether it exists.
	Load(ctx context.Context, user string, rec *Record) (bool, error)
	// Save replaces user's record with rec (Pages cut to the newest MaxLen),
	// stamps included, unless the stored record's Seq differs from rec.Seq
	// (ErrStale). A missing record, or one written before stamps, is
	// replaced.
	Save(ctx context.Context, user string, rec *Record) error
}

// BatchRow is one user's row of a BatchStore call.
type BatchRow struct {
	// User is whose record the row concerns.
	User string
	// Click is what AppendMany applies; SaveMany ignores it.
	Click Click
	// Rec is filled by AppendMany (reusing its slices) and saved by SaveMany.
	Rec Record
	// Err is the row's result: what the single call would return.
	Err error
}

// BatchStore is a Store that also applies the clicks, or saves the records,
// of several distinct users in one round trip (RedisStore pipelines them).
// Each row has the effect of the single call on its user; rows are
// independent, so a failing row does not stop the others.
type BatchStore interface {
	Store
	// AppendMany is Append for every row: row.Click to row.User, the
	// result in row.Rec and row.Err.
	AppendMany(ctx context.Context, rows []*BatchRow)
	// SaveMany is Save for every row: row.Rec as row.User's record, the
	// result in row.Err.
	SaveMany(ctx context.Context, rows []*BatchRow)
}

// Foresight is a BatchStore that can tell without a round trip what
// Append will most likely make of a click, so that a caller can act on it
// (predict, warm) while the round trip is under way and check it against
// the record Append returns. RedisStore implements it from the records its
// own Appends returned.
type Foresight interface {
	BatchStore
	// Foresee fills rec with the record Append(user, c) would return if
	// nobody else has written user's record since this process last read
	// or wrote it, and reports whether it could: false when it holds no
	// record of user, or the click would not be applied (a redelivery).
	Foresee(user string, c Click, rec *Record) bool
}

// StoreBackend names a Store implementation in configuration.
const (
	BackendMemory = "memory"
	BackendRedis  = "redis"
)

// appendOutcome is what applyClick did with a click.
type appendOutcome int

const (
	clickApplied appendOutcome = iota
	clickDuplicate
	clickUnsettled
)

// err is the Append error of the outcome.
func (o appendOutcome) err() error {
	switch o {
	case clickDuplicate:
		return ErrDuplicate
	case clickUnsettled:
		return ErrUnsettled
	}
	return nil
}

// applyClick is the shared Append logic on a record held by a store (the
// Redis script mirrors it).
func applyClick(r *Record, c Click, maxLen int, gap time.Duration, exists bool) appendOutcome {
	if exists && c.Offset >= 0 && r.Offset >= 0 && r.Partition == c.Partition && r.Gen == c.Gen && c.Offset <= r.Offset {
		if c.Offset == r.Offset && r.StateSeq != r.Seq {
			return clickUnsettled
		}
		return clickDuplicate
	}
	if exists && c.Offset >= 0 {
		for _, p := range r.Prior {
			if p.Partition == c.Partition && p.Gen == c.Gen && c.Offset <= p.Offset {
				return clickDuplicate // applied before the user moved on
			}
		}
	}
	if !exists {
		r.Offset, r.Seq, r.StateSeq = -1, 0, 0
		r.Prior = r.Prior[:0]
	}
	if !exists || (gap > 0 && c.TS.Sub(r.Last) > gap) {
		r.Pages = r.Pages[:0]
		r.State = r.State[:0]
		r.Epoch = c.Epoch
	}
	if len(r.Pages) >= maxLen {
		n := copy(r.Pages, r.Pages[len(r.Pages)-maxLen+1:])
		r.Pages = r.Pages[:n]
	}
	r.Pages = append(r.Pages, c.Page)
	if c.TS.After(r.Last) || !exists {
		r.Last = c.TS
	}
	if c.Offset >= 0 {
		if r.Offset >= 0 && r.Partition != c.Partition {
			r.Prior = pushPrior(r.Prior, Position{r.Partition, r.Gen, r.Offset}, c.Partition)
		}
		r.Partition, r.Gen, r.Offset = c.Partition, c.Gen, c.Offset
	}
	r.Seq++
	return clickApplied
}

// pushPrior puts old (the position a user leaves) first in prior, drops the
// entries of old's partition and of the partition the user moves to (now
// the record's own position), and keeps MaxPrior. It reuses prior.
func pushPrior(prior []Position, old Position, to int32) []Position {
	prior = slices.DeleteFunc(prior, func(p Position) bool { return p.Partition == old.Partition || p.Partition == to })
	prior = slices.Insert(prior, 0, old)
	return prior[:min(len(prior), MaxPrior)]
}
