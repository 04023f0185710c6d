//go:build unix && !linux

package chaos

import "syscall"

// sysProcAttr puts a child in its own process group; t.Cleanup kills it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
