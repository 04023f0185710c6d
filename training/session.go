package training

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Session is one visit: canonical page keys in click order.
type Session struct {
	User  string    // empty for research formats that carry no user
	Start time.Time // zero for formats without timestamps
	Pages []string
}

// ErrFormat is returned (wrapped) when an input file breaks its format.
var ErrFormat = errors.New("bad input format")

// PageKey is the canonical key of an integer page id in the research
// datasets, which carry no URLs: id N becomes "/page/N".
func PageKey(id int) string { return "/page/" + strconv.Itoa(id) }

// maybeGunzip returns a reader that decompresses r when it starts with the
// gzip magic bytes and passes it through otherwise.
func maybeGunzip(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read input: %w", err)
	}
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("open gzip: %w", err)
		}
		return zr, nil
	}
	return br, nil
}

// maxLineBytes is the longest input line the readers take.
const maxLineBytes = 16 << 20

// lineScanner returns a scanner with room for long lines.
func lineScanner(r io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	return sc
}

// CollapseRepeats returns the sessions with back-to-back repeats of the
// same page merged into one view ("a a b a" becomes "a b a").
func CollapseRepeats(sessions []Session) []Session {
	out := make([]Session, len(sessions))
	for i, s := range sessions {
		pages := make([]string, 0, len(s.Pages))
		for j, p := range s.Pages {
			if j == 0 || p != s.Pages[j-1] {
				pages = append(pages, p)
			}
		}
		s.Pages = pages
		out[i] = s
	}
	return out
}
