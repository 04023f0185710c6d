package training

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"bytes"
	"fmt"
	"github.com/prefetchd/prefetchd/model"
	"log/slog"
)

// TestWriteBundleRefusesForeignDir writes a bundle over every kind of
// destination: only a missing folder, an empty one or a previous bundle
// may be replaced; anything else is refused and left as it was.
func TestWriteBundleRefusesForeignDir(t *testing.T) {
	b := tinyMarkovBundle(t, "v1")
	b.Reports = map[string][]byte{ReportJSONFile: []byte("{}"), ReportTextFile: []byte("x"), RecallSVGFile: []byte("<svg/>")}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		ok    bool
	}{
		{"missing", func(*testing.T, string) {}, true},
		{"empty folder", func(t *testing.T, dir string) { mkdir(t, dir) }, true},
		{"previous bundle", func(t *testing.T, dir string) {
			if err := WriteBundle(dir, b); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"plain file", func(t *testing.T, dir string) { write(t, dir, "data") }, false},
		{"folder with data", func(t *testing.T, dir string) { mkdir(t, dir); write(t, filepath.Join(dir, "clicks.seq"), "1 2") }, false},
		{"bundle and data", func(t *testing.T, dir string) {
			if err := WriteBundle(dir, b); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, "notes.txt"), "keep")
		}, false},
		{"subfolder named like a bundle file", func(t *testing.T, dir string) { mkdir(t, filepath.Join(dir, VocabFile)) }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			tc.setup(t, dir)
			before := listing(t, dir)
			checkErr := CheckBundleDir(dir)
			err := WriteBundle(dir, b)
			if tc.ok {
				if err != nil || checkErr != nil {
					t.Fatalf("WriteBundle: %v, CheckBundleDir: %v; want both to accept", err, checkErr)
				}
				if _, err := model.LoadBundle(dir); err != nil {
					t.Errorf("LoadBundle after WriteBundle: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrNotBundleDir) || !errors.Is(checkErr, ErrNotBundleDir) {
				t.Fatalf("WriteBundle: %v, CheckBundleDir: %v; want both to match ErrNotBundleDir", err, checkErr)
			}
			if after := listing(t, dir); after != before {
				t.Errorf("refused destination changed from %q to %q", before, after)
			}
			if entries, _ := os.ReadDir(filepath.Dir(dir)); len(entries) != 1 {
				t.Errorf("parent holds %d entries, want only the destination (no temporary folder)", len(entries))
			}
		})
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// listing describes path: a file's content, or a folder's entries.
func listing(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	if !fi.IsDir() {
		b, _ := os.ReadFile(path)
		return "file " + string(b)
	}
	entries, _ := os.ReadDir(path)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, ",")
}

// TestBuildVocabSkipsLineBreaks keeps pages that vocab.txt cannot hold as
// one line out of the vocabulary: they count as unknown.
func TestBuildVocabSkipsLineBreaks(t *testing.T) {
	sessions := []Session{pages("/a", "/c\nd", "/e\r", ""), pages("/a", "/c\nd", "/e\r", "")}
	v, err := BuildVocab(sessions, VocabConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if v.Len() != 3 || v.Page(2) != "/a" {
		t.Fatalf("vocabulary of %d entries (page 2 %q), want <pad>, <unk>, /a", v.Len(), v.Page(2))
	}
	if got := Encode(v, sessions[:1])[0]; got[1] != model.UnknownIndex || got[2] != model.UnknownIndex {
		t.Errorf("encoded %v, want the pages with line breaks unknown", got)
	}
}

// TestWriteBundleVocabReadsBack refuses, before writing anything, a
// vocabulary that vocab.txt would turn into more entries.
func TestWriteBundleVocabReadsBack(t *testing.T) {
	b := tinyMarkovBundle(t, "v1")
	v, err := model.NewVocab([]string{model.PadKey, model.UnknownKey, "/a", "/c\nd", "/b"})
	if err != nil {
		t.Fatal(err)
	}
	bad := *b
	bad.Vocab = v
	dir := filepath.Join(t.TempDir(), "out")
	if err := WriteBundle(dir, &bad); err == nil || !strings.Contains(err.Error(), "reads back") {
		t.Fatalf("WriteBundle with a page holding a newline: %v, want a read-back error", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(dir)); len(entries) != 0 {
		t.Errorf("WriteBundle left %d entries behind, want none", len(entries))
	}
}

// TestRunNeedsSomethingToScore refuses a split that holds out no
// transition (or trains on nothing), naming the sessions it needs.
func TestRunNeedsSomethingToScore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tests := []struct {
		name     string
		sessions []Session
		holdout  float64
		want     string
	}{
		{"one session", []Session{pages("/a", "/b", "/a")}, 0, "need at least 3 sessions"},
		{"two sessions", []Session{pages("/a", "/b"), pages("/b", "/a")}, 0, "2 sessions split into 2 for training and 0 held out"},
		{"held out too short", []Session{pages("/a", "/b"), pages("/b", "/a"), pages("/a")}, 0, "0 transitions"},
		{"nothing to train", []Session{pages("/a", "/b")}, 0.5, "0 for training"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{SkipGRU: true, Vocab: VocabConfig{MinCount: 1}, Split: SplitConfig{HoldoutFraction: tc.holdout}}
			_, _, err := Run(ctx, nil, "tiny", tc.sessions, cfg)
			if !errors.Is(err, ErrNothingToScore) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want ErrNothingToScore saying %q", err, tc.want)
			}
		})
	}
}

