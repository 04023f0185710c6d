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
		exp     *float64
	}{
		{"unset", nil, nil, nil, nil},
		{"skip alone", []string{"--gru-skip"}, new(true), nil, nil},
		{"skip true", []string{"--gru-skip=true"}, new(true), nil, nil},
		{"skip false", []string{"--gru-skip=false"}, new(false), nil, nil},
		{"distill 0", []string{"--gru-distill", "0"}, nil, new(0.0), nil},
		{"both", []string{"--gru-skip=false", "--gru-distill", "0.3"}, new(false), new(0.3), nil},
		{"sample exponent 0", []string{"--gru-sample-exponent", "0"}, nil, nil, new(0.0)},
		{"sample exponent 1", []string{"--gru-sample-exponent=1"}, nil, nil, new(1.0)},
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
			if !samePtr(cfg.SampleExponent, tc.exp) {
				t.Errorf("SampleExponent = %v, want %v", show(cfg.SampleExponent), show(tc.exp))
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
