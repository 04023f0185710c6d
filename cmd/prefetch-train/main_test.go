package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/internal/cli/clitest"
	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/training"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// writeClicks writes a JSONL click log: users browse a small site with a
// second-order pattern, in sessions separated by more than the 30 minute
// gap, plus a few malformed lines the reader must skip.
func writeClicks(t *testing.T, path string, users int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	var buf bytes.Buffer
	t0 := time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	for u := range users {
		ts := t0.Add(time.Duration(u) * time.Minute)
		for range 2 {
			a := rng.IntN(5)
			for range 3 + rng.IntN(5) {
				line, _ := json.Marshal(map[string]string{
					"user_id": fmt.Sprintf("u%d", u),
					"page":    fmt.Sprintf("https://shop.example.com/page/%d/?utm=x", a),
					"ts":      ts.Format(time.RFC3339),
				})
				buf.Write(append(line, '\n'))
				ts = ts.Add(time.Duration(10+rng.IntN(50)) * time.Second)
				a = (a*3 + 1 + rng.IntN(2)) % 9
			}
			ts = ts.Add(2 * time.Hour)
		}
	}
	buf.WriteString("{not json\n{\"user_id\":\"\",\"page\":\"/a\",\"ts\":\"2026-11-01T08:00:00Z\"}\n")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTrainPublishServe trains on a small click log with the command,
// publishes into a model repository watched by the service's lifecycle
// manager, and checks that the new version goes live and answers Predict
// with the trainer's probabilities.
func TestTrainPublishServe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	dir := t.TempDir()
	clicks := filepath.Join(dir, "clicks.jsonl")
	writeClicks(t, clicks, 300)
	repo := filepath.Join(dir, "models")

	// Version 1: the Markov baseline, already live when the service starts.
	var out bytes.Buffer
	args := []string{"--input", clicks, "--format", "jsonl", "--no-gru", "--name", "shop", "--bundle-version", "v1",
		"--vocab-min-count", "1", "--out", filepath.Join(dir, "v1"), "--publish", repo}
	if err := run(ctx, args, &out, &out); err != nil {
		t.Fatalf("prefetch-train v1: %v\n%s", err, out.String())
	}
	mgr, err := lifecycle.New(lifecycle.Config{Repo: repo, Name: "shop", PollInterval: 100 * time.Millisecond, Debounce: 20 * time.Millisecond},
		lifecycle.LoadBundle, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if live := mgr.Current(); live == nil || live.Version != "v1" {
		t.Fatalf("live version %+v, want v1", live)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()

	// Version 2: the GRU, trained while the service runs.
	out.Reset()
	args = []string{"--input", clicks, "--format", "jsonl", "--name", "shop", "--bundle-version", "v2",
		"--vocab-min-count", "1", "--gru-hidden", "8", "--gru-embedding", "4", "--gru-epochs", "2",
		"--out", filepath.Join(dir, "v2"), "--publish", repo}
	if err := run(ctx, args, &out, &out); err != nil {
		t.Fatalf("prefetch-train v2: %v\n%s", err, out.String())
	}
	var rep training.Report
	b, err := os.ReadFile(filepath.Join(dir, "v2", "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if len(rep.Results) != 8 || rep.Result(training.ModelGRU) == nil || rep.Result(training.ModelGRU).Transitions == 0 {
		t.Fatalf("report results %+v, want the seven baselines and gru scored on held-out transitions", rep.Results)
	}
	if rep.Exported != training.ModelGRU || rep.BestBaseline == "" || !strings.Contains(rep.Verdict, rep.BestBaseline) {
		t.Errorf("report exports %q, best baseline %q, verdict %q; want gru compared with the best baseline",
			rep.Exported, rep.BestBaseline, rep.Verdict)
	}
	for _, f := range []string{"report.txt", "recall.svg", model.ModelFile, training.StepFile} {
		if _, err := os.Stat(filepath.Join(dir, "v2", f)); err != nil {
			t.Errorf("output lacks %s: %v", f, err)
		}
	}
	// The published version carries the same reports (the status page
	// shows its report.json).
	for _, f := range []string{"report.json", "report.txt", "recall.svg"} {
		want, _ := os.ReadFile(filepath.Join(dir, "v2", f))
		got, err := os.ReadFile(filepath.Join(repo, "shop", "v2", f))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("published %s: %v, %d bytes; want the output's %d bytes", f, err, len(got), len(want))
		}
	}

	var live *lifecycle.Live
	for live = mgr.Current(); live.Version != "v2"; live = mgr.Current() {
		select {
		case <-ctx.Done():
			t.Fatalf("version v2 not live before the deadline; live is %s", live.Version)
		case <-time.After(20 * time.Millisecond):
		}
	}
	page := "/page/3" // the service's canonical form of https://shop.example.com/page/3/?utm=x
	idx, ok := live.Vocab.Lookup(page)
	if !ok {
		t.Fatalf("page %s not in the live vocabulary", page)
	}
	got, err := live.Model.Predict(ctx, [][]int64{{idx}})
	if err != nil {
		t.Fatalf("Predict: %v", err)
	}
	trained, err := model.LoadBundle(filepath.Join(dir, "v2"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := trained.PredictOne(ctx, []int64{idx}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if math.Abs(float64(got[0][i]-want[i])) > 1e-6 {
			t.Fatalf("live v2 probs[%d] = %v, trained bundle gives %v", i, got[0][i], want[i])
		}
	}
	if live.Manifest.Cell != training.CellGRU || !live.Manifest.HasForm(model.FormStep) {
		t.Errorf("live manifest cell %q forms %v, want the gru with its step form", live.Manifest.Cell, live.Manifest.Forms)
	}
}

func TestFlags(t *testing.T) {
	cases := append(clitest.Common("prefetch-train"),
		clitest.Case{Name: "help lists flags", Args: []string{"--help"}, Stdout: []string{"usage: prefetch-train", "--gru-hidden int", "--format string"}},
		clitest.Case{Name: "missing out", Args: []string{"--input", "x", "--format", "spmf"}, Exit: 2, Stderr: "--out are required"},
		clitest.Case{Name: "stray argument", Args: []string{"--input", "x", "--format", "spmf", "--out", t.TempDir(), "extra"}, Exit: 2, Stderr: "unexpected arguments"},
	)
	// Zero and other values a setting cannot take are usage mistakes, never
	// replaced by the default.
	base := []string{"--input", "x", "--format", "jsonl", "--out", t.TempDir()}
	strictCanon := filepath.Join(t.TempDir(), "canonical.json")
	if err := os.WriteFile(strictCanon, []byte(`{"query_alow": ["id"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "shop", "v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	dataDir := t.TempDir()
	for _, f := range []string{notDir, filepath.Join(dataDir, "clicks.seq")} {
		if err := os.WriteFile(f, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kafka := []string{"--format", "kafka", "--kafka-brokers", "127.0.0.1:1", "--out", t.TempDir()}
	for _, c := range []struct {
		name, stderr string
		args         []string
	}{
		{"out is a file", "is not a folder", []string{"--input", "x", "--format", "spmf", "--out", notDir}},
		{"out holds data", "holds clicks.seq", []string{"--input", "x", "--format", "spmf", "--out", dataDir}},
		{"kafka from not a time", `--from "yesterday"`, append(slices.Clone(kafka), "--from", "yesterday")},
		{"kafka offsets reversed", "from offset 10 is not before to offset 5", append(slices.Clone(kafka), "--from-offset", "10", "--to-offset", "5")},
		{"kafka without brokers", "needs --kafka-brokers", []string{"--format", "kafka", "--out", t.TempDir()}},
		{"kafka broker URL", "--kafka-brokers: an address is host:port, not a URL", []string{"--format", "kafka", "--kafka-brokers", "sasl://alice:s3cretPW@127.0.0.1:9092", "--out", t.TempDir()}},
		{"kafka broker without a port", `--kafka-brokers: "localhost" is not host:port`, []string{"--format", "kafka", "--kafka-brokers", "localhost", "--out", t.TempDir()}},
		{"kafka with an input file", "--input names a file", append(slices.Clone(kafka), "--input", "x")},
		{"kafka sasl mechanism unknown", `--kafka-sasl-mechanism "GSSAPI"`, append(slices.Clone(kafka), "--kafka-sasl-mechanism", "GSSAPI", "--kafka-username", "u")},
		{"kafka sasl without user", "--kafka-sasl-mechanism needs --kafka-username", append(slices.Clone(kafka), "--kafka-sasl-mechanism", "PLAIN")},
		{"kafka user without sasl", "need --kafka-sasl-mechanism", append(slices.Clone(kafka), "--kafka-username", "u")},
		{"kafka CA missing", "read CA", append(slices.Clone(kafka), "--kafka-ca", filepath.Join(t.TempDir(), "none.pem"))},
		{"kafka tls with a file", "--kafka-tls reads Kafka", []string{"--input", "x", "--format", "spmf", "--kafka-tls", "--out", t.TempDir()}},
		{"max-seq-len above a bundle's", "--max-seq-len 5000: want 1 to 4096", []string{"--input", "x", "--format", "spmf", "--max-seq-len", "5000", "--out", t.TempDir()}},
		{"cpuprofile over the input", "is the input: it would be overwritten", []string{"--input", notDir, "--format", "spmf", "--cpuprofile", notDir, "--out", t.TempDir()}},
		{"cpuprofile unwritable", "--cpuprofile", []string{"--input", "x", "--format", "spmf", "--cpuprofile", filepath.Join(notDir, "x.prof"), "--out", t.TempDir()}},
		{"session gap with spmf", "--session-gap applies to jsonl and kafka, not spmf", []string{"--input", "x", "--format", "spmf", "--session-gap", "1m", "--out", t.TempDir()}},
		{"canonical config with msnbc", "--canonical-config applies to jsonl and kafka, not msnbc", []string{"--input", "x", "--format", "msnbc", "--canonical-config", "c.json", "--out", t.TempDir()}},
	} {
		cases = append(cases, clitest.Case{Name: c.name, Args: c.args, Exit: 2, Stderr: c.stderr})
	}
	for _, c := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"--holdout", "0"}, "--holdout 0"},
		{[]string{"--holdout", "1"}, "--holdout 1"},
		{[]string{"--top-k", "0"}, "--top-k 0"},
		{[]string{"--max-seq-len", "0"}, "--max-seq-len 0"},
		{[]string{"--vocab-min-count", "0"}, "--vocab-min-count 0"},
		{[]string{"--vocab-max", "-1"}, "--vocab-max -1"},
		{[]string{"--threshold", "1.5"}, "--threshold 1.5"},
		{[]string{"--alpha", "0"}, "--alpha 0"},
		{[]string{"--model", "lstm"}, `--model "lstm"`},
		{[]string{"--model", "gru", "--no-gru"}, "--no-gru"},
		// Checked before the input (x, which does not exist) is read.
		{[]string{"--gru-distill", "2"}, "--gru-distill 2"},
		{[]string{"--gru-epochs", "-1"}, "--gru-epochs -1"},
		{[]string{"--gru-lr-decay", "1.5"}, "--gru-lr-decay 1.5"},
		{[]string{"--gru-dropout-hidden", "1"}, "--gru-dropout-hidden 1"},
		{[]string{"--gru-sample-exponent", "3"}, "--gru-sample-exponent 3"},
		{[]string{"--gru-tied", "--gru-embedding", "8", "--gru-hidden", "16"}, "tied"},
		{[]string{"--vocab-max", "1"}, "vocab max size 1"},
		{[]string{"--session-gap", "0s"}, "--session-gap 0s"},
		{[]string{"--topic", "clicks"}, "--topic reads Kafka: it needs --format kafka"},
		{[]string{"--from-offset", "5"}, "--from-offset reads Kafka"},
		{[]string{"--name", ""}, "--name is empty"},
		{[]string{"--name", "../shop"}, `"../shop"`},
		{[]string{"--bundle-version", "a/b"}, `"a/b"`},
		{[]string{"--canonical-config", strictCanon}, `unknown field "query_alow"`},
		{[]string{"--publish", repo, "--name", "shop", "--bundle-version", "v1"}, "already published"},
		{[]string{"--publish", notDir}, "model repository not writable"},
	} {
		cases = append(cases, clitest.Case{Name: strings.Join(c.args, " "), Args: append(slices.Clone(base), c.args...), Exit: 2, Stderr: c.stderr})
	}
	cases = append(cases, clitest.Case{Name: "unknown format names kafka", Args: []string{"--input", "x", "--format", "csv", "--out", t.TempDir()}, Exit: 2, Stderr: "spmf or kafka"})
	clitest.Check(t, "prefetch-train", func(ctx context.Context, args []string, stdout *bytes.Buffer) error {
		return run(ctx, args, stdout, io.Discard)
	}, cases)
	for _, f := range []string{notDir, filepath.Join(dataDir, "clicks.seq")} {
		if b, err := os.ReadFile(f); err != nil || string(b) != "keep" {
			t.Errorf("refused --out: %s now %q, %v; want it kept", f, b, err)
		}
	}
}

// TestHelpIsAccurate checks that --help names what the trainer trains and
// the formats each input setting applies to.
func TestHelpIsAccurate(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, io.Discard); !errors.Is(err, cli.ErrPrinted) {
		t.Fatalf("--help: %v", err)
	}
	help := out.String()
	for _, want := range []string{
		"seven baselines (popularity, markov1, markov2, ngram, sr, vsknn,\nstan) and a GRU",
		"--canonical-config string\n        jsonl and kafka:",
		"--session-gap duration\n        jsonl and kafka:",
		"--collapse-repeats\n        every format:",
		"new, empty or hold only such files",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, "first-order Markov and GRU models") {
		t.Errorf("--help still says it trains only popularity, markov1 and the GRU")
	}
}

// trainOn writes lines to a file and runs the trainer on it with args.
func trainOn(t *testing.T, format, lines string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	in := filepath.Join(dir, "in."+format)
	if err := os.WriteFile(in, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	return out, run(ctx, append([]string{"--input", in, "--format", format, "--no-gru", "--out", out}, args...), io.Discard, io.Discard)
}

// TestPagesWithLineBreaks trains on a log whose pages hold newlines: they
// stay out of the vocabulary and the bundle loads in the service.
func TestPagesWithLineBreaks(t *testing.T) {
	var lines strings.Builder
	for u := range 20 {
		for i, p := range []string{"/a", "/c\nd", "/b", "/e\rf", "/a", "/b"} {
			line, _ := json.Marshal(map[string]string{"user_id": fmt.Sprintf("u%d", u), "page": p,
				"ts": time.Date(2026, 11, 1, 8, i, 0, 0, time.UTC).Format(time.RFC3339)})
			lines.Write(append(line, '\n'))
		}
	}
	out, err := trainOn(t, "jsonl", lines.String())
	if err != nil {
		t.Fatalf("train: %v", err)
	}
	b, err := model.LoadBundle(out)
	if err != nil {
		t.Fatalf("LoadBundle: %v", err)
	}
	if n := b.Vocab().Len(); n != 4 {
		t.Errorf("vocabulary of %d entries, want <pad>, <unk>, /a, /b", n)
	}
}

// TestNothingToLearn refuses inputs too small to train and score on, with
// a message that says what to change.
func TestNothingToLearn(t *testing.T) {
	tests := []struct {
		name, lines string
		args        []string
		want        string
	}{
		{"one session", "% Sequences:\n1 2 3\n", nil, "need at least 3 sessions"},
		{"two sessions", "% Sequences:\n1 2 3\n4 5\n", nil, "2 sessions split into 2 for training and 0 held out"},
		{"pages seen once", "% Sequences:\n1 2 3\n4 5\n6 7\n", nil, "no page reached --vocab-min-count (2 views)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := trainOn(t, "msnbc", tc.lines, tc.args...)
			if err == nil || errors.Is(err, cli.ErrUsage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("train: %v, want an error (not a usage one) saying %q", err, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("a refused run wrote %s", out)
			}
		})
	}
}

// TestOutReplacesPreviousBundle runs twice into one folder: the second run
// replaces the first's bundle.
func TestOutReplacesPreviousBundle(t *testing.T) {
	var seq strings.Builder
	seq.WriteString("% Sequences:\n")
	for i := range 40 {
		fmt.Fprintf(&seq, "%d %d %d\n", 1+i%3, 2+i%4, 1+i%5)
	}
	out, err := trainOn(t, "msnbc", seq.String(), "--bundle-version", "v1")
	if err != nil {
		t.Fatalf("first run: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	in := filepath.Join(filepath.Dir(out), "in.msnbc")
	if err := run(ctx, []string{"--input", in, "--format", "msnbc", "--no-gru", "--out", out, "--bundle-version", "v2"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("second run into the first's bundle: %v", err)
	}
	b, err := model.LoadBundle(out)
	if err != nil || b.Manifest().Version != "v2" {
		t.Fatalf("LoadBundle: %v; want version v2", err)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		name string
		args []string
	}{
		{"missing input", []string{"--format", "spmf", "--out", t.TempDir()}},
		{"unknown format", []string{"--input", "x", "--format", "csv", "--out", t.TempDir()}},
		{"missing file", []string{"--input", filepath.Join(t.TempDir(), "none"), "--format", "spmf", "--out", t.TempDir()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := run(ctx, tc.args, &out, &out); err == nil {
				t.Fatalf("run(%v) succeeded, want an error", tc.args)
			}
		})
	}
}
