package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/internal/server"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// config holds the command-line flags.
type config struct {
	addr        string
	duration    time.Duration
	warmup      time.Duration
	slice       time.Duration
	concurrency []int
	users       int
	userPrefix  string
	k           int
	threshold   float64
	pages       []string
	conns       int
	timeout     time.Duration
	tlsCA       string
	jsonOut     bool
}

const usage = `usage: prefetch-load [flags]
       prefetch-load clicks [flags]   (click-to-warm latency; clicks --help)

Measures HintService.Predict beside HintService.Ping at each concurrency level,
against --addr or an in-process server with a fake engine.`

// parseFlags reads the flags; --help and --version print to stdout and return
// cli.ErrPrinted, mistakes return errors matching cli.ErrUsage.
func parseFlags(args []string, stdout io.Writer) (config, error) {
	c := config{}
	fs := flag.NewFlagSet("prefetch-load", flag.ContinueOnError)
	fs.StringVar(&c.addr, "addr", "", "prefetchd gRPC address; empty starts an in-process server with a fake engine on 127.0.0.1")
	fs.DurationVar(&c.duration, "duration", 30*time.Second, "measured time per RPC per concurrency level")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured time per RPC before each concurrency level")
	fs.DurationVar(&c.slice, "slice", time.Second, "Ping and Predict alternate in slices this long, so that both see the same machine")
	conc := fs.String("concurrency", "1,16,64", "comma-separated numbers of concurrent callers")
	fs.IntVar(&c.users, "users", 1000, "distinct user ids cycled through by Predict")
	fs.StringVar(&c.userPrefix, "user-prefix", "user-", `user ids are this prefix and 0..users-1 (the embedded replay's users are "nasa-N")`)
	fs.IntVar(&c.k, "k", 0, "k sent with every Predict; 0 leaves the server's default")
	fs.Float64Var(&c.threshold, "threshold", -1, "threshold sent with every Predict; negative leaves the server's default")
	pages := fs.String("pages", "", "comma-separated explicit history sent with every Predict (stateless form); empty asks by user id")
	fs.IntVar(&c.conns, "conns", 1, "client connections shared round-robin by the callers")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "deadline of each call")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "PEM CA of the server certificate (enables TLS; with --addr only)")
	fs.BoolVar(&c.jsonOut, "json", false, "print results as JSON lines instead of a table")
	if err := cli.Parse(fs, args, stdout, cli.Help{Usage: usage}); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, cli.Usagef("unexpected arguments %q", fs.Args())
	}
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return c, cli.Usagef("--concurrency: %q is not a positive integer", s)
		}
		c.concurrency = append(c.concurrency, n)
	}
	if *pages != "" {
		c.pages = strings.Split(*pages, ",")
	}
	switch {
	case c.duration <= 0:
		return c, cli.Usagef("--duration must be positive")
	case c.slice <= 0:
		return c, cli.Usagef("--slice must be positive")
	case c.warmup < 0:
		return c, cli.Usagef("--warmup must not be negative")
	case c.users < 1:
		return c, cli.Usagef("--users must be positive")
	case c.conns < 1:
		return c, cli.Usagef("--conns must be positive")
	case c.timeout <= 0:
		return c, cli.Usagef("--timeout %v is not positive", c.timeout)
	case c.tlsCA != "" && c.addr == "":
		return c, cli.Usagef("--tls-ca needs --addr")
	}
	if math.IsNaN(c.threshold) {
		return c, cli.Usagef("--threshold NaN is not a number (negative: the server's default)")
	}
	if c.threshold > 1 {
		return c, cli.Usagef("--threshold %v above 1 (negative: the server's default)", c.threshold)
	}
	if c.k < 0 || c.k > 100 {
		return c, cli.Usagef("--k %d outside 0..100 (0: the server's default)", c.k)
	}
	if c.addr != "" {
		if err := cli.CheckHostPort(c.addr); err != nil {
			return c, cli.Usagef("--addr: %v", err)
		}
	}
	return c, nil
}

