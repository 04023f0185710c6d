// Package nasa holds a real clickstream for replays, tests and benchmarks:
// the NASA Kennedy Space Center WWW server log of July 1995, split into
// sessions (see README.md for its provenance). It has no dependencies, so
// any package's tests may use it.
package nasa

import (
	"bufio"
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
)

// spmf is the sessions in SPMF form, gzipped: one session per line,
// "a -1 b -1 ... -2".
//
//go:embed jul95.spmf.gz
var spmf []byte

// Published counts of the data set.
const (
	NumSessions = 87749
	NumViews    = 569493
)

// SPMF returns the gzipped SPMF file, for readers of that format.
func SPMF() *bytes.Reader { return bytes.NewReader(spmf) }

// Sessions returns every session as page ids in visit order. Page ids are
// numbered by first appearance from 1; the replays map id N to "/page/N".
func Sessions() ([][]int, error) {
	zr, err := gzip.NewReader(SPMF())
	if err != nil {
		return nil, fmt.Errorf("nasa sessions: %w", err)
	}
	defer zr.Close()
	out := make([][]int, 0, NumSessions)
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var s []int
		for _, f := range strings.Fields(sc.Text()) {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("nasa sessions line %d: %w", line, err)
			}
			if n >= 0 {
				s = append(s, n)
			}
		}
		if len(s) > 0 {
			out = append(out, s)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("nasa sessions: %w", err)
	}
	return out, nil
}
