package app

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/prefetchd/prefetchd/internal/redistest"
)

// TestRedisHzAdvice reads hz from real redis-servers: advice for a short
// TTL at the default hz, none at hz 100 or for long TTLs, and an error
// from a Redis that refuses CONFIG GET hz (miniredis, the in-process store).
func TestRedisHzAdvice(t *testing.T) {
	ctx, client := redisClients(t)
	def, fast := redistest.Start(t), redistest.Start(t, "--hz", "100")
	for _, tc := range []struct {
		name   string
		addr   string
		ttl    time.Duration
		hz     int
		advise bool
	}{
		{"default hz, 1s TTL", def.Addr(), time.Second, 10, true},
		{"default hz, 30s TTL", def.Addr(), shortTTL, 10, true},
		{"default hz, 5m TTL", def.Addr(), 5 * time.Minute, 10, false},
		{"hz 100, 1s TTL", fast.Addr(), time.Second, 100, false},
	} {
		hz, advise, err := redisHzAdvice(ctx, client(tc.addr), tc.ttl)
		if err != nil || hz != tc.hz || advise != tc.advise {
			t.Errorf("%s: hz %d, advise %t, err %v; want %d, %t", tc.name, hz, advise, err, tc.hz, tc.advise)
		}
	}
	mini := miniredis.RunT(t)
	if _, advise, err := redisHzAdvice(ctx, client(mini.Addr()), time.Second); err == nil || advise {
		t.Errorf("miniredis: advise %t, err %v; want an error and no advice", advise, err)
	}
}

// TestRedisEvicts reads the eviction settings of real redis-servers: no
// warning without a memory limit or with noeviction, one for an LRU
// policy under a limit, and an error from a Redis that refuses CONFIG GET.
func TestRedisEvicts(t *testing.T) {
	ctx, client := redisClients(t)
	for _, tc := range []struct {
		name   string
		args   []string
		policy string
		evicts bool
	}{
		{"no limit", nil, "noeviction", false},
		{"no limit, LRU", []string{"--maxmemory-policy", "allkeys-lru"}, "allkeys-lru", false},
		{"limit, noeviction", []string{"--maxmemory", "64mb"}, "noeviction", false},
		{"limit, LRU", []string{"--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"}, "allkeys-lru", true},
		{"limit, volatile TTL", []string{"--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl"}, "volatile-ttl", true},
	} {
		srv := redistest.Start(t, tc.args...)
		policy, evicts, err := redisEvicts(ctx, client(srv.Addr()))
		if err != nil || policy != tc.policy || evicts != tc.evicts {
			t.Errorf("%s: policy %q, evicts %t, err %v; want %q, %t", tc.name, policy, evicts, err, tc.policy, tc.evicts)
		}
	}
	mini := miniredis.RunT(t)
	if _, evicts, err := redisEvicts(ctx, client(mini.Addr())); err == nil || evicts {
		t.Errorf("miniredis: evicts %t, err %v; want an error", evicts, err)
	}
}

// redisClients returns a context bounding the test and a constructor of
// clients closed at its end.
func redisClients(t *testing.T) (context.Context, func(addr string) redis.UniversalClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx, func(addr string) redis.UniversalClient {
		c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{addr}})
		t.Cleanup(func() { c.Close() })
		return c
	}
}

// TestReloadOnDialError: a node that cannot be dialled makes the hook ask
// for a slot-map reload (at once, not at go-redis's minute), and a dial that
// works does not.
func TestReloadOnDialError(t *testing.T) {
	ctx := context.Background()
	reloads := 0
	h := reloadOnDialError{reload: func(context.Context) { reloads++ }}
	refused := h.DialHook(func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("connect: connection refused")
	})
	if _, err := refused(ctx, "tcp", "127.0.0.1:1"); err == nil || reloads != 1 {
		t.Fatalf("refused dial: err %v, %d reloads; want the error and 1 reload", err, reloads)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ok := h.DialHook(func(context.Context, string, string) (net.Conn, error) { return a, nil })
	if c, err := ok(ctx, "tcp", "127.0.0.1:2"); err != nil || c != a || reloads != 1 {
		t.Fatalf("good dial: %v, %v, %d reloads; want the connection and no reload", c, err, reloads)
	}
	// Wired into cluster clients built from several addresses.
	cfg := Default()
	rdb, err := redisClient(cfg, "127.0.0.1:1,127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if _, isCluster := rdb.(*redis.ClusterClient); !isCluster {
		t.Fatalf("client %T for two addresses, want a cluster client", rdb)
	}
}
