package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prefetchd/prefetchd/internal/hint"
	"github.com/prefetchd/prefetchd/model"
)

// Swap causes, the values of the cause label of prefetchd_model_swaps_total.
const (
	CausePublish      = "publish"       // a new version appeared in the repository
	CauseActivate     = "activate"      // Activate was called
	CauseRollback     = "rollback"      // Rollback was called
	CauseAutoRollback = "auto_rollback" // live precision fell below the predecessor's
	CauseStatic       = "static"        // the fixed model of Static
)

// maxHistory bounds the activation history that Rollback walks back through.
const maxHistory = 64

// Manager owns the live model: it watches the repository, validates and
// swaps versions, and rolls back. Current is safe for any number of
// concurrent readers and never blocks; the other methods are safe for
// concurrent use and are serialized among themselves.
type Manager struct {
	cfg    Config
	load   Loader
	log    *slog.Logger
	met    *metrics
	val    validator
	dir    string // <Repo>/<Name>; empty for Static
	static bool
	now    func() time.Time

	current  atomic.Pointer[Live]
	prob     atomic.Pointer[probation]
	stats    sync.Map      // version -> *stats
	rollback chan struct{} // signals Run to check the probation

	// opMu serializes scans, validations and swaps. It is held across slow
	// loads, never by readers.
	opMu  sync.Mutex
	epoch uint32 // guarded by opMu
	// pin is the version an operator or the automatic rollback chose,
	// also in PinFile; nil when the newest serves. Guarded by opMu.
	pin *pin
	// synced is set after the first Sync. Guarded by opMu.
	synced bool
	// savedRefusals is what RefusedFile holds. Guarded by mu.
	savedRefusals map[string]refusal
	// repoGone is set while the model's folder is missing (logged once
	// each way). Guarded by opMu.
	repoGone bool

	// mu guards the fields below; it is held only briefly.
	mu       sync.Mutex
	versions map[string]*version
	history  []string // activation order, the active version last
	recent   []string // most recently active first; the first Keep stay loaded
	onSwap   []func(old, new *Live)
	lastErr  string // last Sync error logged, to log repeats once
	// skipped are the version folders the last scan found not servable, by
	// name; retry is the soonest a rescan may find one complete by itself.
	skipped map[string]skip
	retry   time.Duration
}

// version is what the Manager knows about one version. Its fields are
// written with both opMu and mu held, so either lock suffices to read them.
type version struct {
	name       string
	disk       *candidate // from the last scan; nil when not on disk
	loaded     Model      // non-nil while held in memory (validated)
	loadedAt   time.Time
	considered string // fingerprint at which the watcher last saw it
	refused    string // why validation or auto rollback refused it
	refusedFP  string
	// older says why a version published while another served was not
	// served: it sorts older than the active one (its created time).
	older string
	st    *stats
	// final are st's figures when the version was released from memory:
	// Status still reports them.
	final struct{ requests, issued, used uint64 }
}

// New returns a Manager for the repository cfg.Repo, loading bundles with
// load. It does no I/O: call Sync to load the newest valid version now, or
// Run to do so and keep watching. reg may be nil.
func New(cfg Config, load Loader, logger *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if cfg.Repo == "" {
		return nil, errors.New("lifecycle config: model repository is empty")
	}
	if load == nil {
		return nil, errors.New("lifecycle: loader is nil")
	}
	m, err := newManager(cfg, load, logger, reg)
	if err != nil {
		return nil, err
	}
	m.dir = filepath.Join(m.cfg.Repo, m.cfg.Name)
	return m, nil
}

// Static returns a Manager that serves one fixed bundle, such as the model
// embedded in the binary, after validating it like a published version. Its
// Run only waits for the context; Activate accepts only its own version and
// Rollback always returns hint.ErrNoRollback. reg may be nil.
func Static(ctx context.Context, l Model, cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	m, err := newManager(cfg, nil, logger, reg)
	if err != nil {
		return nil, err
	}
	m.static = true
	version := ""
	if l != nil && l.Manifest() != nil {
		version = l.Manifest().Version
		if name := l.Manifest().Name; name != "" {
			m.cfg.Name = name
		}
	}
	vctx, cancel := context.WithTimeout(ctx, m.cfg.ValidateTimeout)
	defer cancel()
	if err := m.val.check(vctx, version, l); err != nil {
		m.countRefusal(err)
		return nil, err
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	// The metrics registered above read the versions from now on.
	m.mu.Lock()
	v := m.versionLocked(version)
	v.loaded, v.loadedAt = l, m.now()
	m.mu.Unlock()
	m.swapLocked(v, CauseStatic, true)
	return m, nil
}

func newManager(cfg Config, load Loader, logger *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		cfg:      cfg,
		load:     load,
		log:      logger.With("component", "lifecycle"),
		val:      validator{tolerance: cfg.Tolerance, warmup: cfg.Warmup, checkVocab: cfg.CheckVocab},
		now:      time.Now,
		rollback: make(chan struct{}, 1),
		versions: make(map[string]*version),
	}
	met, err := newMetrics(reg, m.unserved, m.precisions)
	if err != nil {
		return nil, err
	}
	m.met = met
	return m, nil
}

