package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/prefetchd/prefetchd/features"
	"github.com/prefetchd/prefetchd/internal/cli"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// defaultAddr is prefetchd's default gRPC listen address.
const defaultAddr = "127.0.0.1:50051"

const usage = `usage: prefetchctl [flags] COMMAND [flags]

commands:
  predict --user U [--pages a,b] [--k N] [--threshold F]
  watch --user U [--user V ...] | watch --any  [--threshold F]
  ingest --file events.jsonl            (one JSON click per line, "-" for stdin)
  model status
  model activate VERSION
  model rollback
  health                                (exit 0 when prefetchd reports SERVING; for health checks)

Run "prefetchctl COMMAND --help" for the flags of one command.
PREFETCHCTL_ADDR sets the default of --addr. The flags below go before or
after the command.`

// synopsis is each command's line of the usage.
var synopsis = map[string]string{
	"predict":        "predict --user U [--pages a,b] [--k N] [--threshold F]",
	"watch":          "watch (--user U [--user V ...] | --any) [--threshold F]",
	"ingest":         "ingest --file events.jsonl",
	"model status":   "model status",
	"model activate": "model activate VERSION",
	"model rollback": "model rollback",
	"health":         "health",
}

// options are the flags every command accepts.
type options struct {
	addr     string
	tlsCA    string
	tlsCert  string
	tlsKey   string
	token    string // path of the token file
	timeout  time.Duration
	jsonOut  bool
	out      io.Writer
	in       io.Reader
	health   healthpb.HealthClient
	hints    prefetchv1.HintServiceClient
	models   prefetchv1.ModelServiceClient
	authMeta metadata.MD
}

// register adds the common flags to fs.
func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.addr, "addr", o.addr, "prefetchd gRPC address host:port")
	fs.StringVar(&o.tlsCA, "tls-ca", o.tlsCA, "PEM CA that signs the server certificate (enables TLS)")
	fs.StringVar(&o.tlsCert, "tls-cert", o.tlsCert, "PEM client certificate for mutual TLS (needs --tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", o.tlsKey, "PEM client key for mutual TLS")
	fs.StringVar(&o.token, "token-file", o.token, "file holding the admin bearer token (model commands)")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "deadline of unary calls")
	fs.BoolVar(&o.jsonOut, "json", o.jsonOut, "print responses as JSON, one per line")
}

// run parses args, connects to prefetchd and runs one command. It returns
// when the command is done or ctx ends (watch runs until then). --help and
// --version print to stdout and return cli.ErrPrinted; command-line mistakes
// return errors matching cli.ErrUsage.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	o := &options{addr: defaultAddr, timeout: 10 * time.Second, out: stdout, in: stdin}
	if a := getenv("PREFETCHCTL_ADDR"); a != "" {
		o.addr = a
	}
	top := flag.NewFlagSet("prefetchctl", flag.ContinueOnError)
	o.register(top)
	if err := cli.Parse(top, args, stdout, cli.Help{Usage: usage}); err != nil {
		return err
	}
	rest := top.Args()
	if len(rest) == 0 {
		return cli.Usagef("no command")
	}
	cmd, rest := rest[0], rest[1:]
	if cmd == "model" {
		if len(rest) == 0 {
			return cli.Usagef("model needs status, activate VERSION or rollback")
		}
		switch rest[0] {
		case "-h", "-help", "--help":
			_, err := fmt.Fprintln(stdout, "usage: prefetchctl [flags] model status|activate VERSION|rollback [flags]\n"+
				"  (prefetchctl model COMMAND --help lists a command's flags)")
			return err
		}
		cmd, rest = "model "+rest[0], rest[1:]
	}
	fs := flag.NewFlagSet("prefetchctl "+cmd, flag.ContinueOnError)
	o.register(fs)
	var c command
	switch cmd {
	case "predict":
		c = newPredict(fs)
	case "watch":
		c = newWatch(fs)
	case "ingest":
		c = newIngest(fs)
	case "model status":
		c = &modelStatus{}
	case "model activate":
		c = &modelActivate{}
	case "model rollback":
		c = &modelRollback{}
	case "health":
		c = &healthCheck{}
	default:
		return cli.Usagef("unknown command %q", cmd)
	}
	// Flags may come after the positional arguments too
	// ("model activate v4 --token-file t").
	var positional []string
	for {
		if err := cli.Parse(fs, rest, stdout, cli.Help{Usage: "usage: prefetchctl [flags] " + synopsis[cmd]}); err != nil {
			return err
		}
		rest = fs.Args()
		if len(rest) == 0 || rest[0] == "--" {
			if len(rest) > 0 {
				positional = append(positional, rest[1:]...)
			}
			break
		}
		positional = append(positional, rest[0])
		rest = rest[1:]
	}
	if err := c.check(positional); err != nil {
		return cli.UsageError(err)
	}
	if o.timeout <= 0 {
		return cli.Usagef("--timeout %v is not positive", o.timeout)
	}
	if err := cli.CheckHostPort(o.addr); err != nil {
		return cli.Usagef("--addr (or PREFETCHCTL_ADDR): %v", err)
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	o.health = healthpb.NewHealthClient(conn)
	o.hints = prefetchv1.NewHintServiceClient(conn)
	o.models = prefetchv1.NewModelServiceClient(conn)
	if strings.HasPrefix(cmd, "model ") {
		if err := o.loadToken(); err != nil {
			return err
		}
	}
	return c.run(ctx, o)
}

