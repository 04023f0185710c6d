package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

func newFlags() (*flag.FlagSet, *string, *int) {
	fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
	s := fs.String("kafka-brokers", "", "brokers")
	n := fs.Int("k", 3, "hints per click")
	return fs, s, n
}

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantErr  error
		wantOut  []string
		wantExit int
	}{
		{name: "help", args: []string{"--help"}, wantErr: ErrPrinted, wantOut: []string{"usage: cmd [flags]", "--kafka-brokers string  [$CMD_KAFKA_BROKERS]", "(default 3)"}},
		{name: "short help", args: []string{"-h"}, wantErr: ErrPrinted, wantOut: []string{"--k int  [$CMD_K]"}},
		{name: "version", args: []string{"--version"}, wantErr: ErrPrinted, wantOut: []string{"cmd ", "go1."}},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: ErrUsage, wantExit: 2},
		{name: "bad value", args: []string{"--k", "x"}, wantErr: ErrUsage, wantExit: 2},
		{name: "fine", args: []string{"--k", "4"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs, _, _ := newFlags()
			var out bytes.Buffer
			err := Parse(fs, tc.args, &out, Help{Usage: "usage: cmd [flags]", EnvPrefix: "CMD_"})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("Parse = %v, want %v", err, tc.wantErr)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, out.String())
				}
			}
			if tc.wantErr == ErrUsage && out.Len() > 0 {
				t.Errorf("a usage error printed to stdout: %q", out.String())
			}
			var stderr bytes.Buffer
			if got := Exit("cmd", err, &stderr); got != tc.wantExit {
				t.Errorf("Exit = %d, want %d", got, tc.wantExit)
			}
			if tc.wantExit != 0 && strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("stderr is not one line: %q", stderr.String())
			}
		})
	}
}

func TestExit(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantCode   int
		wantStderr string
	}{
		{name: "nil", err: nil, wantCode: 0},
		{name: "printed", err: ErrPrinted, wantCode: 0},
		{name: "usage", err: Usagef("no command"), wantCode: 2, wantStderr: "cmd: no command (see cmd --help)\n"},
		{name: "wrapped usage", err: fmt.Errorf("parse: %w", Usagef("bad")), wantCode: 2, wantStderr: "cmd: parse: bad (see cmd --help)\n"},
		{name: "failure", err: errors.New("load model: boom"), wantCode: 1, wantStderr: "cmd: load model: boom\n"},
		{name: "joined", err: errors.Join(errors.New("a"), errors.New("b")), wantCode: 1, wantStderr: "cmd: a; b\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := Exit("cmd", tc.err, &stderr); got != tc.wantCode {
				t.Errorf("Exit = %d, want %d", got, tc.wantCode)
			}
			if stderr.String() != tc.wantStderr {
				t.Errorf("stderr = %q, want %q", stderr.String(), tc.wantStderr)
			}
		})
	}
}

func TestApplyEnv(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		environ []string
		wantErr string
		wantBrk string
		wantK   int
	}{
		{name: "from env", environ: []string{"CMD_KAFKA_BROKERS=a:1", "CMD_K=7", "OTHER=1"}, wantBrk: "a:1", wantK: 7},
		{name: "flag wins", args: []string{"--k", "5"}, environ: []string{"CMD_K=7"}, wantK: 5},
		{name: "empty is unset", environ: []string{"CMD_K="}, wantK: 3},
		{name: "bad value", environ: []string{"CMD_K=many"}, wantErr: `CMD_K="many"`},
		{name: "typo", environ: []string{"CMD_KAFKA_BROKER=a:1"}, wantErr: "unknown environment variable CMD_KAFKA_BROKER (did you mean CMD_KAFKA_BROKERS?)"},
		{name: "far off", environ: []string{"CMD_SOMETHING_ELSE=1"}, wantErr: "unknown environment variable CMD_SOMETHING_ELSE"},
		{name: "version has no variable", environ: []string{"CMD_VERSION=1"}, wantErr: "unknown environment variable CMD_VERSION"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs, brk, k := newFlags()
			if err := Parse(fs, tc.args, &bytes.Buffer{}, Help{}); err != nil {
				t.Fatal(err)
			}
			err := ApplyEnv(fs, "CMD_", tc.environ)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ApplyEnv = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ApplyEnv: %v", err)
			}
			if *brk != tc.wantBrk || *k != tc.wantK {
				t.Errorf("brokers=%q k=%d, want %q and %d", *brk, *k, tc.wantBrk, tc.wantK)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	v := Version()
	if !strings.Contains(v, "go1.") {
		t.Errorf("Version() = %q, lacks the Go version", v)
	}
}

func TestIsSet(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("k", 0, "")
	fs.Int("n", 5, "")
	if err := fs.Parse([]string{"--k", "0"}); err != nil {
		t.Fatal(err)
	}
	if !IsSet(fs, "k") || IsSet(fs, "n") || IsSet(fs, "missing") {
		t.Errorf("IsSet k %v, n %v, missing %v; want true (given as 0), false, false", IsSet(fs, "k"), IsSet(fs, "n"), IsSet(fs, "missing"))
	}
}

// TestNameVariables: a flag set from its variable is named with it in an
// error, as a whole token only (--k, not the --k of --kafka-brokers); flags
// from the command line are left as they are.
func TestNameVariables(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("k", 3, "")
	fs.String("kafka-brokers", "", "")
	fs.Int("workers", 4, "")
	if err := fs.Parse([]string{"--workers", "0"}); err != nil {
		t.Fatal(err)
	}
	onCmdline := map[string]bool{"workers": true}
	if err := ApplyEnv(fs, "P_", []string{"P_K=0", "P_KAFKA_BROKERS=x"}); err != nil {
		t.Fatal(err)
	}
	err := NameVariables(errors.New("--k 0 outside 1..100; --kafka-brokers \"x\" is not host:port; --workers 0; --k."), fs, "P_", onCmdline)
	want := "--k (P_K) 0 outside 1..100; --kafka-brokers (P_KAFKA_BROKERS) \"x\" is not host:port; --workers 0; --k (P_K)."
	if err == nil || err.Error() != want {
		t.Fatalf("NameVariables = %v\nwant %s", err, want)
	}
	if NameVariables(nil, fs, "P_", onCmdline) != nil {
		t.Fatal("NameVariables(nil) is not nil")
	}
}
