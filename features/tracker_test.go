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
		hwm       int64 // for add; 0: offset+1
		seq       int64 // for done
		dup       bool  // for add
		reset     bool  // for add
		rewound   bool  // for add
		gen       uint32
		ts        int64 // for add: record timestamp, seconds (0: none)
	}
	cases := []struct {
		name  string
		steps []step
		want  []commitOffset // pending after the steps
	}{
		{name: "nothing done", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}}, want: nil},
		{name: "in order", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}, {op: "done", seq: 0}, {op: "done", seq: 1}},
			want: []commitOffset{{partition: 0, offset: 6}}},
		{name: "gap waits for the earlier message", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}, {op: "add", offset: 7},
			{op: "done", seq: 1}, {op: "done", seq: 2}}, want: nil},
		{name: "gap closed", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6}, {op: "add", offset: 7},
			{op: "done", seq: 2}, {op: "done", seq: 0}}, want: []commitOffset{{partition: 0, offset: 5}}},
		{name: "redelivery is a duplicate", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6},
			{op: "add", offset: 5, hwm: 7, dup: true}, {op: "add", offset: 6, hwm: 7, dup: true}, {op: "add", offset: 7}}, want: nil},
		{name: "committed not pending again", steps: []step{{op: "add", offset: 5}, {op: "done", seq: 0}, {op: "commit"},
			{op: "add", offset: 6}}, want: nil},
		{name: "offsets skipped while idle count as done", steps: []step{{op: "add", offset: 5}, {op: "done", seq: 0}, {op: "commit"},
			{op: "add", offset: 40}}, want: []commitOffset{{partition: 0, offset: 39}}},
		{name: "partitions apart", steps: []step{{op: "add", partition: 0, offset: 1}, {op: "add", partition: 1, offset: 9},
			{op: "done", partition: 1, seq: 0}}, want: []commitOffset{{partition: 1, offset: 9}}},
		{name: "sparse partition numbers", steps: []step{{op: "add", partition: 3, offset: 1}, {op: "add", partition: 70000, offset: 4},
			{op: "add", partition: 70000, offset: 4, dup: true}, {op: "done", partition: 70000, seq: 0}, {op: "done", partition: 3, seq: 0}},
			want: []commitOffset{{partition: 3, offset: 1}, {partition: 70000, offset: 4}}},
		{name: "offset at or below the committed one starts a generation", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6},
			{op: "done", seq: 0}, {op: "done", seq: 1}, {op: "commit"}, {op: "add", offset: 0, reset: true, gen: 1},
			{op: "add", offset: 1, gen: 1}, {op: "done", seq: 2}}, want: []commitOffset{{partition: 0, offset: 0, gen: 1}}},
		{name: "in-flight messages of the old generation no longer count", steps: []step{{op: "add", offset: 5}, {op: "done", seq: 0},
			{op: "commit"}, {op: "add", offset: 6}, {op: "add", offset: 3, reset: true, gen: 1}, {op: "done", seq: 1}},
			want: nil},
		{name: "high-water mark below the watermark starts a generation", steps: []step{{op: "add", offset: 5}, {op: "add", offset: 6},
			{op: "add", offset: 6, hwm: 6, reset: true, gen: 1}, {op: "done", seq: 2}}, want: []commitOffset{{partition: 0, offset: 6, gen: 1}}},
		{name: "group reset on the same log is a redelivery", steps: []step{{op: "add", offset: 5, ts: 5}, {op: "add", offset: 6, ts: 6},
			{op: "done", seq: 0}, {op: "done", seq: 1}, {op: "commit"}, {op: "add", offset: 0, ts: 1, hwm: 7, dup: true, rewound: true},
			{op: "add", offset: 6, ts: 6, hwm: 7, dup: true}}, want: []commitOffset{{partition: 0, offset: 6}}},
		{name: "a newer record at the committed offset is a changed log", steps: []step{{op: "add", offset: 5, ts: 5}, {op: "done", seq: 0},
			{op: "commit"}, {op: "add", offset: 0, ts: 9, hwm: 7, reset: true, gen: 1}, {op: "done", seq: 1}},
			want: []commitOffset{{partition: 0, offset: 0, gen: 1}}},
		{name: "redelivery above the committed offset is no reset", steps: []step{{op: "add", offset: 5}, {op: "done", seq: 0},
			{op: "commit"}, {op: "add", offset: 6}, {op: "add", offset: 6, dup: true}}, want: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker()
			for i, s := range tc.steps {
				switch s.op {
				case "add":
					hwm := s.hwm
					if hwm == 0 {
						hwm = s.offset + 1
					}
					var ts time.Time
					if s.ts > 0 {
						ts = time.Unix(s.ts, 0)
					}
					a := tr.add(s.partition, s.offset, hwm, ts)
					if a.dup != s.dup || a.reset != s.reset || a.rewound != s.rewound || a.gen != s.gen {
						t.Fatalf("step %d: add offset %d: dup=%v reset=%v rewound=%v gen=%d, want %v %v %v %d",
							i, s.offset, a.dup, a.reset, a.rewound, a.gen, s.dup, s.reset, s.rewound, s.gen)
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
			a := tr.add(0, next, next+1, time.Time{})
			seq := a.seq
			if a.dup {
				t.Fatalf("step %d: offset %d reported as duplicate", step, next)
			}
			offsets = append(offsets, next)
			inflight = append(inflight, seq)
			seqOffset[seq] = next
		} else {
			i := rng.IntN(len(inflight))
			seq := inflight[i]
			inflight = append(inflight[:i], inflight[i+1:]...)
			if rng.IntN(2) == 0 {
				tr.done(0, seq)
			} else {
				tr.doneMany([]partSeq{{partition: 0, seq: seq}})
			}
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

func TestWorkQueue(t *testing.T) {
	t.Run("order kept across batches", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q := newWorkQueue(8)
		const n = 5000
		go func() {
			for i := range n {
				if !q.push(ctx, job{seq: int64(i)}) {
					return
				}
			}
		}()
		var buf []job
		next, batches := int64(0), 0
		for next < n {
			jobs := q.take(ctx, buf)
			if jobs == nil {
				t.Fatalf("take returned nil after %d jobs", next)
			}
			if len(jobs) > 8 {
				t.Fatalf("batch of %d jobs above the limit 8", len(jobs))
			}
			for _, j := range jobs {
				if j.seq != next {
					t.Fatalf("job %d, want %d", j.seq, next)
				}
				next++
			}
			batches++
			buf = jobs
		}
		t.Logf("%d jobs in %d batches", n, batches)
	})
	t.Run("push waits while full", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q := newWorkQueue(2)
		q.push(ctx, job{seq: 0})
		q.push(ctx, job{seq: 1})
		pushed := make(chan bool)
		go func() { pushed <- q.push(ctx, job{seq: 2}) }()
		select {
		case <-pushed:
			t.Fatal("push into a full queue returned")
		case <-time.After(50 * time.Millisecond):
		}
		if jobs := q.take(ctx, nil); len(jobs) != 2 {
			t.Fatalf("took %d jobs, want 2", len(jobs))
		}
		if !<-pushed {
			t.Fatal("push after take failed")
		}
		if jobs := q.take(ctx, nil); len(jobs) != 1 || jobs[0].seq != 2 {
			t.Fatalf("took %v, want job 2", jobs)
		}
	})
	t.Run("cancel ends waits", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		q := newWorkQueue(1)
		q.push(ctx, job{})
		go func() {
			time.Sleep(20 * time.Millisecond)
			cancel()
		}()
		if q.push(ctx, job{}) {
			t.Fatal("push into a full queue succeeded after cancel")
		}
		q.take(ctx, nil)
		if jobs := q.take(ctx, nil); jobs != nil {
			t.Fatalf("take on an empty queue after cancel returned %v", jobs)
		}
	})
}
