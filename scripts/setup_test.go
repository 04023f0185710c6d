// Package scripts holds the shell scripts behind `make run` and `make test`;
// its tests run them against stub commands.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSetup runs setup.sh with a PATH of chosen real tools and stubs: it
// installs what is missing through password-less sudo (apt-get update
// first), or stops with the one command to run, and does nothing when all
// is there.
func TestSetup(t *testing.T) {
	real := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatalf("%s is needed to run the script: %v", name, err)
		}
		return p
	}
	tests := []struct {
		name     string
		mode     string
		tools    []string // real tools on PATH besides the basics
		sudo     bool     // a password-less sudo stub
		wantExit int
		wantErr  string   // in stderr
		wantSudo []string // sudo invocations, in order, as substrings
	}{
		{name: "everything there", mode: "test", tools: []string{"redis-server", "chromium"}, wantExit: 0},
		{name: "run needs only go", mode: "run", wantExit: 0},
		{name: "no redis, no sudo", mode: "test", tools: []string{"chromium"}, wantExit: 1,
			wantErr: "setup: missing: redis-server; run: sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends redis-server'"},
		{name: "no redis nor chromium, no sudo", mode: "test", wantExit: 1,
			wantErr: "setup: missing: redis-server chromium; run: sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends redis-server chromium'"},
		{name: "no redis, password-less sudo", mode: "test", tools: []string{"chromium"}, sudo: true, wantExit: 0,
			wantSudo: []string{"-n true", "apt-get update -q", "apt-get install -y -q --no-install-recommends redis-server"}},
		{name: "no promtool, no sudo", mode: "ops", wantExit: 1, wantErr: "install -y --no-install-recommends prometheus'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bin := t.TempDir()
			link := func(name, target string) {
				if err := os.Symlink(target, filepath.Join(bin, name)); err != nil {
					t.Fatal(err)
				}
			}
			for _, name := range append([]string{"go", "sed", "dirname", "gcc", "cc", "as", "ld"}, tc.tools...) {
				link(name, real(name))
			}
			stub := func(name, body string) {
				if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			stub("id", "echo 1000")
			stub("apt-get", "echo apt-get must go through sudo >&2; exit 3")
			log := filepath.Join(t.TempDir(), "sudo.log")
			if tc.sudo {
				stub("sudo", `echo "$*" >>`+log)
			}
			cmd := exec.Command("/bin/sh", "setup.sh", tc.mode)
			cmd.Env = []string{"PATH=" + bin, "HOME=" + t.TempDir(), "GOTOOLCHAIN=local"}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantExit || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Fatalf("setup.sh %s: exit %d, stderr %q; want exit %d and %q", tc.mode, code, stderr.String(), tc.wantExit, tc.wantErr)
			}
			calls, _ := os.ReadFile(log)
			rest := string(calls)
			for _, w := range tc.wantSudo {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("sudo calls lack %q (in order):\n%s", w, calls)
				}
				rest = rest[i+len(w):]
			}
			if tc.wantSudo == nil && len(calls) > 0 {
				t.Errorf("sudo called:\n%s", calls)
			}
		})
	}
}
