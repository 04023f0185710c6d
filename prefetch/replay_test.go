package prefetch

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/nasa"

	"github.com/prometheus/client_golang/prometheus"
)

// The replay: the first replaySessions sessions of the NASA Kennedy Space
// Center log, July 1995 (internal/nasa), page id N as /page/N.
// Session i starts at t0 + i*sessionGap; its clicks are 20 to 80 seconds
// apart (a fixed function of session and position), so sessions overlap and
// shared keys can be warm for other users.
const (
	replaySessions = 12000
	sessionGap     = 15 * time.Second
	replayTTL      = 5 * time.Minute
)

// replayEvent is one click of the replay.
type replayEvent struct {
	at      time.Time
	user    string
	session int
	page    int // page id in the data
}

// loadSessions returns the first n NASA July 1995 sessions as page ids.
func loadSessions(t testing.TB, n int) [][]int {
	t.Helper()
	sessions, err := nasa.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	return sessions[:min(n, len(sessions))]
}

// replayEvents lays the sessions out in time and merges them into one
// stream ordered by time.
func replayEvents(sessions [][]int, t0 time.Time) []replayEvent {
	var evs []replayEvent
	for i, s := range sessions {
		at := t0.Add(time.Duration(i) * sessionGap)
		user := "u" + strconv.Itoa(i)
		for j, p := range s {
			if j > 0 {
				at = at.Add(time.Duration(20+(i*7+j*13)%61) * time.Second)
			}
			evs = append(evs, replayEvent{at: at, user: user, session: i, page: p})
		}
	}
	slices.SortStableFunc(evs, func(a, b replayEvent) int { return a.at.Compare(b.at) })
	return evs
}

// markov is the test's predictor: first-order transition probabilities
// between vocabulary indices, counted on the replayed sessions. Pages seen
// fewer than three times share the unknown index.
type markov struct {
	index map[int]int64 // page id -> vocabulary index
	pages []string      // vocabulary index -> page
	rows  map[int64][]markovNext
}

type markovNext struct {
	index int64
	prob  float32
}

func newMarkov(sessions [][]int) *markov {
	counts := map[int]int{}
	for _, s := range sessions {
		for _, p := range s {
			counts[p]++
		}
	}
	m := &markov{index: map[int]int64{}, pages: []string{"<pad>", "<unk>"}, rows: map[int64][]markovNext{}}
	for _, s := range sessions {
		for _, p := range s {
			if _, ok := m.index[p]; !ok && counts[p] >= 3 {
				m.index[p] = int64(len(m.pages))
				m.pages = append(m.pages, pageName(p))
			}
		}
	}
	trans := map[int64]map[int64]int{}
	for _, s := range sessions {
		for j := 1; j < len(s); j++ {
			a, b := m.idx(s[j-1]), m.idx(s[j])
			if trans[a] == nil {
				trans[a] = map[int64]int{}
			}
			trans[a][b]++
		}
	}
	for a, row := range trans {
		total := 0
		for _, c := range row {
			total += c
		}
		for b, c := range row {
			m.rows[a] = append(m.rows[a], markovNext{index: b, prob: float32(float64(c) / float64(total))})
		}
	}
	return m
}

func (m *markov) idx(page int) int64 {
	if i, ok := m.index[page]; ok {
		return i
	}
	return unknownIndex
}

func pageName(id int) string { return "/page/" + strconv.Itoa(id) }

// pageBytes is the size the replay gives a prefetch of a page.
func pageBytes(index int64) int64 { return 200 + index%1800 }

// replayVersion is the model version serving at an event: the replay swaps
// models halfway, with a different threshold and k.
type replayVersion struct {
	name      string
	k         int
	threshold float64
}

// TestReplayNASA replays NASA July 1995 sessions through Policy and
// Evaluator and checks the figures against an offline computation that uses
// neither.
func TestReplayNASA(t *testing.T) {
	sessions := loadSessions(t, replaySessions)
	t0 := time.Date(1995, 7, 1, 0, 0, 0, 0, time.UTC)
	events := replayEvents(sessions, t0)
	m := newMarkov(sessions)
	switchAt := events[len(events)/2].at
	versions := [2]replayVersion{{"markov-a", 3, 0.3}, {"markov-b", 2, 0.15}}
	versionAt := func(at time.Time) replayVersion {
		if at.Before(switchAt) {
			return versions[0]
		}
		return versions[1]
	}
	end := events[len(events)-1].at.Add(replayTTL + time.Second)

	for _, template := range []string{"page:{page}", "user:{user}:page:{page}"} {
		t.Run(template, func(t *testing.T) {
			perUser := strings.Contains(template, "{user}")
			online := replayOnline(t, m, events, template, versionAt, end)
			offline := replayOffline(m, events, perUser, versionAt, end)
			if len(online) != len(offline) {
				t.Fatalf("online versions %+v, offline %+v", online, offline)
			}
			for i, on := range online {
				off := offline[i]
				off.Wasted = on.Wasted // the offline computation counts bytes only
				t.Logf("%s: issued %d used %d precision %.4f clicks %d warm %d coverage %.4f wasted bytes %d; offline identical: %v",
					on.ModelVersion, on.Issued, on.Used, on.Precision, on.Clicks, on.WarmClicks, on.Coverage, on.WastedBytes, on == off)
				if on.Issued < 1000 || on.Used == 0 {
					t.Errorf("%s: issued %d used %d; the replay should exercise the evaluator", on.ModelVersion, on.Issued, on.Used)
				}
				for _, c := range []struct {
					name    string
					on, off float64
				}{
					{"issued", float64(on.Issued), float64(off.Issued)},
					{"used", float64(on.Used), float64(off.Used)},
					{"clicks", float64(on.Clicks), float64(off.Clicks)},
					{"warm clicks", float64(on.WarmClicks), float64(off.WarmClicks)},
					{"precision", on.Precision, off.Precision},
					{"coverage", on.Coverage, off.Coverage},
					{"wasted bytes", float64(on.WastedBytes), float64(off.WastedBytes)},
				} {
					if math.Abs(c.on-c.off) > 0.01*math.Abs(c.off) {
						t.Errorf("%s %s: online %v, offline %v (more than 1%% apart)", on.ModelVersion, c.name, c.on, c.off)
					}
				}
			}
		})
	}
}

