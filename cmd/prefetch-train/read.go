package main

import (
	"fmt"
	"os"
	"time"

	"github.com/prefetchd/prefetchd/training"
)

type readOptions struct {
	collapse bool
	gap      time.Duration
}

func readSessions(path, format string, opt readOptions) ([]training.Session, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var sessions []training.Session
	switch format {
	case "spmf":
		sessions, err = training.ReadSPMF(f)
	default:
		return nil, fmt.Errorf("unknown format %q (want jsonl, msnbc or spmf)", format)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if opt.collapse {
		sessions = training.CollapseRepeats(sessions)
	}
	return sessions, nil
}