// Current returns the live model, or nil before one is loaded. It is one
// atomic load: it never blocks and never sees half a swap.
func (m *Manager) Current() *Live { return m.current.Load() }

// OnSwap registers fn to be called after every swap with the previous Live
// (nil on the first) and the new one. Calls are serialized, in swap order,
// on the goroutine that swapped; fn must return quickly and must not call
// Activate, Rollback or Sync.
func (m *Manager) OnSwap(fn func(old, new *Live)) {
	m.mu.Lock()
	m.onSwap = append(m.onSwap, fn)
	m.mu.Unlock()
}

// Sync scans the repository once and activates the newest new version that
// passes validation, trying older new ones when it is refused. Only versions
// that are new or rewritten since the last scan and newer than the active one
// are candidates, so a Rollback or an Activate of an older version is not
// undone by the watcher. It returns an error only when no model is active
// afterwards, or when the repository cannot be read.
func (m *Manager) Sync(ctx context.Context) error {
	if m.static {
		return nil
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	found, err := m.refreshLocked()
	if err != nil {
		return err
	}
	var fresh []*candidate
	m.mu.Lock()
	for _, c := range found {
		v := m.versions[c.version]
		if v.considered != c.fp {
			v.considered = c.fp
			fresh = append(fresh, c)
		}
	}
	m.mu.Unlock()
	watching := m.synced
	if !m.synced {
		// At start, the version chosen before the restart serves again,
		// unless a newer one was published since.
		m.synced = true
		m.mu.Lock()
		m.loadRefusalsLocked()
		m.mu.Unlock()
		if m.pin = m.loadPin(); m.pin != nil {
			fresh = pinFirst(fresh, m.pin)
			m.log.Info("model pin found", "version", m.pin.Version, "cause", m.pin.Cause, "at", m.pin.At)
		}
	}
	for _, c := range fresh { // newest first
		if ctx.Err() != nil {
			return fmt.Errorf("sync model repository: %w", ctx.Err())
		}
		if cur := m.current.Load(); cur != nil && !newerKey(c.created, c.version, cur.Manifest.Created, cur.Version) {
			break
		}
		if err := m.activateLocked(ctx, c.version, CausePublish); err == nil {
			break
		}
	}
	if m.current.Load() == nil {
		return fmt.Errorf("no valid model version in %s%s", m.dir, m.unservedSummary())
	}
	if watching {
		m.noteOlder(fresh)
	}
	return nil
}

// noteOlder records the versions that appeared while another one served
// and were not served because they sort older (by created, then name):
// each is logged and counted once, and Status says why.
func (m *Manager) noteOlder(fresh []*candidate) {
	cur := m.current.Load()
	if cur == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range fresh {
		v := m.versions[c.version]
		if v == nil || c.version == cur.Version || v.older != "" || newerKey(c.created, c.version, cur.Manifest.Created, cur.Version) {
			continue
		}
		v.older = fmt.Sprintf("published after %s serves, but created earlier (%s, not after %s): activate it to serve it",
			cur.Version, c.created.UTC().Format(time.RFC3339), cur.Manifest.Created.UTC().Format(time.RFC3339))
		if cur.Manifest.Created.After(m.now()) {
			v.older += " (the serving version's created time is in the future)"
		}
		m.met.skipped.WithLabelValues(SkipOlder).Inc()
		m.log.Warn("model version folder not served", "version", c.version, "dir", filepath.Join(m.dir, c.version),
			"reason", SkipOlder, "why", v.older)
	}
}

// unservedSummary names up to three folders that are not served and why,
// for the error of a repository with no servable version.
func (m *Manager) unservedSummary() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var parts []string
	for name, v := range m.versions {
		if v.refused != "" {
			parts = append(parts, name+": refused: "+v.refused)
		}
	}
	for name, sk := range m.skipped {
		parts = append(parts, name+": "+sk.why)
	}
	if len(parts) == 0 {
		return ""
	}
	sort.Strings(parts)
	more := ""
	if len(parts) > 3 {
		more = fmt.Sprintf("; and %d more", len(parts)-3)
		parts = parts[:3]
	}
	return " (" + strings.Join(parts, "; ") + more + ")"
}

