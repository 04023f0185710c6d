package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/features"
	prefetchv1 "github.com/prefetchd/prefetchd/proto/prefetch/v1"
)

// expect says which figures a scenario holds the service to, beyond the
// ones every scenario checks (histories, warm keys, handler errors, lag,
// committed offsets).
type expect struct {
	// exactCounts: no prefetchd process died, so the live processes'
	// counters cover the whole stream and must equal it.
	exactCounts bool
	// resets: the topic was recreated; the service must count an offset
	// reset in prefetchd_ingest_offset_resets_total.
	resets bool
	// redelivered: the live services were started after the whole stream
	// had been applied and the group rewound; they must apply nothing and
	// count this many duplicates.
	redelivered int
}

// outcome is what the checker found, in figures, with the first problems.
type outcome struct {
	sent       int // events acknowledged by the broker
	users      int
	wrongUsers int // users whose stored history differs from the truth
	lost       int // clicks sent but absent from the stored history
	doubled    int // clicks stored more than once (or pages never sent)
	reordered  int // users with the right clicks in the wrong order
	hints      int // hints answered by Predict over all users and services
	fewHints   int // Predict answers with fewer than hintsPerClick hints
	falseWarm  int // hints said warm whose key is not in Redis
	cold       int // hints of the final history whose key is not in Redis
	disagree   int // users whose Predict answer differs between live replicas
	applied    float64
	dups       float64
	clicks     float64
	handlerErr float64
	paused     float64
	lagMetric  float64
	resets     float64
	uncommit   int64
	problems   []string
}

func (o *outcome) problem(format string, args ...any) {
	o.problems = append(o.problems, fmt.Sprintf(format, args...))
}

// figures is the one-line summary logged for every scenario.
func (o *outcome) figures() string {
	return fmt.Sprintf("sent=%d users=%d wrong_users=%d lost=%d doubled=%d reordered=%d hints=%d few_hints=%d false_warm=%d cold=%d replicas_disagree=%d "+
		"events_total=%g duplicates_total=%g clicks_total=%g transient_failures=%g paused=%g lag_metric=%g offset_resets=%g uncommitted=%d",
		o.sent, o.users, o.wrongUsers, o.lost, o.doubled, o.reordered, o.hints, o.fewHints, o.falseWarm, o.cold, o.disagree,
		o.applied, o.dups, o.clicks, o.handlerErr, o.paused, o.lagMetric, o.resets, o.uncommit)
}

// diffHistory compares a stored history with the pages sent, which are
// distinct: lost counts pages sent and not stored, doubled counts stored
// pages beyond one of each page sent (repeats and pages never sent), and
// reordered is true when neither explains a difference.
func diffHistory(want, got []int32) (lost, doubled int, reordered bool) {
	seen := map[int32]int{}
	for _, p := range got {
		seen[p]++
	}
	for _, p := range want {
		if seen[p] == 0 {
			lost++
			continue
		}
		doubled += seen[p] - 1
		delete(seen, p)
	}
	for _, n := range seen {
		doubled += n
	}
	return lost, doubled, lost == 0 && doubled == 0 && !slices.Equal(want, got)
}

