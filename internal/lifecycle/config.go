package lifecycle

import (
	"github.com/prefetchd/prefetchd/model"

	"errors"
	"fmt"
	"time"
)

// Defaults applied by New to the zero fields of a Config.
const (
	DefaultName            = "default"
	DefaultKeep            = 3
	DefaultPollInterval    = 10 * time.Second
	DefaultDebounce        = 200 * time.Millisecond
	DefaultQuietPeriod     = 3 * time.Second
	DefaultTolerance       = 1e-5
	DefaultWarmup          = 3
	DefaultValidateTimeout = 60 * time.Second
	DefaultMinFraction     = 0.5
	DefaultWindow          = 10 * time.Minute
	DefaultMinIssued       = 200
)

// Config configures a Manager. Zero fields take the documented defaults.
type Config struct {
	// Repo is the model repository (--model-repo DIR). Versions live in
	// <Repo>/<Name>/<version>/. Required for New; Static needs none.
	Repo string
	// Name selects the model inside the repository (--model-name); default
	// "default".
	Name string
	// Keep is how many of the most recently active versions stay loaded in
	// memory, the active one included, so that Rollback to them is instant;
	// default 3. Older versions are released and reloaded (and revalidated)
	// from disk if a rollback reaches them.
	Keep int
	// PollInterval is the period of the polling fallback that rescans the
	// repository even when no file-system event arrived; default 10s.
	PollInterval time.Duration
	// Debounce is how long the watcher waits after the last file-system
	// event before it rescans; default 200ms.
	Debounce time.Duration
	// QuietPeriod is how long the files of a version folder without a
	// manifest.json (a bare export: model.onnx and vocab.txt) must stay
	// unchanged before the folder counts as complete and a manifest is
	// derived for it; default 3s, negative for none. Folders with a manifest
	// are complete as soon as every file it implies is there.
	QuietPeriod time.Duration
	// Tolerance is the maximum absolute error allowed on golden cases when
	// the manifest does not set its own; default 1e-5.
	Tolerance float64
	// Warmup is the number of warm-up predictions run on a candidate before
	// it may serve; default 3.
	Warmup int
	// ValidateTimeout bounds the validation of one version; default 60s.
	ValidateTimeout time.Duration
	// AutoRollback configures automatic rollback on poor live precision.
	AutoRollback AutoRollback
	// CheckVocab, when set, vets a version's vocabulary before it may
	// serve (the service: its keys are canonical under the service's
	// canonicalizer); an error refuses the version (reason vocab).
	CheckVocab func(*model.Vocab) error
}

// AutoRollback configures the automatic rollback of a new version whose live
// prefetch precision is poor compared with its predecessor's.
type AutoRollback struct {
	// Enabled turns the automatic rollback on.
	Enabled bool
	// MinFraction: a version is rolled back when its precision over Window
	// falls below MinFraction times its predecessor's; default 0.5, in (0, 1].
	MinFraction float64
	// Window is the sliding window over which precision is measured;
	// default 10m.
	Window time.Duration
	// MinIssued is the number of prefetches whose fate is known (used, or
	// expired unused) a version must have in the window (and its
	// predecessor before the swap) before precision is judged; default 200.
	MinIssued uint64
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Keep == 0 {
		c.Keep = DefaultKeep
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.QuietPeriod == 0 {
		c.QuietPeriod = DefaultQuietPeriod
	}
	if c.Debounce == 0 {
		c.Debounce = DefaultDebounce
	}
	if c.Tolerance == 0 {
		c.Tolerance = DefaultTolerance
	}
	if c.Warmup == 0 {
		c.Warmup = DefaultWarmup
	}
	if c.ValidateTimeout == 0 {
		c.ValidateTimeout = DefaultValidateTimeout
	}
	a := &c.AutoRollback
	if a.MinFraction == 0 {
		a.MinFraction = DefaultMinFraction
	}
	if a.Window == 0 {
		a.Window = DefaultWindow
	}
	if a.MinIssued == 0 {
		a.MinIssued = DefaultMinIssued
	}
	return c
}

// Validate reports every field that is out of range, after defaults. It
// does not require Repo; New does.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Keep < 1 {
		errs = append(errs, fmt.Errorf("keep %d below 1", c.Keep))
	}
	if c.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("poll interval %v is negative", c.PollInterval))
	}
	if c.Debounce < 0 {
		errs = append(errs, fmt.Errorf("debounce %v is negative", c.Debounce))
	}
	if c.Tolerance < 0 {
		errs = append(errs, fmt.Errorf("tolerance %g is negative", c.Tolerance))
	}
	if c.Warmup < 0 {
		errs = append(errs, fmt.Errorf("warmup %d is negative", c.Warmup))
	}
	if c.ValidateTimeout < 0 {
		errs = append(errs, fmt.Errorf("validate timeout %v is negative", c.ValidateTimeout))
	}
	if c.Name == "." || c.Name == ".." || containsSep(c.Name) {
		errs = append(errs, fmt.Errorf("model name %q is not a single folder name", c.Name))
	}
	a := c.AutoRollback
	if a.MinFraction <= 0 || a.MinFraction > 1 {
		errs = append(errs, fmt.Errorf("auto rollback min fraction %g outside (0, 1]", a.MinFraction))
	}
	if a.Window < 0 {
		errs = append(errs, fmt.Errorf("auto rollback window %v is negative", a.Window))
	}
	if len(errs) > 0 {
		return fmt.Errorf("lifecycle config: %w", errors.Join(errs...))
	}
	return nil
}

func containsSep(s string) bool {
	for _, r := range s {
		if r == '/' || r == '\\' {
			return true
		}
	}
	return false
}
