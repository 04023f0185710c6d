package aliastest

import (
	"strings"
	"testing"
)

func TestWithin(t *testing.T) {
	buf := strings.Repeat("ab", 100)
	for _, tc := range []struct {
		name string
		s    string
		want bool
	}{
		{"slice", buf[10:20], true},
		{"copy", strings.Clone(buf[10:20]), false},
		{"empty", buf[10:10], false},
	} {
		if got := Within(tc.s, buf); got != tc.want {
			t.Errorf("%s: Within = %v, want %v", tc.name, got, tc.want)
		}
	}
}
