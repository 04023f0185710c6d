// Package embedded provides what `make run` needs on a fresh machine: an
// in-process Redis-protocol store and a replay of real sessions (NASA Kennedy
// Space Center, July 1995) into Kafka, so the whole pipeline runs with nothing
// installed. The in-process Kafka-protocol broker lives in internal/broker.
package embedded

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"

	"github.com/alicebob/miniredis/v2"
)

// nasaSessions is the NASA July 1995 access log split into sessions, in SPMF
// form; see data/README.md for its provenance.
//
//go:embed data/nasa-jul95.spmf.gz
var nasaSessions []byte

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

// NASASessions returns the bundled sessions, each a list of page ids in visit
// order. Page id N is the page "/page/N".
func NASASessions() ([][]int, error) {
	zr, err := gzip.NewReader(bytes.NewReader(nasaSessions))
	if err != nil {
		return nil, fmt.Errorf("open bundled sessions: %w", err)
	}
	defer zr.Close()
	return ReadSPMF(zr)
}

// ReadSPMF parses sessions in SPMF form: one session per line, items separated
// by -1 and the line ended by -2. Blank lines are skipped.
func ReadSPMF(r io.Reader) ([][]int, error) {
	var out [][]int
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		var s []int
		for _, f := range fields {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("spmf line %d: %w", line, err)
			}
			if n == -1 || n == -2 {
				continue
			}
			if n < 0 {
				return nil, fmt.Errorf("spmf line %d: negative item %d", line, n)
			}
			s = append(s, n)
		}
		if len(s) > 0 {
			out = append(out, s)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read spmf: %w", err)
	}
	return out, nil
}

// PageKey is the canonical page key of a numeric page id in the research datasets.
func PageKey(id int) string { return "/page/" + strconv.Itoa(id) }

// bundledModel is the model `make run` serves: a first-order Markov model
// trained on the bundled NASA July 1995 sessions (see model/manifest.json).
//
//go:embed model/model.onnx model/vocab.txt model/manifest.json
var bundledModel embed.FS

// Model returns the bundled model bundle as a file system and the folder
// inside it, for model.LoadBundleFS.
func Model() (fs.FS, string) { return bundledModel, "model" }
