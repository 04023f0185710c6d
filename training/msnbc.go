package training

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReadMSNBC reads the UCI MSNBC.com anonymous web data (.seq, gzipped or
// not): a text header, then after the line "% Sequences:" one session per
// non-empty line of space-separated category ids. Category N becomes the key
// PageKey(N). Windows line endings are accepted.
func ReadMSNBC(r io.Reader) ([]Session, error) {
	in, err := maybeGunzip(r)
	if err != nil {
		return nil, err
	}
	sc := lineScanner(in)
	var out []Session
	body := false
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if !body {
			if strings.HasPrefix(text, "% Sequences:") {
				body = true
			}
			continue
		}
		if text == "" {
			continue
		}
		fields := strings.Fields(text)
		pages := make([]string, 0, len(fields))
		for _, tok := range fields {
			id, err := strconv.Atoi(tok)
			if err != nil || id < 0 {
				return nil, fmt.Errorf("%w: msnbc line %d: token %q is not a category id", ErrFormat, line, tok)
			}
			pages = append(pages, PageKey(id))
		}
		out = append(out, Session{Pages: pages})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read msnbc: %w", err)
	}
	if !body {
		return nil, fmt.Errorf("%w: msnbc: no %q line", ErrFormat, "% Sequences:")
	}
	return out, nil
}
