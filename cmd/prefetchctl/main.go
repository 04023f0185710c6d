// Command prefetchctl is the command-line client of prefetchd's gRPC API:
// ask for hints, watch them change, feed click events from a file, and
// administer model versions.
//
// Usage:
//
//	prefetchctl [flags] predict --user U [--pages a,b] [--k N] [--threshold F]
//	prefetchctl [flags] watch (--user U [--user V ...] | --any) [--threshold F]
//	prefetchctl [flags] ingest --file events.jsonl
//	prefetchctl [flags] model status | model activate VERSION | model rollback
//	prefetchctl [flags] health
//
// Flags (before or after the command): --addr (default 127.0.0.1:50051, prefetchd's default --listen),
// --tls-ca, --tls-cert, --tls-key, --token-file, --timeout, --json; --help
// (also after a command) and --version.
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
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout)
	stop()
	os.Exit(cli.Exit("prefetchctl", err, os.Stderr))
}
