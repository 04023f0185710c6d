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
	manifest *model.Manifest
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

// scanRepo lists the complete versions under dir, newest first. A folder is
// complete when its manifest parses and every file it implies is present and
// not empty; incomplete folders are returned by name in skipped. A missing
// dir is not an error: the repository may not exist yet. prev holds the
// candidates of the previous scan by version: a folder whose fingerprint is
// unchanged is not parsed again.
func scanRepo(dir string, prev map[string]*candidate) (found []*candidate, skipped map[string]string, err error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("scan model repository %s: %w", dir, err)
	}
	skipped = make(map[string]string)
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() || ignoredName(name) {
			continue
		}
		c, why := inspect(filepath.Join(dir, name), name, prev[name])
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
// is the folder's candidate from the previous scan.
func inspect(dir, version string, prev *candidate) (*candidate, string) {
	var fp strings.Builder
	present := map[string]bool{}
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
		fmt.Fprintf(&fp, "%s:%d:%d;", name, fi.Size(), fi.ModTime().UnixNano())
	}
	if prev != nil && prev.fp == fp.String() {
		return prev, ""
	}
	if !present[model.ManifestFile] {
		return nil, model.ManifestFile + " missing or empty"
	}
	f, err := os.Open(filepath.Join(dir, model.ManifestFile))
	if err != nil {
		return nil, "manifest unreadable"
	}
	m, err := model.ReadManifest(f)
	f.Close()
	if err != nil {
		// A half-written manifest does not parse; wait for it to be whole.
		return nil, "manifest: " + err.Error()
	}
	files := []string{ModelFile, VocabFile}
	if m.HasForm(model.FormStep) {
		files = append(files, StepFile)
	}
	for _, name := range files {
		if !present[name] {
			return nil, name + " missing or empty"
		}
	}
	return &candidate{version: version, dir: dir, created: m.Created, manifest: m, fp: fp.String()}, ""
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
