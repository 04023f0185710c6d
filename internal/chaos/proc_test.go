package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one external process owned by a test: started in its own process
// group (so that a kill reaches its children too), its output kept in a log
// file, and killed when the test ends. It can be started again with the same
// arguments after a kill, as an operator restarting a crashed daemon would.
type proc struct {
	t     testing.TB
	name  string
	path  string
	args  []string
	ready func(context.Context) error // nil: no readiness probe
	log   string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	runs int
}

// newProc describes a process; start launches it. ready, when set, must
// succeed once the process serves.
func newProc(t testing.TB, name, path string, args []string, ready func(context.Context) error) *proc {
	p := &proc{t: t, name: name, path: path, args: args, ready: ready,
		log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(p.kill)
	return p
}

// start launches the process and waits (at most startTimeout) until its
// readiness probe succeeds. It fails the test otherwise.
func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatalf("%s: open log: %v", p.name, err)
	}
	p.mu.Lock()
	p.runs++
	fmt.Fprintf(f, "=== start %d: %s %s\n", p.runs, p.path, strings.Join(p.args, " "))
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		f.Close()
		p.t.Fatalf("%s: start: %v", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	if p.ready == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var last error
	for {
		if last = p.ready(ctx); last == nil {
			return
		}
		select {
		case <-done:
			p.t.Fatalf("%s exited during start: %v\n%s", p.name, last, p.tail(30))
		case <-ctx.Done():
			p.kill()
			p.t.Fatalf("%s not ready within %v: %v\n%s", p.name, startTimeout, last, p.tail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kill sends SIGKILL to the process group and waits for the process; it
// does nothing when the process is not running.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.t.Errorf("%s (pid %d) still running 10s after SIGKILL", p.name, cmd.Process.Pid)
	}
}

// stop asks the process to end (SIGTERM) and waits up to d, then kills it.
func (p *proc) stop(d time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(d):
		p.t.Errorf("%s did not stop within %v of SIGTERM", p.name, d)
	}
	p.kill()
}

// running reports whether the process was started and not killed since.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// exited reports whether the process ended by itself (not by kill).
func (p *proc) exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the running process (SIGSTOP, SIGCONT).
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil {
		p.t.Fatalf("%s: signal %v: not running", p.name, sig)
	}
	if err := syscall.Kill(cmd.Process.Pid, sig); err != nil {
		p.t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// tail returns the last n lines of the process's log, for diagnostics.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last %d lines of %s log ---\n%s", len(lines), p.name, bytes.Join(lines, []byte("\n")))
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago (all are held open together, so none is returned twice).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// loopback is 127.0.0.1:port.
func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// errNotReady is a readiness probe's answer while a server starts.
var errNotReady = errors.New("not ready")
