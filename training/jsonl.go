package training

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/prefetchd/prefetchd/features"
)

// Canonicalizer maps a raw page (URL or path) to its vocabulary key; the
// trainer must use the service's own configuration
// (*features.Canonicalizer satisfies this interface).
type Canonicalizer interface {
	Canonical(page string) string
}

// DefaultSessionGap is the inactivity that ends a session.
const DefaultSessionGap = 30 * time.Minute

// JSONLConfig sets how click events become sessions.
type JSONLConfig struct {
	// Gap is the inactivity after which a user's next click starts a new
	// session. Default DefaultSessionGap.
	Gap time.Duration
	// Canonicalizer maps pages to keys; nil keeps pages as they are, with
	// surrounding white space trimmed.
	Canonicalizer Canonicalizer
}

// Validate checks the configuration.
func (c JSONLConfig) Validate() error {
	if c.Gap < 0 {
		return fmt.Errorf("session gap %s is negative", c.Gap)
	}
	return nil
}

// ClickEvent is one click of the service's event format.
type ClickEvent struct {
	UserID string
	Page   string
	TS     time.Time
	// EventID is the producer's event id, or "".
	EventID string
}

// JSONLStats counts what ReadJSONL read.
type JSONLStats struct {
	Lines   int `json:"lines"`
	Events  int `json:"events"`
	Skipped int `json:"skipped"` // malformed lines, as the service skips them
	// Duplicates are events whose (user_id, event_id) came earlier in the
	// input, dropped as the service drops a producer's repeat.
	Duplicates int `json:"duplicates"`
	// Unsettled counts the records of Kafka transactions still open when
	// the read started (after a partition's last stable offset): not read,
	// as their transaction may yet abort. Always 0 for JSONL.
	Unsettled int64 `json:"unsettled,omitempty"`
}

// ReadJSONL reads the service's click events, one JSON object
// {"user_id", "page", "ts" (RFC 3339)} per line, gzipped or not, and cuts
// them into sessions (see Sessionize). Malformed lines are skipped and
// counted, as the service's consumer does; only a read error fails.
func ReadJSONL(r io.Reader, cfg JSONLConfig) ([]Session, JSONLStats, error) {
	var st JSONLStats
	if err := cfg.Validate(); err != nil {
		return nil, st, err
	}
	in, err := maybeGunzip(r)
	if err != nil {
		return nil, st, err
	}
	sc := lineScanner(in)
	var events []ClickEvent
	n := 0 // lines read, blank ones too
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		st.Lines++
		e, ok := decodeClick([]byte(line))
		if !ok {
			st.Skipped++
			continue
		}
		events = append(events, e)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, st, fmt.Errorf("read jsonl: line %d is longer than %d bytes (no click is that long: is this JSON Lines?)", n+1, maxLineBytes)
		}
		return nil, st, fmt.Errorf("read jsonl at line %d: %w", n+1, err)
	}
	events, st.Duplicates = dropRepeats(events)
	st.Events = len(events)
	return Sessionize(events, cfg), st, nil
}

// serviceDecoder decodes events as the service's consumer does, with its
// default limits; the time-skew check is left out (logs are read later).
var serviceDecoder = func() *features.Decoder {
	d, err := features.NewDecoder(features.DecoderConfig{})
	if err != nil {
		panic(err) // the zero config is valid
	}
	return d
}()

// decodeClick decodes one event of the service's format with the service's
// decoder, so that the trainer learns from the events the service applies;
// ok is false for one the service rejects.
func decodeClick(data []byte) (e ClickEvent, ok bool) {
	ev, err := serviceDecoder.Decode(data, time.Time{})
	if err != nil {
		return e, false
	}
	return ClickEvent{UserID: ev.UserID, Page: ev.Page, TS: ev.TS, EventID: ev.EventID}, true
}

// dropRepeats removes the events whose non-empty (user_id, event_id) an
// earlier event of events carried, and returns how many it removed.
func dropRepeats(events []ClickEvent) ([]ClickEvent, int) {
	seen := make(map[[2]string]struct{})
	out := events[:0]
	for _, e := range events {
		if e.EventID != "" {
			k := [2]string{e.UserID, e.EventID}
			if _, dup := seen[k]; dup {
				continue
			}
			seen[k] = struct{}{}
		}
		out = append(out, e)
	}
	return out, len(events) - len(out)
}

// Sessionize groups events by user, orders each user's clicks by time (a
// stable sort keeps the log order of equal times), canonicalizes pages and
// starts a new session after an inactivity longer than cfg.Gap. Sessions
// come out ordered by start time, then user, so that the last ones are the
// latest.
func Sessionize(events []ClickEvent, cfg JSONLConfig) []Session {
	gap := cfg.Gap
	if gap == 0 {
		gap = DefaultSessionGap
	}
	canon := func(p string) string { return strings.TrimSpace(p) }
	if cfg.Canonicalizer != nil {
		canon = cfg.Canonicalizer.Canonical
	}
	byUser := make(map[string][]ClickEvent)
	var users []string
	for _, e := range events {
		if _, ok := byUser[e.UserID]; !ok {
			users = append(users, e.UserID)
		}
		byUser[e.UserID] = append(byUser[e.UserID], e)
	}
	var out []Session
	for _, u := range users {
		evs := byUser[u]
		slices.SortStableFunc(evs, func(a, b ClickEvent) int { return a.TS.Compare(b.TS) })
		var cur *Session
		var last time.Time
		for _, e := range evs {
			if cur == nil || e.TS.Sub(last) > gap {
				out = append(out, Session{User: u, Start: e.TS})
				cur = &out[len(out)-1]
			}
			cur.Pages = append(cur.Pages, canon(e.Page))
			last = e.TS
		}
	}
	slices.SortStableFunc(out, func(a, b Session) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.User, b.User)
	})
	return out
}
