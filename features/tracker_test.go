package features

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestTracker(t *testing.T) {
	type step struct {
		op        string // add, done, commit
		partition int
		offset    int64 // for add
		seq       int64 // for done
		dup       bool  // for add
	}
	cases := []struct {
		name  string
		steps []step
		want  []commitOffset // pending after the steps
	}{
		{name: "nothing done", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}}, want: nil},
		{name: "in order", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}, {op: "done", seq: 0}, {op: "done", seq: 1}},
			want: []commitOffset{{0, 6}}},
		{name: "gap waits for the earlier message", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}, {op: "add", offset: 7},
			{op: "done", seq: 1}, {op: "done", seq: 2}}, want: nil},
		{name: "gap closed", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}, {op: "add", offset: 7},
			{op: "done", seq: 2}, {op: "done", seq: 0}}, want: []commitOffset{{0, 5}}},
		{name: "redelivery is a duplicate", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6},
			{op: "add", offset: 5, dup: true}, {op: "add", offset: 6, dup: true}, {op: "add", offset: 7}}, want: nil},
		{name: "committed not pending again", steps: []step{{op: "add", offset: 5}, {op: "done", seq: 0}, {op: "commit"},
			{op: "add", offset: 6}}, want: nil},
		{name: "offsets skipped while idle count as done", steps: []step{{op: "add", offset: 5}, {op: "done", seq: 0}, {op: "commit"},
			{op: "add", offset: 40}}, want: []commitOffset{{0, 39}}},
		{name: "partitions apart", steps: []step{{op: "add", partition: 0, offset: 1}, {op: "add", partition: 1, offset: 9},
			{op: "done", partition: 1, seq: 0}}, want: []commitOffset{{1, 9}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker()
			for i, s := range tc.steps {
				switch s.op {
				case "add":
					if _, dup := tr.add(s.partition, s.offset, s.offset+1); dup != s.dup {
						t.Fatalf("step %d: add offset %d dup=%v, want %v", i, s.offset, dup, s.dup)
					}
				case "done":
					tr.done(s.partition, s.seq)
				case "commit":
					tr.committed(tr.pending(nil))
				}
			}
			got := tr.pending(nil)
			slices.SortFunc(got, func(a, b commitOffset) int { return a.partition - b.partition })
			if !slices.Equal(got, tc.want) {
				t.Fatalf("pending %v, want %v", got, tc.want)
			}
		})
	}
}

func TestConsumerRunTwice(t *testing.T) {
	c, err := NewConsumer(ConsumerConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "t", GroupID: "g"},
		HandlerFunc(func(ctx context.Context, ev Event, m Meta) error { return nil }), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.Run(ctx); err == nil {
		t.Fatal("Run after Close returned nil")
	}
}

// TestTrackerRandom checks the tracker against a plain model over long
// random runs (so that the array reuse and compaction paths are taken).
func TestTrackerRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tr := newTracker()
	var offsets []int64 // fetched, in order
	done := map[int64]bool{}
	var inflight []int64 // seqs not yet done
	seqOffset := map[int64]int64{}
	next := int64(100)
	for step := range 20000 {
		if len(inflight) == 0 || rng.IntN(3) > 0 && len(inflight) < 3000 {
			next += 1 + int64(rng.IntN(2)) // gaps happen (compaction, markers)
			seq, dup := tr.add(0, next, next+1)
			if dup {
				t.Fatalf("step %d: offset %d reported as duplicate", step, next)
			}
			offsets = append(offsets, next)
			inflight = append(inflight, seq)
			seqOffset[seq] = next
		} else {
			i := rng.IntN(len(inflight))
			seq := inflight[i]
			inflight = append(inflight[:i], inflight[i+1:]...)
			tr.done(0, seq)
			done[seqOffset[seq]] = true
		}
		// Model: the last offset of the done prefix.
		want := int64(99)
		for _, o := range offsets {
			if !done[o] {
				break
			}
			want = o
		}
		got := int64(99)
		if p := tr.pending(nil); len(p) == 1 {
			got = p[0].offset
		}
		if got != want {
			t.Fatalf("step %d: committable offset %d, want %d", step, got, want)
		}
		if step%500 == 0 {
			tr.committed(tr.pending(nil))
			offsets = slices.DeleteFunc(offsets, func(o int64) bool { return o <= want })
			// Committed offsets leave the model too.
			for o := range done {
				if o <= want {
					delete(done, o)
				}
			}
			if want > 99 {
				// after a commit, pending is empty until more is done
				if p := tr.pending(nil); len(p) != 0 {
					t.Fatalf("step %d: pending %v right after commit", step, p)
				}
			}
		}
	}
}
