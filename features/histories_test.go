package features

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock is a settable wall clock for idle eviction.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// outcome names what an Append error says about the click.
func outcome(err error) string {
	switch {
	case err == nil:
		return "applied"
	case errors.Is(err, ErrUnsettled):
		return "unsettled"
	case errors.Is(err, ErrDuplicate):
		return "duplicate"
	}
	return "failed: " + err.Error()
}

func newTestHistories(t testing.TB, cfg HistoryConfig) *Histories {
	t.Helper()
	h, err := NewHistories(cfg, nil)
	if err != nil {
		t.Fatalf("NewHistories: %v", err)
	}
	return h
}

// storeContract runs the behaviour every Store must have.
func storeContract(t *testing.T, newStore func(t *testing.T, cfg HistoryConfig) Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	click := func(page int32, min int, off int64) Click {
		return Click{Page: page, TS: t0.Add(time.Duration(min) * time.Minute), Partition: 0, Offset: off, Epoch: 7}
	}
	t.Run("order and max length", func(t *testing.T) {
		s := newStore(t, HistoryConfig{MaxLen: 3})
		var rec Record
		for i := range int32(5) {
			if err := s.Append(ctx, "u", click(10+i, int(i), int64(i)), &rec); err != nil {
				t.Fatalf("Append %d: %v", i, err)
			}
		}
		if want := []int32{12, 13, 14}; !slices.Equal(rec.Pages, want) {
			t.Fatalf("pages after 5 clicks = %v, want %v", rec.Pages, want)
		}
		got, err := s.Get(ctx, "u", nil)
		if err != nil || !slices.Equal(got, []int32{12, 13, 14}) {
			t.Fatalf("Get = %v, %v; want [12 13 14]", got, err)
		}
		if rec.Epoch != 7 || rec.Offset != 4 || !rec.Last.Equal(t0.Add(4*time.Minute)) {
			t.Fatalf("record = %+v, want epoch 7, offset 4, last %v", rec, t0.Add(4*time.Minute))
		}
		got, err = s.Get(ctx, "nobody", got)
		if err != nil || len(got) != 0 {
			t.Fatalf("Get unknown user = %v, %v; want empty", got, err)
		}
	})
	t.Run("session gap", func(t *testing.T) {
		s := newStore(t, HistoryConfig{SessionGap: 30 * time.Minute})
		var rec Record
		_ = s.Append(ctx, "u", click(1, 0, -1), &rec)
		_ = s.Append(ctx, "u", click(2, 29, -1), &rec)
		rec.State = append(rec.State[:0], 0.5, 0.25)
		if err := s.Save(ctx, "u", &rec); err != nil {
			t.Fatal(err)
		}
		_ = s.Append(ctx, "u", click(3, 59, -1), &rec)
		if !slices.Equal(rec.Pages, []int32{1, 2, 3}) || !slices.Equal(rec.State, []float32{0.5, 0.25}) {
			t.Fatalf("within gap: %v %v, want [1 2 3] [0.5 0.25]", rec.Pages, rec.State)
		}
		_ = s.Append(ctx, "u", click(4, 90, -1), &rec)
		if !slices.Equal(rec.Pages, []int32{4}) || len(rec.State) != 0 {
			t.Fatalf("after gap: %v state %v, want [4] and no state", rec.Pages, rec.State)
		}
	})
	t.Run("duplicates by position", func(t *testing.T) {
		s := newStore(t, HistoryConfig{})
		var rec Record
		_ = s.Append(ctx, "u", click(1, 0, 10), &rec)
		_ = s.Append(ctx, "u", click(2, 1, 11), &rec)
		for _, off := range []int64{10, 11} {
			if err := s.Append(ctx, "u", click(2, 1, off), &rec); !errors.Is(err, ErrDuplicate) {
				t.Fatalf("redelivered offset %d: err %v, want ErrDuplicate", off, err)
			}
		}
		if !slices.Equal(rec.Pages, []int32{1, 2}) {
			t.Fatalf("after duplicates %v, want [1 2]", rec.Pages)
		}
		// Another partition, or no position, is applied.
		c := click(3, 2, 5)
		c.Partition = 1
		if err := s.Append(ctx, "u", c, &rec); err != nil {
			t.Fatalf("other partition: %v", err)
		}
		if err := s.Append(ctx, "u", click(4, 3, -1), &rec); err != nil {
			t.Fatalf("no position: %v", err)
		}
		if !slices.Equal(rec.Pages, []int32{1, 2, 3, 4}) || rec.Partition != 1 || rec.Offset != 5 {
			t.Fatalf("record %+v, want pages [1 2 3 4] at partition 1 offset 5", rec)
		}
	})
	t.Run("duplicates after the user changed partition", func(t *testing.T) {
		// Partitions added to the topic move a user's clicks to another
		// partition; a click redelivered from the former one (a replica
		// that stalled, a rebalance) is still a duplicate.
		s := newStore(t, HistoryConfig{})
		var rec Record
		at := func(page int32, partition int32, off int64) Click {
			c := click(page, int(page), off)
			c.Partition = partition
			return c
		}
		for _, c := range []Click{at(1, 0, 10), at(2, 0, 11), at(3, 5, 0), at(4, 7, 3)} {
			if err := s.Append(ctx, "u", c, &rec); err != nil {
				t.Fatalf("click %d: %v", c.Page, err)
			}
		}
		for _, c := range []Click{at(2, 0, 11), at(1, 0, 10), at(3, 5, 0), at(4, 7, 3)} {
			if err := s.Append(ctx, "u", c, &rec); !errors.Is(err, ErrDuplicate) && !errors.Is(err, ErrUnsettled) {
				t.Fatalf("redelivered partition %d offset %d: err %v, want a duplicate", c.Partition, c.Offset, err)
			}
		}
		// A click of the former partition not applied yet is new.
		if err := s.Append(ctx, "u", at(5, 0, 12), &rec); err != nil {
			t.Fatalf("new click of partition 0: %v", err)
		}
		if err := s.Append(ctx, "u", at(4, 7, 3), &rec); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("redelivered partition 7 offset 3 after a move back: err %v, want ErrDuplicate", err)
		}
		if !slices.Equal(rec.Pages, []int32{1, 2, 3, 4, 5}) || rec.Partition != 0 || rec.Offset != 12 {
			t.Fatalf("record %+v, want pages [1 2 3 4 5] at partition 0 offset 12", rec)
		}
		want := []Position{{7, 0, 3}, {5, 0, 0}}
		if len(rec.Prior) != 2 || rec.Prior[0].Partition != 7 || rec.Prior[0].Offset != 3 || rec.Prior[1].Partition != 5 {
			t.Fatalf("prior positions %+v, want %+v", rec.Prior, want)
		}
	})
	t.Run("epoch remap", func(t *testing.T) {
		s := newStore(t, HistoryConfig{})
		var rec Record
		_ = s.Append(ctx, "u", click(5, 0, -1), &rec)
		_ = s.Append(ctx, "u", click(6, 1, -1), &rec)
		c := click(100, 2, -1)
		c.Epoch = 8
		_ = s.Append(ctx, "u", c, &rec)
		if rec.Epoch != 7 {
			t.Fatalf("epoch after a click of a new epoch = %d, want the old 7 so the caller remaps", rec.Epoch)
		}
		for i := range rec.Pages[:len(rec.Pages)-1] {
			rec.Pages[i] += 50 // remap old indices
		}
		rec.Epoch = 8
		if err := s.Save(ctx, "u", &rec); err != nil {
			t.Fatal(err)
		}
		var got Record
		ok, err := s.Load(ctx, "u", &got)
		if err != nil || !ok || got.Epoch != 8 || !slices.Equal(got.Pages, []int32{55, 56, 100}) {
			t.Fatalf("Load = %+v %v %v, want epoch 8 pages [55 56 100]", got, ok, err)
		}
		ok, err = s.Load(ctx, "nobody", &got)
		if err != nil || ok || len(got.Pages) != 0 {
			t.Fatalf("Load unknown = %+v %v %v, want not found", got, ok, err)
		}
	})
	t.Run("generations and stamps", func(t *testing.T) {
		at := func(page int32, min int, gen uint32, off int64) Click {
			c := click(page, min, off)
			c.Gen = gen
			return c
		}
		type step struct {
			name     string
			c        Click
			settle   bool // then Save the record with its latest click settled
			want     error
			pages    []int32
			seq      uint32
			stateSeq uint32
		}
		steps := []step{
			{name: "first click", c: at(1, 0, 0, 10), want: nil, pages: []int32{1}, seq: 1, stateSeq: 0},
			{name: "latest again, unsettled", c: at(1, 0, 0, 10), want: ErrUnsettled, pages: []int32{1}, seq: 1, stateSeq: 0, settle: true},
			{name: "latest again, settled", c: at(1, 0, 0, 10), want: ErrDuplicate, pages: []int32{1}, seq: 1, stateSeq: 1},
			{name: "next click", c: at(2, 1, 0, 11), want: nil, pages: []int32{1, 2}, seq: 2, stateSeq: 1},
			{name: "older click while unsettled", c: at(1, 0, 0, 10), want: ErrDuplicate, pages: []int32{1, 2}, seq: 2, stateSeq: 1},
			{name: "latest again, unsettled twice", c: at(2, 1, 0, 11), want: ErrUnsettled, pages: []int32{1, 2}, seq: 2, stateSeq: 1},
			{name: "new generation, lower offset", c: at(3, 2, 1, 0), want: nil, pages: []int32{1, 2, 3}, seq: 3, stateSeq: 1, settle: true},
			{name: "same generation again", c: at(3, 2, 1, 0), want: ErrDuplicate, pages: []int32{1, 2, 3}, seq: 3, stateSeq: 3},
			{name: "next in the new generation", c: at(4, 3, 1, 1), want: nil, pages: []int32{1, 2, 3, 4}, seq: 4, stateSeq: 3},
		}
		s := newStore(t, HistoryConfig{})
		var rec Record
		for _, st := range steps {
			err := s.Append(ctx, "u", st.c, &rec)
			if outcome(err) != outcome(st.want) {
				t.Fatalf("%s: Append = %v, want %v", st.name, err, st.want)
			}
			if !slices.Equal(rec.Pages, st.pages) || rec.Seq != st.seq || rec.StateSeq != st.stateSeq || rec.Gen != st.c.Gen && st.want == nil {
				t.Fatalf("%s: record pages %v seq %d stateSeq %d gen %d, want %v %d %d %d", st.name, rec.Pages, rec.Seq, rec.StateSeq, rec.Gen, st.pages, st.seq, st.stateSeq, st.c.Gen)
			}
			if st.settle {
				rec.State, rec.StateSeq = append(rec.State[:0], float32(rec.Seq)), rec.Seq
				if err := s.Save(ctx, "u", &rec); err != nil {
					t.Fatal(err)
				}
			}
		}
		// The state saved with click 3 is kept by Append and stamped with it.
		var got Record
		if ok, err := s.Load(ctx, "u", &got); !ok || err != nil || !slices.Equal(got.State, []float32{3}) || got.Seq != 4 || got.StateSeq != 3 || got.Gen != 1 || got.Offset != 1 {
			t.Fatalf("Load = %+v %v %v, want state [3] stamped 3 of 4 at generation 1 offset 1", got, ok, err)
		}
	})
	t.Run("stale save", func(t *testing.T) {
		s := newStore(t, HistoryConfig{})
		var first, second Record
		_ = s.Append(ctx, "u", click(1, 0, 1), &first)
		_ = s.Append(ctx, "u", click(2, 1, 2), &second)
		// A writer that read the record before the second click saves.
		first.State, first.StateSeq = append(first.State[:0], 0.5), first.Seq
		if err := s.Save(ctx, "u", &first); !errors.Is(err, ErrStale) {
			t.Fatalf("Save of a record read before the latest click: %v, want ErrStale", err)
		}
		var got Record
		if _, err := s.Load(ctx, "u", &got); err != nil || !slices.Equal(got.Pages, []int32{1, 2}) || len(got.State) != 0 || got.Seq != 2 {
			t.Fatalf("Load = %+v, %v; want both clicks, no state, seq 2", got, err)
		}
		second.State, second.StateSeq = append(second.State[:0], 0.25), second.Seq
		if err := s.Save(ctx, "u", &second); err != nil {
			t.Fatalf("Save of the latest record: %v", err)
		}
	})
	t.Run("save cuts to max length", func(t *testing.T) {
		s := newStore(t, HistoryConfig{MaxLen: 2})
		if err := s.Save(ctx, "u", &Record{Pages: []int32{1, 2, 3}, Offset: -1, Last: t0}); err != nil {
			t.Fatal(err)
		}
		got, _ := s.Get(ctx, "u", nil)
		if !slices.Equal(got, []int32{2, 3}) {
			t.Fatalf("Get after Save of 3 pages with MaxLen 2 = %v, want [2 3]", got)
		}
	})
	t.Run("concurrent users", func(t *testing.T) {
		s := newStore(t, HistoryConfig{MaxLen: 50})
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				var rec Record
				for i := range 40 {
					_ = s.Append(ctx, fmt.Sprintf("user-%d", w), click(int32(i), i, int64(i)), &rec)
				}
			})
		}
		wg.Wait()
		for w := range 8 {
			got, _ := s.Get(ctx, fmt.Sprintf("user-%d", w), nil)
			if len(got) != 40 || got[39] != 39 {
				t.Fatalf("user-%d history %v, want 0..39", w, got)
			}
		}
	})
}

