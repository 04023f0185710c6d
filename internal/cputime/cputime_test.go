package cputime

import (
	"testing"
	"time"
)

// TestUsedGrowsWithWork: spinning for 50 ms of wall time adds CPU time.
func TestUsedGrowsWithWork(t *testing.T) {
	before := Used()
	start := time.Now()
	x := 0
	for time.Since(start) < 50*time.Millisecond {
		x++
	}
	wall := time.Since(start)
	got := Used() - before
	if got <= 0 {
		t.Fatalf("CPU time after spinning %v: %v more, want more than 0 (loop ran %d times)", wall, got, x)
	}
	t.Logf("spun %v of wall time, %v of CPU time", wall, got)
}
