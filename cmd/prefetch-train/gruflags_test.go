package main

import (
	"flag"
	"io"
	"testing"
)

// TestGRUOptionalFlags: the GRU flags whose zero is a setting reach the
// trainer's configuration as nil when absent, so that its default applies,
// and as the value given otherwise, false and 0 included.
func TestGRUOptionalFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		skip    *bool
		distill *float64
	}{
		{"unset", nil, nil, nil},
		{"skip alone", []string{"--gru-skip"}, new(true), nil},
		{"skip true", []string{"--gru-skip=true"}, new(true), nil},
		{"skip false", []string{"--gru-skip=false"}, new(false), nil},
		{"distill 0", []string{"--gru-distill", "0"}, nil, new(0.0)},
		{"both", []string{"--gru-skip=false", "--gru-distill", "0.3"}, new(false), new(0.3)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("prefetch-train", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			g := registerGRUFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatalf("Parse(%v): %v", tc.args, err)
			}
			cfg := g.config(1, 20)
			if !samePtr(cfg.Skip, tc.skip) {
				t.Errorf("Skip = %v, want %v", show(cfg.Skip), show(tc.skip))
			}
			if !samePtr(cfg.Distill, tc.distill) {
				t.Errorf("Distill = %v, want %v", show(cfg.Distill), show(tc.distill))
			}
		})
	}
	fs := flag.NewFlagSet("prefetch-train", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	registerGRUFlags(fs)
	if err := fs.Parse([]string{"--gru-skip=maybe"}); err == nil {
		t.Error("--gru-skip=maybe parsed")
	}
}

func samePtr[T comparable](a, b *T) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

func show[T any](p *T) any {
	if p == nil {
		return "unset"
	}
	return *p
}