// check compares the state of the world with the ground truth once.
func (e *env) check(ctx context.Context, x expect) *outcome {
	o := &outcome{sent: int(e.prod.acked.Load()), users: len(e.plan.users)}
	for _, p := range append(append([]*proc{e.broker}, e.redis...), e.procs()...) {
		if p.exited() {
			o.problem("%s exited by itself:\n%s", p.name, p.tail(20))
		}
	}
	perUser := e.plan.sentPerUser(o.sent)
	var diffs []string
	if e.cfg.history == features.BackendRedis {
		var rec features.Record
		for u, user := range e.plan.users {
			want := e.plan.want[u][:perUser[u]]
			if len(want) > e.voc.maxLen {
				want = want[len(want)-e.voc.maxLen:]
			}
			found, err := e.store.Load(ctx, user, &rec)
			if err != nil {
				o.problem("load history of %s: %v", user, err)
				return o
			}
			got := rec.Pages
			if !found {
				got = nil
			}
			lost, doubled, reordered := diffHistory(want, got)
			if lost+doubled > 0 || reordered {
				o.wrongUsers++
				o.lost += lost
				o.doubled += doubled
				if reordered {
					o.reordered++
				}
				if len(diffs) < 5 {
					diffs = append(diffs, fmt.Sprintf("user %s: sent %d clicks %v, stored %v (lost %d, doubled %d, reordered %t)",
						user, len(want), want, got, lost, doubled, reordered))
				}
			}
		}
	}
	if o.wrongUsers > 0 {
		o.problem("%d of %d users have a wrong history (%d clicks lost, %d applied twice or wrong, %d users reordered); first ones:\n    %s",
			o.wrongUsers, o.users, o.lost, o.doubled, o.reordered, strings.Join(diffs, "\n    "))
	}
	e.checkWarm(ctx, o)
	e.checkMetrics(ctx, x, o)
	lag, err := e.committedLag(ctx)
	o.uncommit = lag
	switch {
	case err != nil:
		o.problem("committed offsets: %v", err)
	case lag != 0:
		o.problem("the group's committed offsets are %d messages below the high-water marks", lag)
	}
	return o
}

// checkWarm asks every live service for each user's hints and checks that
// each one said warm is in Redis (no false warm), and that every hint of the
// final history was warmed by the user's last click (rewarmed after faults).
func (e *env) checkWarm(ctx context.Context, o *outcome) {
	var falseWarm, cold, few, disagree []string
	first := map[string]string{} // user -> the first live service's answer
	for _, s := range e.live() {
		for _, user := range e.plan.users {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := s.hints.Predict(cctx, &prefetchv1.PredictRequest{UserId: user})
			cancel()
			if err != nil {
				o.problem("%s: Predict(%s): %v", s.name, user, err)
				return
			}
			hints := resp.GetHints()
			var answer strings.Builder
			for _, h := range hints {
				fmt.Fprintf(&answer, "%s warm=%t ", h.GetPage(), h.GetWarm())
			}
			if ref, ok := first[user]; !ok {
				first[user] = answer.String()
			} else if ref != answer.String() {
				// Replicas share the histories and the cache: same answer.
				o.disagree++
				if len(disagree) < 3 {
					disagree = append(disagree, fmt.Sprintf("%s: %s[%s] vs %s[%s]", user, e.live()[0].name, ref, s.name, answer.String()))
				}
			}
			if len(hints) < hintsPerClick {
				// --threshold 0 admits every page: K hints for any history.
				o.fewHints++
				if len(few) < 5 {
					few = append(few, fmt.Sprintf("%s/%s:%d", s.name, user, len(hints)))
				}
			}
			if len(hints) == 0 {
				continue
			}
			o.hints += len(hints)
			pipe := e.rdb.Pipeline()
			exists := make([]*redis.IntCmd, len(hints))
			for i, h := range hints {
				exists[i] = pipe.Exists(ctx, warmKeyPrefix+h.GetPage())
			}
			if _, err := pipe.Exec(ctx); err != nil {
				o.problem("EXISTS on the warm keys: %v", err)
				return
			}
			for i, h := range hints {
				if exists[i].Val() == 1 {
					continue
				}
				o.cold++
				if len(cold) < 5 {
					cold = append(cold, fmt.Sprintf("%s/%s:%s", s.name, user, h.GetPage()))
				}
				if h.GetWarm() {
					o.falseWarm++
					if len(falseWarm) < 5 {
						falseWarm = append(falseWarm, fmt.Sprintf("%s/%s:%s", s.name, user, h.GetPage()))
					}
				}
			}
		}
	}
	if o.fewHints > 0 {
		o.problem("%d Predict answers had fewer than --k %d hints under --threshold 0, e.g. %v", o.fewHints, hintsPerClick, few)
	}
	if o.disagree > 0 {
		o.problem("%d Predict answers differ between replicas sharing Redis, e.g.\n    %s", o.disagree, strings.Join(disagree, "\n    "))
	}
	if o.falseWarm > 0 {
		o.problem("%d hints answered warm=true whose key %s<page> is not in Redis, e.g. %v", o.falseWarm, warmKeyPrefix, falseWarm)
	}
	if o.cold > 0 {
		o.problem("%d hints of the users' final histories were never (re)warmed: key absent, e.g. %v", o.cold, cold)
	}
}

