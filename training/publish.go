package training

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrVersionExists is returned by Publish when the repository already holds
// the bundle's name and version.
var ErrVersionExists = errors.New("model version already published")

// Publish writes b into the model repository repo as
// repo/<name>/<version>/, atomically: the folder appears complete or not at
// all. It returns the folder written, or ErrVersionExists.
func Publish(repo string, b *Bundle) (string, error) {
	if err := b.Validate(); err != nil {
		return "", err
	}
	for _, part := range []string{b.Manifest.Name, b.Manifest.Version} {
		if part == "." || part == ".." || strings.ContainsAny(part, `/\`) || strings.HasPrefix(part, ".") {
			return "", fmt.Errorf("publish: %q is not a valid folder name", part)
		}
	}
	dir := filepath.Join(repo, b.Manifest.Name, b.Manifest.Version)
	if _, err := os.Stat(dir); err == nil {
		return "", fmt.Errorf("publish %s: %w", dir, ErrVersionExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("publish: %w", err)
	}
	if err := WriteBundle(dir, b); err != nil {
		return "", err
	}
	return dir, nil
}
