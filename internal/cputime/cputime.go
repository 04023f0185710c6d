// Package cputime reads the CPU time the process has used, for benchmarks:
// on a shared machine wall time per operation measures the neighbours as
// much as the code, CPU time per operation far less.
package cputime

import (
	"syscall"
	"time"
)

// Used is the user and system CPU time of this process so far, every
// goroutine and thread included; 0 when the system cannot tell.
func Used() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