// dial builds the client connection: TLS when --tls-ca is set, mutual TLS
// with --tls-cert and --tls-key.
func (o *options) dial() (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, cli.Usagef("--tls-cert and --tls-key go together")
	}
	if o.tlsCert != "" && o.tlsCA == "" {
		return nil, cli.Usagef("--tls-cert needs --tls-ca")
	}
	if o.tlsCA != "" {
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("read --tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s holds no PEM certificate", o.tlsCA)
		}
		tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if o.tlsCert != "" {
			cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
			if err != nil {
				return nil, fmt.Errorf("load client key pair: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	}
	// Keepalive pings find a server that stopped answering mid-stream
	// (ingest, watch) within about 20 s (the server allows one per 10 s).
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 15 * time.Second, Timeout: 5 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", o.addr, err)
	}
	return conn, nil
}

// loadToken reads --token-file into the metadata of model calls.
func (o *options) loadToken() error {
	if o.token == "" {
		return nil
	}
	b, err := os.ReadFile(o.token)
	if err != nil {
		return fmt.Errorf("read --token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return fmt.Errorf("--token-file %s is empty", o.token)
	}
	o.authMeta = metadata.Pairs("authorization", "Bearer "+tok)
	return nil
}

// maxK is the server's largest k (hint queries ask for 1..100 hints).
const maxK = 100

// unaryCtx bounds a unary call by --timeout and attaches credentials.
func (o *options) unaryCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.authMeta != nil {
		ctx = metadata.NewOutgoingContext(ctx, o.authMeta)
	}
	return context.WithTimeout(ctx, o.timeout)
}

// print writes m as one JSON line with --json, or as text from textFn.
func (o *options) print(m proto.Message, textFn func(w io.Writer)) error {
	if o.jsonOut {
		b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
		if err != nil {
			return fmt.Errorf("encode response: %w", err)
		}
		_, err = fmt.Fprintf(o.out, "%s\n", b)
		return err
	}
	textFn(o.out)
	return nil
}

// command is one subcommand: check validates its positional arguments, run
// does the work.
type command interface {
	check(args []string) error
	run(ctx context.Context, o *options) error
}

// noArgs is embedded by commands that take no positional arguments.
type noArgs struct{}

func (noArgs) check(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected arguments %q", args)
	}
	return nil
}

// predict asks for hints once.
type predict struct {
	noArgs
	user      string
	pages     string
	k         int
	threshold float64
	fs        *flag.FlagSet
}

func newPredict(fs *flag.FlagSet) *predict {
	p := &predict{fs: fs}
	fs.StringVar(&p.user, "user", "", "user id whose stored history to use")
	fs.StringVar(&p.pages, "pages", "", "comma-separated recent pages, oldest first, instead of the stored history")
	fs.IntVar(&p.k, "k", 0, "maximum number of hints (1..100; default: the server's)")
	fs.Float64Var(&p.threshold, "threshold", 0, "minimum probability (0..1; default: the server's)")
	return p
}

func (p *predict) check(args []string) error {
	if err := p.noArgs.check(args); err != nil {
		return err
	}
	switch {
	case p.user == "" && p.pages == "":
		return errors.New("predict needs --user U or --pages a,b")
	case cli.IsSet(p.fs, "k") && (p.k < 1 || p.k > maxK):
		return fmt.Errorf("--k %d outside 1..%d", p.k, maxK)
	case cli.IsSet(p.fs, "threshold") && !(p.threshold >= 0 && p.threshold <= 1):
		return fmt.Errorf("--threshold %v outside [0, 1]", p.threshold)
	}
	return nil
}

