package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/prefetchd/prefetchd/internal/broker"
	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/training"
	"net"
)

// TestBundledData checks the bundled copy against the published counts.
func TestBundledData(t *testing.T) {
	s, err := NASASessions()
	if err != nil {
		t.Fatal(err)
	}
	views := 0
	for _, x := range s {
		views += len(x.Pages)
	}
	if len(s) != 87749 || views != 569493 {
		t.Fatalf("%d sessions and %d views, want 87,749 and 569,493", len(s), views)
	}
	fsys, dir := Model()
	b, err := model.LoadBundleFS(fsys, dir)
	if err != nil {
		t.Fatalf("bundled model: %v", err)
	}
	if b.Vocab().Index(s[0].Pages[0]) == model.UnknownIndex {
		t.Errorf("first replayed page %s is outside the bundled model's vocabulary", s[0].Pages[0])
	}
}

// TestNASAClicks: the clicks interleave the sessions, each session's pages
// in their order and every click a millisecond after the one before.
func TestNASAClicks(t *testing.T) {
	sessions, err := NASASessions()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct{ users, n int }{{1, 10}, {3, 50}, {1024, 20_000}} {
		clicks, err := NASAClicks(c.users, c.n, start)
		if err != nil {
			t.Fatal(err)
		}
		if len(clicks) != c.n {
			t.Fatalf("%d users: %d clicks, want %d", c.users, len(clicks), c.n)
		}
		next := map[string]int{} // user → index of its next page
		for i, k := range clicks {
			var s int
			if _, err := fmt.Sscanf(k.User, "user-%d", &s); err != nil {
				t.Fatalf("click %d: user %q: %v", i, k.User, err)
			}
			j := next[k.User]
			if j >= len(sessions[s].Pages) || sessions[s].Pages[j] != k.Page {
				t.Fatalf("%d users, click %d: %s on %s, want page %d of session %d", c.users, i, k.User, k.Page, j, s)
			}
			next[k.User] = j + 1
			if want := start.Add(time.Duration(i+1) * time.Millisecond); !k.At.Equal(want) {
				t.Fatalf("click %d at %v, want %v", i, k.At, want)
			}
		}
		if len(next) < min(c.users, 2) {
			t.Errorf("%d users: clicks of %d sessions", c.users, len(next))
		}
		// The first clicks are of as many sessions side by side.
		if c.users > 1 && clicks[0].User == clicks[1].User {
			t.Errorf("%d users: the first two clicks are both %s's", c.users, clicks[0].User)
		}
	}
}

func TestReplayWritesEvents(t *testing.T) {
	kb := kafkatest.Start(t, "clicks")
	sessions := []training.Session{{Pages: []string{"/page/1", "/page/2", "/page/3"}}, {Pages: []string{"/page/4", "/page/5"}}}
	r, err := NewReplayer(ReplayConfig{Brokers: []string{kb.Addr()}, Topic: "clicks", Rate: 1000, Concurrent: 2}, sessions, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Twice, as a restarted service replays into the same topic.
	for range 2 {
		if err := r.Run(ctx); err != nil {
			t.Fatalf("replay: %v", err)
		}
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{kb.Addr()}, Topic: "clicks", GroupID: "check", StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond})
	defer rd.Close()
	pages := map[string][]string{}
	ids := map[string]bool{}
	for i := 0; i < 10; i++ {
		m, err := rd.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("read event %d: %v", i, err)
		}
		var ev struct{ UserID, Page, TS, EventID string }
		if err := json.Unmarshal(m.Value, &struct {
			U *string `json:"user_id"`
			P *string `json:"page"`
			T *string `json:"ts"`
			E *string `json:"event_id"`
		}{&ev.UserID, &ev.Page, &ev.TS, &ev.EventID}); err != nil {
			t.Fatal(err)
		}
		if ev.EventID == "" || ids[ev.EventID] {
			t.Errorf("event id %q empty or seen before: a replay's events must not pass for another's duplicates", ev.EventID)
		}
		ids[ev.EventID] = true
		if string(m.Key) != ev.UserID {
			t.Errorf("key %q, user %q: want the user id as key", m.Key, ev.UserID)
		}
		if _, err := time.Parse(time.RFC3339Nano, ev.TS); err != nil {
			t.Errorf("ts %q: %v", ev.TS, err)
		}
		pages[ev.UserID] = append(pages[ev.UserID], ev.Page)
	}
	want := map[string]string{"nasa-0": "/page/1 /page/2 /page/3 /page/1 /page/2 /page/3", "nasa-1": "/page/4 /page/5 /page/4 /page/5"}
	for u, w := range want {
		if got := strings.Join(pages[u], " "); got != w {
			t.Errorf("user %s pages %q, want %q in order", u, got, w)
		}
	}
}

