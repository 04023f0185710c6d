package training

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReadSPMF reads sessions in SPMF sequence format, gzipped or not: one
// session per line, page ids separated by -1 and the line ended by -2
// ("3 -1 4 -1 5 -1 -2"). Page id N becomes the key PageKey(N). Blank lines
// and lines starting with '#', '%' or '@' are skipped; an empty session is
// dropped.
func ReadSPMF(r io.Reader) ([]Session, error) {
	in, err := maybeGunzip(r)
	if err != nil {
		return nil, err
	}
	sc := lineScanner(in)
	var out []Session
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' || text[0] == '%' || text[0] == '@' {
			continue
		}
		var pages []string
		for _, tok := range strings.Fields(text) {
			id, err := strconv.Atoi(tok)
			if err != nil {
				return nil, fmt.Errorf("%w: spmf line %d: token %q is not an integer", ErrFormat, line, tok)
			}
			switch {
			case id == -1:
			case id == -2:
			case id < 0:
				return nil, fmt.Errorf("%w: spmf line %d: negative page id %d", ErrFormat, line, id)
			default:
				pages = append(pages, PageKey(id))
			}
		}
		if len(pages) > 0 {
			out = append(out, Session{Pages: pages})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read spmf: %w", err)
	}
	return out, nil
}
