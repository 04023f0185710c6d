package lifecycle

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/model"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults", cfg: Config{}},
		{name: "keep negative", cfg: Config{Keep: -1}, wantErr: "keep"},
		{name: "negative poll", cfg: Config{PollInterval: -time.Second}, wantErr: "poll interval"},
		{name: "negative tolerance", cfg: Config{Tolerance: -1}, wantErr: "tolerance"},
		{name: "name with slash", cfg: Config{Name: "a/b"}, wantErr: "model name"},
		{name: "fraction above one", cfg: Config{AutoRollback: AutoRollback{MinFraction: 1.5}}, wantErr: "min fraction"},
		{name: "negative window", cfg: Config{AutoRollback: AutoRollback{Window: -time.Second}}, wantErr: "window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate() = %v, want an error about %q", err, tt.wantErr)
			}
		})
	}
	if _, err := New(Config{}, LoadBundle, nil, nil); err == nil {
		t.Fatal("New without a repository succeeded, want an error")
	}
}

func TestNaturalLess(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"v9", "v10", true},
		{"v10", "v9", false},
		{"2026-01-02", "2026-01-10", true},
		{"a", "b", true},
		{"v1", "v1", false},
		{"v1", "v1a", true},
		{"v01", "v1", false},
		{"v1", "v01", true},
	}
	for _, tt := range tests {
		t.Run(tt.a+"<"+tt.b, func(t *testing.T) {
			if got := naturalLess(tt.a, tt.b); got != tt.want {
				t.Fatalf("naturalLess(%q, %q) = %t, want %t", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

// TestSyncOrdering checks that the newest version by created time, then by
// version string, wins, and that a refused newest falls back to the next.
func TestSyncOrdering(t *testing.T) {
	tests := []struct {
		name  string
		specs []spec
		want  string
	}{
		{name: "created time wins over name", want: "a",
			specs: []spec{{version: "a", created: base.Add(2 * time.Minute)}, {version: "b", created: base.Add(time.Minute)}}},
		{name: "same time, natural version order", want: "v10",
			specs: []spec{{version: "v9"}, {version: "v10"}, {version: "v2"}}},
		{name: "refused newest falls back", want: "v1",
			specs: []spec{{version: "v1"}, {version: "v2", created: base.Add(time.Minute),
				edit: func(f map[string][]byte) { f[ModelFile] = truncate(f[ModelFile]) }}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, repo, _ := newTest(t, Config{})
			for _, s := range tt.specs {
				publishSpec(t, repo, s)
			}
			if err := m.Sync(testCtx(t, 10*time.Second)); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			if got := activeVersion(m); got != tt.want {
				t.Fatalf("active version %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSyncEmptyRepository(t *testing.T) {
	m, _, _ := newTest(t, Config{})
	if err := m.Sync(testCtx(t, 5*time.Second)); err == nil {
		t.Fatal("Sync on an empty repository succeeded, want an error")
	}
	if m.Current() != nil {
		t.Fatal("Current() is not nil with no version")
	}
}

// runManager runs m.Run until the test ends.
func runManager(t *testing.T, m *Manager) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestWatchPicksUpNewVersion publishes with temp folder + rename while Run
// watches, with polling effectively off, so fsnotify must deliver.
func TestWatchPicksUpNewVersion(t *testing.T) {
	m, repo, reg := newTest(t, Config{PollInterval: time.Hour, Debounce: 20 * time.Millisecond})
	runManager(t, m) // the repository does not exist yet
	publishSpec(t, repo, spec{version: "v1"})
	waitFor(t, 10*time.Second, "v1 active", func() bool { return activeVersion(m) == "v1" })
	publishSpec(t, repo, spec{version: "v2", created: base.Add(time.Minute), shift: 2})
	waitFor(t, 10*time.Second, "v2 active", func() bool { return activeVersion(m) == "v2" })

	live := m.Current()
	out, err := live.Model.Predict(testCtx(t, 5*time.Second), [][]int64{{3}})
	if err != nil {
		t.Fatal(err)
	}
	if want := (spec{shift: 2}).next(3); argmax(out[0]) != want {
		t.Fatalf("v2 predicts %d after page 3, want %d", argmax(out[0]), want)
	}
	if live.Bundle == nil {
		t.Fatal("Live.Bundle is nil for a model.LoadBundle bundle")
	}
	if got := metric(t, reg, "prefetchd_model_active", "version", "v2"); got != 1 {
		t.Fatalf("prefetchd_model_active{version=v2} = %v, want 1", got)
	}
	if got := metric(t, reg, "prefetchd_model_active", "version", "v1"); got != 0 {
		t.Fatalf("prefetchd_model_active{version=v1} = %v, want 0", got)
	}
	if got := metric(t, reg, "prefetchd_model_swaps_total", "cause", CausePublish); got != 2 {
		t.Fatalf("prefetchd_model_swaps_total{cause=publish} = %v, want 2", got)
	}
}

// TestPollingFallback: a version copied in place, file by file, with the
// manifest last, is found by the polling fallback once it is whole.
func TestPollingFallback(t *testing.T) {
	m, repo, _ := newTest(t, Config{PollInterval: 30 * time.Millisecond, Debounce: time.Hour})
	publishSpec(t, repo, spec{version: "v1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "v1 active", func() bool { return activeVersion(m) == "v1" })

	files := spec{version: "v2", created: base.Add(time.Minute)}.files(t)
	dir := filepath.Join(repo, testName, "v2")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string][]byte{ModelFile: files[ModelFile], VocabFile: files[VocabFile]})
	time.Sleep(150 * time.Millisecond) // several polls
	if got := activeVersion(m); got != "v1" {
		t.Fatalf("active version %q while v2 has no manifest, want v1", got)
	}
	writeFiles(t, dir, map[string][]byte{model.ManifestFile: files[model.ManifestFile]})
	waitFor(t, 10*time.Second, "v2 active", func() bool { return activeVersion(m) == "v2" })
}

// TestHalfCopiedIgnored: folders that are not whole are neither loaded nor
// refused, and are taken once complete.
func TestHalfCopiedIgnored(t *testing.T) {
	files := spec{version: "v2", created: base.Add(time.Minute)}.files(t)
	tests := []struct {
		name    string
		partial func(t *testing.T, parent string) // leaves a half-copied v2
		finish  func(t *testing.T, parent string) // completes it
	}{
		{
			name: "temp folder then rename",
			partial: func(t *testing.T, parent string) {
				tmp := filepath.Join(parent, ".v2.tmp")
				if err := os.Mkdir(tmp, 0o755); err != nil {
					t.Fatal(err)
				}
				// Every file, the model half written: a hidden folder is never read.
				writeFiles(t, tmp, files)
				writeFiles(t, tmp, map[string][]byte{ModelFile: truncate(files[ModelFile])})
			},
			finish: func(t *testing.T, parent string) {
				writeFiles(t, filepath.Join(parent, ".v2.tmp"), files)
				if err := os.Rename(filepath.Join(parent, ".v2.tmp"), filepath.Join(parent, "v2")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "in place without vocabulary",
			partial: func(t *testing.T, parent string) {
				dir := filepath.Join(parent, "v2")
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				writeFiles(t, dir, map[string][]byte{ModelFile: files[ModelFile], model.ManifestFile: files[model.ManifestFile]})
				writeFiles(t, dir, map[string][]byte{VocabFile: nil}) // created, still empty
			},
			finish: func(t *testing.T, parent string) {
				writeFiles(t, filepath.Join(parent, "v2"), map[string][]byte{VocabFile: files[VocabFile]})
			},
		},
		{
			name: "in place with a half-written manifest",
			partial: func(t *testing.T, parent string) {
				dir := filepath.Join(parent, "v2")
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				writeFiles(t, dir, map[string][]byte{ModelFile: files[ModelFile], VocabFile: files[VocabFile],
					model.ManifestFile: truncate(files[model.ManifestFile])})
			},
			finish: func(t *testing.T, parent string) {
				writeFiles(t, filepath.Join(parent, "v2"), map[string][]byte{model.ManifestFile: files[model.ManifestFile]})
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, repo, reg := newTest(t, Config{})
			ctx := testCtx(t, 10*time.Second)
			publishSpec(t, repo, spec{version: "v1"})
			parent := filepath.Join(repo, testName)
			tt.partial(t, parent)
			if err := m.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if got := activeVersion(m); got != "v1" {
				t.Fatalf("active %q with v2 half copied, want v1", got)
			}
			if got := metric(t, reg, "prefetchd_model_refused_total"); got != 0 {
				t.Fatalf("a half-copied folder was refused (%v refusals), want it ignored", got)
			}
			tt.finish(t, parent)
			if err := m.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if got := activeVersion(m); got != "v2" {
				t.Fatalf("active %q once v2 is complete, want v2", got)
			}
		})
	}
}

// TestRefused: versions that break the contract in some way are refused
// with a counted reason, and the active one keeps serving.
func TestRefused(t *testing.T) {
	tests := []struct {
		name   string
		spec   spec
		reason string
		errHas string // a part of the refusal's message, when set
	}{
		{name: "truncated model", reason: ReasonLoad,
			spec: spec{edit: func(f map[string][]byte) { f[ModelFile] = truncate(f[ModelFile]) }}},
		{name: "garbage model", reason: ReasonLoad,
			spec: spec{edit: func(f map[string][]byte) { f[ModelFile] = []byte("this is not an onnx file at all") }}},
		{name: "vocabulary one line short", reason: ReasonContract,
			spec: spec{edit: func(f map[string][]byte) {
				lines := strings.SplitAfter(string(f[VocabFile]), "\n")
				f[VocabFile] = []byte(strings.Join(lines[:len(lines)-2], ""))
			}}},
		{name: "output wider than vocabulary", reason: ReasonContract,
			spec: spec{edit: func(f map[string][]byte) {
				f[ModelFile] = markovONNX(t, spec{width: 14}.rows())
			}}},
		{name: "manifest vocab size wrong", reason: ReasonContract,
			spec: spec{manifest: func(m *model.Manifest) { m.VocabSize = 20 }}},
		{name: "golden case off", reason: ReasonGolden,
			spec: spec{manifest: func(m *model.Manifest) { m.Golden[0].Probs[0][3] += 0.01 }}},
		{name: "manifest version differs from folder", reason: ReasonManifest,
			spec: spec{manifest: func(m *model.Manifest) { m.Version = "other" }}},
		{name: "NaN weight", reason: ReasonContract,
			spec: spec{noGold: true, edit: func(f map[string][]byte) {
				rows := spec{}.rows()
				rows[4][2] = float32(math.NaN())
				f[ModelFile] = markovONNX(t, rows)
			}}},
		{name: "vocabulary without <pad> first", reason: ReasonVocab,
			spec: spec{edit: func(f map[string][]byte) {
				lines := strings.SplitAfter(string(f[VocabFile]), "\n")
				lines[0], lines[2] = lines[2], lines[0]
				f[VocabFile] = []byte(strings.Join(lines, ""))
			}}},
		// One row only its own page reaches: the probes, warm-ups and
		// golden cases never look at it, the check of every page does.
		{name: "one page's row infinite", reason: ReasonContract,
			spec: spec{width: 200, noGold: true, edit: func(f map[string][]byte) {
				rows := spec{width: 200}.rows()
				rows[151][40] = float32(math.Inf(1))
				f[ModelFile] = markovONNX(t, rows)
			}}},
		{name: "one page's row negative, summing to one", reason: ReasonContract,
			spec: spec{width: 200, noGold: true, edit: func(f map[string][]byte) {
				rows := spec{width: 200}.rows()
				rows[151][40] -= 0.7
				rows[151][41] += 0.7
				f[ModelFile] = markovONNX(t, rows)
			}}},
		{name: "output is not a distribution", reason: ReasonContract, errHas: "probe prediction after history [2]: row 0: probabilities sum to",
			spec: spec{noGold: true, edit: func(f map[string][]byte) {
				rows := spec{}.rows()
				rows[2][3] = 5
				f[ModelFile] = markovONNX(t, rows)
			}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, repo, reg := newTest(t, Config{})
			ctx := testCtx(t, 10*time.Second)
			publishSpec(t, repo, spec{version: "v1"})
			if err := m.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			before := m.Current()
			s := tt.spec
			s.version, s.created = "v2", base.Add(time.Minute)
			publishSpec(t, repo, s)
			if err := m.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if m.Current() != before {
				t.Fatalf("active %q after a bad v2, want v1 unchanged", activeVersion(m))
			}
			if got := metric(t, reg, "prefetchd_model_refused_total", "reason", tt.reason); got != 1 {
				t.Fatalf("prefetchd_model_refused_total{reason=%q} = %v, want 1", tt.reason, got)
			}
			if got := metric(t, reg, "prefetchd_model_unserved_folders"); got != 1 {
				t.Errorf("prefetchd_model_unserved_folders = %v, want 1 (the refused v2)", got)
			}
			err := m.Activate(ctx, "v2")
			var re *RefusedError
			if !errors.Is(err, hint.ErrRefused) || !errors.As(err, &re) || re.Reason != tt.reason {
				t.Fatalf("Activate(v2) = %v, want a refusal for %q", err, tt.reason)
			}
			if !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("refusal %q does not say %q", err, tt.errHas)
			}
			st, err := m.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Active != "v1" || len(st.Versions) != 2 || st.Versions[0].Version != "v2" || st.Versions[0].Refused == "" {
				t.Fatalf("status %+v, want v1 active and v2 listed first as refused", st)
			}
			// The old model still answers.
			if _, err := m.Current().Model.Predict(ctx, [][]int64{{2, 3}}); err != nil {
				t.Fatalf("Predict on v1 after the refusal: %v", err)
			}
		})
	}
}

// TestRefusedRetriedWhenRewritten: a refused version is not retried by
// every scan, only once its files change.
func TestRefusedRetriedWhenRewritten(t *testing.T) {
	m, repo, reg := newTest(t, Config{})
	ctx := testCtx(t, 10*time.Second)
	publishSpec(t, repo, spec{version: "v1"})
	good := spec{version: "v2", created: base.Add(time.Minute)}.files(t)
	bad := map[string][]byte{}
	for k, v := range good {
		bad[k] = v
	}
	bad[ModelFile] = truncate(good[ModelFile])
	dir := publish(t, repo, "v2", bad)
	for range 3 {
		if err := m.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := metric(t, reg, "prefetchd_model_refused_total", "reason", ReasonLoad); got != 1 {
		t.Fatalf("refusals %v after three scans of one bad version, want 1", got)
	}
	writeFiles(t, dir, map[string][]byte{ModelFile: good[ModelFile]})
	// Make sure the modification time moves even on coarse clocks.
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(filepath.Join(dir, ModelFile), later, later); err != nil {
		t.Fatal(err)
	}
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := activeVersion(m); got != "v2" {
		t.Fatalf("active %q after v2 was repaired, want v2", got)
	}
}

func TestActivateRollback(t *testing.T) {
	m, repo, reg := newTest(t, Config{})
	ctx := testCtx(t, 20*time.Second)
	for i, v := range []string{"v1", "v2", "v3"} {
		publishSpec(t, repo, spec{version: v, created: base.Add(time.Duration(i) * time.Minute), shift: i + 1})
	}
	publishSpec(t, repo, spec{version: "bad", edit: func(f map[string][]byte) { f[ModelFile] = truncate(f[ModelFile]) }})
	var epochs []uint32
	var mu sync.Mutex
	m.OnSwap(func(old, new *Live) {
		mu.Lock()
		defer mu.Unlock()
		if old != nil && new.Epoch != old.Epoch+1 {
			t.Errorf("swap from epoch %d to %d, want +1", old.Epoch, new.Epoch)
		}
		epochs = append(epochs, new.Epoch)
	})
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		do      func() (string, error)
		want    string // active afterwards
		wantErr error
	}{
		{name: "sync takes newest", do: func() (string, error) { return "", nil }, want: "v3"},
		{name: "activate older", do: func() (string, error) { return "", m.Activate(ctx, "v1") }, want: "v1"},
		{name: "activate active is a no-op", do: func() (string, error) { return "", m.Activate(ctx, "v1") }, want: "v1"},
		{name: "unknown version", do: func() (string, error) { return "", m.Activate(ctx, "v9") }, want: "v1", wantErr: hint.ErrUnknownVersion},
		{name: "refused version", do: func() (string, error) { return "", m.Activate(ctx, "bad") }, want: "v1", wantErr: hint.ErrRefused},
		{name: "sync does not undo an activate", do: func() (string, error) { return "", m.Sync(ctx) }, want: "v1"},
		{name: "activate v2", do: func() (string, error) { return "", m.Activate(ctx, "v2") }, want: "v2"},
		{name: "rollback to v1", do: func() (string, error) { return m.Rollback(ctx) }, want: "v1"},
		{name: "rollback to v3", do: func() (string, error) { return m.Rollback(ctx) }, want: "v3"},
		{name: "nothing left", do: func() (string, error) { return m.Rollback(ctx) }, want: "v3", wantErr: hint.ErrNoRollback},
	}
	for _, s := range steps {
		name, err := s.do()
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("%s: error %v, want %v", s.name, err, s.wantErr)
			}
			if errors.Is(err, hint.ErrNoRollback) && !strings.Contains(err.Error(), "model activate VERSION") {
				t.Errorf("%s: error %q does not say how to choose a version instead", s.name, err)
			}
		} else if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if name != "" && name != s.want {
			t.Fatalf("%s: rolled back to %q, want %q", s.name, name, s.want)
		}
		if got := activeVersion(m); got != s.want {
			t.Fatalf("%s: active %q, want %q", s.name, got, s.want)
		}
	}
	mu.Lock()
	if len(epochs) != 5 {
		t.Errorf("OnSwap saw epochs %v, want 5 swaps", epochs)
	}
	mu.Unlock()
	if got := metric(t, reg, "prefetchd_model_rollbacks_total", "cause", "manual"); got != 2 {
		t.Fatalf("prefetchd_model_rollbacks_total{cause=manual} = %v, want 2", got)
	}
	// A newly published version is still picked up after rollbacks.
	publishSpec(t, repo, spec{version: "v4", created: base.Add(time.Hour)})
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := activeVersion(m); got != "v4" {
		t.Fatalf("active %q after publishing v4, want v4", got)
	}
}

// TestKeep checks that only the last Keep active versions stay in memory,
// that rollback to one of them needs no disk, and that rollback further back
// reloads from disk and skips versions that are gone.
func TestKeep(t *testing.T) {
	m, repo, reg := newTest(t, Config{Keep: 2})
	ctx := testCtx(t, 20*time.Second)
	for i := 1; i <= 5; i++ {
		v := "v" + string(rune('0'+i))
		publishSpec(t, repo, spec{version: v, created: base.Add(time.Duration(i) * time.Minute)})
		if err := m.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := activeVersion(m); got != v {
			t.Fatalf("active %q, want %q", got, v)
		}
	}
	loaded := func() []string {
		st, err := m.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range st.Versions {
			if v.Loaded {
				out = append(out, v.Version)
			}
		}
		return out
	}
	if got := strings.Join(loaded(), ","); got != "v5,v4" {
		t.Fatalf("loaded versions %s, want v5,v4", got)
	}
	if got := metric(t, reg, "prefetchd_model_loaded_versions"); got != 2 {
		t.Fatalf("prefetchd_model_loaded_versions = %v, want 2", got)
	}
	// v4 is in memory: rollback works with its folder gone.
	if err := os.RemoveAll(filepath.Join(repo, testName, "v4")); err != nil {
		t.Fatal(err)
	}
	// v3 is gone from disk and from memory: rollback skips it.
	if err := os.RemoveAll(filepath.Join(repo, testName, "v3")); err != nil {
		t.Fatal(err)
	}
	refusals := metric(t, reg, "prefetchd_model_refused_total")
	validations := metric(t, reg, "prefetchd_model_validation_seconds")
	if got, err := m.Rollback(ctx); err != nil || got != "v4" {
		t.Fatalf("Rollback() = %q, %v, want v4", got, err)
	}
	if got := metric(t, reg, "prefetchd_model_validation_seconds"); got != validations {
		t.Fatalf("rollback to a loaded version validated again (%v validations, want %v)", got, validations)
	}
	if _, err := m.Status(ctx); err != nil { // rescans nothing, but must not fail
		t.Fatal(err)
	}
	if got, err := m.Rollback(ctx); err != nil || got != "v2" {
		t.Fatalf("second Rollback() = %q, %v, want v2 reloaded from disk (v3 is gone)", got, err)
	}
	if got := metric(t, reg, "prefetchd_model_refused_total"); got != refusals {
		t.Fatalf("refusals went from %v to %v on rollback", refusals, got)
	}
	if got := strings.Join(loaded(), ","); got != "v4,v2" && got != "v2,v4" {
		t.Fatalf("loaded versions %s after rollbacks, want v2 and v4", got)
	}
}

// TestVersionTag: the tag records carry names a version and its vocabulary
// alike in every process, and tells other versions or vocabularies apart.
func TestVersionTag(t *testing.T) {
	vocab := func(pages ...string) *model.Vocab {
		v, err := model.NewVocab(append([]string{model.PadKey, model.UnknownKey}, pages...))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := VersionTag("v1", vocab("/a", "/b"))
	if base == 0 {
		t.Fatal("tag 0")
	}
	if again := VersionTag("v1", vocab("/a", "/b")); again != base {
		t.Errorf("the same version and vocabulary built again: tag %d, want %d", again, base)
	}
	for name, tag := range map[string]uint32{
		"other version":        VersionTag("v2", vocab("/a", "/b")),
		"pages reordered":      VersionTag("v1", vocab("/b", "/a")),
		"one more page":        VersionTag("v1", vocab("/a", "/b", "/c")),
		"name and page joined": VersionTag("v1/a", vocab("/b")),
	} {
		if tag == base {
			t.Errorf("%s: tag %d, the same as v1's", name, tag)
		}
	}

	// Two managers (two processes) serving one bundle: other epochs after
	// other numbers of swaps, one tag.
	dir := t.TempDir()
	writeFiles(t, dir, spec{version: "v1"}.files(t))
	b, err := model.LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 10*time.Second)
	m1, err := Static(ctx, b, Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Static(ctx, b, Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l1, l2 := m1.Current(), m2.Current(); l1.Tag != VersionTag("v1", b.Vocab()) || l2.Tag != l1.Tag {
		t.Fatalf("tags %d and %d, want both VersionTag = %d", l1.Tag, l2.Tag, VersionTag("v1", b.Vocab()))
	}
}

func TestStatic(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, spec{version: "embedded"}.files(t))
	b, err := model.LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 10*time.Second)
	m, err := Static(ctx, b, Config{}, nil, nil)
	if err != nil {
		t.Fatalf("Static: %v", err)
	}
	if l := m.Current(); l == nil || l.Version != "embedded" || l.Bundle != b || l.Epoch != 1 {
		t.Fatalf("Current() = %+v, want the embedded bundle at epoch 1", l)
	}
	if err := m.Activate(ctx, "embedded"); err != nil {
		t.Fatalf("Activate(own version) = %v", err)
	}
	if err := m.Activate(ctx, "other"); !errors.Is(err, hint.ErrUnknownVersion) {
		t.Fatalf("Activate(other) = %v, want ErrUnknownVersion", err)
	}
	if _, err := m.Rollback(ctx); !errors.Is(err, hint.ErrNoRollback) {
		t.Fatalf("Rollback() = %v, want ErrNoRollback", err)
	}
	m.RecordRequest("embedded", time.Millisecond)
	st, err := m.Status(ctx)
	if err != nil || st.Active != "embedded" || len(st.Versions) != 1 || st.Versions[0].Requests != 1 {
		t.Fatalf("Status() = %+v, %v, want embedded active with 1 request", st, err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Run(runCtx); err != nil {
		t.Fatalf("Run = %v", err)
	}

	// A bundle that fails validation is refused by Static too.
	bad := &badModel{Model: b}
	if _, err := Static(ctx, bad, Config{}, nil, nil); !errors.Is(err, hint.ErrRefused) {
		t.Fatalf("Static(bad) = %v, want ErrRefused", err)
	}
}

// badModel returns rows of the wrong width.
type badModel struct{ Model }

func (b *badModel) Predict(ctx context.Context, h [][]int64) ([][]float32, error) {
	out, err := b.Model.Predict(ctx, h)
	for i := range out {
		out[i] = out[i][:len(out[i])-1]
	}
	return out, err
}

// panicModel panics on Predict.
type panicModel struct{ Model }

func (panicModel) Predict(context.Context, [][]int64) ([][]float32, error) { panic("boom") }

func TestLoaderPanicRefused(t *testing.T) {
	repo := t.TempDir()
	publishSpec(t, repo, spec{version: "v1"})
	m, err := New(Config{Repo: repo, Name: testName}, func(ctx context.Context, dir string) (Model, error) {
		b, err := LoadBundle(ctx, dir)
		if err != nil {
			return nil, err
		}
		return panicModel{b}, nil
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = m.Activate(testCtx(t, 5*time.Second), "v1")
	var re *RefusedError
	if !errors.As(err, &re) || re.Reason != ReasonPanic {
		t.Fatalf("Activate = %v, want a refusal for a panic", err)
	}
}

func TestRemap(t *testing.T) {
	from, err := model.NewVocab([]string{model.PadKey, model.UnknownKey, "/a", "/b", "/c"})
	if err != nil {
		t.Fatal(err)
	}
	to, err := model.NewVocab([]string{model.PadKey, model.UnknownKey, "/c", "/a"})
	if err != nil {
		t.Fatal(err)
	}
	got := Remap(nil, []int64{0, 1, 2, 3, 4, 99}, from, to)
	want := []int64{0, 1, 3, 1, 2, 1}
	if len(got) != len(want) {
		t.Fatalf("Remap = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Remap = %v, want %v", got, want)
		}
	}
	if got := Remap(nil, []int64{2, 4}, from, from); got[0] != 2 || got[1] != 4 {
		t.Fatalf("Remap with one vocabulary = %v, want a copy", got)
	}
}

func argmax(p []float32) int64 {
	best := 0
	for i, v := range p {
		if v > p[best] {
			best = i
		}
	}
	return int64(best)
}

// TestKeepOne: with Keep 1 only the active version is in memory, and a
// rollback reloads and revalidates its predecessor from disk.
func TestKeepOne(t *testing.T) {
	m, repo, reg := newTest(t, Config{Keep: 1})
	ctx := testCtx(t, 20*time.Second)
	for i, v := range []string{"v1", "v2"} {
		publishSpec(t, repo, spec{version: v, created: base.Add(time.Duration(i) * time.Minute)})
		if err := m.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := metric(t, reg, "prefetchd_model_loaded_versions"); got != 1 {
		t.Fatalf("prefetchd_model_loaded_versions = %v, want 1", got)
	}
	validations := metric(t, reg, "prefetchd_model_validation_seconds")
	if got, err := m.Rollback(ctx); err != nil || got != "v1" {
		t.Fatalf("Rollback() = %q, %v, want v1", got, err)
	}
	if got := metric(t, reg, "prefetchd_model_validation_seconds"); got != validations+1 {
		t.Fatalf("validations %v after a rollback to a released version, want %v", got, validations+1)
	}
	if got := metric(t, reg, "prefetchd_model_active", "version", "v2"); got != 0 {
		t.Fatalf("prefetchd_model_active{version=v2} = %v after v2 was released, want no series", got)
	}
	if got := metric(t, reg, "prefetchd_model_active", "version", "v1"); got != 1 {
		t.Fatalf("prefetchd_model_active{version=v1} = %v, want 1", got)
	}
}

// TestActivateCanceled: a caller that gives up during validation gets its
// context error, and the version is not refused for it.
func TestActivateCanceled(t *testing.T) {
	m, repo, reg := newTest(t, Config{})
	publishSpec(t, repo, spec{version: "v1"})
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Activate(canceled, "v1"); !errors.Is(err, context.Canceled) || errors.Is(err, hint.ErrRefused) {
		t.Fatalf("Activate with a canceled context = %v, want context.Canceled", err)
	}
	if got := metric(t, reg, "prefetchd_model_refused_total"); got != 0 {
		t.Fatalf("%v refusals after a canceled Activate, want 0", got)
	}
	if err := m.Activate(testCtx(t, 10*time.Second), "v1"); err != nil {
		t.Fatalf("Activate(v1) = %v", err)
	}
}

// TestCheckVocabRefuses: a version whose vocabulary Config.CheckVocab
// rejects is refused (reason vocab) and the active one keeps serving.
func TestCheckVocabRefuses(t *testing.T) {
	m, repo, reg := newTest(t, Config{CheckVocab: func(v *model.Vocab) error {
		if v.Len() > 12 {
			return errors.New("keys not canonical")
		}
		return nil
	}})
	ctx := testCtx(t, 10*time.Second)
	publishSpec(t, repo, spec{version: "v1"})
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	publishSpec(t, repo, spec{version: "v2", width: 14, created: base.Add(time.Minute)})
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := activeVersion(m); got != "v1" {
		t.Fatalf("active %q, want v1 (v2's vocabulary refused)", got)
	}
	if got := metric(t, reg, "prefetchd_model_refused_total", "reason", ReasonVocab); got != 1 {
		t.Fatalf("prefetchd_model_refused_total{reason=vocab} = %v, want 1", got)
	}
}