func (p *predict) run(ctx context.Context, o *options) error {
	req := &prefetchv1.PredictRequest{UserId: p.user}
	if p.pages != "" {
		req.Pages = strings.Split(p.pages, ",")
	}
	// Only flags given on the command line override the server's defaults.
	p.fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "k":
			k := int32(p.k)
			req.K = &k
		case "threshold":
			t := p.threshold
			req.Threshold = &t
		}
	})
	ctx, cancel := o.unaryCtx(ctx)
	defer cancel()
	resp, err := o.hints.Predict(ctx, req)
	if err != nil {
		return fmt.Errorf("predict: %w", err)
	}
	return o.print(resp, func(w io.Writer) {
		fmt.Fprintf(w, "model %s, %d hints\n", resp.GetModelVersion(), len(resp.GetHints()))
		writeHints(w, resp.GetHints())
	})
}

// writeHints prints one hint per line: probability, page, "warm" if warm.
func writeHints(w io.Writer, hints []*prefetchv1.Hint) {
	for _, h := range hints {
		warm := ""
		if h.GetWarm() {
			warm = "\twarm"
		}
		fmt.Fprintf(w, "%.4f\t%s%s\n", h.GetProbability(), h.GetPage(), warm)
	}
}

// stringList is a repeatable, comma-splitting string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	for _, x := range strings.Split(v, ",") {
		if x != "" {
			*s = append(*s, x)
		}
	}
	return nil
}

// anyUser is the WatchHints user id that asks prefetchd for a sample of
// every user's clicks.
const anyUser = "*"

// watch streams hints for users until ctx ends.
type watch struct {
	noArgs
	users     stringList
	any       bool
	threshold float64
}

func newWatch(fs *flag.FlagSet) *watch {
	w := &watch{}
	fs.Var(&w.users, "user", "user id to watch (repeatable, or comma-separated)")
	fs.BoolVar(&w.any, "any", false, "watch every user: a sample of all clicks (at most 10 a second), each with the user's top hints at any probability")
	fs.Float64Var(&w.threshold, "threshold", 0, "show only hints at or above this probability (the server sends a watched user's hints at or above its own --threshold)")
	return w
}

func (c *watch) check(args []string) error {
	if err := c.noArgs.check(args); err != nil {
		return err
	}
	switch {
	case c.any && len(c.users) > 0:
		return errors.New("watch takes --user or --any, not both")
	case !c.any && len(c.users) == 0:
		return errors.New("watch needs --user U (repeatable) or --any")
	case !(c.threshold >= 0 && c.threshold <= 1):
		return fmt.Errorf("--threshold %v outside [0, 1]", c.threshold)
	}
	return nil
}

func (c *watch) run(ctx context.Context, o *options) error {
	users := []string(c.users)
	if c.any {
		users = []string{anyUser}
	}
	stream, err := o.hints.WatchHints(ctx, &prefetchv1.WatchHintsRequest{UserIds: users})
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	for {
		u, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted by the user
			}
			return fmt.Errorf("watch: %w", err)
		}
		u.Hints = slices.DeleteFunc(u.Hints, func(h *prefetchv1.Hint) bool { return float64(h.GetProbability()) < c.threshold })
		if c.any && len(u.Hints) == 0 {
			continue
		}
		if err := o.print(u, func(w io.Writer) {
			fmt.Fprintf(w, "%s user %s, model %s\n", u.GetAt().AsTime().Format(time.RFC3339Nano), u.GetUserId(), u.GetModelVersion())
			writeHints(w, u.GetHints())
		}); err != nil {
			return err
		}
	}
}

// ingest streams click events from a JSON-lines file.
type ingest struct {
	noArgs
	file string
}

func newIngest(fs *flag.FlagSet) *ingest {
	c := &ingest{}
	fs.StringVar(&c.file, "file", "", `JSON-lines file of clicks {"user_id","page","ts" (RFC 3339),"session_id","referrer","event_id"}; "-" reads stdin`)
	return c
}

// fileEvent is one line of an ingest file: the Kafka wire format.
type fileEvent struct {
	UserID    string `json:"user_id"`
	Page      string `json:"page"`
	TS        string `json:"ts"`
	SessionID string `json:"session_id"`
	Referrer  string `json:"referrer"`
	EventID   string `json:"event_id"`
}