// run runs the clicks mode when the first argument is "clicks". Otherwise it
// parses flags, starts the in-process server when no --addr is given,
// and measures Ping and Predict at each concurrency level, writing results
// to out. It stops early, with ctx's error, when ctx ends.
func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "clicks" {
		return runClicks(ctx, args[1:], out)
	}
	cfg, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	addr := cfg.addr
	target := addr
	if addr == "" {
		a, stop, err := startInProcess(ctx)
		if err != nil {
			return err
		}
		defer stop()
		addr, target = a, "in-process server, fake engine (5 hints per answer)"
	}
	creds := insecure.NewCredentials()
	if cfg.tlsCA != "" {
		pem, err := os.ReadFile(cfg.tlsCA)
		if err != nil {
			return fmt.Errorf("read --tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--tls-ca %s holds no PEM certificate", cfg.tlsCA)
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	clients := make([]prefetchv1.HintServiceClient, cfg.conns)
	for i := range clients {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return fmt.Errorf("connect %s: %w", addr, err)
		}
		defer conn.Close()
		clients[i] = prefetchv1.NewHintServiceClient(conn)
	}

	reqs := make([]*prefetchv1.PredictRequest, cfg.users)
	for i := range reqs {
		reqs[i] = &prefetchv1.PredictRequest{UserId: cfg.userPrefix + strconv.Itoa(i), Pages: cfg.pages}
		if cfg.k > 0 {
			k := int32(cfg.k)
			reqs[i].K = &k
		}
		if cfg.threshold >= 0 {
			t := cfg.threshold
			reqs[i].Threshold = &t
		}
	}
	ping := &prefetchv1.PingRequest{}
	calls := map[string]callFunc{
		"Ping": func(ctx context.Context, worker, i int) error {
			_, err := clients[worker%len(clients)].Ping(ctx, ping)
			return err
		},
		"Predict": func(ctx context.Context, worker, i int) error {
			_, err := clients[worker%len(clients)].Predict(ctx, reqs[(worker*7919+i)%len(reqs)])
			return err
		},
	}
	// Fail fast if the server does not answer either call.
	for _, name := range []string{"Ping", "Predict"} {
		cctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		err := calls[name](cctx, 0, 0)
		cancel()
		if err != nil {
			return fmt.Errorf("first %s against %s: %w", name, addr, err)
		}
	}

	if !cfg.jsonOut {
		fmt.Fprintf(out, "target: %s at %s; %s per RPC per level in %s slices alternating Ping and Predict, after %s warm-up; GOMAXPROCS %d; %d connection(s)\n",
			target, addr, cfg.duration, cfg.slice, cfg.warmup, runtime.GOMAXPROCS(0), cfg.conns)
		fmt.Fprintf(out, "%-8s %5s %10s %10s %10s %10s %10s %7s\n", "rpc", "conc", "calls", "qps", "p50", "p99", "p99.9", "errors")
	}
	byKey := map[string]result{}
	names := []string{"Ping", "Predict"}
	for _, c := range cfg.concurrency {
		for _, name := range names {
			if cfg.warmup > 0 {
				if _, err := measure(ctx, c, cfg.warmup, cfg.timeout, calls[name]); err != nil {
					return err
				}
			}
		}
		// Alternate the two RPCs slice by slice for the whole duration.
		var rounds [2]rounds
		for done := time.Duration(0); done < cfg.duration; done += cfg.slice {
			d := min(cfg.slice, cfg.duration-done)
			for j, name := range names {
				r, err := measure(ctx, c, d, cfg.timeout, calls[name])
				if err != nil {
					return err
				}
				rounds[j].add(r)
			}
		}
		for j, name := range names {
			r := rounds[j].result(name, c)
			byKey[fmt.Sprintf("%s/%d", name, c)] = r
			if err := printResult(out, cfg.jsonOut, r); err != nil {
				return err
			}
		}
	}
	if !cfg.jsonOut {
		for _, c := range cfg.concurrency {
			p, q := byKey[fmt.Sprintf("Ping/%d", c)], byKey[fmt.Sprintf("Predict/%d", c)]
			fmt.Fprintf(out, "concurrency %d: Predict p99 / Ping p99 = %.2f; Predict %.0f/s (Ping %.0f/s)\n",
				c, float64(q.P99)/float64(max(p.P99, 1)), q.QPS, p.QPS)
		}
	}
	return nil
}

