package transitions

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/aliastest"
)

// TestMemoryCopiesPages: the in-process store keeps copies of the pages of
// a transition, not slices of the decoded message they came from, which
// would keep the whole message alive as long as the entries.
func TestMemoryCopiesPages(t *testing.T) {
	msg := `{"page":"/new/a","referrer":"/new/b` + strings.Repeat("r", 60000) + `"}`
	from, to := msg[9:15], msg[29:35]
	if from != "/new/a" || to != "/new/b" {
		t.Fatalf("slices %q %q", from, to)
	}
	st, err := NewMemory(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := st.Store.(*memory)
	tr := Transition{From: from, To: to, At: time.Now(), FromUnknown: true, ToUnknown: true}
	for range 2 { // new entries, then updates of them
		if err := st.Observe(context.Background(), []Transition{tr}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range m.shards {
		sh := &m.shards[i]
		for _, k := range sh.pages.Keys() {
			src, _ := sh.pages.Peek(k)
			if aliastest.Within(k, msg) {
				t.Fatalf("source page %q points into the message", k)
			}
			for _, n := range src.next {
				if aliastest.Within(n.Page, msg) {
					t.Fatalf("next page %q points into the message", n.Page)
				}
			}
		}
	}
	for _, k := range m.fresh.Keys() {
		if aliastest.Within(k, msg) {
			t.Fatalf("online-only page %q points into the message", k)
		}
	}
}
