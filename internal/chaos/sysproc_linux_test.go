package chaos

import "syscall"

// sysProcAttr puts a child in its own process group and kills it when the
// test binary dies, so that no process outlives a crashed or timed-out test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
