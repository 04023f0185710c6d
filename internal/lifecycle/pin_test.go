package lifecycle

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPinSurvivesRestart: a version chosen by Rollback or Activate serves
// again after a restart (a new Manager on the same repository) instead of
// the newest; a version published after the choice wins and removes the
// pin.
func TestPinSurvivesRestart(t *testing.T) {
	m, repo, _ := newTest(t, Config{})
	ctx := testCtx(t, 30*time.Second)
	for i, v := range []string{"v1", "v2", "v3"} {
		publishSpec(t, repo, spec{version: v, created: base.Add(time.Duration(i) * time.Minute), shift: i + 1})
	}
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	restart := func() *Manager {
		t.Helper()
		m, _, _ := newTest(t, Config{Repo: repo})
		if err := m.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if got := activeVersion(m); got != "v3" {
		t.Fatalf("first start serves %s, want the newest v3", got)
	}
	for _, v := range []string{"v1", "v2"} {
		if err := m.Activate(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if got := activeVersion(restart()); got != "v2" {
		t.Fatalf("after activating v2 and a restart: %s, want v2", got)
	}
	if to, err := m.Rollback(ctx); err != nil || to != "v1" {
		t.Fatalf("Rollback = %s, %v; want v1", to, err)
	}
	m2 := restart()
	if got := activeVersion(m2); got != "v1" {
		t.Fatalf("after a rollback to v1 and a restart: %s, want v1", got)
	}
	// A version published after the choice is served, and the pin goes.
	publishSpec(t, repo, spec{version: "v4", created: time.Now().Add(time.Minute), shift: 5})
	if err := m2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := activeVersion(m2); got != "v4" {
		t.Fatalf("after publishing v4: %s, want v4", got)
	}
	if _, err := os.Stat(filepath.Join(repo, testName, PinFile)); !os.IsNotExist(err) {
		t.Errorf("pin file after a newer publish: %v, want it removed", err)
	}
	if got := activeVersion(restart()); got != "v4" {
		t.Fatalf("restart after v4 was published: %s, want v4", got)
	}
	// An unreadable pin: the newest serves.
	if err := os.WriteFile(filepath.Join(repo, testName, PinFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := activeVersion(restart()); got != "v4" {
		t.Fatalf("restart with a corrupt pin: %s, want the newest v4", got)
	}
}

// TestPinBeatsFutureDatedVersion: a version on disk when the choice was
// made never undoes it after a restart, even with a manifest dated after
// the choice (a trainer's clock ahead); one published after the choice and
// newer than the pinned version still wins.
func TestPinBeatsFutureDatedVersion(t *testing.T) {
	m, repo, _ := newTest(t, Config{})
	ctx := testCtx(t, 30*time.Second)
	publishSpec(t, repo, spec{version: "v1", created: base, shift: 1})
	publishSpec(t, repo, spec{version: "v2", created: time.Now().Add(time.Hour), shift: 2})
	if err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := activeVersion(m); got != "v2" {
		t.Fatalf("first start serves %s, want the newest v2", got)
	}
	if err := m.Activate(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	restart := func() string {
		t.Helper()
		m, _, _ := newTest(t, Config{Repo: repo})
		if err := m.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		return activeVersion(m)
	}
	if got := restart(); got != "v1" {
		t.Fatalf("restart after going back from a future-dated v2: %s, want the pinned v1", got)
	}
	publishSpec(t, repo, spec{version: "v3", created: base.Add(time.Minute), shift: 3})
	if got := restart(); got != "v3" {
		t.Fatalf("restart after publishing v3 (newer than v1): %s, want v3", got)
	}
}