func (c *ingest) run(ctx context.Context, o *options) error {
	if c.file == "" {
		return cli.Usagef("ingest needs --file")
	}
	in := o.in
	if c.file != "-" {
		f, err := os.Open(c.file)
		if err != nil {
			return fmt.Errorf("ingest: %w", err)
		}
		defer f.Close()
		in = f
	}
	stream, err := o.hints.Ingest(ctx)
	if err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	var skipped []string // lines that could not be decoded here
	var skippedLines []int
	var lines []int // line number of each event sent, by stream index
	rd := bufio.NewReaderSize(in, 64*1024)
	for line := 1; ; line++ {
		raw, tooLong, err := readLine(rd, maxLine)
		if err == io.EOF && raw == nil && !tooLong {
			break
		}
		if err != nil && err != io.EOF {
			stream.CloseSend()
			return fmt.Errorf("ingest: read %s at line %d: %w", c.file, line, err)
		}
		if tooLong {
			skipped = append(skipped, fmt.Sprintf("line %d: longer than %d bytes", line, maxLine))
			skippedLines = append(skippedLines, line)
			continue
		}
		text := strings.TrimSpace(string(raw))
		if text == "" {
			continue
		}
		ev, derr := decodeLine(text)
		if derr != nil {
			skipped = append(skipped, fmt.Sprintf("line %d: %v", line, derr))
			skippedLines = append(skippedLines, line)
			continue
		}
		lines = append(lines, line)
		if err := stream.Send(ev); err != nil {
			// The server ended the stream; CloseAndRecv returns its status.
			break
		}
	}
	sum, err := stream.CloseAndRecv()
	if err != nil {
		// No summary came back: say how far the file got, so a rerun
		// (event_id makes it safe) or the service's metrics can tell the rest.
		return fmt.Errorf("ingest: the stream ended without the service's summary after %d events were handed to it (up to line %d of %s); "+
			"the service may have received fewer: rerun the file (events with an event_id are not applied twice) or check prefetchd_ingest_events_total: %w",
			len(lines), lastOr(lines, 0), c.file, err)
	}
	if o.jsonOut {
		// The JSON summary counts the lines never sent too (reason
		// unreadable); they have no place in the stream, so they are
		// listed by line apart from first_errors.
		if len(skipped) > 0 {
			sum.Rejected += uint64(len(skipped))
			if sum.RejectedByReason == nil {
				sum.RejectedByReason = map[string]uint64{}
			}
			sum.RejectedByReason["unreadable"] += uint64(len(skipped))
		}
		return printIngestJSON(o.out, sum, skippedLines, skipped)
	}
	return o.print(sum, func(w io.Writer) {
		fmt.Fprintf(w, "accepted %d, rejected %d, unreadable %d\n", sum.GetAccepted(), sum.GetRejected(), len(skipped))
		if d := sum.GetDuplicates(); d > 0 {
			fmt.Fprintf(w, "duplicates %d (event_id applied before; not applied again)\n", d)
		}
		reasons := make([]string, 0, len(sum.GetRejectedByReason()))
		for r := range sum.GetRejectedByReason() {
			reasons = append(reasons, r)
		}
		sort.Strings(reasons)
		for _, r := range reasons {
			fmt.Fprintf(w, "  %s: %d\n", r, sum.GetRejectedByReason()[r])
		}
		for _, e := range sum.GetFirstErrors() {
			if i := e.GetIndex(); i < uint64(len(lines)) {
				fmt.Fprintf(w, "  line %d: %s\n", lines[i], e.GetMessage())
			} else {
				fmt.Fprintf(w, "  event %d: %s\n", i, e.GetMessage())
			}
		}
		for i, s := range skipped {
			if i == 10 {
				fmt.Fprintf(w, "  ... %d more unreadable lines\n", len(skipped)-i)
				break
			}
			fmt.Fprintf(w, "  %s\n", s)
		}
	})
}

// maxLine is the longest input line prefetchctl ingest reads; a longer one
// is skipped as unreadable (the server refuses events far smaller).
const maxLine = 1 << 20

// readLine reads one line of rd without its end, holding at most max bytes:
// a longer line is read to its end and dropped (tooLong). It returns io.EOF
// with the last line when the input does not end with a newline, and with
// nil at the end.
func readLine(rd *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := rd.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > max+1 {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF && len(line) == 0 && !tooLong:
			return nil, false, io.EOF
		case err != nil && err != io.EOF:
			return nil, false, err
		}
		return bytes.TrimRight(line, "\r\n"), tooLong, err
	}
}

// printIngestJSON prints the summary as JSON with the unreadable lines
// listed as "unreadable_lines": [{"line": N, "message": ...}].
func printIngestJSON(w io.Writer, sum *prefetchv1.IngestSummary, lines []int, msgs []string) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(sum)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	if len(lines) > 0 {
		type unreadable struct {
			Line    int    `json:"line"`
			Message string `json:"message"`
		}
		list := make([]unreadable, 0, min(len(lines), 10))
		for i := range lines[:min(len(lines), 10)] {
			list = append(list, unreadable{lines[i], msgs[i]})
		}
		out["unreadable_lines"] = list
	}
	b, err = json.Marshal(out)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// decodeLine parses one JSON click. A missing ts is left unset so that the
