// Command devbroker runs an in-process Kafka-protocol broker (franz-go's kfake)
// on 127.0.0.1 for development: start it, then point prefetchd at it with
// --kafka-brokers. It prints its address once ready and stops on Ctrl-C; its
// data lives in memory only.
//
//	devbroker --port 9092 --topic clicks --partitions 4
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/prefetchd/prefetchd/internal/broker"
	"github.com/prefetchd/prefetchd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	os.Exit(cli.Exit("devbroker", err, os.Stderr))
}

const usage = `usage: devbroker [--port 9092] [--topic clicks] [--partitions 4]

Runs an in-memory Kafka-protocol broker on 127.0.0.1 for development.`

// run starts the broker, prints "listening on ADDR", and blocks until ctx
// ends. --help and --version print to out and return cli.ErrPrinted.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devbroker", flag.ContinueOnError)
	port := fs.Int("port", 9092, "TCP port on 127.0.0.1 (0 picks a free one)")
	topics := fs.String("topic", "clicks", "comma-separated topics to create at start")
	parts := fs.Int("partitions", 4, "partitions per topic")
	if err := cli.Parse(fs, args, out, cli.Help{Usage: usage}); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected arguments %q", fs.Args())
	}
	if *port < 0 || *port > 65535 || *parts < 1 {
		return cli.Usagef("--port must be in 0..65535 and --partitions positive")
	}
	var ts []string
	for _, t := range strings.Split(*topics, ",") {
		if t = strings.TrimSpace(t); t != "" {
			ts = append(ts, t)
		}
	}
	b, err := broker.Start(broker.Config{Port: *port, Topics: ts, Partitions: *parts})
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Fprintf(out, "listening on %s\n", b.Addr())
	<-ctx.Done()
	return nil
}