func TestHistoriesStore(t *testing.T) {
	storeContract(t, func(t *testing.T, cfg HistoryConfig) Store { return newTestHistories(t, cfg) })
}

func TestHistoriesEviction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	reg := prometheus.NewPedanticRegistry()
	h, err := NewHistories(HistoryConfig{MaxUsers: 3, IdleTTL: time.Hour, Now: clock.Now}, reg)
	if err != nil {
		t.Fatal(err)
	}
	var rec Record
	add := func(u string) {
		if err := h.Append(ctx, u, Click{Page: 2, TS: clock.Now(), Offset: -1}, &rec); err != nil {
			t.Fatal(err)
		}
	}
	has := func(u string) bool {
		got, _ := h.Get(ctx, u, nil)
		return len(got) > 0
	}
	add("a")
	add("b")
	add("c")
	has("a") // a is now most recent; b is least recent
	add("d")
	if has("b") || !has("a") || !has("c") || !has("d") || h.Len() != 3 {
		t.Fatalf("after LRU eviction: a=%v b=%v c=%v d=%v len=%d, want b evicted", has("a"), has("b"), has("c"), has("d"), h.Len())
	}
	clock.Add(59 * time.Minute)
	has("c")
	clock.Add(2 * time.Minute)
	if n := h.EvictIdle(); n != 2 {
		t.Fatalf("EvictIdle = %d, want 2 (a and d idle 61 min, c 2 min)", n)
	}
	if !has("c") || h.Len() != 1 {
		t.Fatalf("after idle eviction len %d, c present %v; want only c", h.Len(), has("c"))
	}
	clock.Add(2 * time.Hour)
	if has("c") {
		t.Fatal("idle user returned by Get")
	}
	if got := testutil.ToFloat64(h.evictions.WithLabelValues("lru")); got != 1 {
		t.Fatalf("lru evictions %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.evictions.WithLabelValues("idle")); got != 3 {
		t.Fatalf("idle evictions %v, want 3", got)
	}
	if n, err := testutil.GatherAndCount(reg, "prefetchd_histories_users"); err != nil || n != 1 {
		t.Fatalf("users gauge count %d, %v", n, err)
	}
}

