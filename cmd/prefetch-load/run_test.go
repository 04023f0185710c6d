package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/prefetchd/prefetchd/internal/cli/clitest"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/server"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// short are flags that keep a run well under a second.
var short = []string{"--duration", "300ms", "--slice", "100ms", "--warmup", "50ms", "--concurrency", "1,4"}

func TestInProcessTable(t *testing.T) {
	var out bytes.Buffer
	if err := run(testCtx(t), short, &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	text := out.String()
	for _, want := range []string{
		"target: in-process server",
		"rpc       conc      calls        qps        p50        p99      p99.9  errors",
		"concurrency 1: Predict p99 / Ping p99 = ",
		"concurrency 4: Predict p99 / Ping p99 = ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	rows := 0
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && (f[0] == "Ping" || f[0] == "Predict") {
			rows++
			if f[2] == "0" || f[7] != "0" {
				t.Errorf("row %q: want calls > 0 and no errors", line)
			}
		}
	}
	if rows != 4 {
		t.Errorf("%d result rows, want 4 (2 RPCs x 2 levels):\n%s", rows, text)
	}
}

func TestAgainstAddrJSON(t *testing.T) {
	pred := &servertest.Predictor{Result: hint.Result{ModelVersion: "v1", Hints: []hint.Hint{{Page: "/a", Probability: 1}}}}
	srv, err := server.New(server.Config{}, server.Deps{Predictor: pred}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	var out bytes.Buffer
	args := append([]string{"--addr", lis.Addr().String(), "--json", "--conns", "2", "--pages", "/x,/y", "--k", "7", "--threshold", "0", "--user-prefix", "nasa-"}, short...)
	if err := run(testCtx(t), args, &out); err != nil {
		t.Fatalf("run: %v", err)
	}
	var got []result
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, r)
	}
	if len(got) != 4 {
		t.Fatalf("%d results, want 4", len(got))
	}
	for i, r := range got {
		wantRPC, wantConc := []string{"Ping", "Predict"}[i%2], []int{1, 4}[i/2]
		if r.RPC != wantRPC || r.Concurrency != wantConc {
			t.Errorf("result %d is %s at %d, want %s at %d", i, r.RPC, r.Concurrency, wantRPC, wantConc)
		}
		if r.Calls == 0 || r.Errors != 0 || r.QPS <= 0 || r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.P999 || r.P999 > r.Max {
			t.Errorf("result %d implausible: %+v", i, r)
		}
	}
	// Predict carried the flags' request fields.
	qs := pred.Queries()
	if len(qs) == 0 || strings.Join(qs[0].Pages, ",") != "/x,/y" || !strings.HasPrefix(qs[0].UserID, "nasa-") || qs[0].K != 7 || qs[0].Threshold != 0 {
		t.Errorf("got %d queries, the first not pages /x,/y, k 7, threshold 0 for a nasa-N", len(qs))
	}
}

func TestFlags(t *testing.T) {
	cases := append(clitest.Common("prefetch-load"),
		clitest.Case{Name: "help lists flags", Args: []string{"--help"}, Stdout: []string{"usage: prefetch-load [flags]", "--concurrency string", "(default 1,16,64)"}},
		clitest.Case{Name: "zero concurrency", Args: []string{"--concurrency", "0"}, Exit: 2, Stderr: "--concurrency"},
		clitest.Case{Name: "bad concurrency", Args: []string{"--concurrency", "a"}, Exit: 2, Stderr: "--concurrency"},
		clitest.Case{Name: "zero duration", Args: []string{"--duration", "0s"}, Exit: 2, Stderr: "--duration must be positive"},
		clitest.Case{Name: "zero conns", Args: []string{"--conns", "0"}, Exit: 2, Stderr: "--conns must be positive"},
		clitest.Case{Name: "threshold above one", Args: []string{"--threshold", "5"}, Exit: 2, Stderr: "--threshold 5 above 1"},
		clitest.Case{Name: "threshold NaN", Args: []string{"--threshold", "NaN"}, Exit: 2, Stderr: "--threshold NaN is not a number"},
		clitest.Case{Name: "zero timeout", Args: []string{"--timeout", "0s"}, Exit: 2, Stderr: "--timeout 0s is not positive"},
		clitest.Case{Name: "negative timeout", Args: []string{"--timeout", "-1s"}, Exit: 2, Stderr: "--timeout -1s is not positive"},
		clitest.Case{Name: "tls without addr", Args: []string{"--tls-ca", "ca.pem"}, Exit: 2, Stderr: "--tls-ca needs --addr"},
		clitest.Case{Name: "stray argument", Args: []string{"extra"}, Exit: 2, Stderr: "unexpected arguments"},
		clitest.Case{Name: "k above 100", Args: []string{"--k", "101"}, Exit: 2, Stderr: "--k 101 outside 0..100"},
		clitest.Case{Name: "addr without port", Args: []string{"--addr", "foo"}, Exit: 2, Stderr: "--addr"},
	)
	clitest.Check(t, "prefetch-load", func(ctx context.Context, args []string, stdout *bytes.Buffer) error {
		return run(ctx, args, stdout)
	}, cases)
}

func TestUnreachableAddr(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	err = run(testCtx(t), append([]string{"--addr", addr, "--timeout", "200ms"}, short...), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "first Ping") {
		t.Errorf("run against a closed port: %v, want a first Ping error", err)
	}
}

func TestQuantile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0, 1}} {
		if got := quantile(s, tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %d, want %d", tc.q, got, tc.want)
		}
	}
}
