package features

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"
)

// FormatVersion is the version of the event wire format in EVENTS.md that
// this package decodes.
const FormatVersion = 1

// Event is one decoded and validated click.
type Event struct {
	// UserID identifies the user; never empty.
	UserID string
	// Page is the page as sent by the producer (not yet canonicalized); never empty.
	Page string
	// TS is the time of the click.
	TS time.Time
	// SessionID, Referrer and EventID are optional and may be empty.
	SessionID string
	Referrer  string
	EventID   string
}

// Reasons a message is rejected, used as the reason label of
// prefetchd_ingest_rejected_total and as the reason header of dead letters.
const (
	ReasonEmpty         = "empty"           // zero-length value (e.g. a tombstone)
	ReasonTooLarge      = "too_large"       // message above MaxMessageBytes
	ReasonUTF8          = "utf8"            // not valid UTF-8
	ReasonJSON          = "json"            // not a JSON object of the documented field types
	ReasonMissingUserID = "missing_user_id" // user_id absent or empty
	ReasonMissingPage   = "missing_page"    // page absent or empty
	ReasonMissingTS     = "missing_ts"      // ts absent or empty
	ReasonUserIDTooLong = "user_id_too_long"
	ReasonPageTooLong   = "page_too_long"
	ReasonFieldTooLong  = "field_too_long" // session_id, event_id or referrer too long
	ReasonBadTS         = "bad_ts"         // ts not RFC 3339
	ReasonTSSkew        = "ts_skew"        // ts further than MaxSkew from now
	// ReasonModel: the handler's model cannot score the event (a failure
	// that retrying would repeat).
	ReasonModel = "model"
	// ReasonHandler: the handler refused a well-formed event for another
	// reason.
	ReasonHandler = "handler"
)

// ErrRejected is wrapped by every *RejectError, so that callers can test for
// a rejected event with errors.Is without caring about the reason.
var ErrRejected = errors.New("event rejected")

// RejectError says why a message was rejected. Reason is one of the Reason
// constants; Detail is a human-readable elaboration.
type RejectError struct {
	Reason string
	Detail string
}

// Error implements error.
func (e *RejectError) Error() string {
	if e.Detail == "" {
		return "event rejected: " + e.Reason
	}
	return "event rejected: " + e.Reason + ": " + e.Detail
}

// Unwrap returns ErrRejected.
func (e *RejectError) Unwrap() error { return ErrRejected }

func reject(reason, detail string) error { return &RejectError{Reason: reason, Detail: detail} }

// Default limits of DecoderConfig.
const (
	DefaultMaxUserIDBytes  = 256
	DefaultMaxPageBytes    = 2 << 10
	DefaultMaxMessageBytes = 64 << 10
	DefaultMaxFieldBytes   = 256
	DefaultMaxSkew         = 24 * time.Hour
)

// DecoderConfig sets the validation limits. Zero fields take the defaults.
type DecoderConfig struct {
	// MaxUserIDBytes bounds user_id. Default 256.
	MaxUserIDBytes int
	// MaxPageBytes bounds page and referrer. Default 2 KiB.
	MaxPageBytes int
	// MaxFieldBytes bounds session_id and event_id. Default 256.
	MaxFieldBytes int
	// MaxMessageBytes bounds the whole message. Default 64 KiB.
	MaxMessageBytes int
	// MaxSkew is how far ts may lie from the decoding time, in either
	// direction. Default 24 h; a negative value disables the check (replays
	// of old logs).
	MaxSkew time.Duration
}

// Validate reports a configuration error.
func (c DecoderConfig) Validate() error {
	switch {
	case c.MaxUserIDBytes < 0:
		return fmt.Errorf("decoder max user id bytes %d is negative", c.MaxUserIDBytes)
	case c.MaxPageBytes < 0:
		return fmt.Errorf("decoder max page bytes %d is negative", c.MaxPageBytes)
	case c.MaxFieldBytes < 0:
		return fmt.Errorf("decoder max field bytes %d is negative", c.MaxFieldBytes)
	case c.MaxMessageBytes < 0:
		return fmt.Errorf("decoder max message bytes %d is negative", c.MaxMessageBytes)
	}
	return nil
}

