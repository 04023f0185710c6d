// Command prefetch-model checks ONNX models before they reach prefetchd. It is
// meant for data teams exporting sequence models from PyTorch:
//
//	prefetch-model inspect MODEL.onnx
//	prefetch-model verify --reference reference.json [--tolerance 1e-5] MODEL.onnx
//	prefetch-model bench --batch 1 --len 20 MODEL.onnx
//	prefetch-model bench --form step|sequence [--len 20] [--k 5] [--threshold 0.01] BUNDLE
//
// inspect prints the graph's inputs, outputs, opset, operators and sizes (and
// refuses, naming each node, what the runtime cannot run). verify runs every
// case of a reference file through the runtime, prints the maximum absolute
// error per case and overall, also runs the reference's step_check when a
// step.onnx sits beside the model, and exits non-zero above the tolerance.
// bench reports the latency per call for a batch of histories of a given
// length. Every command takes --help; prefetch-model --version prints the
// build. Exit status: 0 on success, 2 for a usage error, 1 otherwise
// (including a verification above tolerance).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/prefetchd/prefetchd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	os.Exit(cli.Exit("prefetch-model", err, os.Stderr))
}
