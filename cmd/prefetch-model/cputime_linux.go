package main

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// threadCPU returns a clock of the CPU time of the calling goroutine's
// thread, which it locks to the thread until release is called, and
// whether there is one. On a shared machine the CPU time of a click leaves
// out the time other processes held the core.
func threadCPU() (now func() int64, release func(), ok bool) {
	runtime.LockOSThread()
	now = func() int64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
			return 0
		}
		return ts.Nano()
	}
	return now, runtime.UnlockOSThread, true
}
