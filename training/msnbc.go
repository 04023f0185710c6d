package training

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReadMSNBC reads the UCI MSNBC.com anonymous web data (.seq, gzipped or
// not): a text header, then after the line "% Sequences:" one session per
// non-empty line of space-separated category ids, from 1 to the number of
// category names the header declares (when it does). Category N becomes the
// key PageKey(N). Windows line endings are accepted.
func ReadMSNBC(r io.Reader) ([]Session, error) {
	in, err := maybeGunzip(r)
	if err != nil {
		return nil, err
	}
	sc := lineScanner(in)
	var out []Session
	body := false
	// categories is the count the header declares (its line of names after
	// "% Different categories"), 0 when it declares none: ids run from 1.
	categories, names := 0, false
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if !body {
			switch {
			case strings.HasPrefix(text, "% Sequences:"):
				body = true
			case strings.HasPrefix(text, "% Different categories"):
				names = true
			case names && text != "" && !strings.HasPrefix(text, "%"):
				categories, names = len(strings.Fields(text)), false
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
			if err != nil || id < 1 {
				return nil, fmt.Errorf("%w: msnbc line %d: token %q is not a category id (they start at 1)", ErrFormat, line, tok)
			}
			if categories > 0 && id > categories {
				return nil, fmt.Errorf("%w: msnbc line %d: category %d, but the header declares %d", ErrFormat, line, id, categories)
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
