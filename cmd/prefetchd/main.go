// Command prefetchd predicts which page each user of a website opens next and
// warms the cache before they get there. With no flags it runs on embedded
// defaults: an in-process Kafka broker fed by a replay of real sessions, an
// in-process Redis store and the bundled model. Flags (or PREFETCHD_*
// environment variables) point it at real systems; see the README.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/app"
	"github.com/prefetchd/prefetchd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.Exit("prefetchd", err, os.Stderr))
}

// run parses the flags and the PREFETCHD_* variables of environ, then runs
// the service until ctx ends, logging to stderr. --help and --version print
// to stdout and return cli.ErrPrinted.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	cfg, err := app.ParseFlags(args, environ, stdout)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return cli.Usagef("--log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	// go-redis reports connection trouble through a logger of its own; route
	// it to ours at debug level (the service counts and reports the outage).
	redis.SetLogger(redisLog{logger.With("component", "go-redis")})
	return app.Run(ctx, cfg, logger)
}

// redisLog adapts slog to go-redis's logger interface.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis client", "msg", fmt.Sprintf(format, v...))
}