// TestRunEmptyVocab names the min count when no page reaches it.
func TestRunEmptyVocab(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sessions := []Session{pages("/a", "/b"), pages("/c", "/d"), pages("/e", "/f"), pages("/g", "/h"), pages("/i", "/j")}
	_, _, err := Run(ctx, nil, "tiny", sessions, Config{SkipGRU: true, Vocab: VocabConfig{MinCount: 2}})
	var ev *EmptyVocabError
	if !errors.As(err, &ev) || ev.MinCount != 2 || ev.TrainSessions != 4 || !strings.Contains(err.Error(), "lower the min count") {
		t.Fatalf("Run: %v, want an EmptyVocabError for min count 2 over 4 training sessions", err)
	}
}

func TestCheckPublish(t *testing.T) {
	repo := t.TempDir()
	mkdir(t, filepath.Join(repo, "shop", "v1"))
	tests := []struct {
		name, bundle, version string
		want                  error
	}{
		{"new version", "shop", "v2", nil},
		{"version chosen later", "shop", "", nil},
		{"existing version", "shop", "v1", ErrVersionExists},
		{"name with slash", "../shop", "v2", ErrBadFolderName},
		{"hidden name", ".shop", "v2", ErrBadFolderName},
		{"empty name", "", "v2", ErrBadFolderName},
		{"version with backslash", "shop", `v\2`, ErrBadFolderName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := CheckPublish(repo, tc.bundle, tc.version); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("CheckPublish(%q, %q) = %v, want %v", tc.bundle, tc.version, err, tc.want)
			}
		})
	}
}

// TestRunRefusesMarkovExportEarly: a first-order Markov export over a
// vocabulary too large for its dense table is refused once the vocabulary
// is known, before any baseline is tuned, not after all of them.
func TestRunRefusesMarkovExportEarly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// 17,000 pages, each seen in two sessions: 17,002 entries with padding
	// and unknown, 289 M table entries, over the 268 M limit.
	var sessions []Session
	for rep := range 2 {
		for s := range 1700 {
			var ps []string
			for i := range 10 {
				ps = append(ps, fmt.Sprintf("/p/%d", (s*10+i+rep*5)%17000))
			}
			sessions = append(sessions, pages(ps...))
		}
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	_, _, err := Run(ctx, logger, "wide", sessions, Config{SkipGRU: true, Export: ModelMarkov, Vocab: VocabConfig{MinCount: 1}, Split: SplitConfig{HoldoutFraction: 0.01}})
	if err == nil || !strings.Contains(err.Error(), "export the GRU instead") {
		t.Fatalf("Run: %v, want the dense table refused", err)
	}
	if strings.Contains(logs.String(), "baseline trained") || strings.Contains(logs.String(), "tuned") {
		t.Fatalf("baselines were trained before the refusal:\n%s", logs.String())
	}
}