// replayOnline runs the replay through Policy and Evaluator as the service
// does: for each click, ObserveClick, then predict, Select and
// ObservePrefetchBytes. It checks the Prometheus counters against Stats.
func replayOnline(t *testing.T, m *markov, events []replayEvent, template string, versionAt func(time.Time) replayVersion, end time.Time) []VersionStats {
	t.Helper()
	reg := prometheus.NewRegistry()
	ev, err := NewEvaluator(EvaluatorConfig{KeyTemplate: template}, reg)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := NewPolicy(PolicyConfig{})
	if err != nil {
		t.Fatal(err)
	}
	probs := make([]float32, len(m.pages))
	dst := make([]Candidate, 0, 8)
	active := ""
	for _, e := range events {
		v := versionAt(e.at)
		if v.name != active {
			ev.SetModelVersion(v.name)
			active = v.name
		}
		page := pageName(e.page)
		ev.ObserveClick(e.user, page, e.at)
		cur := m.idx(e.page)
		row := m.rows[cur]
		for _, n := range row {
			probs[n.index] = n.prob
		}
		dst = policy.Select(probs, cur, v.k, v.threshold, dst)
		for _, n := range row {
			probs[n.index] = 0
		}
		for _, c := range dst {
			ev.ObservePrefetchBytes(e.user, m.pages[c.Index], v.name, e.at, replayTTL, pageBytes(c.Index))
		}
	}
	ev.Advance(end)
	stats := ev.Stats()
	for _, s := range stats {
		checkMetrics(t, reg, s)
	}
	if n := ev.Tracked(); n != 0 {
		t.Errorf("%d entries tracked after every TTL ended", n)
	}
	return stats
}

// replayOffline computes the same figures directly: its own top-k by
// sorting, and a plain map of warm keys that is never pruned.
func replayOffline(m *markov, events []replayEvent, perUser bool, versionAt func(time.Time) replayVersion, end time.Time) []VersionStats {
	type warm struct {
		expires time.Time
		version string
		bytes   int64
		used    bool
	}
	keys := map[string]*warm{}
	var all []*warm
	stats := map[string]*VersionStats{}
	get := func(v string) *VersionStats {
		if stats[v] == nil {
			stats[v] = &VersionStats{ModelVersion: v}
		}
		return stats[v]
	}
	keyOf := func(user, page string) string {
		if perUser {
			return "user:" + user + ":page:" + page
		}
		return "page:" + page
	}
	for _, e := range events {
		v := versionAt(e.at)
		page := pageName(e.page)
		if w := keys[keyOf(e.user, page)]; w != nil && e.at.Before(w.expires) {
			s := get(w.version)
			s.Clicks++
			s.WarmClicks++
			if !w.used {
				w.used = true
				s.Used++
			}
		} else {
			get(v.name).Clicks++
		}
		cur := m.idx(e.page)
		var cands []markovNext
		for _, n := range m.rows[cur] {
			if n.index > unknownIndex && n.index != cur && float64(n.prob) >= v.threshold {
				cands = append(cands, n)
			}
		}
		slices.SortFunc(cands, func(a, b markovNext) int {
			if a.prob != b.prob {
				if a.prob > b.prob {
					return -1
				}
				return 1
			}
			return int(a.index - b.index)
		})
		if len(cands) > v.k {
			cands = cands[:v.k]
		}
		for _, c := range cands {
			k := keyOf(e.user, m.pages[c.index])
			if w := keys[k]; w != nil && e.at.Before(w.expires) {
				continue
			}
			w := &warm{expires: e.at.Add(replayTTL), version: v.name, bytes: pageBytes(c.index)}
			keys[k] = w
			all = append(all, w)
			get(v.name).Issued++
		}
	}
	for _, w := range all {
		if !w.used && !w.expires.After(end) {
			get(w.version).WastedBytes += uint64(w.bytes)
		}
	}
	var out []VersionStats
	for _, s := range stats {
		if s.Issued > 0 {
			s.Precision = float64(s.Used) / float64(s.Issued)
		}
		if s.Clicks > 0 {
			s.Coverage = float64(s.WarmClicks) / float64(s.Clicks)
		}
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b VersionStats) int { return strings.Compare(a.ModelVersion, b.ModelVersion) })
	return out
}
