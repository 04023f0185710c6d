package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestStartStopRestart(t *testing.T) {
	s := Start(t)
	if err := ping(s.Addr()); err != nil {
		t.Fatalf("ping after start: %v", err)
	}
	s.Stop()
	if err := ping(s.Addr()); err == nil {
		t.Fatal("ping after stop succeeded, want a connection error")
	}
	s.Restart()
	if err := ping(s.Addr()); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
}

// TestCPUTime: the server's CPU time grows while it works.
func TestCPUTime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: Start(t).Addr()})
	defer c.Close()
	before := CPUTime(t, c)
	for range 20 {
		pipe := c.Pipeline()
		for i := range 1000 {
			pipe.Incr(ctx, "n"+string(rune('a'+i%26)))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if after := CPUTime(t, c); after <= before {
		t.Errorf("CPU time after 20,000 commands %v, before %v: want more", after, before)
	}
}
