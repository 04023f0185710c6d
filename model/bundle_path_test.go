package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadBundleErrorNamesPath: a folder that does not load is named by its
// absolute path in the error, not by its last element alone.
func TestLoadBundleErrorNamesPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nov")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := LoadBundle(dir)
	if err == nil {
		t.Fatal("an empty folder loaded")
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name %s", err, dir)
	}
}