func (c DecoderConfig) withDefaults() DecoderConfig {
	if c.MaxUserIDBytes == 0 {
		c.MaxUserIDBytes = DefaultMaxUserIDBytes
	}
	if c.MaxPageBytes == 0 {
		c.MaxPageBytes = DefaultMaxPageBytes
	}
	if c.MaxFieldBytes == 0 {
		c.MaxFieldBytes = DefaultMaxFieldBytes
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxSkew == 0 {
		c.MaxSkew = DefaultMaxSkew
	}
	return c
}

// Decoder turns wire messages into validated Events. It is immutable and safe
// for concurrent use.
type Decoder struct {
	cfg DecoderConfig
}

// NewDecoder validates cfg and returns a Decoder with defaults applied.
func NewDecoder(cfg DecoderConfig) (*Decoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Decoder{cfg: cfg.withDefaults()}, nil
}

// Config returns the configuration in effect, defaults applied.
func (d *Decoder) Config() DecoderConfig { return d.cfg }

// wireEvent is the JSON shape of format v1.
type wireEvent struct {
	UserID    string `json:"user_id"`
	Page      string `json:"page"`
	TS        string `json:"ts"`
	SessionID string `json:"session_id,omitempty"`
	Referrer  string `json:"referrer,omitempty"`
	EventID   string `json:"event_id,omitempty"`
}

// Decode parses and validates one message. now is the reference time for the
// skew check; a zero now skips it. Every failure is a *RejectError (which
// wraps ErrRejected); Decode never panics, whatever the input.
func (d *Decoder) Decode(data []byte, now time.Time) (Event, error) {
	return d.decode(data, now, false)
}

// decode is Decode; with alias the event's strings share data's memory
// instead of a copy, for callers that own data and never modify it.
func (d *Decoder) decode(data []byte, now time.Time, alias bool) (Event, error) {
	return d.decodeParsed(data, now, alias, parsed{})
}

// decodeParsed is decode reusing p, data's fields already read by parse
// (with the same alias), when p.done.
func (d *Decoder) decodeParsed(data []byte, now time.Time, alias bool, p parsed) (Event, error) {
	c := &d.cfg
	switch {
	case len(data) == 0:
		return Event{}, reject(ReasonEmpty, "")
	case len(data) > c.MaxMessageBytes:
		return Event{}, reject(ReasonTooLarge, fmt.Sprintf("%d bytes, limit %d", len(data), c.MaxMessageBytes))
	case !utf8.Valid(data):
		return Event{}, reject(ReasonUTF8, "")
	}
	if !p.done {
		p = d.parse(data, alias)
	}
	if p.err != nil {
		return Event{}, reject(ReasonJSON, p.err.Error())
	}
	w := p.w
	switch {
	case w.UserID == "":
		return Event{}, reject(ReasonMissingUserID, "")
	case w.Page == "":
		return Event{}, reject(ReasonMissingPage, "")
	case w.TS == "":
		return Event{}, reject(ReasonMissingTS, "")
	case len(w.UserID) > c.MaxUserIDBytes:
		return Event{}, reject(ReasonUserIDTooLong, fmt.Sprintf("%d bytes, limit %d", len(w.UserID), c.MaxUserIDBytes))
	case len(w.Page) > c.MaxPageBytes:
		return Event{}, reject(ReasonPageTooLong, fmt.Sprintf("%d bytes, limit %d", len(w.Page), c.MaxPageBytes))
	case len(w.Referrer) > c.MaxPageBytes:
		return Event{}, reject(ReasonFieldTooLong, fmt.Sprintf("referrer %d bytes, limit %d", len(w.Referrer), c.MaxPageBytes))
	case len(w.SessionID) > c.MaxFieldBytes:
		return Event{}, reject(ReasonFieldTooLong, fmt.Sprintf("session_id %d bytes, limit %d", len(w.SessionID), c.MaxFieldBytes))
	case len(w.EventID) > c.MaxFieldBytes:
		return Event{}, reject(ReasonFieldTooLong, fmt.Sprintf("event_id %d bytes, limit %d", len(w.EventID), c.MaxFieldBytes))
	}
	ts, err := ParseTS(w.TS)
	if err != nil {
		return Event{}, reject(ReasonBadTS, fmt.Sprintf("%q is not RFC 3339", truncate(w.TS, 64)))
	}
	if c.MaxSkew > 0 && !now.IsZero() {
		if d := ts.Sub(now); d > c.MaxSkew || d < -c.MaxSkew {
			return Event{}, reject(ReasonTSSkew, fmt.Sprintf("ts %s is %s from now, limit %s", w.TS, d.Round(time.Second), c.MaxSkew))
		}
	}
	return Event{
		UserID:    w.UserID,
		Page:      w.Page,
		TS:        ts,
		SessionID: w.SessionID,
		Referrer:  w.Referrer,
		EventID:   w.EventID,
	}, nil
}

// Encode writes ev in the v1 wire format (ts in RFC 3339 with nanoseconds,
// UTC). It is the inverse of Decode for valid events; producers and tests use it.
func Encode(ev Event) ([]byte, error) {
	b, err := json.Marshal(wireEvent{
		UserID:    ev.UserID,
		Page:      ev.Page,
		TS:        ev.TS.UTC().Format(time.RFC3339Nano),
		SessionID: ev.SessionID,
		Referrer:  ev.Referrer,
		EventID:   ev.EventID,
	})
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return b, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// decodeSlow parses with encoding/json (kept apart so that only this path
// moves the event to the heap).
// parsed is an event value's fields as parse read them, or why it could
// not.
type parsed struct {
	w    wireEvent
	err  error // encoding/json's: the value is not an event object
	done bool  // parse ran (not for an empty or oversized value)
}

// parse reads data's fields as decode does (the fast path, else
// encoding/json), with alias sharing data's memory. The consumer's fetch
// loop parses once to route a message by its user id, and its worker
// decodes from that parse.
func (d *Decoder) parse(data []byte, alias bool) parsed {
	if len(data) == 0 || len(data) > d.cfg.MaxMessageBytes {
		return parsed{} // decode rejects it before reading it
	}
	if w, ok := decodeFast(data, alias); ok {
		return parsed{w: w, done: true}
	}
	w, err := decodeSlow(data)
	return parsed{w: w, err: err, done: true}
}

func decodeSlow(data []byte) (wireEvent, error) {
	var w wireEvent
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		// encoding/json reads null into a struct as nothing at all; it
		// is not an event object.
		return w, errors.New("null is not a JSON object")
	}
	err := json.Unmarshal(data, &w)
	return w, err
}

// decodeFast parses the common shape of an event without encoding/json: one
// object whose keys are exactly the documented field names and whose values
// are strings without escapes or null. It allocates one string for the whole
// message (or, with alias, shares data's memory) and slices the fields from
// it. Anything else (escapes, other keys
// or value types, malformed input) returns ok=false, and the caller falls
// back to encoding/json, so that both paths accept and reject exactly the
// same messages (FuzzDecode checks this).
func decodeFast(data []byte, alias bool) (w wireEvent, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return w, false
	}
	var msg string // allocated on the first string value
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return w, skipSpace(data, i+1) == len(data)
	}
	for {
		// Key.
		if i >= len(data) || data[i] != '"' {
			return w, false
		}
		ks := i + 1
		ke := plainStringEnd(data, ks)
		if ke < 0 {
			return w, false
		}
		var field *string
		switch string(data[ks:ke]) { // no allocation for a switch on a conversion
		case "user_id":
			field = &w.UserID
		case "page":
			field = &w.Page
		case "ts":
			field = &w.TS
		case "session_id":
			field = &w.SessionID
		case "referrer":
			field = &w.Referrer
		case "event_id":
			field = &w.EventID
		default:
			return w, false
		}
		i = skipSpace(data, ke+1)
		if i >= len(data) || data[i] != ':' {
			return w, false
		}
		i = skipSpace(data, i+1)
		// Value: a plain string or null.
		switch {
		case i < len(data) && data[i] == '"':
			vs := i + 1
			ve := plainStringEnd(data, vs)
			if ve < 0 {
				return w, false
			}
			if msg == "" {
				if alias {
					msg = unsafe.String(unsafe.SliceData(data), len(data))
				} else {
					msg = string(data)
				}
			}
			*field = msg[vs:ve]
			i = ve + 1
		case len(data)-i >= 4 && string(data[i:i+4]) == "null":
			i += 4
		default:
			return w, false
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return w, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return w, skipSpace(data, i+1) == len(data)
		default:
			return w, false
		}
	}
}

