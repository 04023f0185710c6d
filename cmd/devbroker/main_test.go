package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/cli/clitest"
)

func TestFlags(t *testing.T) {
	cases := append(clitest.Common("devbroker"),
		clitest.Case{Name: "help lists flags", Args: []string{"--help"}, Stdout: []string{"usage: devbroker", "--partitions int", "(default 4)"}},
		clitest.Case{Name: "no partitions", Args: []string{"--partitions", "0"}, Exit: 2, Stderr: "--partitions"},
		clitest.Case{Name: "stray argument", Args: []string{"extra"}, Exit: 2, Stderr: "unexpected arguments"},
	)
	clitest.Check(t, "devbroker", func(ctx context.Context, args []string, stdout *bytes.Buffer) error {
		return run(ctx, args, stdout)
	}, cases)
}

func TestDevbrokerServesKafkaGo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--port", "0", "--topic", "t1"}, pw) }()

	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("read ready line: %v", err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("ready line %q, want \"listening on 127.0.0.1:PORT\"", line)
	}
	conn, err := kafka.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	parts, err := conn.ReadPartitions("t1")
	conn.Close()
	if err != nil {
		t.Fatalf("read partitions: %v", err)
	}
	if len(parts) != 4 {
		t.Fatalf("topic t1 has %d partitions, want 4", len(parts))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}