// TestBundledModel checks the shipped bundle: a GRU over the NASA pages seen
// at least twice, with a step form that agrees with the sequence form, whose
// outputs are probability distributions that never predict padding, and
// whose report sits beside it.
func TestBundledModel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fsys, dir := Model()
	b, err := model.LoadBundleFS(fsys, dir)
	if err != nil {
		t.Fatalf("load bundled model: %v", err)
	}
	if m := b.Manifest(); m.Cell != training.CellGRU || m.VocabSize != b.Vocab().Len() || m.VocabSize < 2000 || !b.HasStep() {
		t.Fatalf("manifest cell %q vocab %d (vocabulary %d), step form %v; want a GRU over the 2,000+ NASA pages with a step form",
			m.Cell, m.VocabSize, b.Vocab().Len(), b.HasStep())
	}
	if _, err := fs.Stat(fsys, dir+"/report.json"); err != nil {
		t.Errorf("no report beside the bundled model: %v", err)
	}
	// The step form over a history gives the sequence form's answer.
	hist := []int64{2, 3, 4}
	var state, probs []float32
	for _, p := range hist {
		if probs, state, err = b.Step(ctx, p, state, probs); err != nil {
			t.Fatal(err)
		}
	}
	seq, err := b.PredictOne(ctx, hist, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range seq {
		if d := math.Abs(float64(seq[i] - probs[i])); d > 1e-4 {
			t.Fatalf("page %d: step form %v, sequence form %v", i, probs[i], seq[i])
		}
	}
	for _, h := range [][]int64{{2}, {2, 3}, {int64(b.Vocab().Len() - 1)}} {
		p, err := b.PredictOne(ctx, h, nil)
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, x := range p {
			sum += float64(x)
		}
		if math.Abs(sum-1) > 1e-4 || p[0] > 1e-3 {
			t.Errorf("history %v: probabilities sum to %v with padding %v, want 1 and next to nothing", h, sum, p[0])
		}
	}
}

// TestReplayWaitsForBroker: a broker that is not there yet (or away for a
// while) pauses the replay, which goes on from the same event once it
// answers, instead of stopping for good.
func TestReplayWaitsForBroker(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	sessions := []training.Session{{Pages: []string{"/page/1", "/page/2", "/page/3"}}, {Pages: []string{"/page/4", "/page/5"}}}
	r, err := NewReplayer(ReplayConfig{Brokers: []string{fmt.Sprintf("127.0.0.1:%d", port)}, Topic: "clicks", Rate: 1000, Concurrent: 2}, sessions, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	time.Sleep(1500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("replay ended with no broker to write to: %v", err)
	default:
	}
	b, err := broker.Start(broker.Config{Port: port, Topics: []string{"clicks"}})
	if err != nil {
		t.Fatalf("start the broker late: %v", err)
	}
	defer b.Close()
	if err := <-done; err != nil {
		t.Fatalf("replay: %v", err)
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{b.Addr()}, Topic: "clicks", GroupID: "check", StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond})
	defer rd.Close()
	for i := range 5 {
		if _, err := rd.FetchMessage(ctx); err != nil {
			t.Fatalf("read event %d of 5: %v", i, err)
		}
	}
}

// TestReplayStopsWithFrozenBroker: a broker that accepts connections and
// never answers does not hold the replay's end for long.
func TestReplayStopsWithFrozenBroker(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	sessions := []training.Session{{Pages: []string{"/page/1", "/page/2"}}}
	r, err := NewReplayer(ReplayConfig{Brokers: []string{lis.Addr().String()}, Topic: "clicks", Rate: 1000, Loop: true}, sessions, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("replay: %v", err)
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Errorf("replay took %v to end after its context, want about 1 s at most", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("replay still running 15 s after its context ended")
	}
}
