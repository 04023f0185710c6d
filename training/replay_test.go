package training

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prefetchd/prefetchd/internal/nasa"
	"github.com/prefetchd/prefetchd/model"
	"github.com/prefetchd/prefetchd/transitions"
)

// nasaHalves are the NASA July 1995 sessions (file order is time order)
// cut at half of the clicks, and the vocabulary and first-order Markov
// model of the first half, built with the trainer's defaults.
func nasaHalves(tb testing.TB) (train, test []Session, v *model.Vocab, m *Markov) {
	tb.Helper()
	sessions, err := ReadSPMF(nasa.SPMF())
	if err != nil {
		tb.Fatal(err)
	}
	train, test = SplitHalf(sessions)
	if v, err = BuildVocab(train, VocabConfig{MinCount: 2, MaxSize: 5000}); err != nil {
		tb.Fatal(err)
	}
	if m, err = TrainMarkov(Encode(v, train), v.Len(), MarkovConfig{Alpha: 0.01}); err != nil {
		tb.Fatal(err)
	}
	return train, test, v, m
}

// TestReplayNASA trains on the first half of NASA July 1995 and streams the
// second half through the online statistics: the blend must predict pages
// unseen in training, which the model cannot, and be no worse than the
// model on the transitions the model knows. go test -v prints the table.
func TestReplayNASA(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	train, test, v, m := nasaHalves(t)
	r, err := Replay(ctx, "markov1", m, v, train, test, ReplayConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := r.Write(&out); err != nil {
		t.Fatal(err)
	}
	t.Logf("NASA July 1995, %d training sessions, %d replayed, %d pages unseen in training:\n%s", len(train), len(test), r.UnseenPages, out.String())
	if r.Unseen.Transitions == 0 || r.Unseen.Static != 0 || !(r.Unseen.Blend > 0) {
		t.Errorf("to unseen pages: %+v, want transitions, static 0 and blend > 0", r.Unseen)
	}
	if r.Known.Blend < r.Known.Static {
		t.Errorf("on the transitions the model knows the blend %.4f is worse than the model %.4f", r.Known.Blend, r.Known.Static)
	}
	if r.All.Blend <= r.All.Static {
		t.Errorf("overall the blend %.4f is no better than the model %.4f", r.All.Blend, r.All.Static)
	}
	if r.All.Transitions != r.Known.Transitions+countUnknown(v, test) {
		t.Errorf("transitions %d != known %d + to pages outside the vocabulary", r.All.Transitions, r.Known.Transitions)
	}
}

func countUnknown(v *model.Vocab, sessions []Session) int {
	n := 0
	for _, s := range sessions {
		for _, p := range s.Pages[1:] {
			if _, ok := v.Lookup(p); !ok {
				n++
			}
		}
	}
	return n
}

func TestReplaySmall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	train := []Session{{Pages: []string{"/a", "/b"}}, {Pages: []string{"/a", "/b"}}, {Pages: []string{"/b", "/a"}}}
	v, err := BuildVocab(train, VocabConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := TrainMarkov(Encode(v, train), v.Len(), MarkovConfig{Alpha: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	// /a → /new 40 times: the first is a miss for both, then the blend
	// ranks /new first; the model never can.
	var test []Session
	for range 40 {
		test = append(test, Session{Pages: []string{"/a", "/new"}})
	}
	r, err := Replay(ctx, "markov1", m, v, train, test, ReplayConfig{Online: transitions.Config{Evidence: 1, EvidenceSet: true}, Span: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// After one observation w = 1/2: /new gets 0.5, /b (1-w)·~1 ≈ 0.5 minus
	// smoothing, so /new is first from the second transition on.
	if r.Unseen.Transitions != 40 || r.Unseen.Static != 0 || r.Unseen.Blend != 39.0/40 || r.UnseenPages != 1 {
		t.Errorf("report %+v, want 40 transitions to 1 unseen page, static 0, blend 39/40", r)
	}
}

// BenchmarkReplayNASA produces the table of the README's "Large sites"
// section: the replay of TestReplayNASA for the first-order Markov model
// and for a GRU trained with the trainer's defaults (about 3 minutes), each
// transition group's MRR@20 reported as a metric.
//
//	go test -run '^$' -bench ReplayNASA -benchtime 1x ./training
func BenchmarkReplayNASA(b *testing.B) {
	ctx := context.Background()
	train, test, v, m := nasaHalves(b)
	for _, name := range []string{"markov1", "gru"} {
		b.Run(name, func(b *testing.B) {
			var p Predictor = m
			if name == "gru" {
				g, _, err := TrainGRU(ctx, nil, Encode(v, train), v.Len(), GRUConfig{Seed: 1})
				if err != nil {
					b.Fatal(err)
				}
				p = g
			}
			var r ReplayReport
			for range b.N {
				var err error
				if r, err = Replay(ctx, name, p, v, train, test, ReplayConfig{}); err != nil {
					b.Fatal(err)
				}
			}
			var out strings.Builder
			if err := r.Write(&out); err != nil {
				b.Fatal(err)
			}
			b.Logf("%d training sessions, %d replayed, %d pages unseen in training:\n%s", len(train), len(test), r.UnseenPages, out.String())
			for _, g := range []struct {
				name string
				g    ReplayGroup
			}{{"all", r.All}, {"unseen", r.Unseen}, {"known", r.Known}} {
				b.ReportMetric(g.g.Static, g.name+"-static-mrr")
				b.ReportMetric(g.g.Blend, g.name+"-blend-mrr")
			}
		})
	}
}