// refreshLocked rescans the repository and records what is on disk, newest
// first. The caller holds opMu.
func (m *Manager) refreshLocked() ([]*candidate, error) {
	m.mu.Lock()
	prev := make(map[string]*candidate, len(m.versions))
	for name, v := range m.versions {
		if v.disk != nil {
			prev[name] = v.disk
		}
	}
	prevSkipped := maps.Clone(m.skipped)
	m.mu.Unlock()
	found, skipped, err := scanRepo(m.dir, prev, prevSkipped, m.cfg.QuietPeriod, m.now())
	if err != nil {
		return nil, err
	}
	if _, serr := os.Stat(m.dir); errors.Is(serr, fs.ErrNotExist) != m.repoGone {
		m.repoGone = !m.repoGone
		if m.repoGone {
			m.log.Warn("model repository folder gone: the versions loaded keep serving until it is back", "dir", m.dir)
		} else {
			m.log.Info("model repository folder back", "dir", m.dir)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.noteSkippedLocked(skipped)
	seen := make(map[string]bool, len(found))
	for _, c := range found {
		seen[c.version] = true
		v := m.versionLocked(c.version)
		v.disk = c
	}
	for name, v := range m.versions {
		if !seen[name] {
			v.disk = nil
			m.pruneLocked(v)
		}
	}
	return found, nil
}

// noteSkippedLocked records the folders a scan could not serve: each is
// logged and counted once when it first shows up or its reason changes, and
// shown by Status until it is complete or gone. The caller holds mu.
func (m *Manager) noteSkippedLocked(skipped map[string]skip) {
	m.retry = 0
	for name, sk := range skipped {
		if old, ok := m.skipped[name]; !ok || old.reason != sk.reason {
			m.met.skipped.WithLabelValues(sk.reason).Inc()
			if sk.reason == SkipSettling {
				m.log.Info("model version folder not served yet", "version", name, "dir", filepath.Join(m.dir, name), "reason", sk.reason, "why", sk.why)
			} else {
				m.log.Warn("model version folder not served", "version", name, "dir", filepath.Join(m.dir, name), "reason", sk.reason, "why", sk.why)
			}
		}
		if sk.retry > 0 && (m.retry == 0 || sk.retry < m.retry) {
			m.retry = sk.retry
		}
	}
	m.skipped = skipped
}

// unserved is prefetchd_model_unserved_folders, read at each scrape: the
// folders the last scan skipped and the versions on disk that are refused.
func (m *Manager) unserved() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.skipped)
	cur := m.current.Load()
	for _, v := range m.versions {
		if v.disk != nil && (v.refused != "" || (v.older != "" && (cur == nil || cur.Version != v.name))) {
			n++
		}
	}
	return float64(n)
}

// retryIn is when a rescan may find a settling folder complete without any
// further file-system event; 0 when none is settling.
func (m *Manager) retryIn() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.retry
}

// versionLocked returns the record of a version, creating it. The caller
// holds mu (or opMu before the Manager is shared).
func (m *Manager) versionLocked(name string) *version {
	v := m.versions[name]
	if v == nil {
		v = &version{name: name}
		m.versions[name] = v
	}
	return v
}

// pruneLocked forgets a version that is neither on disk, in memory nor in
// the history. The caller holds mu.
func (m *Manager) pruneLocked(v *version) {
	if v.disk != nil || v.loaded != nil || slices.Contains(m.history, v.name) {
		return
	}
	delete(m.versions, v.name)
}

// Activate validates version (unless it is already held in memory) and
// swaps to it. It returns an error wrapping hint.ErrUnknownVersion when the
// version is neither in the repository nor in memory, and a *RefusedError
// (matching hint.ErrRefused) when it fails validation; the active version
// then keeps serving. When ctx ends during validation it returns ctx.Err()
// (wrapped) and the version is not marked refused. Activating the active
// version does nothing.
func (m *Manager) Activate(ctx context.Context, version string) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if !m.static {
		if _, err := m.refreshLocked(); err != nil {
			return err
		}
	}
	return m.activateLocked(ctx, version, CauseActivate)
}

