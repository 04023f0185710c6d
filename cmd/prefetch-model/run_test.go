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
		{"no command", nil, errUsage, nil},
		{"unknown command", []string{"frobnicate"}, errUsage, nil},
		{"verify without reference", []string{"verify", probs + "/model.onnx"}, errUsage, nil},
		{"two models", []string{"inspect", "a.onnx", "b.onnx"}, errUsage, nil},
		{"missing file", []string{"inspect", "nope.onnx"}, os.ErrNotExist, nil},
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
		{errUsage, 2},
		{fmt.Errorf("wrapped: %w", errTolerance), 1},
		{os.ErrNotExist, 1},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		if got := exitCode(tt.err, &stderr); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
		if (tt.err != nil) != (stderr.Len() > 0) {
			t.Errorf("exitCode(%v) wrote %q", tt.err, stderr.String())
		}
	}
}
