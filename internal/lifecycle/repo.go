package lifecycle

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/prefetchd/prefetchd/model"
)

// Files of a bundle folder.
const (
	ModelFile = "model.onnx"
	StepFile  = "step.onnx"
	VocabFile = "vocab.txt"
)

// candidate is a complete version folder found by a scan.
type candidate struct {
	version  string
	dir      string
	created  time.Time
	manifest *model.Manifest // nil for a bare export (the loader derives one)
	// fp fingerprints the folder (names, sizes and modification times of its
	// bundle files): a changed fingerprint means the folder was rewritten.
	fp string
}

// newer reports whether a sorts after b: by manifest created time, then by
// version string in natural order.
func (a *candidate) newer(b *candidate) bool {
	return newerKey(a.created, a.version, b.created, b.version)
}

func newerKey(ac time.Time, av string, bc time.Time, bv string) bool {
	if !ac.Equal(bc) {
		return ac.After(bc)
	}
	return naturalLess(bv, av)
}

// ignoredName reports whether a folder name is never a version: hidden and
// temporary folders that publishers write before renaming.
func ignoredName(name string) bool {
	return name == "" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") ||
		strings.HasSuffix(name, ".tmp") || strings.HasSuffix(name, ".partial") ||
		strings.HasSuffix(name, "~")
}

// skip is why a version folder is not a candidate, for Status and logs.
type skip struct {
	// reason is a short label for metrics: incomplete, manifest or settling.
	reason string
	// why is the detail shown to the operator.
	why string
	// retry, when positive, is when a rescan may find the folder complete
	// without any further file-system event (its quiet period ends).
	retry time.Duration
	// fp is the folder's fingerprint when its manifest was found unreadable:
	// the next scan reads it again only once a file changed.
	fp string
}

// Skip reasons (the reason label of prefetchd_model_skipped_total).
const (
	SkipIncomplete = "incomplete" // a required file is missing or empty
	SkipManifest   = "manifest"   // manifest.json does not parse
	SkipSettling   = "settling"   // a bare export whose files changed within the quiet period
	SkipOlder      = "older"      // a valid version published while a newer one (by created) served
)

// scanRepo lists the complete versions under dir, newest first. A folder is
// complete when its manifest parses and every file it implies is present and
// not empty, or, without a manifest, when model.onnx and vocab.txt are
// present and none of its files changed for quiet; other folders are
// returned by name in skipped. A missing dir is not an error: the repository
// may not exist yet. prev holds the candidates of the previous scan by
// version, and prevSkipped the folders it skipped: a folder whose
// fingerprint is unchanged is not parsed again.
func scanRepo(dir string, prev map[string]*candidate, prevSkipped map[string]skip, quiet time.Duration, now time.Time) (found []*candidate, skipped map[string]skip, err error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("scan model repository %s: %w", dir, err)
	}
	skipped = make(map[string]skip)
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || ignoredName(name) {
			continue
		}
		c, why := inspect(filepath.Join(dir, name), name, prev[name], prevSkipped[name], quiet, now)
		if c == nil {
			skipped[name] = why
			continue
		}
		found = append(found, c)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].newer(found[j]) })
	return found, skipped, nil
}

// inspect checks one version folder for completeness. prev, when not nil,
// is the folder's candidate from the previous scan, prevSkip why that scan
// skipped it.
func inspect(dir, version string, prev *candidate, prevSkip skip, quiet time.Duration, now time.Time) (*candidate, skip) {
	var fp strings.Builder
	present := map[string]bool{}
	var newest time.Time
	var manifestSize int64
	for _, name := range []string{model.ManifestFile, ModelFile, VocabFile, StepFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 {
			fmt.Fprintf(&fp, "%s:empty;", name)
			continue
		}
		present[name] = true
		if name == model.ManifestFile {
			manifestSize = fi.Size()
		}
		if fi.ModTime().After(newest) {
			newest = fi.ModTime()
		}
		fmt.Fprintf(&fp, "%s:%d:%d;", name, fi.Size(), fi.ModTime().UnixNano())
	}
	if prev != nil && prev.fp == fp.String() {
		return prev, skip{}
	}
	if prevSkip.reason == SkipManifest && prevSkip.fp == fp.String() {
		return nil, prevSkip // unchanged since it did not parse
	}
	if !present[model.ManifestFile] {
		return inspectBare(dir, version, present, newest, fp.String(), quiet, now)
	}
	if manifestSize > model.MaxManifestBytes {
		return nil, skip{reason: SkipManifest, fp: fp.String(),
			why: fmt.Sprintf("manifest: %s is %d bytes, over the limit of %d", model.ManifestFile, manifestSize, model.MaxManifestBytes)}
	}
	f, err := os.Open(filepath.Join(dir, model.ManifestFile))
	if err != nil {
		return nil, skip{reason: SkipManifest, why: "manifest unreadable: " + err.Error()}
	}
	m, err := model.ReadManifest(f)
	f.Close()
	if err != nil {
		// A half-written manifest does not parse; wait for it to be whole
		// (read again once a file of the folder changes).
		return nil, skip{reason: SkipManifest, why: "manifest: " + err.Error(), fp: fp.String()}
	}
	files := []string{ModelFile, VocabFile}
	if m.HasForm(model.FormStep) {
		files = append(files, StepFile)
	}
	for _, name := range files {
		if !present[name] {
			return nil, skip{reason: SkipIncomplete, why: name + " missing or empty"}
		}
	}
	return &candidate{version: version, dir: dir, created: m.Created, manifest: m, fp: fp.String()}, skip{}
}

// inspectBare checks a folder without a manifest: a bare export is complete
// once model.onnx and vocab.txt are there and no file changed for quiet. Its
// created time is that of its newest file, as the derived manifest says.
func inspectBare(dir, version string, present map[string]bool, newest time.Time, fp string, quiet time.Duration, now time.Time) (*candidate, skip) {
	for _, name := range []string{ModelFile, VocabFile} {
		if !present[name] {
			return nil, skip{reason: SkipIncomplete, why: fmt.Sprintf("%s missing or empty (and no %s)", name, model.ManifestFile)}
		}
	}
	if age := now.Sub(newest); quiet > 0 && age < quiet {
		return nil, skip{
			reason: SkipSettling,
			why:    fmt.Sprintf("no %s; served once its files are unchanged for %v", model.ManifestFile, quiet),
			retry:  quiet - age,
		}
	}
	return &candidate{version: version, dir: dir, created: newest.UTC().Truncate(time.Second), fp: fp}, skip{}
}

// naturalLess orders strings with digit runs compared as numbers, so that
// "v9" < "v10" and "2026-01-02" < "2026-01-10".
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		ad, bd := isDigit(a[0]), isDigit(b[0])
		switch {
		case ad && bd:
			na, ra := splitDigits(a)
			nb, rb := splitDigits(b)
			ta, tb := strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if len(ta) != len(tb) {
				return len(ta) < len(tb)
			}
			if ta != tb {
				return ta < tb
			}
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			a, b = ra, rb
		case a[0] != b[0]:
			return a[0] < b[0]
		default:
			a, b = a[1:], b[1:]
		}
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func splitDigits(s string) (digits, rest string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}
