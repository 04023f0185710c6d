// Package cli gives every prefetchd command the same command-line manners:
// --version prints the module version and VCS revision from the build info,
// -h/--help prints the usage to stdout and exits 0, and a usage mistake is
// one line on stderr, last, with exit status 2. It also maps flags to
// environment variables (PREFETCHD_KAFKA_BROKERS for --kafka-brokers) and
// refuses variables under a prefix that match no flag.
//
// A main uses it like this:
//
//	func main() {
//		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//		err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
//		stop()
//		os.Exit(cli.Exit("name", err, os.Stderr))
//	}
//
// and run starts with `if err := cli.Parse(fs, args, stdout, help); err != nil { return err }`.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
)

// ErrUsage marks a command-line mistake: exit status 2.
var ErrUsage = errors.New("usage")

// ErrPrinted is returned by Parse once it has printed the help or the
// version: the command has nothing more to do and exits 0.
var ErrPrinted = errors.New("help or version printed")

// Usagef returns a usage error (one that matches ErrUsage); %w works.
func Usagef(format string, a ...any) error {
	return UsageError(fmt.Errorf(format, a...))
}

// UsageError marks err as a usage error: it matches ErrUsage and still
// unwraps to err. It returns nil for nil.
func UsageError(err error) error {
	if err == nil {
		return nil
	}
	return &usageError{err: err}
}

type usageError struct{ err error }

func (e *usageError) Error() string        { return e.err.Error() }
func (e *usageError) Unwrap() error        { return e.err }
func (e *usageError) Is(target error) bool { return target == ErrUsage }

// Exit reports err and returns the process exit status: 0 for nil or
// ErrPrinted; otherwise it writes "name: err" as one line to stderr and
// returns 2 for a usage error and 1 for any other.
func Exit(name string, err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, ErrPrinted) || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	msg := strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
	if errors.Is(err, ErrUsage) {
		fmt.Fprintf(stderr, "%s: %s (see %s --help)\n", name, msg, name)
		return 2
	}
	fmt.Fprintf(stderr, "%s: %s\n", name, msg)
	return 1
}

// Version describes the running binary from its build info: module path,
// module version, VCS revision and time (with "+dirty" for a modified work
// tree) and the Go version. Fields the build did not record are left out.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown version (no build info)"
	}
	var rev, when, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	parts := []string{}
	if bi.Main.Path != "" {
		parts = append(parts, bi.Main.Path)
	}
	if bi.Main.Version != "" {
		parts = append(parts, bi.Main.Version)
	}
	if rev != "" {
		parts = append(parts, "revision "+rev+dirty)
	}
	if when != "" {
		parts = append(parts, when)
	}
	parts = append(parts, bi.GoVersion)
	return strings.Join(parts, " ")
}

// Help is what a command's --help says besides its flags.
type Help struct {
	// Usage is printed first: the synopsis lines ("usage: name [flags] FILE").
	Usage string
	// EnvPrefix, when set, names each flag's environment variable in the
	// help (see EnvName).
	EnvPrefix string
}

// Parse adds --version to fs (unless fs has one) and parses args. On -h or
// --help it prints h and the flags to stdout, on --version the name and
// Version, and returns ErrPrinted. A bad flag returns a usage error; the
// flag package's own usage output is discarded.
func Parse(fs *flag.FlagSet, args []string, stdout io.Writer, h Help) error {
	if fs.Lookup("version") == nil {
		fs.Bool("version", false, "print the version and exit")
	}
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		PrintHelp(stdout, fs, h)
		return ErrPrinted
	}
	if err != nil {
		return UsageError(err)
	}
	if v := fs.Lookup("version"); v != nil && v.Value.String() == "true" {
		fmt.Fprintln(stdout, fs.Name(), Version())
		return ErrPrinted
	}
	return nil
}

