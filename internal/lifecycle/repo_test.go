package lifecycle

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/model"
)

// TestScanRepo checks which folders count as complete versions.
func TestScanRepo(t *testing.T) {
	good := spec{version: "x"}.files(t)
	withStep := spec{version: "x", manifest: func(m *model.Manifest) { m.Forms = append(m.Forms, model.FormStep) }}.files(t)
	without := func(files map[string][]byte, name string) map[string][]byte {
		out := map[string][]byte{}
		for k, v := range files {
			if k != name {
				out[k] = v
			}
		}
		return out
	}
	const quiet = time.Minute
	tests := []struct {
		name     string
		folder   string
		files    map[string][]byte
		age      time.Duration // how long ago the files were last changed
		complete bool
		reason   string // of an incomplete folder
	}{
		{name: "complete", folder: "v1", files: good, complete: true},
		{name: "hidden folder", folder: ".v1", files: good},
		{name: "underscore folder", folder: "_v1", files: good},
		{name: "tmp suffix", folder: "v1.tmp", files: good},
		{name: "partial suffix", folder: "v1.partial", files: good},
		{name: "bare export settling", folder: "v1", files: without(good, model.ManifestFile), age: quiet / 2, reason: SkipSettling},
		{name: "bare export settled", folder: "v1", files: without(good, model.ManifestFile), age: 2 * quiet, complete: true},
		{name: "bare export without vocabulary", folder: "v1", files: without(without(good, model.ManifestFile), VocabFile), age: 2 * quiet, reason: SkipIncomplete},
		{name: "no model", folder: "v1", files: without(good, ModelFile), reason: SkipIncomplete},
		{name: "no vocabulary", folder: "v1", files: without(good, VocabFile), reason: SkipIncomplete},
		{name: "empty model", folder: "v1", files: map[string][]byte{ModelFile: nil, VocabFile: good[VocabFile], model.ManifestFile: good[model.ManifestFile]}, reason: SkipIncomplete},
		{name: "manifest is not json", folder: "v1", files: map[string][]byte{ModelFile: good[ModelFile], VocabFile: good[VocabFile], model.ManifestFile: []byte("{")}, reason: SkipManifest},
		{name: "step form without step.onnx", folder: "v1", files: withStep, reason: SkipIncomplete},
		{name: "step form with step.onnx", folder: "v1", files: func() map[string][]byte {
			f := without(withStep, "")
			f[StepFile] = []byte("step")
			return f
		}(), complete: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, tt.folder), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFiles(t, filepath.Join(dir, tt.folder), tt.files)
			now := time.Now()
			for name := range tt.files {
				when := now.Add(-tt.age)
				if err := os.Chtimes(filepath.Join(dir, tt.folder, name), when, when); err != nil {
					t.Fatal(err)
				}
			}
			found, skipped, err := scanRepo(dir, nil, nil, quiet, now)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(found) == 1; got != tt.complete {
				t.Fatalf("folder %s found complete: %t, want %t (skipped: %+v)", tt.folder, got, tt.complete, skipped)
			}
			if got := skipped[tt.folder].reason; got != tt.reason {
				t.Errorf("skip reason %q, want %q (%+v)", got, tt.reason, skipped[tt.folder])
			}
			if tt.reason == SkipSettling {
				if r := skipped[tt.folder].retry; r <= 0 || r > quiet-tt.age {
					t.Errorf("retry in %v, want in (0, %v]", r, quiet-tt.age)
				}
			}
		})
	}
	if found, _, err := scanRepo(filepath.Join(t.TempDir(), "missing"), nil, nil, 0, time.Now()); err != nil || found != nil {
		t.Fatalf("scan of a missing repository = %v, %v, want nothing and no error", found, err)
	}
}

// TestScanReusesUnchanged: an unchanged folder is not parsed again, a
// changed one is.
func TestScanReusesUnchanged(t *testing.T) {
	dir := t.TempDir()
	publishSpec(t, dir, spec{version: "v1"})
	parent := filepath.Join(dir, testName)
	first, _, err := scanRepo(parent, nil, nil, 0, time.Now())
	if err != nil || len(first) != 1 {
		t.Fatalf("scan = %v, %v", first, err)
	}
	prev := map[string]*candidate{"v1": first[0]}
	again, _, err := scanRepo(parent, prev, nil, 0, time.Now())
	if err != nil || len(again) != 1 || again[0] != first[0] {
		t.Fatalf("rescan of an unchanged folder returned a new candidate")
	}
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(filepath.Join(parent, "v1", model.ManifestFile), later, later); err != nil {
		t.Fatal(err)
	}
	changed, _, err := scanRepo(parent, prev, nil, 0, time.Now())
	if err != nil || len(changed) != 1 || changed[0] == first[0] || changed[0].fp == first[0].fp {
		t.Fatalf("rescan of a changed folder reused the old candidate")
	}
	names := []string{}
	for _, c := range changed {
		names = append(names, c.version)
	}
	if !slices.Equal(names, []string{"v1"}) {
		t.Fatalf("versions %v, want [v1]", names)
	}
}

