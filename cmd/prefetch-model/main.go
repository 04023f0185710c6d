// Command prefetch-model checks ONNX models before they reach prefetchd. It is
// meant for data teams exporting sequence models from PyTorch:
//
//	prefetch-model inspect MODEL.onnx
//	prefetch-model verify --reference reference.json [--tolerance 1e-5] MODEL.onnx
//	prefetch-model bench --batch 1 --len 20 MODEL.onnx
//
// inspect prints the graph's inputs, outputs, opset, operators and sizes (and
// refuses, naming each node, what the runtime cannot run). verify runs every
// case of a reference file through the runtime, prints the maximum absolute
// error per case and overall, also runs the reference's step_check when a
// step.onnx sits beside the model, and exits non-zero above the tolerance.
// bench reports the latency per call for a batch of histories of a given
// length.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "prefetch-model:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
