package nasa

import "testing"

func TestSessionsMatchPublishedCounts(t *testing.T) {
	s, err := Sessions()
	if err != nil {
		t.Fatal(err)
	}
	views := 0
	for _, x := range s {
		if len(x) < 2 {
			t.Fatalf("session of %d pages; every session has at least 2", len(x))
		}
		views += len(x)
	}
	if len(s) != NumSessions || views != NumViews {
		t.Fatalf("%d sessions, %d views; want %d and %d", len(s), views, NumSessions, NumViews)
	}
	if got := s[0]; len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("first session %v, want [1 2]", got)
	}
}