func printResult(out io.Writer, jsonOut bool, r result) error {
	if jsonOut {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode result: %w", err)
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(out, "%-8s %5d %10d %10.0f %10s %10s %10s %7d\n",
		r.RPC, r.Concurrency, r.Calls, r.QPS, fmtDur(r.P50), fmtDur(r.P99), fmtDur(r.P999), r.Errors)
	return err
}

func fmtDur(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Microsecond), 'f', 0, 64) + "µs"
}

// startInProcess serves a fake engine on a 127.0.0.1 port and returns its
// address and a function that stops it.
func startInProcess(ctx context.Context) (string, func(), error) {
	pred := &servertest.Predictor{Quiet: true, Result: hint.Result{ModelVersion: "load-test", Hints: []hint.Hint{
		{Page: "/shuttle/missions/sts-71/mission-sts-71.html", Probability: 0.41, Warm: true},
		{Page: "/shuttle/countdown/", Probability: 0.22, Warm: true},
		{Page: "/images/KSC-logosmall.gif", Probability: 0.12},
		{Page: "/history/apollo/apollo.html", Probability: 0.07},
		{Page: "/shuttle/missions/missions.html", Probability: 0.05},
	}}}
	srv, err := server.New(server.Config{}, server.Deps{Predictor: pred}, nil, nil)
	if err != nil {
		return "", nil, fmt.Errorf("start in-process server: %w", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("start in-process server: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(sctx, lis) // returns nil after cancel
	}()
	return lis.Addr().String(), func() { cancel(); <-done }, nil
}

// result is the measurement of one RPC at one concurrency level.
type result struct {
	RPC         string        `json:"rpc"`
	Concurrency int           `json:"concurrency"`
	Calls       int           `json:"calls"`
	Errors      int           `json:"errors"`
	Seconds     float64       `json:"seconds"`
	QPS         float64       `json:"qps"`
	P50         time.Duration `json:"p50_ns"`
	P99         time.Duration `json:"p99_ns"`
	P999        time.Duration `json:"p999_ns"`
	Max         time.Duration `json:"max_ns"`
}

// callFunc makes call number i of worker.
type callFunc func(ctx context.Context, worker, i int) error

// sample is the raw outcome of one measure call.
type sample struct {
	lat     []time.Duration // latencies of successful calls
	errors  int
	elapsed time.Duration
}

// rounds accumulates the samples of one RPC at one concurrency level.
type rounds struct {
	lat     []time.Duration
	errors  int
	elapsed time.Duration
}

func (r *rounds) add(s sample) {
	r.lat = append(r.lat, s.lat...)
	r.errors += s.errors
	r.elapsed += s.elapsed
}

// result computes the rate and percentiles of the accumulated samples.
func (r *rounds) result(rpc string, conc int) result {
	slices.Sort(r.lat)
	res := result{RPC: rpc, Concurrency: conc, Calls: len(r.lat), Errors: r.errors, Seconds: r.elapsed.Seconds()}
	if r.elapsed > 0 {
		res.QPS = float64(len(r.lat)) / r.elapsed.Seconds()
	}
	if n := len(r.lat); n > 0 {
		res.P50, res.P99, res.P999, res.Max = quantile(r.lat, 0.50), quantile(r.lat, 0.99), quantile(r.lat, 0.999), r.lat[n-1]
	}
	return res
}

// measure runs conc workers that call back to back for d. Failed calls are
// counted and left out of the latencies. It returns ctx's error if ctx ends
// first.
func measure(ctx context.Context, conc int, d, timeout time.Duration, call callFunc) (sample, error) {
	outs := make(chan sample, conc)
	start := time.Now()
	end := start.Add(d)
	for w := range conc {
		go func() {
			var s sample
			for i := 0; ctx.Err() == nil; i++ {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				cctx, cancel := context.WithDeadline(ctx, t0.Add(timeout))
				err := call(cctx, w, i)
				cancel()
				if err != nil {
					s.errors++
					continue
				}
				s.lat = append(s.lat, time.Since(t0))
			}
			outs <- s
		}()
	}
	var all sample
	for range conc {
		o := <-outs
		all.lat = append(all.lat, o.lat...)
		all.errors += o.errors
	}
	all.elapsed = time.Since(start)
	if err := ctx.Err(); err != nil {
		return sample{}, err
	}
	return all, nil
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