// plainStringEnd returns the index of the closing quote of a JSON string
// starting at i (after the opening quote), or -1 when the string has an
// escape or a control character or does not end.
func plainStringEnd(data []byte, i int) int {
	for ; i < len(data); i++ {
		switch c := data[i]; {
		case c == '"':
			return i
		case c == '\\' || c < 0x20:
			return -1
		}
	}
	return -1
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// ParseTS parses an event's ts as the decoder does: RFC 3339 with an
// optional fraction and any offset, "t" and "z" in either case (RFC 3339
// section 5.6). Tools that read events (training, the command-line client)
// use it so that they accept what the service accepts.
func ParseTS(s string) (time.Time, error) {
	if ts, ok := parseTSFast(s); ok {
		return ts, nil
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil && strings.ContainsAny(s, "tz") {
		// time.Parse wants "T" and "Z". When that fails too, the error
		// quotes the value as given, not as rewritten.
		if upper, err2 := time.Parse(time.RFC3339Nano, strings.NewReplacer("t", "T", "z", "Z").Replace(s)); err2 == nil {
			return upper, nil
		}
	}
	return ts, err
}

// parseTSFast parses the common UTC form of RFC 3339,
// "YYYY-MM-DDTHH:MM:SS[.fraction]Z", faster than time.Parse. Any other form
// returns ok=false and the caller uses time.Parse; on the forms it accepts
// it returns what time.Parse returns (FuzzParseTS checks this).
func parseTSFast(s string) (t time.Time, ok bool) {
	if len(s) < 20 || len(s) > 30 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[len(s)-1] != 'Z' {
		return t, false
	}
	// Two digits at i; bad is the largest digit value (a byte below '0' wraps).
	var bad byte
	two := func(i int) int {
		a, b := s[i]-'0', s[i+1]-'0'
		bad = max(bad, a, b)
		return int(a)*10 + int(b)
	}
	year := two(0)*100 + two(2)
	month, day := two(5), two(8)
	hour, minute, sec := two(11), two(14), two(17)
	if bad > 9 || month < 1 || month > 12 || day < 1 || day > daysIn(time.Month(month), year) ||
		hour > 23 || minute > 59 || sec > 59 {
		return t, false
	}
	nsec := 0
	if frac := s[19 : len(s)-1]; frac != "" {
		if frac[0] != '.' || len(frac) < 2 {
			return t, false
		}
		digits := frac[1:] // at most 9: len(s) <= 30
		for _, c := range []byte(digits) {
			c -= '0'
			if c > 9 {
				return t, false
			}
			nsec = nsec*10 + int(c)
		}
		nsec *= pow10[9-len(digits)]
	}
	return time.Unix(unixDays(year, month, day)*86400+int64(hour*3600+minute*60+sec), int64(nsec)).UTC(), true
}

var pow10 = [10]int{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// unixDays is the number of days from 1970-01-01 to the given date of the
// proleptic Gregorian calendar (year 0 to 9999).
func unixDays(year, month, day int) int64 {
	y := year
	if month <= 2 {
		y--
	}
	era := (y + 400) / 400 // y >= -1: shift so that the division floors
	era--
	yoe := y - era*400                        // [0, 399]
	doy := (153*((month+9)%12)+2)/5 + day - 1 // day of the year from March 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy    // [0, 146096]
	return int64(era)*146097 + int64(doe) - 719468
}

func daysIn(m time.Month, year int) int {
	if m == time.February {
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	}
	return 31 - int((m-1)%7%2)
}