func (m *Manager) activateLocked(ctx context.Context, name, cause string) error {
	m.mu.Lock()
	v := m.versions[name]
	sk, skipped := m.skipped[name]
	m.mu.Unlock()
	if v == nil || (v.loaded == nil && v.disk == nil) {
		if skipped {
			// A folder in the repository that is not a servable version
			// (incomplete, an unparsable manifest, still settling): it is
			// there but cannot be served (FAILED_PRECONDITION), and why.
			return fmt.Errorf("activate %q: %w", name, &RefusedError{Version: name, Reason: sk.reason, Err: fmt.Errorf("not served: %s", sk.why)})
		}
		return fmt.Errorf("activate %q: %w", name, hint.ErrUnknownVersion)
	}
	if cur := m.current.Load(); cur != nil && cur.Version == name {
		return nil
	}
	m.mu.Lock()
	refused := v.refused != "" && v.disk != nil && v.refusedFP == v.disk.fp
	reason := v.refused
	m.mu.Unlock()
	if refused && cause == CausePublish {
		// Refused in this folder as it is (by this process or, through
		// RefusedFile, before a restart): not offered again.
		return fmt.Errorf("activate %q: refused: %s", name, reason)
	}
	if v.loaded == nil {
		if err := m.validateLocked(ctx, v); err != nil {
			return err
		}
	}
	if cause == CauseActivate {
		m.mu.Lock()
		v.refused, v.refusedFP = "", "" // the operator overrides an automatic rollback
		m.mu.Unlock()
		m.saveRefusals()
	}
	m.swapLocked(v, cause, true)
	return nil
}

// validateLocked loads and validates v from disk and holds it in memory on
// success. A failure is recorded as a refusal unless ctx itself ended first,
// in which case ctx.Err() is returned (wrapped). The caller holds opMu.
func (m *Manager) validateLocked(ctx context.Context, v *version) error {
	c := v.disk
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ValidateTimeout)
	defer cancel()
	start := m.now()
	l, err := m.safeLoad(ctx, c)
	if err == nil {
		err = m.val.check(ctx, c.version, l)
	}
	if err != nil && parent.Err() != nil {
		// The caller gave up (shutdown, a canceled request): not the
		// version's fault, so it is not refused.
		return fmt.Errorf("validate %s: %w", c.version, parent.Err())
	}
	m.met.validation.Observe(m.now().Sub(start).Seconds())
	if err != nil {
		m.countRefusal(err)
		m.mu.Lock()
		v.refused, v.refusedFP = err.Error(), c.fp
		m.mu.Unlock()
		m.saveRefusals()
		m.log.Warn("model version refused", "version", c.version, "dir", c.dir, "reason", reasonOf(err), "err", err)
		return err
	}
	m.mu.Lock()
	v.loaded, v.loadedAt = l, m.now()
	wasRefused := v.refused != ""
	v.refused, v.refusedFP = "", ""
	m.mu.Unlock()
	if wasRefused {
		m.saveRefusals()
	}
	attrs := []any{"version", c.version, "seconds", m.now().Sub(start).Seconds()}
	if b, ok := l.(*model.Bundle); ok {
		switch sc := b.Scoring(); {
		case sc.Approximate:
			attrs = append(attrs, "scoring", "clustered", "clusters", sc.Clusters)
		case sc.Exact != "":
			attrs = append(attrs, "scoring", "exact", "why", sc.Exact)
		}
	}
	m.log.Info("model version validated", attrs...)
	return nil
}

// safeLoad runs the loader, turning an error or a panic into a RefusedError.
func (m *Manager) safeLoad(ctx context.Context, c *candidate) (l Model, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &RefusedError{Version: c.version, Reason: ReasonPanic, Err: fmt.Errorf("loader panicked: %v", r)}
		}
	}()
	l, err = m.load(ctx, c.dir)
	if err != nil {
		reason := loadReason(err)
		if ctx.Err() != nil {
			reason = ReasonTimeout
		}
		return nil, &RefusedError{Version: c.version, Reason: reason, Err: err}
	}
	return l, nil
}

func reasonOf(err error) string {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ReasonLoad
}

func (m *Manager) countRefusal(err error) {
	m.met.refused.WithLabelValues(reasonOf(err)).Inc()
}

