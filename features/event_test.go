package features

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var testNow = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func TestDecode(t *testing.T) {
	dec, err := NewDecoder(DecoderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	long := func(n int) string { return strings.Repeat("x", n) }
	cases := []struct {
		name   string
		in     string
		reason string
		want   Event
	}{
		{name: "minimal", in: `{"user_id":"u1","page":"/a","ts":"2026-11-26T09:59:00Z"}`,
			want: Event{UserID: "u1", Page: "/a", TS: testNow.Add(-time.Minute)}},
		{name: "all fields and offset", in: `{"user_id":"u1","page":"/a","ts":"2026-11-26T11:00:00.5+01:00","session_id":"s","referrer":"/r","event_id":"e","extra":[1,2]}`,
			want: Event{UserID: "u1", Page: "/a", TS: testNow.Add(500 * time.Millisecond), SessionID: "s", Referrer: "/r", EventID: "e"}},
		{name: "empty", in: ``, reason: ReasonEmpty},
		{name: "not json", in: `{"user_id":`, reason: ReasonJSON},
		{name: "array", in: `[1]`, reason: ReasonJSON},
		{name: "numeric user", in: `{"user_id":7,"page":"/a","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonJSON},
		{name: "null", in: `null`, reason: ReasonJSON},
		{name: "null with spaces", in: " null \n", reason: ReasonJSON},
		{name: "number", in: `42`, reason: ReasonJSON},
		{name: "null user", in: `{"user_id":null,"page":"/a","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonMissingUserID},
		{name: "bad utf8", in: "{\"user_id\":\"\xff\",\"page\":\"/a\",\"ts\":\"2026-11-26T10:00:00Z\"}", reason: ReasonUTF8},
		{name: "missing user", in: `{"page":"/a","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonMissingUserID},
		{name: "missing page", in: `{"user_id":"u","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonMissingPage},
		{name: "missing ts", in: `{"user_id":"u","page":"/a"}`, reason: ReasonMissingTS},
		{name: "lower-case t and z (RFC 3339 5.6)", in: `{"user_id":"u1","page":"/a","ts":"2026-11-26t09:59:00z"}`,
			want: Event{UserID: "u1", Page: "/a", TS: testNow.Add(-time.Minute)}},
		{name: "bad ts", in: `{"user_id":"u","page":"/a","ts":"yesterday"}`, reason: ReasonBadTS},
		{name: "bad ts with a z", in: `{"user_id":"u","page":"/a","ts":"zzz"}`, reason: ReasonBadTS},
		{name: "unix ts", in: `{"user_id":"u","page":"/a","ts":"1764150000"}`, reason: ReasonBadTS},
		{name: "future", in: `{"user_id":"u","page":"/a","ts":"2026-11-27T10:00:01Z"}`, reason: ReasonTSSkew},
		{name: "past", in: `{"user_id":"u","page":"/a","ts":"1995-07-01T00:00:00Z"}`, reason: ReasonTSSkew},
		{name: "long user", in: `{"user_id":"` + long(257) + `","page":"/a","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonUserIDTooLong},
		{name: "user at limit", in: `{"user_id":"` + long(256) + `","page":"/a","ts":"2026-11-26T10:00:00Z"}`,
			want: Event{UserID: long(256), Page: "/a", TS: testNow}},
		{name: "long page", in: `{"user_id":"u","page":"` + long(2049) + `","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonPageTooLong},
		{name: "long referrer", in: `{"user_id":"u","page":"/a","referrer":"` + long(2049) + `","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonFieldTooLong},
		{name: "long event id", in: `{"user_id":"u","page":"/a","event_id":"` + long(257) + `","ts":"2026-11-26T10:00:00Z"}`, reason: ReasonFieldTooLong},
		{name: "too large", in: `{"user_id":"u","page":"/a","ts":"2026-11-26T10:00:00Z","pad":"` + long(64<<10) + `"}`, reason: ReasonTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dec.Decode([]byte(tc.in), testNow)
			if tc.reason != "" {
				var rej *RejectError
				if !errors.As(err, &rej) || rej.Reason != tc.reason {
					t.Fatalf("Decode error = %v, want reason %q", err, tc.reason)
				}
				if !errors.Is(err, ErrRejected) {
					t.Fatalf("error %v does not wrap ErrRejected", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !got.TS.Equal(tc.want.TS) {
				t.Fatalf("TS = %v, want %v", got.TS, tc.want.TS)
			}
			got.TS = tc.want.TS
			if got != tc.want {
				t.Fatalf("Decode = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeSkewConfig(t *testing.T) {
	old := []byte(`{"user_id":"u","page":"/a","ts":"1995-07-01T00:00:00Z"}`)
	off, _ := NewDecoder(DecoderConfig{MaxSkew: -1})
	if _, err := off.Decode(old, testNow); err != nil {
		t.Fatalf("skew check disabled, got %v", err)
	}
	tight, _ := NewDecoder(DecoderConfig{MaxSkew: time.Minute})
	if _, err := tight.Decode([]byte(`{"user_id":"u","page":"/a","ts":"2026-11-26T10:02:00Z"}`), testNow); err == nil {
		t.Fatal("ts 2 min ahead accepted with a 1 min skew")
	}
	if _, err := NewDecoder(DecoderConfig{MaxPageBytes: -1}); err == nil {
		t.Fatal("negative limit accepted")
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	dec, _ := NewDecoder(DecoderConfig{})
	ev := Event{UserID: "ü", Page: "/p?q=\"1\"", TS: testNow.Add(123 * time.Nanosecond), EventID: "e"}
	b, err := Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	got, err := dec.Decode(b, testNow)
	if err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if !got.TS.Equal(ev.TS) || got.UserID != ev.UserID || got.Page != ev.Page || got.EventID != ev.EventID {
		t.Fatalf("round trip %+v, want %+v", got, ev)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"user_id":"u1","page":"/a","ts":"2026-11-26T09:59:00Z"}`))
	f.Add([]byte(`{"user_id":"u1","page":"/a","ts":"2026-11-26T09:59:00.999999999-07:00","session_id":"s","referrer":"r","event_id":"e"}`))
	f.Add([]byte(`{"user_id":"","page":null,"ts":1}`))
	f.Add([]byte("{\"user_id\":\"\xc3\x28\"}"))
	f.Add([]byte(`[]`))
	dec, _ := NewDecoder(DecoderConfig{MaxUserIDBytes: 16, MaxPageBytes: 32, MaxMessageBytes: 512})
	f.Add([]byte(` { "user_id" : "u" , "page":"/p", "ts" : null, "ts":"2026-11-26T10:00:00Z" } `))
	f.Add([]byte(`{"user_id":"a\u0041","PAGE":"/p","ts":"2026-11-26T10:00:00Z"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if fast, ok := decodeFast(data, false); ok && utf8.Valid(data) { // Decode rejects invalid UTF-8 first
			var slow wireEvent
			if err := json.Unmarshal(data, &slow); err != nil || slow != fast {
				t.Fatalf("fast path %+v, encoding/json %+v, %v", fast, slow, err)
			}
		}
		ev, err := dec.Decode(data, testNow)
		// The consumer's path shares data's memory: same result.
		if aev, aerr := dec.decode(data, testNow, true); aev != ev || (aerr == nil) != (err == nil) {
			t.Fatalf("aliasing decode %+v, %v; Decode %+v, %v", aev, aerr, ev, err)
		}
		if err != nil {
			var rej *RejectError
			if !errors.As(err, &rej) || rej.Reason == "" {
				t.Fatalf("error %v is not a *RejectError with a reason", err)
			}
			return
		}
		switch {
		case ev.UserID == "" || len(ev.UserID) > 16:
			t.Fatalf("accepted user id %q", ev.UserID)
		case ev.Page == "" || len(ev.Page) > 32:
			t.Fatalf("accepted page %q", ev.Page)
		case !utf8.ValidString(ev.UserID) || !utf8.ValidString(ev.Page):
			t.Fatalf("accepted invalid UTF-8 %q %q", ev.UserID, ev.Page)
		case ev.TS.Sub(testNow) > DefaultMaxSkew || testNow.Sub(ev.TS) > DefaultMaxSkew:
			t.Fatalf("accepted ts %v", ev.TS)
		case len(data) > 512:
			t.Fatalf("accepted %d bytes", len(data))
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	dec, _ := NewDecoder(DecoderConfig{})
	msg := []byte(`{"user_id":"user-123456","page":"/page/1234","ts":"2026-11-26T09:59:00.123Z","session_id":"s-1"}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := dec.Decode(msg, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWorkerRouting is the fetch loop's cost per message of choosing
// a worker by user id (parse, then the hash), beside the hash of the key
// alone that it replaced.
func BenchmarkWorkerRouting(b *testing.B) {
	dec, _ := NewDecoder(DecoderConfig{})
	msg := []byte(`{"user_id":"user-123456","page":"/page/1234","ts":"2026-11-26T09:59:00.123Z","session_id":"s-1"}`)
	key := []byte("user-123456")
	sink := 0
	b.Run("user", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink += workerOf(dec.parse(msg, true).w.UserID, key, 0, 4)
		}
	})
	b.Run("key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sink += workerOf("", key, 0, 4)
		}
	})
	_ = sink
}

// fixedUTCShape reports whether s looks like YYYY-MM-DDTHH:MM:SS[.d{1,9}]Z,
// the form parseTSFast must take whenever time.Parse does.
func fixedUTCShape(s string) bool {
	if len(s) < 20 || len(s) > 30 || s[len(s)-1] != 'Z' || (len(s) > 20 && s[19] != '.') || len(s) == 21 {
		return false
	}
	for i := range len(s) - 1 {
		switch i {
		case 4, 7:
			if s[i] != '-' {
				return false
			}
		case 10:
			if s[i] != 'T' {
				return false
			}
		case 13, 16:
			if s[i] != ':' {
				return false
			}
		case 19:
		default:
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		}
	}
	return true
}

func FuzzParseTS(f *testing.F) {
	for _, s := range []string{"2026-11-26T09:59:00Z", "2026-11-26T09:59:00.123456789Z", "2024-02-29T23:59:59.5Z",
		"2023-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-11-26T24:00:00Z", "2026-11-26T09:59:60Z",
		"2026-11-26T09:59:00.Z", "2026-11-26T09:59:00.1234567891Z", "2026-11-26t09:59:00z", "0000-01-01T00:00:00Z",
		"0000-02-29T12:00:00Z", "0000-03-01T00:00:00Z", "1969-12-31T23:59:59.999999999Z", "1970-01-01T00:00:00Z",
		"1900-02-28T00:00:00Z", "2000-02-29T00:00:00.1Z", "2400-12-31T23:59:59Z", "9999-12-31T23:59:59.000000001Z",
		"2026-11-26T09:59:00.12345678Z", "2026-1/-26T09:59:00Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fast, ok := parseTSFast(s)
		slow, err := time.Parse(time.RFC3339Nano, s)
		if !ok {
			// The fast path must take every valid UTC form with at most 9
			// fraction digits.
			if err == nil && fixedUTCShape(s) {
				t.Fatalf("parseTSFast refused %q (time.Parse: %v)", s, slow)
			}
			return
		}
		if err != nil || !fast.Equal(slow) || fast.Location() != slow.Location() {
			t.Fatalf("parseTSFast(%q) = %v, time.Parse = %v, %v", s, fast, slow, err)
		}
	})
}

// TestParseTSErrorQuotesInput: a ts that does not parse is quoted as given,
// not with its t and z upper-cased by the retry.
func TestParseTSErrorQuotesInput(t *testing.T) {
	for _, in := range []string{"yesterday", "zulu time"} {
		_, err := ParseTS(in)
		if err == nil || !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("ParseTS(%q) = %v, want an error quoting %q", in, err, in)
		}
	}
	if _, err := ParseTS("2026-01-02t03:04:05z"); err != nil {
		t.Errorf("lower-case t and z: %v", err)
	}
}
