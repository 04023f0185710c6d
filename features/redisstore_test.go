package features

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/kafkatest"
	"github.com/prefetchd/prefetchd/internal/redistest"
)

func newRedisClient(t testing.TB, addrs ...string) redis.UniversalClient {
	t.Helper()
	c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: addrs, IsClusterMode: len(addrs) > 1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newTestRedisStore(t testing.TB, client redis.UniversalClient, cfg StoreConfig) *RedisStore {
	t.Helper()
	cfg.Backend = BackendRedis
	s, err := NewRedisStore(cfg, client, nil)
	if err != nil {
		t.Fatalf("NewRedisStore: %v", err)
	}
	return s
}

func TestRedisStore(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	n := 0
	storeContract(t, func(t *testing.T, cfg HistoryConfig) Store {
		n++ // a fresh key space per case
		return newTestRedisStore(t, client, StoreConfig{History: cfg, KeyPrefix: fmt.Sprintf("t%d:", n)})
	})
}

func TestRedisStoreCluster(t *testing.T) {
	addrs := redistest.StartCluster(t)
	client := newRedisClient(t, addrs...)
	n := 0
	storeContract(t, func(t *testing.T, cfg HistoryConfig) Store {
		n++
		return newTestRedisStore(t, client, StoreConfig{History: cfg, KeyPrefix: fmt.Sprintf("t%d:", n)})
	})
	// Users land on every master.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := newTestRedisStore(t, client, StoreConfig{})
	var rec Record
	for i := range 30 {
		if err := s.Append(ctx, fmt.Sprintf("user-%d", i), Click{Page: 2, TS: time.Now(), Offset: -1}, &rec); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		keys, err := c.Keys(ctx, DefaultKeyPrefix+"*").Result()
		_ = c.Close()
		if err != nil || len(keys) == 0 {
			t.Fatalf("master %s holds %d history keys (%v), want some", a, len(keys), err)
		}
	}
}

// TestRedisStoreConcurrentWriters runs two replicas (separate caches) that
// append to the same user at once: the server-side append loses no click.
func TestRedisStoreConcurrentWriters(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stores := []*RedisStore{
		newTestRedisStore(t, client, StoreConfig{History: HistoryConfig{MaxLen: 400}}),
		newTestRedisStore(t, client, StoreConfig{History: HistoryConfig{MaxLen: 400}}),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w, s := range stores {
		wg.Go(func() {
			var rec Record
			for i := range 100 {
				if err := s.Append(ctx, "shared", Click{Page: int32(1000*w + i), TS: time.Now(), Offset: -1}, &rec); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Read past the caches (which may be up to CacheTTL stale).
	direct := newTestRedisStore(t, client, StoreConfig{CacheSize: -1})
	var rec Record
	if ok, err := direct.Load(ctx, "shared", &rec); !ok || err != nil {
		t.Fatalf("Load: %v %v", ok, err)
	}
	if len(rec.Pages) != 200 {
		t.Fatalf("history has %d clicks, want 200 from two concurrent writers: %v", len(rec.Pages), rec.Pages)
	}
	next := [2]int32{0, 1000}
	for _, p := range rec.Pages {
		w := p / 1000
		if p != next[w] {
			t.Fatalf("writer %d click %d out of order in %v", w, p, rec.Pages)
		}
		next[w]++
	}
}

func TestRedisStoreKeysAndTTL(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := newTestRedisStore(t, client, StoreConfig{History: HistoryConfig{IdleTTL: time.Hour}})
	var rec Record
	if err := s.Append(ctx, "ann", Click{Page: 3, TS: time.Now(), Offset: -1}, &rec); err != nil {
		t.Fatal(err)
	}
	if got := s.Key("ann"); got != "prefetchd:h:{ann}" {
		t.Fatalf("key %q, want prefetchd:h:{ann}", got)
	}
	ttl, err := client.PTTL(ctx, "prefetchd:h:{ann}").Result()
	if err != nil || ttl <= 59*time.Minute || ttl > time.Hour {
		t.Fatalf("PTTL = %v, %v; want about 1h", ttl, err)
	}
	// A corrupt record is replaced, not fatal.
	if err := client.Set(ctx, s.Key("bob"), "garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, "bob", Click{Page: 4, TS: time.Now(), Offset: -1}, &rec); err != nil || !slices.Equal(rec.Pages, []int32{4}) {
		t.Fatalf("Append over a corrupt record: %v %v", rec.Pages, err)
	}
}

func TestNewStoreBackend(t *testing.T) {
	if s, err := NewStore(StoreConfig{}, nil, nil); err != nil {
		t.Fatalf("memory store: %v", err)
	} else if _, ok := s.(*Histories); !ok {
		t.Fatalf("default backend built %T, want *Histories", s)
	}
	if _, err := NewStore(StoreConfig{Backend: BackendRedis}, nil, nil); err == nil {
		t.Fatal("redis backend without a client accepted")
	}
	if _, err := NewStore(StoreConfig{Backend: "etcd"}, nil, nil); err == nil {
		t.Fatal("unknown backend accepted")
	}
}

// encodeFields renders r as Redis stores the arguments of the save script.
func encodeFields(r *Record) (f [numFields]string) {
	for i, v := range appendFields(nil, r) {
		if b, ok := v.([]byte); ok {
			f[i] = string(b)
		} else {
			f[i] = fmt.Sprint(v)
		}
	}
	return f
}

func TestRecordFields(t *testing.T) {
	in := Record{Pages: []int32{1, -2, 1 << 30}, State: []float32{0.5, -1}, Epoch: 9,
		Last: time.UnixMicro(1_800_000_000_123456), Partition: 3, Gen: 4, Offset: 1 << 40, Seq: 1<<32 - 1, StateSeq: 1<<32 - 2,
		Prior: []Position{{Partition: 7, Gen: 2, Offset: 1 << 35}, {Partition: 0, Gen: 0, Offset: 0}}}
	var out Record
	if err := decodeFields(encodeFields(&in), &out); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.Pages, in.Pages) || !slices.Equal(out.State, in.State) || out.Epoch != in.Epoch ||
		!out.Last.Equal(in.Last) || out.Partition != in.Partition || out.Offset != in.Offset ||
		out.Gen != in.Gen || out.Seq != in.Seq || out.StateSeq != in.StateSeq || !slices.Equal(out.Prior, in.Prior) {
		t.Fatalf("round trip %+v, want %+v", out, in)
	}
	// A record written before prior positions: none.
	f0 := encodeFields(&in)
	f0[9] = ""
	if err := decodeFields(f0, &out); err != nil || len(out.Prior) != 0 {
		t.Fatalf("record without x: %+v, %v; want no prior positions", out, err)
	}
	f0[9] = "7 2"
	if err := decodeFields(f0, &out); err == nil {
		t.Fatal("a damaged x field decoded")
	}
	// A record written before generations and stamps: generation 0, state unknown.
	f := encodeFields(&in)
	f[6], f[7], f[8] = "", "", ""
	if err := decodeFields(f, &out); err != nil || out.Gen != 0 || out.Seq != 1 || out.StateSeq != 0 {
		t.Fatalf("record without g, q, c: %+v, %v; want generation 0, seq 1, stateSeq 0", out, err)
	}
	f = encodeFields(&in)
	f[4] = f[4][:5]
	if err := decodeFields(f, &out); err == nil {
		t.Fatal("pages of 5 bytes decoded")
	}
	f = encodeFields(&in)
	f[3] = "x"
	if err := decodeFields(f, &out); err == nil {
		t.Fatal("offset x decoded")
	}
	f = encodeFields(&in)
	f[7] = "-1"
	if err := decodeFields(f, &out); err == nil {
		t.Fatal("seq -1 decoded")
	}
}

// TestRedisStoreLegacyRecord: a record written before generations and
// stamps (fields e, l, p, o, h, s only) has an unknown state: a redelivery
// of its latest click is unsettled, and after the next click the stored
// state does not cover the click before it (StateSeq != Seq-1).
func TestRedisStoreLegacyRecord(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := newTestRedisStore(t, client, StoreConfig{CacheSize: -1})
	t0 := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	old := encodeFields(&Record{Pages: []int32{5, 6}, State: []float32{0.25, 0.5}, Epoch: 1, Last: t0, Partition: 2, Offset: 7})
	if err := client.HSet(ctx, s.Key("ann"), "e", old[0], "l", old[1], "p", old[2], "o", old[3], "h", old[4], "s", old[5]).Err(); err != nil {
		t.Fatal(err)
	}
	var rec Record
	if ok, err := s.Load(ctx, "ann", &rec); !ok || err != nil || rec.Seq != 1 || rec.StateSeq != 0 || !slices.Equal(rec.Pages, []int32{5, 6}) {
		t.Fatalf("Load = %+v %t %v; want pages [5 6], seq 1, stateSeq 0", rec, ok, err)
	}
	tests := []struct {
		name     string
		c        Click
		want     string
		pages    []int32
		seq      uint32
		stateSeq uint32
	}{
		{"latest click again", Click{Page: 6, TS: t0, Epoch: 1, Partition: 2, Offset: 7}, "unsettled", []int32{5, 6}, 1, 0},
		{"next click", Click{Page: 9, TS: t0.Add(time.Second), Epoch: 1, Partition: 2, Offset: 8}, "applied", []int32{5, 6, 9}, 2, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Append(ctx, "ann", tc.c, &rec)
			if outcome(err) != tc.want || !slices.Equal(rec.Pages, tc.pages) || rec.Seq != tc.seq || rec.StateSeq != tc.stateSeq {
				t.Fatalf("Append = %v: pages %v seq %d stateSeq %d; want %s, %v, %d, %d", err, rec.Pages, rec.Seq, rec.StateSeq, tc.want, tc.pages, tc.seq, tc.stateSeq)
			}
		})
	}
}

// TestConsumerSlowRedis runs the consumer into a Redis store behind a proxy
// that turns slow, then stalls beyond the operation timeout, then recovers:
// handler calls time out and are retried, and in the end every event is in
// Redis once and in order.
func TestConsumerSlowRedis(t *testing.T) {
	srv := redistest.Start(t)
	proxy := startSlowProxy(t, srv.Addr())
	client := newRedisClient(t, proxy.addr)
	store := newTestRedisStore(t, client, StoreConfig{History: HistoryConfig{MaxLen: 1000}, OpTimeout: 100 * time.Millisecond})

	const topic = "clicks"
	b := kafkatest.Start(t, topic)
	stream := newClickStream()
	cfg := testConsumerConfig(b.Addr(), topic)
	cfg.HandlerBackoff = 20 * time.Millisecond
	c, err := NewConsumer(cfg, newRecorder(store), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)

	proxy.delay.Store(int64(5 * time.Millisecond))
	b.Produce(t, topic, stream.batch(6, 5)...)
	time.Sleep(200 * time.Millisecond)
	proxy.delay.Store(int64(300 * time.Millisecond)) // beyond OpTimeout
	b.Produce(t, topic, stream.batch(6, 5)...)
	time.Sleep(time.Second)
	proxy.delay.Store(0)
	b.Produce(t, topic, stream.batch(6, 5)...)

	direct := newTestRedisStore(t, newRedisClient(t, srv.Addr()), StoreConfig{History: HistoryConfig{MaxLen: 1000}, CacheSize: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eventually(t, 30*time.Second, "every event in Redis", func() bool {
		for u, want := range stream.want {
			got, err := direct.Get(ctx, u, nil)
			if err != nil || len(got) < len(want) {
				return false
			}
		}
		return c.Lag() == 0
	})
	stop()
	for u, want := range stream.want {
		got, _ := direct.Get(ctx, u, nil)
		if !slices.Equal(got, want) {
			t.Fatalf("user %s history in Redis %v, want %v", u, got, want)
		}
	}
	if r := testutil.ToFloat64(c.m.handlerRetries); r == 0 {
		t.Fatal("no handler retries: the stall did not reach the store")
	}
	if err := c.Ready(); err != nil {
		t.Fatalf("Ready after the store recovered: %v", err)
	}
}

// slowProxy forwards TCP to a Redis server, delaying each client write.
type slowProxy struct {
	addr  string
	delay atomic.Int64 // ns
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startSlowProxy(t *testing.T, target string) *slowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{addr: ln.Addr().String(), ln: ln}
	p.wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Go(func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := in.Read(buf)
					if err != nil {
						_ = out.Close()
						return
					}
					time.Sleep(time.Duration(p.delay.Load()))
					if _, err := out.Write(buf[:n]); err != nil {
						_ = in.Close()
						return
					}
				}
			})
			p.wg.Go(func() {
				_, _ = io.Copy(in, out)
				_ = in.Close()
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// TestRedisStoreOnMiniredis checks the store's Lua scripts on miniredis, the
// in-process Redis of prefetchd's embedded default (real Redis is tested above).
func TestRedisStoreOnMiniredis(t *testing.T) {
	m := miniredis.RunT(t)
	client := newRedisClient(t, m.Addr())
	n := 0
	storeContract(t, func(t *testing.T, cfg HistoryConfig) Store {
		n++
		return newTestRedisStore(t, client, StoreConfig{History: cfg, KeyPrefix: fmt.Sprintf("m%d:", n)})
	})
}

// batchContract applies the same waves of clicks to single (Append and
// Save, one user at a time) and to many (AppendMany and SaveMany), then
// compares every row's record and error, and the stored records.
func batchContract(t *testing.T, single Store, many BatchStore, flush func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	users := []string{"a", "b", "c", "d", "e"}
	type row struct {
		user string
		c    Click
	}
	var waves [][]row
	for w := range 6 {
		var wave []row
		for u, user := range users {
			if (w+u)%4 == 3 {
				continue // not every user in every wave
			}
			c := Click{Page: int32(2 + w*5 + u), TS: t0.Add(time.Duration(w) * time.Minute), Partition: 1, Offset: int64(100*u + w), Epoch: 3}
			switch {
			case w == 3 && u == 1:
				c.TS = t0.Add(3 * time.Hour) // a new session
			case w == 4 && u == 2:
				c.Offset = int64(100*u + 2) // a redelivery: a duplicate
			case w == 5 && u == 3:
				c.Offset = int64(100*u + 3) // the latest click again, unsettled
			case w == 5 && u == 0:
				c.Gen, c.Offset = 1, 0 // a new generation of the partition
			case u == 4:
				c.Offset = -1 // no position (gRPC)
			}
			wave = append(wave, row{user, c})
		}
		waves = append(waves, wave)
	}
	for wi, wave := range waves {
		if wi == 2 && flush != nil {
			flush() // the server forgets its scripts
		}
		rows := make([]*BatchRow, len(wave))
		for i, r := range wave {
			rows[i] = &BatchRow{User: r.user, Click: r.c}
		}
		many.AppendMany(ctx, rows)
		for i, r := range wave {
			var want Record
			werr := single.Append(ctx, r.user, r.c, &want)
			got := rows[i]
			if outcome(werr) != outcome(got.Err) || strings.HasPrefix(outcome(werr), "failed") {
				t.Fatalf("wave %d user %s: AppendMany error %v, Append %v", wi, r.user, got.Err, werr)
			}
			if wi == 5 && r.user == "d" && outcome(werr) != "unsettled" || wi == 5 && r.user == "a" && werr != nil {
				t.Fatalf("wave 5 user %s: Append %v", r.user, werr)
			}
			if g, exp := fields(&got.Rec), fields(&want); g != exp {
				t.Fatalf("wave %d user %s: AppendMany %s, Append %s", wi, r.user, g, exp)
			}
			// A state that depends on the wave, saved both ways, settling
			// the click in even waves.
			want.State = []float32{float32(wi), float32(len(want.Pages))}
			got.Rec.State = []float32{float32(wi), float32(len(got.Rec.Pages))}
			if wi%2 == 0 {
				want.StateSeq, got.Rec.StateSeq = want.Seq, got.Rec.Seq
			}
			if err := single.Save(ctx, r.user, &want); err != nil {
				t.Fatal(err)
			}
		}
		many.SaveMany(ctx, rows)
		for _, row := range rows {
			if row.Err != nil {
				t.Fatalf("wave %d user %s: SaveMany: %v", wi, row.User, row.Err)
			}
		}
	}
	for _, u := range users {
		var a, b Record
		oka, erra := single.Load(ctx, u, &a)
		okb, errb := many.Load(ctx, u, &b)
		if !oka || !okb || erra != nil || errb != nil || fields(&a) != fields(&b) {
			t.Fatalf("user %s: stored one by one %s (%v), in batches %s (%v)", u, fields(&a), erra, fields(&b), errb)
		}
	}
}

// fields renders what a record says, but its event time.
func fields(r *Record) string {
	return fmt.Sprintf("pages %v state %v epoch %d position %d/%d/%d seq %d/%d", r.Pages, r.State, r.Epoch, r.Partition, r.Gen, r.Offset, r.StateSeq, r.Seq)
}

func TestRedisStoreBatch(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	single := newTestRedisStore(t, client, StoreConfig{KeyPrefix: "one:", CacheSize: -1})
	many := newTestRedisStore(t, client, StoreConfig{KeyPrefix: "many:", CacheSize: -1})
	batchContract(t, single, many, func() {
		if err := client.ScriptFlush(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRedisStoreBatchMatchesMemory: the append script and SaveMany have
// the effect of the in-memory store's Append and Save.
func TestRedisStoreBatchMatchesMemory(t *testing.T) {
	srv := redistest.Start(t)
	many := newTestRedisStore(t, newRedisClient(t, srv.Addr()), StoreConfig{CacheSize: -1})
	batchContract(t, newTestHistories(t, HistoryConfig{}), many, nil)
}

func TestRedisStoreBatchCluster(t *testing.T) {
	addrs := redistest.StartCluster(t)
	client := newRedisClient(t, addrs...)
	single := newTestRedisStore(t, client, StoreConfig{KeyPrefix: "one:"})
	many := newTestRedisStore(t, client, StoreConfig{KeyPrefix: "many:"})
	batchContract(t, single, many, nil)
}

// TestRedisStoreForesee: the store foresees a click from the record its own
// latest Append returned (the click applied by the script's rules: window,
// session gap), not for a user it holds no record of, nor for a click it
// would not apply; what it foresees is what Append then returns.
func TestRedisStoreForesee(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	ctx := context.Background()
	s := newTestRedisStore(t, client, StoreConfig{KeyPrefix: "fs:", History: HistoryConfig{MaxLen: 3, SessionGap: time.Minute}})
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := func(page int32, off int64, ts time.Time) Click {
		return Click{Page: page, TS: ts, Epoch: 7, Partition: 0, Offset: off}
	}
	var fore, got Record
	if s.Foresee("u", at(1, 0, t0), &fore) {
		t.Fatal("foresaw a click of a user never read or written")
	}
	for i, c := range []Click{at(1, 0, t0), at(2, 1, t0.Add(time.Second)), at(3, 2, t0.Add(2*time.Second)), at(4, 3, t0.Add(3*time.Second)), at(5, 4, t0.Add(5*time.Minute))} {
		foreseen := s.Foresee("u", c, &fore)
		if foreseen != (i > 0) {
			t.Fatalf("click %d: foreseen %v, want %v", i, foreseen, i > 0)
		}
		if err := s.Append(ctx, "u", c, &got); err != nil {
			t.Fatal(err)
		}
		if foreseen && (!slices.Equal(fore.Pages, got.Pages) || fore.Offset != got.Offset || !fore.Last.Equal(got.Last)) {
			t.Fatalf("click %d: foresaw pages %v offset %d last %v, Append returned %v, %d, %v", i, fore.Pages, fore.Offset, fore.Last, got.Pages, got.Offset, got.Last)
		}
	}
	if !slices.Equal(got.Pages, []int32{5}) {
		t.Fatalf("after the session gap: %v, want [5]", got.Pages)
	}
	if s.Foresee("u", at(5, 4, t0.Add(5*time.Minute)), &fore) {
		t.Fatal("foresaw a redelivered click")
	}
}

// BenchmarkRedisAppendMany is the cost of the Redis history store per click
// in redis-server and in this process: waves of 4 and 16 distinct users (of
// 30,000, each clicking in turn, as prefetch-load's users at 10,000/s) in
// one AppendMany each, records of 20 pages with no state (a model without
// a step form). It reports redis-server's CPU time (INFO cpu) per click.
func BenchmarkRedisAppendMany(b *testing.B) {
	srv := redistest.Start(b)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	defer client.Close()
	ctx := context.Background()
	for _, wave := range []int{4, 16} {
		b.Run(fmt.Sprintf("wave=%d", wave), func(b *testing.B) {
			// A prefix of its own per run: with -count > 1 the runs share the
			// server, and the same offsets would be duplicates.
			s := newTestRedisStore(b, client, StoreConfig{KeyPrefix: fmt.Sprintf("bench%d-%d:", wave, time.Now().UnixNano()), History: HistoryConfig{MaxLen: 20}})
			const users = 30_000
			rows := make([]BatchRow, wave)
			ptrs := make([]*BatchRow, wave)
			for i := range rows {
				ptrs[i] = &rows[i]
			}
			at := time.Now()
			b.ReportAllocs()
			rcpu := redistest.CPUTime(b, client)
			clicks := 0
			for i := 0; b.Loop(); i++ {
				for j := range rows {
					k := i*wave + j
					rows[j].User = "user-" + strconv.Itoa(k%users)
					rows[j].Click = Click{Page: int32(2 + k%2000), TS: at.Add(time.Duration(k) * time.Microsecond), Epoch: 1, Partition: 0, Offset: int64(k)}
				}
				s.AppendMany(ctx, ptrs)
				for j := range rows {
					if rows[j].Err != nil {
						b.Fatal(rows[j].Err)
					}
				}
				clicks += wave
			}
			rcpu = redistest.CPUTime(b, client) - rcpu
			b.ReportMetric(float64(rcpu.Nanoseconds())/float64(clicks), "redis-cpu-ns/click")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(clicks), "ns/click")
		})
	}
}

// TestAppendManyNamesConnectionError: when the pipeline cannot run at all
// (a wrong password refused at connection), each row's error is that
// refusal, not a decoding error about an empty reply.
func TestAppendManyNamesConnectionError(t *testing.T) {
	srv := redistest.Start(t)
	admin := newRedisClient(t, srv.Addr())
	if err := admin.Do(context.Background(), "ACL", "SETUSER", "pf", "on", ">right", "~*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "pf", Password: "wrong", ContextTimeoutEnabled: true, MaxRetries: -1})
	defer client.Close()
	s := newTestRedisStore(t, client, StoreConfig{History: HistoryConfig{MaxLen: 5}})
	rows := []BatchRow{{User: "u", Click: Click{Page: 2, TS: time.Now(), Offset: -1}}}
	s.AppendMany(context.Background(), []*BatchRow{&rows[0]})
	if err := rows[0].Err; err == nil || strings.Contains(err.Error(), "unexpected type") || !strings.Contains(strings.ToUpper(err.Error()), "PASS") {
		t.Fatalf("err %v, want the password refusal named", err)
	}
}

// TestRedisStoreForeseenAppend: a store whose cache holds the user's record
// applies a click by writing the record it foresaw (the script checks the
// stored stamps first), and leaves in Redis exactly what a store without a
// cache leaves, whose script reads and applies every click itself: the same
// hash, field by field, and the same Record and error returned, through
// session gaps, redeliveries, partition moves, saved states, another writer
// and a record deleted or overwritten behind the cache's back. Each step
// says whether the foreseen write should be the one that served it.
func TestRedisStoreForeseenAppend(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	ctx := context.Background()
	hist := HistoryConfig{MaxLen: 3, SessionGap: time.Minute, IdleTTL: time.Hour}
	fast := newTestRedisStore(t, client, StoreConfig{KeyPrefix: "a:", History: hist})
	full := newTestRedisStore(t, client, StoreConfig{KeyPrefix: "b:", History: hist, CacheSize: -1})
	others := [2]*RedisStore{
		newTestRedisStore(t, client, StoreConfig{KeyPrefix: "a:", History: hist, CacheSize: -1}),
		newTestRedisStore(t, client, StoreConfig{KeyPrefix: "b:", History: hist, CacheSize: -1}),
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	click := func(page, part int32, off int64, sec int) Click {
		return Click{Page: page, TS: t0.Add(time.Duration(sec) * time.Second), Epoch: 4, Partition: part, Offset: off}
	}
	const (
		appendStep = iota
		otherAppend
		saveState
		deleteKey
		overwriteKey
		eraseHistory
	)
	steps := []struct {
		name     string
		kind     int
		c        Click
		wantFast bool
		wantErr  error
	}{
		{"first click: nothing cached", appendStep, click(1, 0, 0, 0), false, nil},
		{"second click", appendStep, click(2, 0, 1, 1), true, nil},
		{"window full", appendStep, click(3, 0, 2, 2), true, nil},
		{"window slides", appendStep, click(4, 0, 3, 3), true, nil},
		{"redelivered", appendStep, click(3, 0, 2, 2), false, ErrDuplicate},
		{"moves to partition 2", appendStep, click(5, 2, 0, 4), true, nil},
		{"redelivered from partition 0", appendStep, click(4, 0, 3, 3), false, ErrDuplicate},
		{"no position", appendStep, click(6, 0, -1, 5), true, nil},
		{"clock goes back", appendStep, click(7, 2, 1, 4), true, nil},
		{"state saved", saveState, Click{}, false, nil},
		{"after the saved state", appendStep, click(8, 2, 2, 6), true, nil},
		{"new session", appendStep, click(9, 2, 3, 600), true, nil},
		{"another writer appends", otherAppend, click(10, 2, 4, 601), false, nil},
		{"after the other writer: cache stale", appendStep, click(11, 2, 5, 602), false, nil},
		{"cache current again", appendStep, click(12, 2, 6, 603), true, nil},
		{"another writer erases the pages, stamps untouched", eraseHistory, Click{}, false, nil},
		{"after the erase: not foreseen", appendStep, click(17, 2, 7, 604), false, nil},
		{"record deleted, written anew by the other writer", deleteKey, click(13, 1, 0, 605), false, nil},
		{"after the new record", appendStep, click(14, 1, 1, 606), false, nil},
		{"key holds a string", overwriteKey, Click{}, false, nil},
		{"after the string", appendStep, click(15, 1, 2, 607), false, nil},
		{"and on", appendStep, click(16, 1, 3, 608), true, nil},
	}
	var recs [2]Record
	wantFast := int64(0)
	for _, st := range steps {
		switch st.kind {
		case appendStep:
			var errs [2]error
			for i, s := range []*RedisStore{fast, full} {
				errs[i] = s.Append(ctx, "u", st.c, &recs[i])
			}
			if !errors.Is(errs[0], st.wantErr) || !errors.Is(errs[1], st.wantErr) || (st.wantErr == nil && (errs[0] != nil || errs[1] != nil)) {
				t.Fatalf("%s: errors %v and %v, want %v", st.name, errs[0], errs[1], st.wantErr)
			}
			if st.wantErr == nil && !recordsEqual(&recs[0], &recs[1]) {
				t.Fatalf("%s: foreseen store returned %+v, the other %+v", st.name, recs[0], recs[1])
			}
		case otherAppend:
			for _, s := range others {
				var r Record
				if err := s.Append(ctx, "u", st.c, &r); err != nil {
					t.Fatal(err)
				}
			}
		case saveState:
			for i, s := range []*RedisStore{fast, full} {
				r := recs[i]
				r.State, r.StateSeq = []float32{0.5, -0.25}, r.Seq
				if err := s.Save(ctx, "u", &r); err != nil {
					t.Fatalf("%s: %v", st.name, err)
				}
			}
		case deleteKey:
			for _, s := range others {
				if err := client.Del(ctx, s.Key("u")).Err(); err != nil {
					t.Fatal(err)
				}
				var r Record
				if err := s.Append(ctx, "u", st.c, &r); err != nil {
					t.Fatal(err)
				}
			}
		case overwriteKey:
			for _, s := range others {
				if err := client.Set(ctx, s.Key("u"), "not a record", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
		case eraseHistory:
			for _, s := range others {
				if err := client.HSet(ctx, s.Key("u"), "h", "").Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if st.wantFast {
			wantFast++
		}
		if got := fast.foreseen.Load(); got != wantFast {
			t.Fatalf("%s: %d clicks applied as foreseen, want %d", st.name, got, wantFast)
		}
		a, errA := client.HGetAll(ctx, fast.Key("u")).Result()
		b, errB := client.HGetAll(ctx, full.Key("u")).Result()
		if st.kind == overwriteKey {
			continue
		}
		if errA != nil || errB != nil || !maps.Equal(a, b) {
			t.Fatalf("%s: hashes differ:\n foreseen %q (%v)\n applied  %q (%v)", st.name, a, errA, b, errB)
		}
		if ttl := client.PTTL(ctx, fast.Key("u")).Val(); ttl <= 59*time.Minute {
			t.Fatalf("%s: TTL %v, want the idle TTL of 1 h", st.name, ttl)
		}
	}
	if full.foreseen.Load() != 0 {
		t.Fatalf("a store without a cache applied %d clicks as foreseen", full.foreseen.Load())
	}

	// Event times with digits below the microsecond, at the session gap's
	// edge: the foreseen record draws the line where the script does
	// (the script sees microseconds).
	edge := t0.Add(100 * time.Nanosecond)
	for i, st := range []*RedisStore{fast, full} {
		var r Record
		for j, at := range []time.Time{edge, edge.Add(time.Minute + 500*time.Nanosecond)} {
			if err := st.Append(ctx, "ns", Click{Page: int32(20 + j), TS: at, Epoch: 4, Offset: int64(j)}, &r); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(r.Pages, []int32{20, 21}) {
			t.Fatalf("store %d: pages %v across a gap of exactly a minute in microseconds, want one session [20 21]", i, r.Pages)
		}
	}

	// A record gone (expired, say) and written anew by another writer
	// with the same counts as the cached one: the position and time tell
	// them apart, and the click goes to the new record.
	var r Record
	if err := fast.Append(ctx, "v", click(1, 0, 7, 0), &r); err != nil {
		t.Fatal(err)
	}
	if err := client.Del(ctx, fast.Key("v")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := others[0].Append(ctx, "v", click(2, 3, 9, 1), &r); err != nil {
		t.Fatal(err)
	}
	before := fast.foreseen.Load()
	if err := fast.Append(ctx, "v", click(3, 0, 8, 2), &r); err != nil {
		t.Fatal(err)
	}
	if fast.foreseen.Load() != before || !slices.Equal(r.Pages, []int32{2, 3}) || r.Seq != 2 {
		t.Fatalf("after the record was replaced: pages %v seq %d (foreseen %d→%d), want [2 3], 2, not foreseen", r.Pages, r.Seq, before, fast.foreseen.Load())
	}
}

// recordsEqual compares every field of two records.
func recordsEqual(a, b *Record) bool {
	return slices.Equal(a.Pages, b.Pages) && slices.Equal(a.State, b.State) && a.Epoch == b.Epoch &&
		a.Last.Equal(b.Last) && a.Partition == b.Partition && a.Gen == b.Gen && a.Offset == b.Offset &&
		slices.Equal(a.Prior, b.Prior) && a.Seq == b.Seq && a.StateSeq == b.StateSeq
}

// TestRedisStoreDamagedRecordStartsAgain: a record whose fields another
// writer damaged (not numbers, packed fields of a wrong length, unreadable
// prior positions, missing fields) is dropped and started again by the next
// click, which is applied: retrying could never get past it, and would hold
// every user of its partition.
func TestRedisStoreDamagedRecordStartsAgain(t *testing.T) {
	srv := redistest.Start(t)
	client := newRedisClient(t, srv.Addr())
	ctx := context.Background()
	for _, cacheSize := range []int{-1, 0} { // without and with a cache (foreseen appends)
		s := newTestRedisStore(t, client, StoreConfig{KeyPrefix: fmt.Sprintf("d%d:", cacheSize), CacheSize: cacheSize, History: HistoryConfig{MaxLen: 5}})
		for i, damage := range [][]any{
			{"e", "abc"}, {"x", "garbage"}, {"s", "abc"}, {"q", "abc"}, {"l", "1e5"},
			{"h", "abcde"}, {"p", "99999999999"}, {"q", "4294967296"}, {"o", "-"}, {"x", "1 2 3,4 5"},
		} {
			user := fmt.Sprintf("u%d", i)
			var r Record
			for j := range 2 {
				if err := s.Append(ctx, user, Click{Page: int32(10 + j), TS: time.Now(), Offset: int64(j)}, &r); err != nil {
					t.Fatal(err)
				}
			}
			if err := client.HSet(ctx, s.Key(user), damage...).Err(); err != nil {
				t.Fatal(err)
			}
			err := s.Append(ctx, user, Click{Page: 30, TS: time.Now(), Offset: 2}, &r)
			if err != nil || !slices.Equal(r.Pages, []int32{30}) || r.Seq != 1 {
				t.Errorf("cache %d, %v: Append after the damage = %v, pages %v seq %d; want the record started again with the click", cacheSize, damage, err, r.Pages, r.Seq)
			}
			var direct Record
			if ok, err := newTestRedisStore(t, client, StoreConfig{KeyPrefix: fmt.Sprintf("d%d:", cacheSize), CacheSize: -1}).Load(ctx, user, &direct); !ok || err != nil || !slices.Equal(direct.Pages, []int32{30}) {
				t.Errorf("cache %d, %v: stored record %v (%v, %v), want [30] readable", cacheSize, damage, direct.Pages, ok, err)
			}
		}
	}
}
