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

// ErrBadFolderName is returned by CheckPublish and Publish for a bundle
// name or version that cannot be a folder of the repository.
var ErrBadFolderName = errors.New("not a valid folder name")

// CheckPublish reports whether a bundle named name can be published into
// repo as version: both must be plain folder names (not empty, no slash or
// backslash, no leading dot) and repo/<name>/<version> must not exist. An
// empty version (chosen at creation) checks the name only. Errors match
// ErrBadFolderName or ErrVersionExists. The trainer calls it before
// training so that a doomed publish fails early; Publish checks again.
func CheckPublish(repo, name, version string) error {
	parts := []string{name}
	if version != "" {
		parts = append(parts, version)
	}
	for _, part := range parts {
		if part == "" || part == "." || part == ".." || strings.ContainsAny(part, `/\`) || strings.HasPrefix(part, ".") {
			return fmt.Errorf("publish: %q: %w", part, ErrBadFolderName)
		}
	}
	if version == "" {
		return nil
	}
	dir := filepath.Join(repo, name, version)
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("publish %s: %w", dir, ErrVersionExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("publish: %w", err)
	}
	return nil
}

// CheckRepoWritable reports whether a version of name can be written into
// the model repository repo: it makes repo/<name>/ (as Publish would) and
// creates and removes a file there, so that a repository the trainer may
// not write fails before training rather than after.
func CheckRepoWritable(repo, name string) error {
	dir := filepath.Join(repo, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("model repository not writable: %w", err)
	}
	f, err := os.CreateTemp(dir, ".write-check-")
	if err != nil {
		return fmt.Errorf("model repository not writable: %w", err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// Publish writes b into the model repository repo as
// repo/<name>/<version>/, atomically: the folder appears complete or not at
// all. It returns the folder written, or an error matching
// ErrVersionExists or ErrBadFolderName (see CheckPublish).
func Publish(repo string, b *Bundle) (string, error) {
	if err := b.Validate(); err != nil {
		return "", err
	}
	if b.Manifest.Version == "" {
		return "", fmt.Errorf("publish: empty version: %w", ErrBadFolderName)
	}
	if err := CheckPublish(repo, b.Manifest.Name, b.Manifest.Version); err != nil {
		return "", err
	}
	dir := filepath.Join(repo, b.Manifest.Name, b.Manifest.Version)
	if err := WriteBundle(dir, b); err != nil {
		return "", err
	}
	return dir, nil
}
