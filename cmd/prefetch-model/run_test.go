package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/internal/cli/clitest"
)

// The tool is tested on the model package's fixtures.
const fixtures = "../../model/testdata"

func TestRun(t *testing.T) {
	probs := filepath.Join(fixtures, "gru-probs-opset13")
	logits := filepath.Join(fixtures, "gru-logits-opset13")
	lstm := filepath.Join(fixtures, "lstm2-logits-opset17")
	tests := []struct {
		name    string
		args    []string
		wantErr error // nil: success
		want    []string
	}{
		{"inspect", []string{"inspect", probs + "/model.onnx"}, nil,
			[]string{"opset", "13", "page_ids", "int64", "[?, ?]", "probs", "[?, 200]", "GRU×1", "Softmax×1"}},
		{"verify with step check", []string{"verify", "--reference", probs + "/reference.json", probs + "/model.onnx"}, nil,
			[]string{"step_check", "overall", "ok"}},
		{"verify flags after model", []string{"verify", lstm + "/model.onnx", "--reference", lstm + "/reference.json", "--tolerance", "1e-5"}, nil,
			[]string{"step_check", "overall"}},
		{"verify logits", []string{"verify", "--reference", logits + "/reference.json", logits + "/model.onnx"}, nil,
			[]string{"3 ", "overall"}},
		{"verify above tolerance", []string{"verify", "--reference", probs + "/reference.json", "--tolerance", "0", probs + "/model.onnx"}, errTolerance,
			[]string{"FAIL"}},
		{"verify wrong reference", []string{"verify", "--reference", logits + "/reference.json", probs + "/model.onnx"}, nil, nil},
		{"bench", []string{"bench", "--batch", "2", "--len", "5", "--duration", "50ms", probs + "/model.onnx"}, nil,
			[]string{"2 × 5", "mean per call", "p50 / p99"}},
		{"no command", nil, cli.ErrUsage, nil},
		{"unknown command", []string{"frobnicate"}, cli.ErrUsage, nil},
		{"verify without reference", []string{"verify", probs + "/model.onnx"}, cli.ErrUsage, nil},
		{"two models", []string{"inspect", "a.onnx", "b.onnx"}, cli.ErrUsage, nil},
		{"missing file", []string{"inspect", "nope.onnx"}, os.ErrNotExist, nil},
		{"unknown flag", []string{"bench", "--nope", probs + "/model.onnx"}, cli.ErrUsage, nil},
		{"help", []string{"--help"}, cli.ErrPrinted, []string{"prefetch-model inspect MODEL.onnx", "COMMAND --help"}},
		{"help command", []string{"help"}, cli.ErrPrinted, []string{"prefetch-model verify"}},
		{"version", []string{"--version"}, cli.ErrPrinted, []string{"prefetch-model ", "go1."}},
		{"inspect help", []string{"inspect", "--help"}, cli.ErrPrinted, []string{"usage: prefetch-model inspect MODEL.onnx"}},
		{"verify help", []string{"verify", "-h"}, cli.ErrPrinted, []string{"--reference string", "--tolerance float", "(default 1e-05)"}},
		{"bench help", []string{"bench", "--help"}, cli.ErrPrinted, []string{"--batch int", "--duration duration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, tt.args, &out)
			switch {
			case tt.name == "verify wrong reference":
				// Another model's reference must not pass.
				if err == nil {
					t.Fatalf("verify against another model's reference passed:\n%s", out.String())
				}
				return
			case tt.wantErr == nil && err != nil:
				t.Fatalf("run: %v\n%s", err, out.String())
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("run error %v, want %v", err, tt.wantErr)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{cli.ErrPrinted, 0},
		{cli.ErrUsage, 2},
		{fmt.Errorf("wrapped: %w", errTolerance), 1},
		{os.ErrNotExist, 1},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		if got := cli.Exit("prefetch-model", tt.err, &stderr); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
		if (tt.want != 0) != (stderr.Len() > 0) {
			t.Errorf("exitCode(%v) wrote %q", tt.err, stderr.String())
		}
	}
}

func TestFlags(t *testing.T) {
	model := filepath.Join(fixtures, "gru-probs-opset13", "model.onnx")
	cases := append(clitest.Common("prefetch-model"),
		clitest.Case{Name: "no command", Exit: 2, Stderr: "no command"},
		clitest.Case{Name: "subcommand help", Args: []string{"bench", "-h"}, Stdout: []string{"usage: prefetch-model bench", "--len int"}},
		clitest.Case{Name: "subcommand bad flag", Args: []string{"inspect", "--nope", model}, Exit: 2, Stderr: "-nope"},
		clitest.Case{Name: "device", Args: []string{"inspect", "/dev/zero"}, Exit: 1, Stderr: "/dev/zero is not a regular file"},
		clitest.Case{Name: "folder", Args: []string{"inspect", filepath.Dir(model)}, Exit: 1, Stderr: "is a folder: inspect and verify take an .onnx file"},
		clitest.Case{Name: "negative tolerance", Args: []string{"verify", "--reference", "r.json", "--tolerance", "-1", model}, Exit: 2, Stderr: "--tolerance -1: want a finite number >= 0"},
		clitest.Case{Name: "NaN tolerance", Args: []string{"verify", "--reference", "r.json", "--tolerance", "NaN", model}, Exit: 2, Stderr: "--tolerance NaN"},
		clitest.Case{Name: "bench threshold above one", Args: []string{"bench", "--threshold", "2", model}, Exit: 2, Stderr: "--threshold 2 outside [0, 1]"},
		clitest.Case{Name: "bench threshold NaN", Args: []string{"bench", "--threshold", "NaN", model}, Exit: 2, Stderr: "--threshold NaN outside [0, 1]"},
		clitest.Case{Name: "bench vocab too small", Args: []string{"bench", "--vocab", "1", model}, Exit: 2, Stderr: "--vocab 1: want at least 3"},
	)
	clitest.Check(t, "prefetch-model", func(ctx context.Context, args []string, stdout *bytes.Buffer) error {
		return run(ctx, args, stdout)
	}, cases)
}
