package features

import (
	"context"
	"errors"
	"time"
)

// ErrDuplicate is returned by Store.Append when the click's Kafka position is
// not after the last position applied to the user's record: a redelivery that
// must not be applied twice. The record is still filled in.
var ErrDuplicate = errors.New("duplicate click")

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
	// Partition and Offset locate the event in Kafka. Offset < 0 means the
	// click has no position (gRPC Ingest) and is never a duplicate.
	Partition int32
	Offset    int64
}

// Record is a user's stored history.
type Record struct {
	// Pages are the current session's page indices, oldest first, at most MaxLen.
	Pages []int32
	// State is the model's opaque recurrent state; empty when none. A new
	// session clears it.
	State []float32
	// Epoch is the vocabulary epoch of the indices in Pages (and of State).
	Epoch uint32
	// Last is the event time of the latest click.
	Last time.Time
	// Partition and Offset are the Kafka position of the latest click applied
	// with a position; Offset is -1 when there is none.
	Partition int32
	Offset    int64
}

// Store keeps bounded per-user histories. Implementations are safe for
// concurrent use; callers keep the clicks of one user in order (the Consumer
// does, by routing a user to one worker).
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
	// position in the same partition is not applied: Append fills rec and
	// returns ErrDuplicate.
	Append(ctx context.Context, user string, c Click, rec *Record) error
	// Get appends user's current-session pages, oldest first, to dst[:0]. An
	// unknown or evicted user has an empty history and no error.
	Get(ctx context.Context, user string, dst []int32) ([]int32, error)
	// Load fills rec with user's record and reports whether it exists.
	Load(ctx context.Context, user string, rec *Record) (bool, error)
	// Save replaces user's record with rec (Pages cut to the newest MaxLen).
	Save(ctx context.Context, user string, rec *Record) error
}

// BatchStore is a Store that also applies the clicks, or saves the records,
// of several distinct users in one round trip (RedisStore pipelines them).
// Row i has the effect of the single call on users[i], and errs[i] (len(errs)
// == len(users)) is its result; rows are independent, so a failing row does
// not stop the others.
type BatchStore interface {
	Store
	// AppendMany is Append for every row: clicks[i] to users[i], the result
	// in recs[i].
	AppendMany(ctx context.Context, users []string, clicks []Click, recs []Record, errs []error)
	// SaveMany is Save for every row: recs[i] as users[i]'s record.
	SaveMany(ctx context.Context, users []string, recs []*Record, errs []error)
}

// StoreBackend names a Store implementation in configuration.
const (
	BackendMemory = "memory"
	BackendRedis  = "redis"
)

// applyClick is the shared Append logic on a record held by a store.
// It reports false when c is a duplicate.
func applyClick(r *Record, c Click, maxLen int, gap time.Duration, exists bool) bool {
	if exists && c.Offset >= 0 && r.Offset >= 0 && r.Partition == c.Partition && c.Offset <= r.Offset {
		return false
	}
	if !exists || (gap > 0 && c.TS.Sub(r.Last) > gap) {
		r.Pages = r.Pages[:0]
		r.State = r.State[:0]
		r.Epoch = c.Epoch
		if !exists {
			r.Offset = -1
		}
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
		r.Partition, r.Offset = c.Partition, c.Offset
	}
	return true
}
