package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/prefetchd/prefetchd/internal/cli/clitest"
)

func TestRunFlags(t *testing.T) {
	cases := append(clitest.Common("prefetchd"),
		clitest.Case{Name: "help names variables", Args: []string{"--help"}, Stdout: []string{"usage: prefetchd", "--kafka-brokers string  [$PREFETCHD_KAFKA_BROKERS]", "--admin-listen string  [$PREFETCHD_ADMIN_LISTEN]"}},
		clitest.Case{Name: "stray argument", Args: []string{"serve"}, Exit: 2, Stderr: "unexpected arguments"},
		clitest.Case{Name: "bad log level", Args: []string{"--log-level", "loud"}, Exit: 2, Stderr: "--log-level"},
		clitest.Case{Name: "missing model", Args: []string{"--model", "no/such/bundle", "--kafka-brokers", "127.0.0.1:1", "--redis-addr", "127.0.0.1:1", "--admin-listen", "127.0.0.1:0"},
			Exit: 1, Stderr: "load model: stat " + abs("no/such/bundle") + ": no such file"},
		clitest.Case{Name: "model file instead of folder", Args: []string{"--model", "main.go", "--kafka-brokers", "127.0.0.1:1", "--redis-addr", "127.0.0.1:1", "--admin-listen", "127.0.0.1:0"},
			Exit: 1, Stderr: "--model " + abs("main.go") + " is a file; give the bundle folder that holds model.onnx and vocab.txt"},
	)
	clitest.Check(t, "prefetchd", func(ctx context.Context, args []string, stdout *bytes.Buffer) error {
		return run(ctx, args, nil, stdout, io.Discard)
	}, cases)
}

// abs is path made absolute, or the test's failure to.
func abs(path string) string {
	a, err := filepath.Abs(path)
	if err != nil {
		return err.Error()
	}
	return a
}

func TestRunEnvironment(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		stderr  string
	}{
		{name: "bad threshold", environ: []string{"PREFETCHD_THRESHOLD=2"}, stderr: "--threshold (PREFETCHD_THRESHOLD) 2 outside [0, 1]"},
		{name: "misspelled variable", environ: []string{"PREFETCHD_REDIS_ADR=r:1"}, stderr: "unknown environment variable PREFETCHD_REDIS_ADR (did you mean PREFETCHD_REDIS_ADDR?)"},
		{name: "unknown variable", environ: []string{"PREFETCHD_COLOUR=blue"}, stderr: "unknown environment variable PREFETCHD_COLOUR"},
	}
	for _, tc := range tests {
		clitest.Check(t, "prefetchd", func(ctx context.Context, args []string, stdout *bytes.Buffer) error {
			return run(ctx, args, tc.environ, stdout, io.Discard)
		}, []clitest.Case{{Name: tc.name, Exit: 2, Stderr: tc.stderr}})
	}
}
