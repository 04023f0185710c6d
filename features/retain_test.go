package features

import (
	"strings"
	"testing"

	"github.com/prefetchd/prefetchd/internal/aliastest"
)

// TestRecordCacheCopiesUser: the record cache keeps a copy of the user id,
// not a slice of the decoded message, which would keep the whole message
// (up to the size limit) alive as long as the entry.
func TestRecordCacheCopiesUser(t *testing.T) {
	msg := `{"user_id":"u-1","page":"/p","referrer":"` + strings.Repeat("r", 60000) + `"}`
	user := msg[12:15]
	if user != "u-1" {
		t.Fatalf("slice %q", user)
	}
	c := newRecordCache(4)
	c.put(user, &Record{Pages: []int32{1}}, true)
	for _, k := range c.lru.Keys() {
		if aliastest.Within(k, msg) {
			t.Fatalf("cache key %q points into the message", k)
		}
	}
}
