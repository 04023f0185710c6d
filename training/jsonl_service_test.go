package training

import (
	"strings"
	"testing"
)

// TestReadJSONLAsTheService checks that the trainer reads a log as the
// service's consumer reads the topic: the same events rejected (limits,
// UTF-8), the same accepted (a page of spaces is a page), and a producer's
// repeat of (user_id, event_id) dropped.
func TestReadJSONLAsTheService(t *testing.T) {
	ts := `"ts":"1995-07-01T00:00:01Z"`
	lines := []string{
		`{"user_id":"u1","page":"/a",` + ts + `,"event_id":"e1"}`,
		`{"user_id":"u1","page":"/b",` + ts + `,"event_id":"e1"}`, // a repeat: dropped
		`{"user_id":"u2","page":"/a",` + ts + `,"event_id":"e1"}`, // another user's e1: kept
		`{"user_id":"u1","page":"   ",` + ts + `}`,                // accepted by the service
		`{"user_id":"u1","page":"/` + strings.Repeat("p", 3000) + `",` + ts + `}`,
		`{"user_id":"` + strings.Repeat("u", 300) + `","page":"/a",` + ts + `}`,
		"{\"user_id\":\"u3\",\"page\":\"/\xff\"," + ts + "}",
		`{"user_id":"u3","page":"/a","ts":"yesterday"}`,
	}
	_, st, err := ReadJSONL(strings.NewReader(strings.Join(lines, "\n")), JSONLConfig{})
	if err != nil {
		t.Fatal(err)
	}
	want := JSONLStats{Lines: 8, Events: 3, Skipped: 4, Duplicates: 1}
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
}