// PrintHelp writes h.Usage and then every flag of fs, one or two lines each:
// name, type, environment variable (with h.EnvPrefix), then the usage and
// the default.
func PrintHelp(w io.Writer, fs *flag.FlagSet, h Help) {
	if h.Usage != "" {
		fmt.Fprintln(w, strings.TrimRight(h.Usage, "\n"))
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return
	}
	fmt.Fprintln(w, "\nflags:")
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		if h.EnvPrefix != "" && f.Name != "version" {
			line += "  [$" + EnvName(h.EnvPrefix, f.Name) + "]"
		}
		fmt.Fprintln(w, line)
		if !isZero(f.DefValue) {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintln(w, "        "+strings.ReplaceAll(usage, "\n", "\n        "))
	})
}

func isZero(def string) bool {
	switch def {
	case "", "0", "false", "0s", "[]":
		return true
	}
	return false
}

// EnvName is the environment variable of flag name: prefix, then the name in
// upper case with dashes as underscores (PREFETCHD_ + kafka-brokers =
// PREFETCHD_KAFKA_BROKERS).
func EnvName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// ApplyEnv sets every flag of fs that the command line did not set from its
// environment variable in environ ("KEY=value" entries, as os.Environ), when
// that is not empty. A variable starting with prefix that names no flag is an
// error naming it, with the closest known variable as a suggestion. --version
// has no variable.
func ApplyEnv(fs *flag.FlagSet, prefix string, environ []string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	known := map[string]*flag.Flag{}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "version" {
			known[EnvName(prefix, f.Name)] = f
		}
	})
	var errs []error
	for _, kv := range environ {
		key, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		f, ok := known[key]
		if !ok {
			errs = append(errs, unknownEnv(key, known))
			continue
		}
		if set[f.Name] || val == "" {
			continue
		}
		if err := fs.Set(f.Name, val); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", key, val, err))
		}
	}
	return errors.Join(errs...)
}

func unknownEnv(key string, known map[string]*flag.Flag) error {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	best, bestD := "", len(key)/3+1 // suggest only close names
	for _, k := range names {
		if d := distance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Errorf("unknown environment variable %s (did you mean %s?)", key, best)
	}
	return fmt.Errorf("unknown environment variable %s", key)
}

// distance is the Levenshtein edit distance between a and b (bytes).
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// IsSet reports whether flag name was given on fs's command line (not left
// at its default): for settings where the default and an explicit value
// must be told apart.
func IsSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// CheckHostPort checks that a is host:port with a port number from 1 to
// 65535. A value that looks like a URL (which may carry a password) is
// refused without being quoted back.
func CheckHostPort(a string) error {
	if strings.Contains(a, "://") || strings.Contains(a, "@") {
		return errors.New("an address is host:port, not a URL (credentials go in their own flags or variables; the value is not repeated here)")
	}
	shown := strconv.Quote(a)
	if strings.IndexFunc(a, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_:[]%", r))
	}) >= 0 {
		// Not a host name or an IP address: it may hold a secret.
		shown = "the value (not repeated here)"
	}
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%s is not host:port", shown)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%s: the port is not a number from 1 to 65535", shown)
	}
	return nil
}

// NameVariables rewrites err's message so that each flag of fs set from its
// environment variable (set, but not in onCmdline) is named with the
// variable: "--k 0 outside 1..100" becomes "--k (PREFETCHD_K) 0 outside
// 1..100", so that a mistake made in the environment is found there. err
// is returned as it is when no such flag is named in it.
func NameVariables(err error, fs *flag.FlagSet, prefix string, onCmdline map[string]bool) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	fs.Visit(func(f *flag.Flag) {
		if onCmdline[f.Name] {
			return
		}
		token := "--" + f.Name
		var b strings.Builder
		rest := msg
		for {
			i := strings.Index(rest, token)
			if i < 0 {
				b.WriteString(rest)
				break
			}
			end := i + len(token)
			b.WriteString(rest[:end])
			if end == len(rest) || !isFlagChar(rest[end]) {
				b.WriteString(" (" + EnvName(prefix, f.Name) + ")")
				changed = true
			}
			rest = rest[end:]
		}
		msg = b.String()
	})
	if !changed {
		return err
	}
	return errors.New(msg)
}

func isFlagChar(c byte) bool {
	return c == '-' || c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}
