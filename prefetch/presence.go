package prefetch

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// What the Warmer believes warm holds only for the Redis that acknowledged
// the writes. The watcher tells whether that Redis still serves:
//
//   - the server's run_id (INFO server), which changes when redis-server
//     restarts or a replica is promoted (for a cluster, the run_id of every
//     master);
//   - a sentinel key the Warmer writes with a TTL and extends on every
//     check; gone means the data set was flushed (FLUSHALL, FLUSHDB) or the
//     key evicted.
//
// It checks every CheckInterval, at once after a new connection is dialled
// (a restart forces one) and after a failed write. When either sign changes
// the Warmer forgets every key it believed warm and tells the observer to do
// the same.

// sentinelUser and sentinelPage name the sentinel key through the key
// template, so that it falls under the same key prefix (and ACL rules) as
// the pages.
const (
	sentinelUser = "prefetchd-sentinel"
	sentinelPage = "/.prefetchd-sentinel/"
)

// sentinelTTL is how long the sentinel lives without a check: long enough to
// survive checks that are late, short enough not to litter Redis after the
// Warmer is gone.
func sentinelTTL(every time.Duration) time.Duration { return max(30*time.Second, 10*every) }

// newSentinelKey returns the sentinel key of one Warmer; each Warmer has its
// own, so that a replica that rewrites its sentinel after a flush does not
// hide the flush from the others.
func newSentinelKey(t template) string {
	var id [8]byte
	_, _ = rand.Read(id[:]) // never fails
	return t.render(sentinelUser, sentinelPage+hex.EncodeToString(id[:]))
}

// watchState is the watcher's view of the Redis serving now; only the
// watcher goroutine touches it.
type watchState struct {
	runID    string // "" until first read
	sentinel bool   // the sentinel was written to this Redis
	failing  bool   // the last check failed (for log transitions)
	noRunID  bool   // the server answered INFO without a run_id (logged once)
}

// watch checks the identity of the Redis serving now until ctx ends or the
// Warmer closes.
func (w *Warmer) watch(ctx context.Context) {
	var st watchState
	t := time.NewTicker(w.cfg.CheckInterval)
	defer t.Stop()
	for {
		err := w.check(ctx, &st)
		w.setReachable(err)
		if err != nil && !st.failing {
			w.log.Warn("prefetch cache check failing", "err", err)
		} else if err == nil && st.failing {
			w.log.Info("prefetch cache check recovered")
		}
		st.failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-w.done:
			return
		case <-t.C:
		case <-w.wake:
		}
	}
}

// reachabilityObserver is an Observer that wants to know whether the cache
// Redis answers at all (the Evaluator: no click is served from a cache
// that does not).
type reachabilityObserver interface {
	SetCacheReachable(ok bool)
}

// setReachable tells the observer whether the check's error (nil for none)
// says that Redis answers: an error reply does, a failed or timed-out
// connection does not.
func (w *Warmer) setReachable(err error) {
	var rerr redis.Error
	ok := err == nil || errors.As(err, &rerr)
	if o := w.observer.Load(); o != nil {
		if r, is := (*o).(reachabilityObserver); is {
			r.SetCacheReachable(ok)
		}
	}
}

// wakeWatcher asks the watcher for a check now, without blocking.
func (w *Warmer) wakeWatcher() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// check reads the server's identity and extends the sentinel, and forgets
// the Warmer's keys when either shows that the Redis serving now is not the
// one that acknowledged them. A failed check changes nothing.
func (w *Warmer) check(ctx context.Context, st *watchState) error {
	cctx, cancel := context.WithTimeout(ctx, w.cfg.WriteTimeout)
	defer cancel()
	id, err := serverID(cctx, w.rdb)
	var rerr redis.Error
	switch {
	case err == nil:
	case errors.As(err, &rerr) || errors.Is(err, errNoRunID):
		// The server answered but gives no run_id (an ACL user without
		// INFO, a Redis-protocol store without INFO server): restarts and
		// failovers are told by the sentinel alone, which a restarted
		// server without persistence has lost too.
		if !st.noRunID {
			w.log.Info("prefetch cache check: no run_id from redis; detecting flushes and restarts by the sentinel key alone", "err", err)
		}
		st.noRunID, id = true, ""
	default:
		return fmt.Errorf("read redis run_id: %w", err)
	}
	ttl := sentinelTTL(w.cfg.CheckInterval)
	kept, err := w.rdb.PExpire(cctx, w.sentinel, ttl).Result()
	if err != nil {
		return fmt.Errorf("extend sentinel %s: %w", w.sentinel, err)
	}
	reason := ""
	switch {
	case st.runID != "" && id != "" && id != st.runID:
		reason = resetRestart
	case st.sentinel && !kept:
		reason = resetFlush
	}
	if id != "" {
		st.runID = id
	}
	if reason != "" {
		w.reset(reason)
	}
	if !kept || w.failure.Load() != nil {
		// While warm writes fail, the sentinel is written again (a SET, which
		// Redis refuses under the same conditions as the warm writes: out of
		// memory, no write rights): its success ends the run of failures
		// even when no page comes to be written.
		st.sentinel = st.sentinel && kept
		if err := w.rdb.Set(cctx, w.sentinel, "1", ttl).Err(); err != nil {
			return fmt.Errorf("write sentinel %s: %w", w.sentinel, err)
		}
		st.sentinel = true
		if w.failure.Swap(nil) != nil {
			w.log.Info("prefetch writes recovered", "by", "cache check")
		}
	}
	return nil
}