// server counts it under missing_ts.
// lastOr is the last element of s, or def when s is empty.
func lastOr(s []int, def int) int {
	if len(s) == 0 {
		return def
	}
	return s[len(s)-1]
}

func decodeLine(text string) (*prefetchv1.ClickEvent, error) {
	if !utf8.ValidString(text) {
		// encoding/json would put U+FFFD in place of the bad bytes and
		// send an event the Kafka path rejects (reason utf8).
		return nil, errors.New("not valid UTF-8 (the service rejects such an event, reason utf8)")
	}
	var fe fileEvent
	if err := json.Unmarshal([]byte(text), &fe); err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	ev := &prefetchv1.ClickEvent{
		UserId: fe.UserID, Page: fe.Page, SessionId: fe.SessionID, Referrer: fe.Referrer, EventId: fe.EventID,
	}
	if fe.TS != "" {
		ts, err := features.ParseTS(fe.TS) // what the service accepts
		if err != nil {
			return nil, fmt.Errorf("ts: %w", err)
		}
		ev.Ts = timestamppb.New(ts)
	}
	return ev, nil
}

// modelStatus prints the model repository.
type modelStatus struct{ noArgs }

func (modelStatus) run(ctx context.Context, o *options) error {
	ctx, cancel := o.unaryCtx(ctx)
	defer cancel()
	resp, err := o.models.Status(ctx, &prefetchv1.StatusRequest{})
	if err != nil {
		return fmt.Errorf("model status: %w", err)
	}
	return o.print(resp, func(w io.Writer) {
		switch {
		case resp.GetActive() != "":
			fmt.Fprintf(w, "active %s\n", resp.GetActive())
		case len(resp.GetVersions()) == 0:
			fmt.Fprintln(w, "active none: the model repository holds no version yet (the service's /readyz names the folder it watches)")
		default:
			fmt.Fprintln(w, "active none: no version below could be served (see why beside each)")
		}
		for _, v := range resp.GetVersions() {
			state := "known"
			switch {
			case v.GetActive():
				state = "active"
			case strings.HasPrefix(v.GetRefusedReason(), "not served:"):
				state = v.GetRefusedReason() // a folder that is not a complete version
			case v.GetRefusedReason() != "":
				state = "refused: " + v.GetRefusedReason()
			case v.GetLoaded():
				state = "loaded"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\trequests %d\tissued %d\tused %d\tprecision %.3f\n",
				v.GetVersion(), v.GetName(), state, v.GetRequests(), v.GetPrefetchesIssued(), v.GetPrefetchesUsed(), v.GetPrecision())
		}
	})
}

// modelActivate switches to a version.
type modelActivate struct{ version string }

func (c *modelActivate) check(args []string) error {
	if len(args) != 1 {
		return errors.New("model activate needs exactly one VERSION")
	}
	c.version = args[0]
	return nil
}

func (c *modelActivate) run(ctx context.Context, o *options) error {
	ctx, cancel := o.unaryCtx(ctx)
	defer cancel()
	resp, err := o.models.Activate(ctx, &prefetchv1.ActivateRequest{Version: c.version})
	if err != nil {
		return fmt.Errorf("model activate %s: %w", c.version, err)
	}
	return o.print(resp, func(w io.Writer) { fmt.Fprintf(w, "active %s\n", resp.GetActive()) })
}

// modelRollback returns to the previous version.
type modelRollback struct{ noArgs }

func (modelRollback) run(ctx context.Context, o *options) error {
	ctx, cancel := o.unaryCtx(ctx)
	defer cancel()
	resp, err := o.models.Rollback(ctx, &prefetchv1.RollbackRequest{})
	if err != nil {
		return fmt.Errorf("model rollback: %w", err)
	}
	return o.print(resp, func(w io.Writer) { fmt.Fprintf(w, "active %s\n", resp.GetActive()) })
}

// healthCheck asks the gRPC health service about the whole server: SERVING
// prints and exits 0, anything else is an error (exit 1). Container health
// checks use it (the image has no shell or curl).
type healthCheck struct{ noArgs }

func (healthCheck) run(ctx context.Context, o *options) error {
	ctx, cancel := o.unaryCtx(ctx)
	defer cancel()
	resp, err := o.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: %s", st)
	}
	return o.print(resp, func(w io.Writer) { fmt.Fprintln(w, resp.GetStatus()) })
}
