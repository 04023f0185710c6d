package lifecycle

import (
	"context"
	"github.com/prometheus/client_golang/prometheus"

	"errors"
	"github.com/prefetchd/prefetchd/internal/server/servertest"
	"github.com/prefetchd/prefetchd/model"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// prefetch plays the prefetcher's online evaluation n times: users walk the
// pages in order (page p is followed by p+1), the live model's top page is
// prefetched, and the hit or miss is reported for the version that made it.
func prefetch(t *testing.T, ctx context.Context, m *Manager, n int) (issued, used int) {
	t.Helper()
	walk := spec{shift: 1}
	for i := range n {
		live := m.Current()
		page := int64(2 + i%10)
		out, err := live.Model.Predict(ctx, [][]int64{{page}})
		if err != nil {
			t.Fatalf("Predict on %s: %v", live.Version, err)
		}
		hit := uint64(0)
		if argmax(out[0]) == walk.next(page) {
			hit = 1
		}
		m.ObservePrecision(live.Version, 1, hit, 1-hit)
		issued++
		used += int(hit)
	}
	return issued, used
}

// TestAutoRollback publishes a deliberately bad model (it predicts the page
// five ahead instead of the next) after a good one: its live precision falls
// far below its predecessor's and it is rolled back automatically, while a
// good successor is kept.
func TestAutoRollback(t *testing.T) {
	m, repo, reg := newTest(t, Config{
		PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond,
		AutoRollback: AutoRollback{Enabled: true, MinFraction: 0.5, Window: time.Minute, MinIssued: 50},
	})
	ctx := testCtx(t, 30*time.Second)
	publishSpec(t, repo, spec{version: "good1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "good1 active", func() bool { return activeVersion(m) == "good1" })
	if _, used := prefetch(t, ctx, m, 100); used != 100 {
		t.Fatalf("the good model hit %d of 100, want 100", used)
	}

	publishSpec(t, repo, spec{version: "bad2", created: base.Add(time.Minute), shift: 5})
	waitFor(t, 10*time.Second, "bad2 active", func() bool { return activeVersion(m) == "bad2" })
	// Fewer than MinIssued prefetches are not judged.
	prefetch(t, ctx, m, 49)
	time.Sleep(50 * time.Millisecond)
	if got := activeVersion(m); got != "bad2" {
		t.Fatalf("active %q after 49 prefetches, want bad2 still (MinIssued 50)", got)
	}
	waitFor(t, 10*time.Second, "rollback to good1", func() bool {
		if v := activeVersion(m); v == "bad2" {
			prefetch(t, ctx, m, 1)
			return false
		}
		return true
	})
	if got := activeVersion(m); got != "good1" {
		t.Fatalf("active %q after the automatic rollback, want good1", got)
	}
	// Counted once the swap is done, a moment after the predecessor serves.
	waitFor(t, 10*time.Second, "the auto rollback counted", func() bool {
		return metric(t, reg, "prefetchd_model_rollbacks_total", "cause", "auto") >= 1
	})
	if got := metric(t, reg, "prefetchd_model_rollbacks_total", "cause", "auto"); got != 1 {
		t.Fatalf("prefetchd_model_rollbacks_total{cause=auto} = %v, want 1", got)
	}
	if got := metric(t, reg, "prefetchd_model_swaps_total", "cause", CauseAutoRollback); got != 1 {
		t.Fatalf("prefetchd_model_swaps_total{cause=auto_rollback} = %v, want 1", got)
	}
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Versions {
		switch v.Version {
		case "bad2":
			if !strings.Contains(v.Refused, "auto rollback") || v.Issued < 50 || v.Precision != 0 {
				t.Fatalf("bad2 status %+v, want refused by auto rollback with precision 0", v)
			}
		case "good1":
			if !v.Active || v.Precision != 1 {
				t.Fatalf("good1 status %+v, want active with precision 1", v)
			}
		}
	}
	if got := metric(t, reg, "prefetchd_model_precision", "version", "good1"); got != 1 {
		t.Fatalf("prefetchd_model_precision{version=good1} = %v, want 1", got)
	}
	// The watcher does not bring the bad version back.
	time.Sleep(150 * time.Millisecond)
	if got := activeVersion(m); got != "good1" {
		t.Fatalf("active %q some polls after the rollback, want good1", got)
	}

	// A good successor is judged too, and kept.
	prefetch(t, ctx, m, 100)
	publishSpec(t, repo, spec{version: "good3", created: base.Add(2 * time.Minute)})
	waitFor(t, 10*time.Second, "good3 active", func() bool { return activeVersion(m) == "good3" })
	prefetch(t, ctx, m, 300)
	time.Sleep(50 * time.Millisecond)
	if got := activeVersion(m); got != "good3" {
		t.Fatalf("active %q after good3 served well, want good3", got)
	}

	// An operator may still activate the rolled-back version explicitly.
	if err := m.Activate(ctx, "bad2"); err != nil {
		t.Fatalf("Activate(bad2): %v", err)
	}
}

// TestAutoRollbackNeedsBaseline: with a predecessor that issued too few
// prefetches there is nothing to compare with, and no rollback happens.
func TestAutoRollbackNeedsBaseline(t *testing.T) {
	m, repo, _ := newTest(t, Config{
		PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond,
		AutoRollback: AutoRollback{Enabled: true, MinFraction: 0.5, Window: time.Minute, MinIssued: 50},
	})
	ctx := testCtx(t, 30*time.Second)
	publishSpec(t, repo, spec{version: "good1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "good1 active", func() bool { return activeVersion(m) == "good1" })
	prefetch(t, ctx, m, 10)
	publishSpec(t, repo, spec{version: "bad2", created: base.Add(time.Minute), shift: 5})
	waitFor(t, 10*time.Second, "bad2 active", func() bool { return activeVersion(m) == "bad2" })
	prefetch(t, ctx, m, 200)
	time.Sleep(100 * time.Millisecond)
	if got := activeVersion(m); got != "bad2" {
		t.Fatalf("active %q, want bad2 kept for lack of a baseline", got)
	}
}

func TestWindow(t *testing.T) {
	w := newWindow(10 * time.Second) // 1s buckets
	t0 := time.Unix(1000, 0)
	w.add(t0, counts{10, 5, 2})
	w.add(t0.Add(4*time.Second), counts{10, 1, 3})
	if got := w.sum(t0.Add(5 * time.Second)); got != (counts{20, 6, 5}) {
		t.Fatalf("sum = %+v, want 20, 6, 5", got)
	}
	if got := w.sum(t0.Add(12 * time.Second)); got != (counts{10, 1, 3}) {
		t.Fatalf("sum after the first bucket left = %+v, want 10, 1, 3", got)
	}
	w.add(t0.Add(20*time.Second), counts{4, 4, 0}) // reuses the first bucket's slot
	if got := w.sum(t0.Add(20 * time.Second)); got != (counts{4, 4, 0}) {
		t.Fatalf("sum after wrapping = %+v, want 4, 4, 0", got)
	}
	if p, n := (counts{issued: 9, used: 1, wasted: 3}).decided(); p != 0.25 || n != 4 {
		t.Fatalf("decided = %v over %d, want 0.25 over 4", p, n)
	}
}

// TestAutoRollbackWaitsForOutcomes: a new version as good as its
// predecessor is not judged on prefetches still warm and unvisited (right
// after a swap, all of them are): it issues many before any is used or
// expires, and is kept; then, with outcomes below the fraction, it is
// rolled back.
func TestAutoRollbackWaitsForOutcomes(t *testing.T) {
	m, repo, _ := newTest(t, Config{
		PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond,
		AutoRollback: AutoRollback{Enabled: true, MinFraction: 0.5, Window: time.Minute, MinIssued: 50},
	})
	publishSpec(t, repo, spec{version: "good1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "good1 active", func() bool { return activeVersion(m) == "good1" })
	// good1: 300 prefetches, 60 used, 240 expired (precision 0.2).
	m.ObservePrecision("good1", 300, 60, 240)
	publishSpec(t, repo, spec{version: "same2", created: base.Add(time.Minute)})
	waitFor(t, 10*time.Second, "same2 active", func() bool { return activeVersion(m) == "same2" })
	// 400 issued, none used or expired yet.
	for range 40 {
		m.ObservePrecision("same2", 10, 0, 0)
	}
	time.Sleep(200 * time.Millisecond)
	if got := activeVersion(m); got != "same2" {
		t.Fatalf("active %q after 400 prefetches with no outcome yet, want same2 kept", got)
	}
	// Their outcomes: as good as good1's.
	m.ObservePrecision("same2", 0, 80, 320)
	time.Sleep(200 * time.Millisecond)
	if got := activeVersion(m); got != "same2" {
		t.Fatalf("active %q at good1's precision, want same2 kept", got)
	}
	// Then far worse: 0.2 × 400 + 0 over 400 + 600 = 0.08, below 0.5 × 0.2.
	m.ObservePrecision("same2", 600, 0, 600)
	waitFor(t, 10*time.Second, "rollback to good1", func() bool { return activeVersion(m) == "good1" })
	st, err := m.Status(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Versions {
		if v.Version == "same2" && !strings.Contains(v.Refused, "over 1000 prefetches used or expired") {
			t.Fatalf("same2 refused %q, want the auto rollback over 1000 prefetches used or expired", v.Refused)
		}
	}
}

// TestPrecisionGaugeMovesOn: prefetchd_model_precision is the precision
// over the window at the scrape, so it falls to 0 once the window has
// moved past the last prefetch, without another one coming.
func TestPrecisionGaugeMovesOn(t *testing.T) {
	m, repo, reg := newTest(t, Config{
		PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond,
		AutoRollback: AutoRollback{Enabled: true, MinFraction: 0.5, Window: time.Minute, MinIssued: 50},
	})
	var ahead atomic.Int64
	m.now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	ctx := testCtx(t, 30*time.Second)
	publishSpec(t, repo, spec{version: "good1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "good1 active", func() bool { return activeVersion(m) == "good1" })
	prefetch(t, ctx, m, 10)
	if got := metric(t, reg, "prefetchd_model_precision", "version", "good1"); got != 1 {
		t.Fatalf("prefetchd_model_precision{version=good1} = %v right after 10 used prefetches, want 1", got)
	}
	ahead.Store(int64(30 * time.Second))
	if got := metric(t, reg, "prefetchd_model_precision", "version", "good1"); got != 1 {
		t.Fatalf("prefetchd_model_precision{version=good1} = %v within the window, want 1", got)
	}
	ahead.Store(int64(2 * time.Minute))
	if got := metric(t, reg, "prefetchd_model_precision", "version", "good1"); got != 0 {
		t.Fatalf("prefetchd_model_precision{version=good1} = %v with the window past the last prefetch, want 0", got)
	}
}

// TestOlderVersionPublishedIsReported: a valid version published while a
// version created after it serves is not served (the newest by created
// wins), and that is logged, counted and shown by Status with the reason,
// until it is activated by hand.
func TestOlderVersionPublishedIsReported(t *testing.T) {
	m, repo, reg := newTest(t, Config{PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond})
	ctx := testCtx(t, 30*time.Second)
	publishSpec(t, repo, spec{version: "v2", created: base.Add(time.Hour)})
	runManager(t, m)
	waitFor(t, 10*time.Second, "v2 active", func() bool { return activeVersion(m) == "v2" })
	publishSpec(t, repo, spec{version: "v1", created: base})
	waitFor(t, 10*time.Second, "v1 reported as older", func() bool {
		return metric(t, reg, "prefetchd_model_skipped_total", "reason", SkipOlder) == 1
	})
	if got := activeVersion(m); got != "v2" {
		t.Fatalf("active %q, want v2 still", got)
	}
	if got := metric(t, reg, "prefetchd_model_unserved_folders"); got != 1 {
		t.Errorf("prefetchd_model_unserved_folders = %v, want 1", got)
	}
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Versions {
		if v.Version == "v1" && !strings.Contains(v.Refused, "not served: published after v2 serves, but created earlier") {
			t.Errorf("v1 status %+v, want the reason it is not served", v)
		}
	}
	if err := m.Activate(ctx, "v1"); err != nil {
		t.Fatalf("Activate v1: %v", err)
	}
	if got := metric(t, reg, "prefetchd_model_unserved_folders"); got != 0 {
		t.Errorf("prefetchd_model_unserved_folders = %v after activating v1, want 0", got)
	}
}

// TestRefusalsSurviveRestart: versions refused by validation and by the
// automatic rollback are still listed with their reason after a restart
// (a new Manager on the same repository), counted as unserved, and the one
// rolled back is not served again; a folder rewritten since is judged
// afresh.
func TestRefusalsSurviveRestart(t *testing.T) {
	cfg, m, repo, stop, done := startWithBaseline(t)
	publishSpec(t, repo, spec{version: "broken2", created: base.Add(time.Minute), edit: func(f map[string][]byte) { f[ModelFile] = truncate(f[ModelFile]) }})
	waitFor(t, 10*time.Second, "broken2 refused", func() bool { return refusedOf(t, m)["broken2"] != "" })
	publishSpec(t, repo, spec{version: "bad3", created: base.Add(2 * time.Minute), shift: 5})
	waitFor(t, 10*time.Second, "bad3 active", func() bool { return activeVersion(m) == "bad3" })
	m.ObservePrecision("bad3", 100, 0, 100)
	waitFor(t, 10*time.Second, "bad3 rolled back", func() bool { return activeVersion(m) == "good1" })
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	check := func(m *Manager, reg *prometheus.Registry, wantBroken bool) {
		t.Helper()
		refused := refusedOf(t, m)
		if !strings.Contains(refused["bad3"], "auto rollback") {
			t.Errorf("after the restart bad3 refused %q, want the auto rollback", refused["bad3"])
		}
		if got := refused["broken2"] != ""; got != wantBroken {
			t.Errorf("after the restart broken2 refused %q, want refused %v", refused["broken2"], wantBroken)
		}
		if got := activeVersion(m); got != "good1" {
			t.Errorf("active %q after the restart, want good1", got)
		}
		want := 1.0
		if wantBroken {
			want = 2
		}
		if got := metric(t, reg, "prefetchd_model_unserved_folders"); got != want {
			t.Errorf("unserved folders %v after the restart, want %v", got, want)
		}
	}
	m2, _, reg2 := newTest(t, Config{Repo: repo, PollInterval: cfg.PollInterval, Debounce: cfg.Debounce, AutoRollback: cfg.AutoRollback})
	if err := m2.Sync(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	check(m2, reg2, true)

	// broken2 rewritten, valid now (and older than good1's pin): judged
	// afresh, no longer refused.
	if err := os.RemoveAll(filepath.Join(repo, testName, "broken2")); err != nil {
		t.Fatal(err)
	}
	publishSpec(t, repo, spec{version: "broken2", created: base.Add(time.Minute)})
	m3, _, reg3 := newTest(t, Config{Repo: repo, PollInterval: cfg.PollInterval, Debounce: cfg.Debounce, AutoRollback: cfg.AutoRollback})
	if err := m3.Sync(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	check(m3, reg3, false)
}

// refusedOf maps each version Status lists to its refusal reason.
func refusedOf(t *testing.T, m *Manager) map[string]string {
	t.Helper()
	st, err := m.Status(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, v := range st.Versions {
		out[v.Version] = v.Refused
	}
	return out
}

// TestRepoGoneIsLogged: the model's folder vanishing is logged once (the
// loaded version keeps serving), and so is its return.
func TestRepoGoneIsLogged(t *testing.T) {
	repo := t.TempDir()
	var logs servertest.Buffer
	m, err := New(Config{Repo: repo, Name: testName, PollInterval: 20 * time.Millisecond, Debounce: 5 * time.Millisecond}, LoadBundle, slog.New(slog.NewTextHandler(&logs, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	publishSpec(t, repo, spec{version: "v1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "v1 active", func() bool { return activeVersion(m) == "v1" })
	dir := filepath.Join(repo, testName)
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the folder's absence logged", func() bool { return strings.Contains(logs.String(), "model repository folder gone") })
	time.Sleep(100 * time.Millisecond) // several polls
	if n := strings.Count(logs.String(), "model repository folder gone"); n != 1 {
		t.Errorf("absence logged %d times, want once", n)
	}
	if got := activeVersion(m); got != "v1" {
		t.Errorf("active %q with the folder gone, want v1 still", got)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the folder's return logged", func() bool { return strings.Contains(logs.String(), "model repository folder back") })
}

// TestProbationSurvivesRestart: a new version on probation when the service
// restarts is still on probation after it (.probation.json), and rolled
// back to its predecessor when its prefetches then fail.
func TestProbationSurvivesRestart(t *testing.T) {
	cfg, m, repo, stop, done := startWithBaseline(t)
	publishSpec(t, repo, spec{version: "bad2", created: base.Add(time.Minute), shift: 5})
	waitFor(t, 10*time.Second, "bad2 active", func() bool { return activeVersion(m) == "bad2" })
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(repo, testName, ProbationFile)); err != nil {
		t.Fatalf("no probation file while bad2 is judged: %v", err)
	}

	cfg.Repo = repo
	m2, _, reg := newTest(t, cfg)
	runManager(t, m2)
	waitFor(t, 10*time.Second, "bad2 active after the restart", func() bool { return activeVersion(m2) == "bad2" })
	m2.ObservePrecision("bad2", 100, 0, 100)
	waitFor(t, 10*time.Second, "bad2 rolled back after the restart", func() bool { return activeVersion(m2) == "good1" })
	if !strings.Contains(refusedOf(t, m2)["bad2"], "auto rollback") {
		t.Errorf("bad2 refused %q, want the auto rollback", refusedOf(t, m2)["bad2"])
	}
	// Counted once the swap is done, a moment after the predecessor serves.
	waitFor(t, 10*time.Second, "the auto rollback counted", func() bool {
		return metric(t, reg, "prefetchd_model_rollbacks_total", "cause", "auto") >= 1
	})
	if got := metric(t, reg, "prefetchd_model_rollbacks_total", "cause", "auto"); got != 1 {
		t.Errorf("auto rollbacks %v, want 1", got)
	}
	if _, err := os.Stat(filepath.Join(repo, testName, ProbationFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("probation file after the rollback: %v, want it gone", err)
	}
}

// startWithBaseline runs a Manager with automatic rollback over a new
// repository serving good1, whose precision (0.5 over 300 prefetches) is a
// baseline. stop ends Run, whose error comes on done.
func startWithBaseline(t *testing.T) (Config, *Manager, string, context.CancelFunc, chan error) {
	t.Helper()
	cfg := Config{
		PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond,
		AutoRollback: AutoRollback{Enabled: true, MinFraction: 0.5, Window: time.Minute, MinIssued: 50},
	}
	m, repo, _ := newTest(t, cfg)
	publishSpec(t, repo, spec{version: "good1"})
	ctx, stop := context.WithCancel(testCtx(t, 60*time.Second))
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitFor(t, 10*time.Second, "good1 active", func() bool { return activeVersion(m) == "good1" })
	m.ObservePrecision("good1", 300, 150, 150)
	return cfg, m, repo, stop, done
}

// TestStatusNamesVersionsNotLoaded: a version not in memory (here refused)
// is listed under the name its manifest gives, as a loaded one is.
func TestStatusNamesVersionsNotLoaded(t *testing.T) {
	m, repo, _ := newTest(t, Config{PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond})
	publishSpec(t, repo, spec{version: "good1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "good1 active", func() bool { return activeVersion(m) == "good1" })
	publishSpec(t, repo, spec{version: "broken2", created: base.Add(time.Minute),
		manifest: func(mf *model.Manifest) { mf.Name = "nasa" },
		edit:     func(f map[string][]byte) { f[ModelFile] = truncate(f[ModelFile]) }})
	waitFor(t, 10*time.Second, "broken2 refused", func() bool { return refusedOf(t, m)["broken2"] != "" })
	st, err := m.Status(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Versions {
		if v.Version == "broken2" && v.Name != "nasa" {
			t.Errorf("broken2 listed as %q, want its manifest's name nasa", v.Name)
		}
	}
}

// TestStatusKeepsReleasedFigures: a version released from memory (Keep)
// is still reported with the figures it had, not zeros.
func TestStatusKeepsReleasedFigures(t *testing.T) {
	m, repo, _ := newTest(t, Config{Keep: 1, PollInterval: 50 * time.Millisecond, Debounce: 10 * time.Millisecond})
	publishSpec(t, repo, spec{version: "v1"})
	runManager(t, m)
	waitFor(t, 10*time.Second, "v1 active", func() bool { return activeVersion(m) == "v1" })
	m.ObservePrecision("v1", 100, 40, 60)
	m.RecordRequest("v1", time.Millisecond)
	publishSpec(t, repo, spec{version: "v2", created: base.Add(time.Minute)})
	waitFor(t, 10*time.Second, "v2 active", func() bool { return activeVersion(m) == "v2" })
	st, err := m.Status(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st.Versions {
		if v.Version == "v1" && (v.Issued != 100 || v.Used != 40 || v.Precision != 0.4 || v.Requests != 1) {
			t.Errorf("released v1 reported %+v, want issued 100, used 40, precision 0.4, 1 request", v)
		}
	}
}
