// Command prefetch-load measures prefetchd's gRPC latency and throughput:
// HintService.Predict at several concurrency levels, each beside the empty
// HintService.Ping on the same server and connection in the same run, so that
// the cost of Predict can be read against the cost of a bare round trip.
//
// Without --addr it starts an in-process server on 127.0.0.1 whose engine is
// a fake that answers every query with the same five hints (so the figures
// are those of the gRPC layer); with --addr it loads a running prefetchd.
//
//	prefetch-load [--addr host:port] [--duration 30s] [--concurrency 1,16,64]
//
// The clicks mode measures, at steady click rates, the time from producing a
// click into Kafka to Redis setting a key prefetchd warmed for its user,
// beside a bare kafka-go group reader of the same stream in the same run:
//
//	prefetch-load clicks --kafka-brokers host:port --redis-addr host:port [--rates 1000,5000,10000,20000]
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
	os.Exit(cli.Exit("prefetch-load", err, os.Stderr))
}
