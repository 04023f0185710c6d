// Package embedded provides what `make run` needs on a fresh machine: an
// in-process Redis-protocol store and a replay of real sessions (NASA Kennedy
// Space Center, July 1995) into Kafka, so the whole pipeline runs with nothing
// installed. The in-process Kafka-protocol broker lives in internal/broker.
package embedded

import (
	"embed"
	"fmt"
	"io/fs"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/prefetchd/prefetchd/internal/nasa"
	"github.com/prefetchd/prefetchd/training"
)

// StartRedis starts an in-process Redis-protocol store on 127.0.0.1 whose
// TTLs follow the wall clock. Close it with Close.
func StartRedis() (*miniredis.Miniredis, error) {
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start in-process redis: %w", err)
	}
	return m, nil
}

// NASASessions returns the bundled sessions, each a list of page keys
// ("/page/N") in visit order.
func NASASessions() ([]training.Session, error) {
	s, err := training.ReadSPMF(nasa.SPMF())
	if err != nil {
		return nil, fmt.Errorf("bundled sessions: %w", err)
	}
	return s, nil
}

// NASAClick is one click of the bundled sessions; User names the session.
type NASAClick struct {
	User, Page string
	At         time.Time
}

// NASAClicks returns up to n clicks of the bundled sessions as a busy site
// sees them: users sessions side by side, one click of each in turn, a
// millisecond apart from start; a session that ends is followed by the
// next one.
func NASAClicks(users, n int, start time.Time) ([]NASAClick, error) {
	sessions, err := NASASessions()
	if err != nil {
		return nil, err
	}
	var clicks []NASAClick
	type cursor struct{ session, page int } // session -1: none yet
	open := make([]cursor, users)
	for u := range open {
		open[u].session = -1
	}
	next := 0
	for len(clicks) < n && next < len(sessions) {
		for u := range open {
			c := &open[u]
			for (c.session < 0 || c.page >= len(sessions[c.session].Pages)) && next < len(sessions) {
				*c = cursor{session: next}
				next++
			}
			if c.session < 0 {
				break
			}
			if pages := sessions[c.session].Pages; c.page < len(pages) && len(clicks) < n {
				start = start.Add(time.Millisecond)
				clicks = append(clicks, NASAClick{User: "user-" + strconv.Itoa(c.session), Page: pages[c.page], At: start})
				c.page++
			}
		}
	}
	return clicks, nil
}

// bundledModel is the model `make run` serves: a GRU (with its step form)
// trained on the bundled NASA July 1995 sessions (see model/manifest.json).
//
//go:embed model/model.onnx model/step.onnx model/vocab.txt model/manifest.json model/report.json model/report.txt model/recall.svg
var bundledModel embed.FS

// Model returns the bundled model bundle as a file system and the folder
// inside it, for model.LoadBundleFS.
func Model() (fs.FS, string) { return bundledModel, "model" }