// swapLocked publishes v (already loaded) as the live model. push records
// the activation in the history (false for rollbacks, which pop it). The
// caller holds opMu.
func (m *Manager) swapLocked(v *version, cause string, push bool) {
	now := m.now()
	old := m.current.Load()
	m.epoch++
	if !m.static {
		switch {
		case cause == CauseActivate || cause == CauseRollback || cause == CauseAutoRollback:
			m.savePin(v.name, cause, now)
		case cause == CausePublish && m.pin != nil && m.pin.Version != v.name:
			m.clearPin()
		}
	}
	l := v.loaded
	b, _ := l.(*model.Bundle)
	live := &Live{
		Version:     v.name,
		Model:       l,
		Bundle:      b,
		Manifest:    l.Manifest(),
		Vocab:       l.Vocab(),
		Epoch:       m.epoch,
		Tag:         VersionTag(v.name, l.Vocab()),
		ActivatedAt: now,
	}

	m.mu.Lock()
	if v.st == nil {
		v.st = m.met.newStats(v.name, m.cfg.AutoRollback.Window)
		m.stats.Store(v.name, v.st)
	}
	if push {
		m.history = append(m.history, v.name)
		if len(m.history) > maxHistory {
			m.history = slices.Delete(m.history, 0, len(m.history)-maxHistory)
		}
	}
	m.recent = slices.DeleteFunc(m.recent, func(s string) bool { return s == v.name })
	m.recent = slices.Insert(m.recent, 0, v.name)
	var released []string
	if len(m.recent) > m.cfg.Keep {
		released = m.recent[m.cfg.Keep:]
		m.recent = slices.Clip(m.recent[:m.cfg.Keep])
	}
	for _, name := range released {
		if r := m.versions[name]; r != nil {
			r.loaded = nil
			if r.st != nil {
				r.final.requests, r.final.issued, r.final.used = r.st.requests.Load(), r.st.issued.Load(), r.st.used.Load()
			}
			r.st = nil
			m.stats.Delete(name)
			m.pruneLocked(r)
		}
	}
	loadedN := 0
	for _, r := range m.versions {
		if r.loaded != nil {
			loadedN++
		}
	}
	callbacks := slices.Clone(m.onSwap)
	m.mu.Unlock()

	m.current.Store(live)
	m.setProbation(old, live, cause, now)

	for _, name := range released {
		m.met.forget(name)
		m.log.Info("model version released", "version", name)
	}
	if old != nil && !slices.Contains(released, old.Version) {
		m.met.active.WithLabelValues(old.Version).Set(0)
	}
	m.met.active.WithLabelValues(live.Version).Set(1)
	m.met.swaps.WithLabelValues(cause).Inc()
	m.met.loaded.Set(float64(loadedN))
	prev := ""
	if old != nil {
		prev = old.Version
	}
	m.log.Info("model swapped", "version", live.Version, "previous", prev, "epoch", live.Epoch, "tag", live.Tag, "cause", cause)
	for _, fn := range callbacks {
		fn(old, live)
	}
}

// setProbation starts watching a version activated after a predecessor, when
// automatic rollback is on and the predecessor has a baseline precision.
func (m *Manager) setProbation(old, live *Live, cause string, now time.Time) {
	ar := m.cfg.AutoRollback
	if !ar.Enabled {
		m.prob.Store(nil)
		return
	}
	if old == nil {
		// The first version this process serves: on probation still if it
		// was when the process before stopped (a restart must not end it).
		m.prob.Store(m.resumeProbation(live))
		return
	}
	if cause != CausePublish && cause != CauseActivate {
		m.prob.Store(nil)
		m.saveProbation(nil)
		return
	}
	var baseline float64
	var decided uint64
	if st := m.statsFor(old.Version); st != nil {
		baseline, decided = st.win.sum(now).decided()
		if decided < ar.MinIssued {
			baseline, decided = counts{used: st.used.Load(), wasted: st.wasted.Load()}.decided()
		}
	}
	if decided < ar.MinIssued {
		m.log.Info("no automatic rollback for this version: predecessor has too few prefetches used or expired for a baseline",
			"version", live.Version, "predecessor", old.Version, "decided", decided, "min_issued", ar.MinIssued)
		m.prob.Store(nil)
		m.saveProbation(nil)
		return
	}
	p := &probation{
		version:     live.Version,
		predecessor: old.Version,
		baseline:    baseline,
		win:         newWindow(ar.Window),
	}
	m.prob.Store(p)
	m.saveProbation(p)
}

