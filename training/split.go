package training

import (
	"fmt"
	"math/rand/v2"
)

// SplitConfig chooses the held-out sessions.
type SplitConfig struct {
	// HoldoutFraction is the share of sessions held out for evaluation,
	// taken from the end of the input order (the latest sessions for logs
	// sorted by time). Default 0.2.
	HoldoutFraction float64
	// Shuffle permutes the sessions with Seed before the cut; off by
	// default so that the held-out set is the last sessions.
	Shuffle bool
	// Seed drives Shuffle.
	Seed uint64
}

// Validate checks the configuration.
func (c SplitConfig) Validate() error {
	if c.HoldoutFraction < 0 || c.HoldoutFraction >= 1 {
		return fmt.Errorf("holdout fraction %v outside [0, 1)", c.HoldoutFraction)
	}
	return nil
}

// Split returns the training sessions and the held-out sessions. It is
// deterministic: the same input and config always give the same split. A
// zero HoldoutFraction means the default of 0.2.
func Split[T any](items []T, cfg SplitConfig) (train, test []T, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	frac := cfg.HoldoutFraction
	if frac == 0 {
		frac = 0.2
	}
	items = append([]T(nil), items...)
	if cfg.Shuffle {
		rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
		rng.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
	}
	cut := len(items) - int(float64(len(items))*frac+0.5)
	return items[:cut], items[cut:], nil
}