// reset forgets every key the Warmer believes warm, and the observer's
// prefetches, because the Redis serving now may not hold them. Writes in
// flight when it runs are not believed either (see write).
func (w *Warmer) reset(reason string) {
	w.resetMu.Lock()
	defer w.resetMu.Unlock()
	w.gen.Add(1)
	w.mu.Lock()
	n := w.keys.Len()
	w.keys.forgetWritten()
	w.mu.Unlock()
	if o := w.observer.Load(); o != nil {
		(*o).ForgetPrefetches()
	}
	w.m.resets[reason].Inc()
	w.log.Warn("prefetch cache lost its keys, forgetting them", "reason", reason, "keys", n)
}

// serverID identifies the Redis serving rdb: its run_id, or for a cluster
// the address and run_id of every master.
func serverID(ctx context.Context, rdb redis.UniversalClient) (string, error) {
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		info, err := rdb.Info(ctx, "server").Result()
		if err != nil {
			return "", err
		}
		return runID(info)
	}
	var (
		mu  sync.Mutex
		ids []string
	)
	err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		info, err := n.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		id, err := runID(info)
		if err != nil {
			return err
		}
		mu.Lock()
		ids = append(ids, n.Options().Addr+"="+id)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return "", err
	}
	slices.Sort(ids)
	return strings.Join(ids, ","), nil
}

// runID finds run_id in the text of INFO server.
func runID(info string) (string, error) {
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "run_id:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errNoRunID
}

// errNoRunID is runID's error for an INFO reply without run_id.
var errNoRunID = errors.New("no run_id in INFO server")

// dialHook wakes the watcher whenever the client dials a new connection: a
// restarted or failed-over server is always reached through one.
type dialHook struct{ w *Warmer }

func (h dialHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err == nil {
			h.w.wakeWatcher()
		}
		return conn, err
	}
}

func (dialHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (dialHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// addDialHook installs the dial hook on rdb: on every node of a cluster,
// those known now (as far as ctx allows) and those found later.
func (w *Warmer) addDialHook(ctx context.Context) {
	h := dialHook{w}
	c, ok := w.rdb.(*redis.ClusterClient)
	if !ok {
		w.rdb.AddHook(h)
		return
	}
	c.OnNewNode(func(n *redis.Client) { n.AddHook(h) })
	hctx, cancel := context.WithTimeout(ctx, w.cfg.WriteTimeout)
	defer cancel()
	// A node found meanwhile may get the hook twice: it then wakes the
	// watcher twice, which is harmless.
	_ = c.ForEachShard(hctx, func(_ context.Context, n *redis.Client) error {
		n.AddHook(h)
		return nil
	})
}

// Present reports in dst[:0], for each page, whether user's key for it
// exists in the Redis serving now, with one pipeline of EXISTS bounded by
// Config.PresenceTimeout. It answers from Redis, not from what the Warmer
// remembers, so every replica sharing the Redis answers alike. When Redis
// fails (or ctx ends) every page is reported absent and the failure is
// counted in prefetchd_prefetch_presence_errors_total; it never blocks
// longer than the timeout.
func (w *Warmer) Present(ctx context.Context, user string, pages []string, dst []bool) []bool {
	dst = slices.Grow(dst[:0], len(pages))[:len(pages)]
	clear(dst)
	if len(pages) == 0 {
		return dst
	}
	pctx, cancel := context.WithTimeout(ctx, w.cfg.PresenceTimeout)
	defer cancel()
	pipe := w.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(pages))
	for i, p := range pages {
		cmds[i] = pipe.Exists(pctx, w.key.render(user, p))
	}
	if _, err := pipe.Exec(pctx); err != nil {
		w.m.presenceErrors.Inc()
		return dst
	}
	for i, c := range cmds {
		dst[i] = c.Val() > 0
	}
	return dst
}