// Rollback returns to the version that was active before the current one
// and names it. The version rolled back from stays in memory (within Keep)
// and can be activated again. A predecessor no longer in memory is reloaded
// and revalidated from disk; predecessors that are gone or refused are
// skipped. It returns hint.ErrNoRollback when no earlier version is left.
func (m *Manager) Rollback(ctx context.Context) (string, error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	name, err := m.rollbackLocked(ctx, CauseRollback)
	if err == nil {
		m.met.rollbacks.WithLabelValues("manual").Inc()
	}
	return name, err
}

func (m *Manager) rollbackLocked(ctx context.Context, cause string) (string, error) {
	if m.static {
		return "", hint.ErrNoRollback
	}
	if _, err := m.refreshLocked(); err != nil {
		return "", err
	}
	m.mu.Lock()
	hist := slices.Clone(m.history)
	m.mu.Unlock()
	cur := m.current.Load()
	for i := len(hist) - 2; i >= 0; i-- {
		if ctx.Err() != nil {
			return "", fmt.Errorf("rollback: %w", ctx.Err())
		}
		m.mu.Lock()
		v := m.versions[hist[i]]
		m.mu.Unlock()
		if v == nil || (cur != nil && v.name == cur.Version) {
			continue
		}
		if v.loaded == nil {
			if v.disk == nil || m.validateLocked(ctx, v) != nil {
				continue
			}
		}
		m.mu.Lock()
		m.history = m.history[:min(i+1, len(m.history))]
		m.mu.Unlock()
		m.swapLocked(v, cause, false)
		return v.name, nil
	}
	// The history of swaps lives in memory: after a restart, or once every
	// earlier version is gone or refused, a version is chosen by name.
	return "", fmt.Errorf("%w since this process started (activate one by name: prefetchctl model activate VERSION)", hint.ErrNoRollback)
}

// RecordRequest counts one prediction served by version and its latency. It
// is cheap and lock-free enough for the request path; unknown versions are
// ignored.
func (m *Manager) RecordRequest(version string, latency time.Duration) {
	st := m.statsFor(version)
	if st == nil {
		return
	}
	st.requests.Add(1)
	st.reqCounter.Inc()
	st.latency.Observe(latency.Seconds())
}

// ObservePrecision adds prefetches issued from version's predictions, how
// many of them the user then visited, and how many expired (or were
// evicted) unvisited, as reported by the prefetcher's online evaluation.
// Counts are increments, not totals. When the version is on probation after
// a swap and the precision of its prefetches whose fate is known (used or
// wasted) over the window falls below AutoRollback.MinFraction of its
// predecessor's, Run rolls it back. A prefetch still warm and unvisited is
// not judged: just after a swap every prefetch is, and no user could have
// used it yet.
func (m *Manager) ObservePrecision(version string, issued, used, wasted uint64) {
	st := m.statsFor(version)
	if st == nil || (issued == 0 && used == 0 && wasted == 0) {
		return
	}
	now := m.now()
	c := counts{issued: issued, used: used, wasted: wasted}
	st.issued.Add(issued)
	st.used.Add(used)
	st.wasted.Add(wasted)
	st.issuedC.Add(float64(issued))
	st.usedC.Add(float64(used))
	st.win.add(now, c)

	p := m.prob.Load()
	if p == nil || p.version != version {
		return
	}
	p.win.add(now, c)
	if m.failing(p, now) && p.fired.CompareAndSwap(false, true) {
		select {
		case m.rollback <- struct{}{}:
		default:
		}
	}
}

// precisions calls f with every held version's precision over its window
// now.
func (m *Manager) precisions(f func(version string, precision float64)) {
	now := m.now()
	m.stats.Range(func(k, v any) bool {
		c := v.(*stats).win.sum(now)
		f(k.(string), precisionOf(c.issued, c.used))
		return true
	})
}

// failing reports whether a version on probation has enough prefetches used
// or wasted in the window and their precision below the allowed fraction of
// the baseline.
func (m *Manager) failing(p *probation, now time.Time) bool {
	ar := m.cfg.AutoRollback
	precision, decided := p.win.sum(now).decided()
	return decided >= ar.MinIssued && precision < ar.MinFraction*p.baseline
}

