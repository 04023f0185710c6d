package app

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/model"
)

// TestVocabCheck: a vocabulary most of whose keys the service would look
// up under another spelling (raw URLs, trailing slashes) is refused with
// what to do; one whose keys are canonical passes, and so does one with a
// few odd keys (logged).
func TestVocabCheck(t *testing.T) {
	canon, err := features.NewCanonicalizer(features.CanonicalizerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	check := vocabCheck(canon, slog.New(slog.DiscardHandler))
	raw := []string{"https://www.example.com/p7/", "https://www.example.com/p8/", "https://www.example.com/p9/"}
	var canonical []string
	for _, k := range raw {
		canonical = append(canonical, canon.Canonical(k))
	}
	if canonical[0] == raw[0] {
		t.Fatalf("the default canonicalizer keeps %q: the test needs keys it changes", raw[0])
	}
	cases := []struct {
		name  string
		pages []string
		want  string // in the error; "" passes
	}{
		{"canonical keys", canonical, ""},
		{"raw URLs", raw, "3 of the vocabulary's 3 pages are not canonical keys"},
		{"one odd key of three", []string{canonical[0], canonical[1], raw[2]}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := model.NewVocab(append([]string{model.PadKey, model.UnknownKey}, tc.pages...))
			if err != nil {
				t.Fatal(err)
			}
			err = check(v)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("check = %v, want %q", err, tc.want)
			}
		})
	}
}
