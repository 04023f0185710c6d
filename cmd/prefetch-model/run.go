package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prefetchd/prefetchd/internal/cli"
	"github.com/prefetchd/prefetchd/model"
)

var errTolerance = errors.New("error above tolerance")

const usage = `usage:
  prefetch-model inspect MODEL.onnx
  prefetch-model verify --reference FILE [--tolerance 1e-5] MODEL.onnx
  prefetch-model bench [--batch 1] [--len 20] [--duration 2s] MODEL.onnx
  prefetch-model bench [--form step|sequence] [--k 5] [--threshold 0.01] [--duration 2s] BUNDLE_DIR

Run "prefetch-model COMMAND --help" for the flags of one command.`

// subcommands maps each command to its synopsis.
var subcommands = map[string]string{
	"inspect": "usage: prefetch-model inspect MODEL.onnx\n\nPrints the graph's inputs, outputs, opset, operators and sizes.",
	"verify":  "usage: prefetch-model verify --reference FILE [--tolerance 1e-5] MODEL.onnx\n\nRuns every case of a reference file and fails above the tolerance.",
	"bench":   "usage: prefetch-model bench [--batch 1] [--len 20] [--duration 2s] MODEL.onnx\n       prefetch-model bench [--form step|sequence] [--k 5] [--threshold 0.01] [--len 20] [--duration 2s] BUNDLE_DIR\n\nFor a model file, reports the latency per call for a batch of histories. For a bundle folder,\nreports p50 / p99 per click of the form's top-k scoring and, when scoring is approximate,\n\"exact agreement <fraction>\": the share of clicks whose hints equal exact scoring.",
}

// run executes one subcommand, writing its report to out. --help and
// --version print to out and return cli.ErrPrinted; command-line mistakes
// return errors matching cli.ErrUsage.
func run(ctx context.Context, args []string, out io.Writer) error {
	top := flag.NewFlagSet("prefetch-model", flag.ContinueOnError)
	if err := cli.Parse(top, args, out, cli.Help{Usage: usage}); err != nil {
		return err
	}
	args = top.Args()
	if len(args) == 0 {
		return cli.Usagef("no command")
	}
	switch args[0] {
	case "inspect":
		return inspect(args[1:], out)
	case "verify":
		return verify(ctx, args[1:], out)
	case "bench":
		return bench(ctx, args[1:], out)
	case "help":
		fmt.Fprintln(out, usage)
		return cli.ErrPrinted
	default:
		return cli.Usagef("unknown command %q", args[0])
	}
}

