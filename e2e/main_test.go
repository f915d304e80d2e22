// Package e2e runs the built dynocycle binary around real workers.
package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testutil"
)

// bin holds the binaries built once for all tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dynocycle-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/dynocycle", "../examples/bloater")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// output collects a process's lines and lets a test wait for a pattern.
type output struct {
	mu    sync.Mutex
	lines []string
}

func (o *output) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		o.mu.Lock()
		o.lines = append(o.lines, sc.Text())
		o.mu.Unlock()
	}
}

func (o *output) matches(re *regexp.Regexp) [][]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var all [][]string
	for _, l := range o.lines {
		if m := re.FindStringSubmatch(l); m != nil {
			all = append(all, m)
		}
	}
	return all
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.lines, "\n")
}

// startAgent runs `dynocycle run -- args...` with env added to a clean
// environment, collecting stdout and stderr together.
func startAgent(t *testing.T, env []string, args ...string) (*exec.Cmd, *output) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "dynocycle"), append([]string{"run", "--"}, args...)...)
	cmd.Env = append([]string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	out := &output{}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	// A worker that outlives a failed test keeps the output pipe open; do
	// not wait for it forever.
	cmd.WaitDelay = 10 * time.Second
	go out.consume(pr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		pw.Close()
		if t.Failed() {
			t.Logf("agent output:\n%s", out)
		}
	})
	return cmd, out
}

func alive(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	if err != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// A zombie waiting for its reaper is not a live process.
	return err == nil && !strings.Contains(string(stat), ") Z ")
}

// stopAgent sends SIGTERM to the agent and requires a clean exit (the
// worker exits 0 on TERM, so should the agent) and no worker process left:
// pids lists them once the agent has exited.
func stopAgent(t *testing.T, agent *exec.Cmd, pids func() []int) {
	t.Helper()
	if err := agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- agent.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("agent exit: %v (the worker exits 0 on TERM, so should the agent)", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("agent did not exit within a minute of SIGTERM")
	}
	testutil.Eventually(t, 30*time.Second, "every worker process gone", func() bool {
		for _, pid := range pids() {
			if alive(pid) {
				return false
			}
		}
		return true
	})
}
