// Package lifecycle keeps the live model of prefetchd: it watches a versioned
// model repository (<repo>/<name>/<version>/), validates each new version
// before it may serve (load, contract, golden cases, warm-up), swaps it in
// atomically, keeps the last few versions loaded for rollback, and rolls a
// new version back on its own when its live prefetch precision is poor.
//
// It sits between model/ (which loads and runs one bundle) and the engine
// (which asks Current for the live model on every prediction). Readers never
// lock: Current is one atomic load, and a swap never makes a request fail or
// wait. See README.md in this folder for the repository layout, the publish
// protocol, validation and rollback rules, and the metrics.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/model"
)

// Model is a loaded bundle as the lifecycle sees it. *model.Bundle
// satisfies it; tests may use their own. Implementations must be immutable
// and safe for concurrent use.
type Model interface {
	// Predict returns probabilities [batch][vocab] for ragged histories of
	// page indices.
	Predict(ctx context.Context, histories [][]int64) ([][]float32, error)
	// Manifest describes the bundle; callers must not modify it.
	Manifest() *model.Manifest
	// Vocab maps page keys to the indices Predict takes and returns.
	Vocab() *model.Vocab
}

// Loader loads the bundle in folder dir. It returns an error for a missing,
// truncated, corrupt or contract-breaking bundle; it should not panic, though
// the Manager recovers if it does.
type Loader func(ctx context.Context, dir string) (Model, error)

// LoadBundle is the Loader for real bundles: model.LoadBundle, which parses
// the ONNX graphs, checks them against the model contract and runs the
// manifest's golden cases. A folder without manifest.json (a bare export)
// gets the manifest model.LoadBundle derives, named after the repository's
// model folder and versioned by its own folder name, as the repository
// layout <repo>/<name>/<version>/ says. It does not observe ctx; the Manager
// bounds the rest of the validation with it.
func LoadBundle(_ context.Context, dir string) (Model, error) {
	b, err := model.LoadBundle(dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, model.ManifestFile)); errors.Is(err, fs.ErrNotExist) {
		m := b.Manifest()
		m.Version = filepath.Base(dir)
		m.Name = filepath.Base(filepath.Dir(dir))
	}
	return b, nil
}

// Live is the model serving right now. A Live is immutable: a swap publishes a
// new one, and readers holding the old one may finish with it.
type Live struct {
	// Version is the manifest version (the repository folder name).
	Version string
	// Model runs predictions.
	Model Model
	// Bundle is Model as a *model.Bundle (for PredictOne and the step form),
	// or nil when the Loader returned another Model.
	Bundle *model.Bundle
	// Manifest and Vocab are Model's.
	Manifest *model.Manifest
	Vocab    *model.Vocab
	// Epoch increments on every swap, rollbacks included, so a reader can
	// tell that state it derived from an earlier Live (recurrent states, for
	// one) is stale and must be recomputed.
	Epoch uint32
	// Tag identifies this version and its vocabulary alike in every
	// process: a hash of the version name and the vocabulary's pages, never
	// 0 (see VersionTag). Records written under a Live carry its Tag, so
	// that any replica, or this process after a restart, tells whether
	// their page indices and recurrent state belong to the live model.
	// Epoch, a counter of this process's swaps, cannot: epoch 1 is another
	// model in another process.
	Tag uint32
	// ActivatedAt is when this Live was published.
	ActivatedAt time.Time
}

// Refusal reasons, the values of the reason label of
// prefetchd_model_refused_total and of RefusedError.Reason.
const (
	ReasonLoad     = "load"     // the loader failed: missing, truncated or corrupt file
	ReasonManifest = "manifest" // manifest unreadable or not matching its folder
	ReasonVocab    = "vocab"    // vocabulary unreadable
	ReasonContract = "contract" // sizes, shapes or values break the model contract
	ReasonGolden   = "golden"   // a golden case is outside tolerance
	ReasonWarmup   = "warmup"   // a warm-up prediction failed
	ReasonPanic    = "panic"    // the loader or the model panicked
	ReasonTimeout  = "timeout"  // validation took longer than ValidateTimeout
)

// RefusedError says why a version failed validation. It matches
// hint.ErrRefused with errors.Is.
type RefusedError struct {
	Version string
	Reason  string // one of the Reason constants
	Err     error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("model version %s refused (%s): %v", e.Version, e.Reason, e.Err)
}

// Unwrap returns the underlying cause.
func (e *RefusedError) Unwrap() error { return e.Err }

// Is reports whether target is hint.ErrRefused.
func (e *RefusedError) Is(target error) bool { return target == hint.ErrRefused }

// Remap translates page indices of vocabulary from into those of vocabulary
// to, through the page keys, appending to dst[:0]. Padding stays padding;
// pages that to lacks become UnknownIndex. When from and to are the same
// vocabulary it copies.
func Remap(dst, ids []int64, from, to *model.Vocab) []int64 {
	dst = dst[:0]
	for _, id := range ids {
		switch {
		case from == to:
			dst = append(dst, id)
		case id == model.PadIndex:
			dst = append(dst, model.PadIndex)
		case id == model.UnknownIndex:
			dst = append(dst, model.UnknownIndex)
		default:
			if page := from.Page(id); page != "" {
				dst = append(dst, to.Index(page))
			} else {
				dst = append(dst, model.UnknownIndex)
			}
		}
	}
	return dst
}

// VersionTag is Live.Tag of version with vocabulary v: FNV-1a (32 bits)
// over the version name and every page of v in index order, each ended by
// a zero byte; 0 becomes 1, so that 0 stays "no tag".
func VersionTag(version string, v *model.Vocab) uint32 {
	h := fnv.New32a()
	var zero = []byte{0}
	_, _ = h.Write([]byte(version))
	_, _ = h.Write(zero)
	if v != nil {
		for i := range v.Len() {
			_, _ = io.WriteString(h, v.Page(int64(i)))
			_, _ = h.Write(zero)
		}
	}
	if t := h.Sum32(); t != 0 {
		return t
	}
	return 1
}