// TestBareExport: a folder with model.onnx and vocab.txt but no manifest is
// served once its files have been quiet for QuietPeriod, versioned by its
// folder name; folders that are not servable show in Status with the reason
// and are counted once each.
func TestBareExport(t *testing.T) {
	const quiet = 300 * time.Millisecond
	m, repo, reg := newTest(t, Config{PollInterval: time.Hour, Debounce: 20 * time.Millisecond, QuietPeriod: quiet})
	parent := filepath.Join(repo, testName)
	files := spec{version: "ignored"}.files(t)
	delete(files, model.ManifestFile)
	for name, f := range map[string]map[string][]byte{
		"pytorch-1": files,
		"broken":    {ModelFile: files[ModelFile]},
	} {
		if err := os.MkdirAll(filepath.Join(parent, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFiles(t, filepath.Join(parent, name), f)
	}
	if err := m.Waiting(); err == nil || !strings.Contains(err.Error(), "not scanned yet") {
		t.Errorf("Waiting before the first scan = %v, want not scanned yet", err)
	}
	start := time.Now()
	if err := m.Sync(testCtx(t, 5*time.Second)); err == nil {
		t.Fatal("Sync found a version before the quiet period")
	}
	m.sync(testCtx(t, 5*time.Second)) // records the error for Waiting
	for _, want := range []string{"no valid model version", "broken: vocab.txt missing", "pytorch-1: no manifest.json"} {
		if err := m.Waiting(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Waiting = %v, want it to mention %q", err, want)
		}
	}
	runManager(t, m)
	waitFor(t, 10*time.Second, "the bare export active", func() bool { return activeVersion(m) == "pytorch-1" })
	if waited := time.Since(start); waited < quiet/2 {
		t.Errorf("bare export served after %v, before its quiet period of %v", waited, quiet)
	}
	if err := m.Waiting(); err != nil {
		t.Errorf("Waiting with a version active = %v, want nil", err)
	}
	if l := m.Current(); l.Manifest.Name != testName || l.Manifest.Version != "pytorch-1" {
		t.Errorf("derived manifest %s/%s, want %s/pytorch-1", l.Manifest.Name, l.Manifest.Version, testName)
	}
	// More scans: the incomplete folder is still counted once.
	for range 3 {
		if err := m.Sync(testCtx(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := m.Status(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var broken string
	for _, v := range st.Versions {
		if v.Version == "broken" {
			broken = v.Refused
		}
	}
	if want := "not served: vocab.txt missing or empty"; !strings.HasPrefix(broken, want) {
		t.Errorf("Status of the incomplete folder: %q, want %q...", broken, want)
	}
	// The folder is there (Status lists it) but cannot be served: refused
	// (FAILED_PRECONDITION), not unknown (NOT_FOUND).
	if err := m.Activate(testCtx(t, 5*time.Second), "broken"); !errors.Is(err, hint.ErrRefused) || errors.Is(err, hint.ErrUnknownVersion) || !strings.Contains(err.Error(), "not served: vocab.txt missing") {
		t.Errorf("Activate(incomplete folder) = %v, want ErrRefused saying why it is not served", err)
	}
	if got := metric(t, reg, "prefetchd_model_skipped_total", "reason", SkipIncomplete); got != 1 {
		t.Errorf("prefetchd_model_skipped_total{reason=incomplete} = %v, want 1", got)
	}
	if got := metric(t, reg, "prefetchd_model_skipped_total", "reason", SkipSettling); got != 1 {
		t.Errorf("prefetchd_model_skipped_total{reason=settling} = %v, want 1 (the export before it was quiet)", got)
	}
	if got := metric(t, reg, "prefetchd_model_unserved_folders"); got != 1 {
		t.Errorf("prefetchd_model_unserved_folders = %v, want 1", got)
	}
}

// TestScanUnreadableManifest: a manifest over the size limit is skipped
// with that reason, unread; a manifest that does not parse is not read
// again by the next scan until a file of its folder changes.
func TestScanUnreadableManifest(t *testing.T) {
	dir := t.TempDir()
	publishSpec(t, dir, spec{version: "v1"})
	parent := filepath.Join(dir, testName)
	path := filepath.Join(parent, "v1", model.ManifestFile)
	valid, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	garbage := bytes.Repeat([]byte("x"), len(valid))
	if err := os.WriteFile(path, garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	found, skipped, err := scanRepo(parent, nil, nil, 0, time.Now())
	if err != nil || len(found) != 0 || skipped["v1"].reason != SkipManifest || skipped["v1"].fp == "" {
		t.Fatalf("scan of a garbled manifest = %v, %+v, %v; want v1 skipped for its manifest", found, skipped, err)
	}
	// The same size and time, now valid: a scan that remembers the skip
	// does not read it again; one that does not, serves it.
	if err := os.WriteFile(path, valid, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if found, again, _ := scanRepo(parent, nil, skipped, 0, time.Now()); len(found) != 0 || again["v1"] != skipped["v1"] {
		t.Fatalf("rescan of an unchanged folder = %v, %+v; want the skip remembered", found, again)
	}
	if found, _, _ := scanRepo(parent, nil, nil, 0, time.Now()); len(found) != 1 {
		t.Fatalf("fresh scan found %v, want v1", found)
	}

	// Over the limit: a sparse file, never read.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(model.MaxManifestBytes + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, skipped, _ = scanRepo(parent, nil, nil, 0, time.Now())
	if sk := skipped["v1"]; sk.reason != SkipManifest || !strings.Contains(sk.why, "over the limit") {
		t.Fatalf("skip of an oversized manifest %+v, want one saying it is over the limit", sk)
	}
	if _, err := model.ReadManifest(io.MultiReader(strings.NewReader(`{"version":`), spaces{})); err == nil || !strings.Contains(err.Error(), "over the limit") {
		t.Fatalf("ReadManifest of a stream over the limit: %v, want it named", err)
	}
}

// spaces reads as endless JSON whitespace.
type spaces struct{}

func (spaces) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}