func (m *Manager) statsFor(version string) *stats {
	if v, ok := m.stats.Load(version); ok {
		return v.(*stats)
	}
	return nil
}

// autoRollback rolls back the version on probation when it still fails.
func (m *Manager) autoRollback(ctx context.Context) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	p := m.prob.Load()
	cur := m.current.Load()
	if p == nil || cur == nil || cur.Version != p.version || !p.fired.Load() {
		return
	}
	precision, decided := p.win.sum(m.now()).decided()
	reason := fmt.Sprintf("auto rollback: precision %.4f over %d prefetches used or expired below %.2f × predecessor %s's %.4f",
		precision, decided, m.cfg.AutoRollback.MinFraction, p.predecessor, p.baseline)
	// Refused before the swap, so that whoever sees the predecessor serve
	// again also sees why (Status, RefusedFile); undone if no rollback.
	refuse := func(reason string) {
		m.mu.Lock()
		if v := m.versions[p.version]; v != nil {
			v.refused, v.refusedFP = reason, ""
			if reason != "" && v.disk != nil {
				v.refusedFP = v.disk.fp
			}
		}
		m.mu.Unlock()
		m.saveRefusals()
	}
	refuse(reason)
	to, err := m.rollbackLocked(ctx, CauseAutoRollback)
	if err != nil {
		refuse("")
		m.log.Error("automatic rollback failed", "version", p.version, "err", err)
		return
	}
	m.met.rollbacks.WithLabelValues("auto").Inc()
	m.log.Warn("model version rolled back automatically", "version", p.version, "to", to, "reason", reason)
}

// Status describes the versions the Manager knows, newest first: those on
// disk and those held in memory, then the folders of the repository that are
// not servable (incomplete, an unparsable manifest, a bare export still
// settling) with the reason in Refused.
func (m *Manager) Status(ctx context.Context) (hint.ModelStatus, error) {
	if err := ctx.Err(); err != nil {
		return hint.ModelStatus{}, fmt.Errorf("model status: %w", err)
	}
	cur := m.current.Load()
	var st hint.ModelStatus
	if cur != nil {
		st.Active = cur.Version
	}
	type row struct {
		created time.Time
		vs      hint.VersionStatus
	}
	var rows []row
	m.mu.Lock()
	for _, v := range m.versions {
		name := m.cfg.Name
		if v.loaded != nil && v.loaded.Manifest() != nil && v.loaded.Manifest().Name != "" {
			name = v.loaded.Manifest().Name
		} else if v.disk != nil && v.disk.manifest != nil && v.disk.manifest.Name != "" {
			// Not in memory (refused, released, not loaded since a
			// restart): the name its manifest on disk gives.
			name = v.disk.manifest.Name
		}
		r := row{vs: hint.VersionStatus{
			Name:     name,
			Version:  v.name,
			Loaded:   v.loaded != nil,
			Active:   cur != nil && cur.Version == v.name,
			Refused:  v.refused,
			LoadedAt: v.loadedAt,
		}}
		if r.vs.Refused == "" && v.older != "" && !r.vs.Active {
			r.vs.Refused = "not served: " + v.older
		}
		switch {
		case v.disk != nil:
			r.created = v.disk.created
		case v.loaded != nil:
			r.created = v.loaded.Manifest().Created
		}
		if v.loaded == nil {
			r.vs.LoadedAt = time.Time{}
		}
		if v.st != nil {
			r.vs.Requests = v.st.requests.Load()
			r.vs.Issued = v.st.issued.Load()
			r.vs.Used = v.st.used.Load()
		} else {
			// Released from memory: the figures it had then.
			r.vs.Requests, r.vs.Issued, r.vs.Used = v.final.requests, v.final.issued, v.final.used
		}
		r.vs.Precision = precisionOf(r.vs.Issued, r.vs.Used)
		rows = append(rows, r)
	}
	for name, sk := range m.skipped {
		if _, known := m.versions[name]; !known {
			rows = append(rows, row{vs: hint.VersionStatus{Name: m.cfg.Name, Version: name, Refused: "not served: " + sk.why}})
		}
	}
	m.mu.Unlock()
	sort.Slice(rows, func(i, j int) bool {
		return newerKey(rows[i].created, rows[i].vs.Version, rows[j].created, rows[j].vs.Version)
	})
	for _, r := range rows {
		st.Versions = append(st.Versions, r.vs)
	}
	return st, nil
}

var _ hint.Models = (*Manager)(nil)
