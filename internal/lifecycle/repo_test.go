package lifecycle

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

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
	tests := []struct {
		name     string
		folder   string
		files    map[string][]byte
		complete bool
	}{
		{name: "complete", folder: "v1", files: good, complete: true},
		{name: "hidden folder", folder: ".v1", files: good},
		{name: "underscore folder", folder: "_v1", files: good},
		{name: "tmp suffix", folder: "v1.tmp", files: good},
		{name: "partial suffix", folder: "v1.partial", files: good},
		{name: "no manifest", folder: "v1", files: without(good, model.ManifestFile)},
		{name: "no model", folder: "v1", files: without(good, ModelFile)},
		{name: "no vocabulary", folder: "v1", files: without(good, VocabFile)},
		{name: "empty model", folder: "v1", files: map[string][]byte{ModelFile: nil, VocabFile: good[VocabFile], model.ManifestFile: good[model.ManifestFile]}},
		{name: "manifest is not json", folder: "v1", files: map[string][]byte{ModelFile: good[ModelFile], VocabFile: good[VocabFile], model.ManifestFile: []byte("{")}},
		{name: "step form without step.onnx", folder: "v1", files: withStep},
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
			found, _, err := scanRepo(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(found) == 1; got != tt.complete {
				t.Fatalf("folder %s found complete: %t, want %t", tt.folder, got, tt.complete)
			}
		})
	}
	if found, _, err := scanRepo(filepath.Join(t.TempDir(), "missing"), nil); err != nil || found != nil {
		t.Fatalf("scan of a missing repository = %v, %v, want nothing and no error", found, err)
	}
}

// TestScanReusesUnchanged: an unchanged folder is not parsed again, a
// changed one is.
func TestScanReusesUnchanged(t *testing.T) {
	dir := t.TempDir()
	publishSpec(t, dir, spec{version: "v1"})
	parent := filepath.Join(dir, testName)
	first, _, err := scanRepo(parent, nil)
	if err != nil || len(first) != 1 {
		t.Fatalf("scan = %v, %v", first, err)
	}
	prev := map[string]*candidate{"v1": first[0]}
	again, _, err := scanRepo(parent, prev)
	if err != nil || len(again) != 1 || again[0] != first[0] {
		t.Fatalf("rescan of an unchanged folder returned a new candidate")
	}
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(filepath.Join(parent, "v1", model.ManifestFile), later, later); err != nil {
		t.Fatal(err)
	}
	changed, _, err := scanRepo(parent, prev)
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