func TestHistoriesRunEvictsIdle(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	h := newTestHistories(t, HistoryConfig{IdleTTL: time.Minute, Now: clock.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var rec Record
	_ = h.Append(ctx, "u", Click{Page: 2, TS: clock.Now(), Offset: -1}, &rec)
	clock.Add(2 * time.Minute)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Run(runCtx, 5*time.Millisecond) }()
	eventually(t, 5*time.Second, "idle user evicted by Run", func() bool { return h.Len() == 0 })
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestHistoryConfigValidate(t *testing.T) {
	for name, cfg := range map[string]HistoryConfig{
		"negative len":   {MaxLen: -1},
		"huge len":       {MaxLen: MaxHistoryLen + 1},
		"negative users": {MaxUsers: -1},
		"shards not pow": {Shards: 3},
		"shards > users": {Shards: 8, MaxUsers: 4},
	} {
		t.Run(name, func(t *testing.T) {
			if err := cfg.Validate(); err == nil {
				t.Fatalf("%+v accepted", cfg)
			}
		})
	}
}

func ExampleHistories() {
	h, err := NewHistories(HistoryConfig{MaxLen: 3}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	var rec Record
	for i, page := range []int32{4, 8, 15, 16} {
		_ = h.Append(ctx, "ann", Click{Page: page, TS: t0.Add(time.Duration(i) * time.Minute), Offset: -1}, &rec)
	}
	fmt.Println(rec.Pages)
	// Output: [8 15 16]
}

// BenchmarkHistoriesAppend measures the hot path and the memory held per user
// (B/user) with MaxLen 20 and no recurrent state.
func BenchmarkHistoriesAppend(b *testing.B) {
	const users = 100_000
	ids := make([]string, users)
	for i := range ids {
		ids[i] = fmt.Sprintf("user-%06d", i)
	}
	ctx := context.Background()
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

	b.Run("bytes-per-user", func(b *testing.B) {
		b.ReportAllocs()
		var perUser float64
		for b.Loop() {
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			h := newTestHistories(b, HistoryConfig{MaxLen: 20, MaxUsers: 2 * users})
			var rec Record
			for i, id := range ids {
				for k := range 20 {
					_ = h.Append(ctx, id, Click{Page: int32(i + k), TS: t0.Add(time.Duration(k) * time.Second), Offset: int64(k)}, &rec)
				}
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			perUser = float64(after.HeapAlloc-before.HeapAlloc) / users
			runtime.KeepAlive(h)
		}
		b.ReportMetric(perUser, "B/user")
	})
	b.Run("bytes-per-user-state32", func(b *testing.B) {
		b.ReportAllocs()
		const users = 20_000
		state := make([]float32, 32)
		var perUser float64
		for b.Loop() {
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			h := newTestHistories(b, HistoryConfig{MaxLen: 20, MaxUsers: 2 * users})
			var rec Record
			for i, id := range ids[:users] {
				for k := range 20 {
					_ = h.Append(ctx, id, Click{Page: int32(i + k), TS: t0.Add(time.Duration(k) * time.Second), Offset: int64(k)}, &rec)
				}
				rec.State = append(rec.State[:0], state...)
				_ = h.Save(ctx, id, &rec)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			perUser = float64(after.HeapAlloc-before.HeapAlloc) / users
			runtime.KeepAlive(h)
		}
		b.ReportMetric(perUser, "B/user")
	})
	b.Run("append", func(b *testing.B) {
		h := newTestHistories(b, HistoryConfig{MaxLen: 20, MaxUsers: 2 * users})
		var rec Record
		rec.Pages = make([]int32, 0, 20)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_ = h.Append(ctx, ids[i%users], Click{Page: int32(i), TS: t0.Add(time.Duration(i) * time.Millisecond), Offset: -1}, &rec)
			i++
		}
	})
	b.Run("append-parallel", func(b *testing.B) {
		h := newTestHistories(b, HistoryConfig{MaxLen: 20, MaxUsers: 2 * users})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var rec Record
			i := 0
			for pb.Next() {
				_ = h.Append(ctx, ids[i%users], Click{Page: int32(i), TS: t0.Add(time.Duration(i) * time.Millisecond), Offset: -1}, &rec)
				i++
			}
		})
	})
}

// TestHistoriesRunCoarseClock: with the real clock, Run keeps the clock
// that Append reads moving, so idle users still age and get evicted.
func TestHistoriesRunCoarseClock(t *testing.T) {
	h := newTestHistories(t, HistoryConfig{IdleTTL: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Run(runCtx, 20*time.Millisecond) }()
	eventually(t, 5*time.Second, "Run started", func() bool { return h.runs.Load() == 1 })
	var rec Record
	if err := h.Append(ctx, "u", Click{Page: 2, TS: time.Now(), Offset: -1}, &rec); err != nil {
		t.Fatal(err)
	}
	before := h.now()
	eventually(t, 5*time.Second, "idle user evicted by Run", func() bool { return h.Len() == 0 })
	if after := h.now(); after-before < int64(100*time.Millisecond) {
		t.Fatalf("the coarse clock moved %v, want at least the idle TTL", time.Duration(after-before))
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if h.runs.Load() != 0 {
		t.Fatal("Run left the coarse clock on")
	}
}