// parse parses flags that may come before or after the single positional
// MODEL.onnx argument.
func parse(fs *flag.FlagSet, args []string, out io.Writer) (string, error) {
	var pos []string
	for {
		if err := cli.Parse(fs, args, out, cli.Help{Usage: subcommands[fs.Name()]}); err != nil {
			return "", err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != 1 {
		return "", cli.Usagef("%s wants one MODEL.onnx, got %d arguments", fs.Name(), len(pos))
	}
	return pos[0], nil
}

// loadModel reads and compiles an ONNX file, refusing what is not a regular
// file or is larger than model.MaxModelBytes before reading it whole.
func loadModel(path string) (*model.Model, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s is a folder: inspect and verify take an .onnx file (e.g. %s); bench takes a bundle folder", path, filepath.Join(path, model.ModelFile))
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, st.Mode().Type())
	}
	if st.Size() > model.MaxModelBytes {
		return nil, fmt.Errorf("%s: %d bytes exceeds the limit of %d", path, st.Size(), model.MaxModelBytes)
	}
	data, err := io.ReadAll(io.LimitReader(f, model.MaxModelBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > model.MaxModelBytes {
		return nil, fmt.Errorf("%s grew beyond the limit of %d bytes while read", path, model.MaxModelBytes)
	}
	m, err := model.ParseModel(data)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	return m, nil
}

func inspect(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	path, err := parse(fs, args, out)
	if err != nil {
		return err
	}
	m, err := loadModel(path)
	if err != nil {
		return err
	}
	info := m.Info()
	w := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintf(w, "model\t%s\n", path)
	fmt.Fprintf(w, "producer\t%s\n", info.Producer)
	fmt.Fprintf(w, "ir_version\t%d\n", info.IRVersion)
	fmt.Fprintf(w, "opset\t%d\n", info.Opset)
	for _, v := range info.Inputs {
		fmt.Fprintf(w, "input\t%s\t%s\t%s\n", v.Name, v.DType, dims(v.Dims))
	}
	for _, v := range info.Outputs {
		fmt.Fprintf(w, "output\t%s\t%s\t%s\n", v.Name, v.DType, dims(v.Dims))
	}
	ops := make([]string, 0, len(info.Ops))
	for op, n := range info.Ops {
		ops = append(ops, fmt.Sprintf("%s×%d", op, n))
	}
	sort.Strings(ops)
	fmt.Fprintf(w, "ops\t%s\n", strings.Join(ops, " "))
	fmt.Fprintf(w, "nodes\t%d (%d run per call after constant folding)\n", info.Nodes, info.Steps)
	fmt.Fprintf(w, "parameters\t%d\n", info.Params)
	fmt.Fprintf(w, "bytes\t%d\n", info.Bytes)
	return w.Flush()
}

func dims(d []int64) string {
	parts := make([]string, len(d))
	for i, x := range d {
		if x < 0 {
			parts[i] = "?"
		} else {
			parts[i] = fmt.Sprint(x)
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func verify(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	refPath := fs.String("reference", "", "reference file (cases with page_ids and expected output, optional step_check)")
	tol := fs.Float64("tolerance", 1e-5, "maximum absolute error")
	path, err := parse(fs, args, out)
	if err != nil {
		return err
	}
	if *refPath == "" {
		return cli.Usagef("verify needs --reference")
	}
	if !(*tol >= 0) || math.IsInf(*tol, 1) {
		return cli.Usagef("--tolerance %v: want a finite number >= 0", *tol)
	}
	seq, err := loadModel(path)
	if err != nil {
		return err
	}
	f, err := os.Open(*refPath)
	if err != nil {
		return err
	}
	ref, err := model.ReadReference(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", *refPath, err)
	}
	var step *model.Model
	stepPath := filepath.Join(filepath.Dir(path), model.StepFile)
	if ref.StepCheck != nil {
		if _, err := os.Stat(stepPath); err == nil {
			if step, err = loadModel(stepPath); err != nil {
				return err
			}
		}
	}
	rep, err := model.Verify(ctx, seq, step, ref)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintf(w, "case\tbatch\tlength\tmax abs error\n")
	for i, e := range rep.Cases {
		c := ref.Cases[i]
		n := 0
		if len(c.PageIDs) > 0 {
			n = len(c.PageIDs[0])
		}
		fmt.Fprintf(w, "%d\t%d\t%d\t%.3g\t%s\n", i, len(c.PageIDs), n, e, verdict(e, *tol))
	}
	switch {
	case rep.Step >= 0:
		fmt.Fprintf(w, "step_check\t%d\t%d\t%.3g\t%s\n", len(ref.StepCheck.PageIDs), len(ref.StepCheck.PageIDs[0]), rep.Step, verdict(rep.Step, *tol))
	case ref.StepCheck != nil:
		fmt.Fprintf(w, "step_check\t\t\t\tskipped: no %s beside the model\n", model.StepFile)
	}
	fmt.Fprintf(w, "overall\t\t\t%.3g\t%s\n", rep.Max, verdict(rep.Max, *tol))
	if err := w.Flush(); err != nil {
		return err
	}
	if !(rep.Max <= *tol) {
		return fmt.Errorf("%w: max abs error %.3g > %g", errTolerance, rep.Max, *tol)
	}
	return nil
}

func verdict(e, tol float64) string {
	if e <= tol {
		return "ok"
	}
	return "FAIL"
}

func bench(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	batch := fs.Int("batch", 1, "histories per call")
	length := fs.Int("len", 20, "pages per history")
	form := formFlag(model.FormStep)
	fs.Var(&form, "form", "for a bundle folder: step (StepTopK, one click at a time) or sequence (PredictTopK on the history)")
	k := countFlag(5)
	fs.Var(&k, "k", "for a bundle folder: hints per click")
	threshold := fs.Float64("threshold", 0.01, "for a bundle folder: least probability of a hint")
	dur := fs.Duration("duration", 2*time.Second, "how long to measure")
	vocab := fs.Int("vocab", 0, "page indices are drawn from [2, vocab); 0 takes vocab from the output shape")
	path, err := parse(fs, args, out)
	if err != nil {
		return err
	}
	if !(*threshold >= 0 && *threshold <= 1) {
		return cli.Usagef("--threshold %v outside [0, 1]", *threshold)
	}
	if cli.IsSet(fs, "vocab") && *vocab < 3 {
		return cli.Usagef("--vocab %d: want at least 3 (<pad>, <unk> and a page)", *vocab)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() && *length >= 1 && *dur > 0 {
		// A bundle folder; bad --len or --duration fall to the check below.
		return bundleBench{dir: path, form: string(form), length: *length, k: int(k), threshold: float32(*threshold), dur: *dur}.run(ctx, out)
	}
	if *batch < 1 || *length < 1 || *dur <= 0 {
		return cli.Usagef("--batch, --len and --duration must be positive")
	}
	m, err := loadModel(path)
	if err != nil {
		return err
	}
	info := m.Info()
	if len(info.Inputs) != 1 || info.Inputs[0].DType != "int64" {
		return fmt.Errorf("bench runs sequence-form models (one int64 input), %s has %d inputs", path, len(info.Inputs))
	}
	v := *vocab
	if v == 0 && len(info.Outputs) > 0 {
		if d := info.Outputs[0].Dims; len(d) == 2 && d[1] > 0 {
			v = int(d[1])
		}
	}
	if v < 3 {
		return cli.Usagef("cannot tell the vocabulary size; pass --vocab")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	ids := make([]int64, *batch**length)
	for i := range ids {
		ids[i] = 2 + rng.Int64N(int64(v-2))
	}
	in := map[string]model.Tensor{info.Inputs[0].Name: {Shape: []int{*batch, *length}, Int64: ids}}
	// Warm up, then measure until the duration is spent.
	if _, err := m.Run(ctx, in); err != nil {
		return err
	}
	lat := make([]time.Duration, 0, 1024)
	start := time.Now()
	for time.Since(start) < *dur {
		t0 := time.Now()
		if _, err := m.Run(ctx, in); err != nil {
			return err
		}
		lat = append(lat, time.Since(t0))
	}
	total := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	w := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintf(w, "model\t%s\n", path)
	fmt.Fprintf(w, "batch × length\t%d × %d\n", *batch, *length)
	fmt.Fprintf(w, "calls\t%d\n", len(lat))
	fmt.Fprintf(w, "mean per call\t%v\n", total/time.Duration(len(lat)))
	fmt.Fprintf(w, "p50 / p99\t%v / %v\n", q(0.5), q(0.99))
	fmt.Fprintf(w, "per history\t%v\n", total/time.Duration(len(lat)*(*batch)))
	return w.Flush()
}
