package app

import (
	"context"
	"encoding/json"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/embedded"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/prefetch"
)

// TestOnlineEvaluationMatchesOffline replays real NASA July 1995 sessions
// through the running service (Kafka → engine → Redis) and checks the online
// evaluation it exports against an offline computation over the same sessions,
// model and policy. Clicks go out in rounds (the i-th click of every session),
// each round only once the previous one is fully applied and its prefetches
// written, so that "warm when clicked" does not depend on the scheduler.
func TestOnlineEvaluationMatchesOffline(t *testing.T) {
	const (
		nSessions = 300
		maxLen    = 12
		threshold = 0.3
		k         = 3
	)
	all, err := embedded.NASASessions()
	if err != nil {
		t.Fatal(err)
	}
	var sessions [][]string
	for _, s := range all {
		if len(s.Pages) <= maxLen {
			sessions = append(sessions, s.Pages)
		}
		if len(sessions) == nSessions {
			break
		}
	}
	fsys, dir := embedded.Model()
	bundle, err := model.LoadBundleFS(fsys, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := offlineEvaluation(t, bundle, sessions, threshold, k)

	rs := redistest.Start(t)
	kb := kafkatest.Start(t, "clicks")
	cfg := testConfig([]string{kb.Addr()}, rs.Addr())
	cfg.Threshold, cfg.K = threshold, k
	cfg.TTL = time.Hour
	cfg.KeyTemplate = "user:{user}:page:{page}"
	cfg.Online = false // the offline computation is the model's alone

	svc := startService(t, cfg, 120*time.Second)
	ctx, addrs := svc.ctx, svc.addrs
	metricsURL := "http://" + addrs.Admin + "/metrics"

	sent := 0
	for round := 0; round < maxLen; round++ {
		var msgs []kafka.Message
		for i, s := range sessions {
			if round < len(s) {
				user := "s" + strconv.Itoa(i)
				msgs = append(msgs, kafkatest.Message(user, clickJSON(user, s[round], time.Now())))
			}
		}
		if len(msgs) == 0 {
			break
		}
		kb.Produce(t, "clicks", msgs...)
		sent += len(msgs)
		settled := 0
		for settled < 2 {
			m := httpGet(t, ctx, metricsURL)
			requested := metricSum(m, "prefetchd_prefetch_requested_total")
			resolved := metricSum(m, "prefetchd_prefetch_written_total") + metricSum(m, "prefetchd_prefetch_skipped_total") + metricSum(m, "prefetchd_prefetch_dropped_total")
			if int(metricSum(m, "prefetchd_clicks_total")) == sent && requested == resolved {
				settled++
			} else {
				settled = 0
			}
			select {
			case <-ctx.Done():
				t.Fatalf("round %d did not settle: clicks %v of %d, prefetches requested %v resolved %v", round, metricSum(m, "prefetchd_clicks_total"), sent, requested, resolved)
			case <-time.After(30 * time.Millisecond):
			}
		}
	}

	m := httpGet(t, ctx, metricsURL)
	got := evalFigures{
		issued:     metricSum(m, "prefetchd_prefetch_issued_total"),
		used:       metricSum(m, "prefetchd_prefetch_used_total"),
		clicks:     metricSum(m, "prefetchd_clicks_total"),
		clicksWarm: metricSum(m, "prefetchd_clicks_warm_total"),
	}
	t.Logf("online  %+v precision %.4f coverage %.4f", got, got.used/got.issued, got.clicksWarm/got.clicks)
	t.Logf("offline %+v precision %.4f coverage %.4f", want, want.used/want.issued, want.clicksWarm/want.clicks)
	if want.issued < 50 || want.used < 10 {
		t.Fatalf("offline figures %+v too small to compare", want)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"issued", got.issued, want.issued},
		{"used", got.used, want.used},
		{"clicks", got.clicks, want.clicks},
		{"clicks warm", got.clicksWarm, want.clicksWarm},
		{"precision", got.used / got.issued, want.used / want.issued},
		{"coverage", got.clicksWarm / got.clicks, want.clicksWarm / want.clicks},
	} {
		if math.Abs(c.got-c.want) > 0.01*c.want {
			t.Errorf("%s: online %v, offline %v (more than 1%% apart)", c.name, c.got, c.want)
		}
	}
	var view []versionStats
	if err := json.Unmarshal([]byte(httpGet(t, ctx, "http://"+addrs.Admin+"/stats")), &view); err != nil {
		t.Fatalf("decode /stats: %v", err)
	}
	if len(view) != 1 || float64(view[0].Issued) != want.issued || math.Abs(view[0].Precision-want.used/want.issued) > 0.01*want.used/want.issued {
		t.Errorf("/stats = %+v, want one version with %v issued and precision %.4f", view, want.issued, want.used/want.issued)
	}
	svc.shutdown(t)
}

type evalFigures struct{ issued, used, clicks, clicksWarm float64 }

// offlineEvaluation computes the prefetch figures directly: per user, a page
// prefetched stays warm (TTL longer than the replay), is written once, and is
// used when the user later opens it.
func offlineEvaluation(t *testing.T, b *model.Bundle, sessions [][]string, threshold float64, k int) evalFigures {
	t.Helper()
	policy, err := prefetch.NewPolicy(prefetch.PolicyConfig{K: k, Threshold: threshold})
	if err != nil {
		t.Fatal(err)
	}
	v := b.Vocab()
	var f evalFigures
	var probs []float32
	var cands []prefetch.Candidate
	for _, s := range sessions {
		warm := map[int64]bool{} // page -> used
		var hist []int64
		for _, p := range s {
			idx := v.Index(p)
			f.clicks++
			if used, ok := warm[idx]; ok && idx > model.UnknownIndex {
				f.clicksWarm++
				if !used {
					f.used++
					warm[idx] = true
				}
			}
			hist = append(hist, idx)
			if probs, err = b.PredictOne(context.Background(), hist, probs); err != nil {
				t.Fatal(err)
			}
			cands = policy.Select(probs, idx, 0, -1, cands)
			for _, c := range cands {
				if _, ok := warm[c.Index]; !ok {
					warm[c.Index] = false
					f.issued++
				}
			}
		}
	}
	return f
}
