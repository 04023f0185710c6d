package engine

import (
	"strings"
	"testing"

	"github.com/prefetchd/prefetchd/internal/aliastest"
)

// TestNewPagesCopy: the latest-page map keeps copies of the user id and
// page, not slices of the decoded message, which would keep the whole
// message alive as long as the entry.
func TestNewPagesCopy(t *testing.T) {
	msg := `{"user_id":"u-1","page":"/new/1","referrer":"` + strings.Repeat("r", 60000) + `"}`
	user, page := msg[12:15], msg[25:31]
	if user != "u-1" || page != "/new/1" {
		t.Fatalf("slices %q %q", user, page)
	}
	var n newPages
	n.set(user, page, true)
	n.set(user, page, true) // an update keeps no slice either
	sh := n.shard(user)
	for _, k := range sh.lru.Keys() {
		v, _ := sh.lru.Peek(k)
		if aliastest.Within(k, msg) || aliastest.Within(v, msg) {
			t.Fatalf("entry %q -> %q points into the message", k, v)
		}
	}
}
