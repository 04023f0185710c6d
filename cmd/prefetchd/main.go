// Command prefetchd predicts which page each user of a website opens next and
// warms the cache before they get there. With no flags it runs on embedded
// defaults: an in-process Kafka broker fed by a replay of real sessions, an
// in-process Redis store and the bundled model. Flags (or PREFETCHD_*
// environment variables) point it at real systems; see the README.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "prefetchd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := app.ParseFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("log level: %w", err)
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
