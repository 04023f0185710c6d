// Package clitest checks a command's command-line manners (package cli) from
// its run function: --help and --version on stdout with exit status 0, usage
// mistakes as one line on stderr with exit status 2 and nothing on stdout.
package clitest

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/cli"
)

// Case is one command line and what it must give.
type Case struct {
	Name string
	Args []string
	// Exit is the expected exit status (cli.Exit): 0, 1 or 2.
	Exit int
	// Stdout are substrings stdout must hold (for exit 0).
	Stdout []string
	// Stderr is a substring of the one line on stderr (for exit 1 or 2).
	Stderr string
}

// Run is a command's run function reduced to its arguments and stdout.
type Run func(ctx context.Context, args []string, stdout *bytes.Buffer) error

// Check runs every case through run as command name and reports each
// difference from what the case expects.
func Check(t *testing.T, name string, run Run, cases []Case) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			err := run(ctx, tc.Args, &stdout)
			if got := cli.Exit(name, err, &stderr); got != tc.Exit {
				t.Fatalf("%s %q: exit status %d (err %v), want %d", name, tc.Args, got, err, tc.Exit)
			}
			for _, w := range tc.Stdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("%s %q: stdout lacks %q:\n%s", name, tc.Args, w, stdout.String())
				}
			}
			if tc.Exit == 0 {
				if stderr.Len() > 0 {
					t.Errorf("%s %q: stderr %q, want nothing", name, tc.Args, stderr.String())
				}
				return
			}
			if tc.Exit == 2 && stdout.Len() > 0 {
				t.Errorf("%s %q: a usage error printed to stdout: %q", name, tc.Args, stdout.String())
			}
			line := stderr.String()
			if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") || !strings.HasPrefix(line, name+": ") || !strings.Contains(line, tc.Stderr) {
				t.Errorf("%s %q: stderr %q, want one line %q... holding %q", name, tc.Args, line, name+": ", tc.Stderr)
			}
		})
	}
}

// Common are the cases every command passes: --help, -h, --version and an
// unknown flag.
func Common(name string) []Case {
	return []Case{
		{Name: "help", Args: []string{"--help"}, Stdout: []string{"usage:"}},
		{Name: "short help", Args: []string{"-h"}, Stdout: []string{"usage:"}},
		{Name: "version", Args: []string{"--version"}, Stdout: []string{name + " ", "go1."}},
		{Name: "unknown flag", Args: []string{"--no-such-flag"}, Exit: 2, Stderr: "flag provided but not defined: -no-such-flag"},
	}
}
