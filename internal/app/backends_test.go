package app

import (
	"context"
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
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := func(addr string) redis.UniversalClient {
		c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{addr}})
		t.Cleanup(func() { c.Close() })
		return c
	}
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
