//go:build unix

package model

import "syscall"

// cpuTime is the CPU time the process has used, in nanoseconds. Benchmarks
// report it per operation because the machines they run on are shared:
// wall time per op then measures the neighbours as much as the code.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
