package lifecycle_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prefetchd/prefetchd/internal/lifecycle"
	"github.com/prefetchd/prefetchd/model"
)

// A repository <repo>/<name>/<version>/ with one published version: Sync
// validates and activates it, and readers take the live model with Current.
func ExampleNew() {
	repo, err := os.MkdirTemp("", "models-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(repo)
	// Publish: copy into a hidden temporary folder, then rename.
	tmp := filepath.Join(repo, "default", ".incoming")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		fmt.Println(err)
		return
	}
	for _, f := range []string{"model.onnx", "vocab.txt", "manifest.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", "gru", f))
		if err == nil {
			err = os.WriteFile(filepath.Join(tmp, f), b, 0o644)
		}
		if err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := os.Rename(tmp, filepath.Join(repo, "default", "gru-fixture")); err != nil {
		fmt.Println(err)
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := lifecycle.New(lifecycle.Config{Repo: repo}, lifecycle.LoadBundle, nil, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := m.Sync(ctx); err != nil { // Run(ctx) would also keep watching
		fmt.Println(err)
		return
	}
	live := m.Current()
	probs, err := live.Model.Predict(ctx, [][]int64{{5, 9}})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(live.Version, live.Epoch, len(probs[0]) == live.Vocab.Len())
	// Output: gru-fixture 1 true
}

// Static serves one fixed bundle, such as the model embedded in the binary.
func ExampleStatic() {
	b, err := model.LoadBundle(filepath.Join("testdata", "gru"))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := lifecycle.Static(ctx, b, lifecycle.Config{}, nil, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = m.Rollback(ctx)
	fmt.Println(m.Current().Version, err)
	// Output: gru-fixture no earlier version to roll back to
}