// checkMetrics scrapes every live service.
func (e *env) checkMetrics(ctx context.Context, x expect, o *outcome) {
	hasResets := false
	for _, s := range e.live() {
		code, body, err := httpGet(ctx, "http://"+s.admin+"/metrics")
		if err != nil || code != 200 {
			o.problem("%s: GET /metrics: %d %v", s.name, code, err)
			return
		}
		m := parseMetrics(body)
		o.applied += m.sum["prefetchd_ingest_events_total"]
		o.dups += m.sum["prefetchd_ingest_duplicates_total"]
		o.clicks += m.sum["prefetchd_clicks_total"]
		o.handlerErr += m.sum["prefetchd_ingest_handler_errors_total"]
		o.paused += m.sum["prefetchd_ingest_paused"]
		o.lagMetric += m.sum["prefetchd_ingest_lag_messages"]
		o.resets += m.sum["prefetchd_ingest_offset_resets_total"]
		hasResets = hasResets || m.has("prefetchd_ingest_offset_resets_total")
	}
	// Transient failures (handler_errors_total) are expected under faults:
	// each is retried until it passes. A loop still paused after the stream
	// is not.
	if o.paused > 0 {
		o.problem("prefetchd_ingest_paused = %g after the fault ended, want 0", o.paused)
	}
	if o.lagMetric != 0 {
		o.problem("prefetchd_ingest_lag_messages = %g after the stream was consumed, want 0", o.lagMetric)
	}
	if x.exactCounts {
		if o.applied != float64(o.sent) {
			o.problem("prefetchd_ingest_events_total = %g, want %d (every event sent applied once)", o.applied, o.sent)
		}
		if o.clicks != float64(o.sent) {
			o.problem("prefetchd_clicks_total = %g, want %d", o.clicks, o.sent)
		}
	}
	if x.redelivered > 0 {
		if o.applied != 0 {
			o.problem("prefetchd_ingest_events_total = %g after a rewind over events already applied, want 0", o.applied)
		}
		if o.dups != float64(x.redelivered) {
			o.problem("prefetchd_ingest_duplicates_total = %g, want %d (every redelivered event recognised)", o.dups, x.redelivered)
		}
	}
	if x.resets {
		switch {
		case !hasResets:
			o.problem("prefetchd_ingest_offset_resets_total is not exported; the recreated topic went unnoticed")
		case o.resets < 1:
			o.problem("prefetchd_ingest_offset_resets_total = %g after the topic was recreated, want ≥ 1", o.resets)
		}
	}
}

// verify waits until the world matches the ground truth, or stops changing
// (quietFor) or settleTimeout passes, then logs the figures and fails the
// test with the problems and the services' last log lines.
func (e *env) verify(x expect) *outcome {
	e.t.Helper()
	start := time.Now()
	var (
		o       *outcome
		last    string
		changed = start
	)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		o = e.check(ctx, x)
		cancel()
		if len(o.problems) == 0 || time.Since(start) > settleTimeout {
			break
		}
		if f := o.figures() + strings.Join(o.problems, ""); f != last {
			last, changed = f, time.Now()
		} else if time.Since(changed) > quietFor {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.t.Logf("figures after %v: %s producer_retries=%d", time.Since(start).Round(100*time.Millisecond), o.figures(), e.prod.retry.Load())
	if len(o.problems) > 0 {
		var logs []string
		for _, s := range e.svcs {
			logs = append(logs, s.tail(12))
		}
		e.t.Errorf("ground truth not met:\n  - %s\n%s", strings.Join(o.problems, "\n  - "), strings.Join(logs, "\n"))
	}
	return o
}
