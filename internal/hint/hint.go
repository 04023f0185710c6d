// Package hint holds the types that pass between the gRPC layer
// (internal/server) and the engine that owns histories, the live model and the
// prefetcher (internal/engine), so that neither imports the other.
package hint

import (
	"context"
	"errors"
	"time"
)

// Errors the engine returns and the gRPC layer maps to status codes.
var (
	// ErrNoModel means no model is loaded yet (codes.Unavailable).
	ErrNoModel = errors.New("no model loaded")
	// ErrInvalid wraps a bad argument (codes.InvalidArgument).
	ErrInvalid = errors.New("invalid argument")
	// ErrUnknownVersion means a model version is not in the repository (codes.NotFound).
	ErrUnknownVersion = errors.New("unknown model version")
	// ErrRefused means a model version failed validation (codes.FailedPrecondition).
	ErrRefused = errors.New("model version refused")
	// ErrNoRollback means there is no earlier version to roll back to (codes.FailedPrecondition).
	ErrNoRollback = errors.New("no earlier version to roll back to")
	// ErrDuplicate means an ingested event was applied before (same user and
	// event id) and is not applied again; Ingest counts it, it is no error.
	ErrDuplicate = errors.New("event already applied")
)

// Query asks for the pages a user will need next.
type Query struct {
	// UserID selects the user's history; ignored when Pages is set.
	UserID string
	// Pages, when not empty, is an explicit recent history (oldest first) for
	// stateless callers.
	Pages []string
	// K is the maximum number of hints; 0 means the configured default.
	K int
	// Threshold is the minimum probability; negative means the configured default.
	Threshold float64
}

// Hint is one predicted page.
type Hint struct {
	Page        string
	Probability float32
	// Warm reports whether the prefetcher holds the page warm right now.
	Warm bool
}

// Result is the answer to a Query.
type Result struct {
	Hints        []Hint
	ModelVersion string
}

// Update is a fresh set of hints for a user, sent after one of their clicks.
type Update struct {
	UserID string
	Result Result
	At     time.Time
}

// Predictor answers hint queries.
type Predictor interface {
	// Predict returns at most K hints at or above the threshold, most probable
	// first. It returns ErrNoModel before a model is loaded.
	Predict(ctx context.Context, q Query) (Result, error)
}

// Watcher streams hints as clicks arrive.
type Watcher interface {
	// Subscribe delivers an Update for each click of the given users until
	// cancel is called. Updates are dropped, never blocked on, when the
	// subscriber falls behind.
	Subscribe(users []string, buffer int) (updates <-chan Update, cancel func())
}

// Presence tells which hinted pages are warm in the cache now. A Watcher
// that implements it has each update's warm flags filled in when it is
// sent (Update's own Warm flags are not set).
type Presence interface {
	// WarmNow reports, for each of hints, whether user's key for its page
	// is in the cache now (false when that cannot be told).
	WarmNow(ctx context.Context, user string, hints []Hint) []bool
}

// Ingester takes click events from callers without Kafka, on the same path as
// the Kafka consumer.
type Ingester interface {
	// IngestJSON decodes, validates and applies one event in the Kafka wire
	// format. A rejected event returns an error wrapping ErrInvalid, a
	// repeat of a recently applied (user_id, event_id) one wrapping
	// ErrDuplicate.
	IngestJSON(ctx context.Context, event []byte) error
}

// BatchIngester is an Ingester that also applies several events in one
// call, so that they can share model runs and store round trips.
type BatchIngester interface {
	Ingester
	// IngestJSONMany applies events, each user's in order, and sets errs[i]
	// (len(errs) >= len(events)) to event i's outcome: nil, or an error
	// wrapping ErrInvalid or ErrDuplicate. When an event fails otherwise it
	// returns the smallest such index, its error in errs, once every event
	// before it is settled; events after it may or may not be applied. It
	// returns len(events) when none failed so.
	IngestJSONMany(ctx context.Context, events [][]byte, errs []error) int
}

// VersionStatus describes one model version the service knows.
type VersionStatus struct {
	Name     string
	Version  string
	Loaded   bool
	Active   bool
	Refused  string // reason, when validation refused it
	LoadedAt time.Time
	// Figures from serving: requests, prefetches issued and used, precision.
	Requests  uint64
	Issued    uint64
	Used      uint64
	Precision float64
}

// ModelStatus is the state of the model repository.
type ModelStatus struct {
	Active   string
	Versions []VersionStatus
}

// Models administers model versions.
type Models interface {
	Status(ctx context.Context) (ModelStatus, error)
	// Activate validates and swaps to version; ErrUnknownVersion or ErrRefused.
	Activate(ctx context.Context, version string) error
	// Rollback returns to the previous active version and names it.
	Rollback(ctx context.Context) (string, error)
}
