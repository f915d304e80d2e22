package child

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testutil"
)

// sh runs script in a shell; its output is collected in the returned buffer.
func sh(script string, wait time.Duration) (*Process, *testutil.Buffer) {
	out := &testutil.Buffer{}
	return &Process{Path: "/bin/sh", Args: []string{"-c", script}, Stdout: out, Stderr: out, ShutdownWait: wait}, out
}

func groupGone(pgid int) bool { return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) }

func TestExitCodePassesThrough(t *testing.T) {
	p, out := sh(`echo hello; exit 3`, time.Second)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-p.Exited():
		if e.Code != 3 || e.Signal != 0 {
			t.Errorf("exit = %+v, want code 3", e)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit")
	}
	if !strings.Contains(out.String(), "hello") {
		t.Errorf("stdout not passed through: %q", out.String())
	}
}

func TestKilledBySignalIs128PlusSignal(t *testing.T) {
	p, _ := sh(`kill -KILL $$`, time.Second)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	e := <-p.Exited()
	if e.Code != 137 || e.Signal != syscall.SIGKILL {
		t.Errorf("exit = %+v, want 137 by SIGKILL", e)
	}
}

func TestStopIsGracefulAndNotReportedAsExit(t *testing.T) {
	p, out := sh(`trap 'echo graceful; exit 0' TERM; echo up; while :; do sleep 0.05; done`, 10*time.Second)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the worker to start", func() bool { return strings.Contains(out.String(), "up") })
	e, err := p.Stop(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if e == nil || e.Code != 0 {
		t.Errorf("exit = %+v, want 0", e)
	}
	if !strings.Contains(out.String(), "graceful") {
		t.Errorf("TERM trap did not run: %q", out.String())
	}
	select {
	case e := <-p.Exited():
		t.Errorf("a stop was reported as an unexpected exit: %+v", e)
	default:
	}
	if !groupGone(p.Pid()) {
		t.Error("process group still alive after Stop")
	}
}

func TestStopKillsAWorkerThatIgnoresTERM(t *testing.T) {
	p, out := sh(`trap '' TERM; echo up; while :; do sleep 0.05; done`, 300*time.Millisecond)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the worker to start", func() bool { return strings.Contains(out.String(), "up") })
	e, err := p.Stop(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if e == nil || e.Signal != syscall.SIGKILL {
		t.Errorf("exit = %+v, want killed by SIGKILL", e)
	}
	if !groupGone(p.Pid()) {
		t.Error("process group still alive after Stop")
	}
}

func TestStopReachesGrandchildrenLeftBehind(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "grandchild")
	// The grandchild ignores TERM and outlives the worker; only the group
	// KILL after SHUTDOWN_WAIT ends it.
	script := `(trap '' TERM; exec sleep 300) & echo $! > ` + pidFile + `; trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done`
	p, out := sh(script, 500*time.Millisecond)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the worker to start", func() bool { return strings.Contains(out.String(), "up") })
	if _, err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !groupGone(p.Pid()) {
		t.Error("the grandchild survived Stop")
	}
}

func TestSignalReachesTheWorkerOnly(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "quiet")
	// A shell in the group without a USR1 trap would die; the worker traps it.
	script := `trap 'echo quiet > ` + marker + `' USR1; sh -c 'sleep 300' & echo up; while :; do sleep 0.05; done`
	p, out := sh(script, 5*time.Second)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Stop(context.Background())
	testutil.Eventually(t, 15*time.Second, "the worker to start", func() bool { return strings.Contains(out.String(), "up") })
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the trap to run", func() bool { _, err := os.Stat(marker); return err == nil })
	if !p.Running() {
		t.Error("the worker died")
	}
}

func TestRestartReplacesTheWorker(t *testing.T) {
	p, out := sh(`trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done`, 5*time.Second)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Stop(context.Background())
	testutil.Eventually(t, 15*time.Second, "the worker to start", func() bool { return strings.Contains(out.String(), "up") })
	first, started := p.Pid(), p.StartedAt()
	if err := p.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p.Pid() == first || !p.StartedAt().After(started) {
		t.Errorf("pid %d -> %d, started %v -> %v", first, p.Pid(), started, p.StartedAt())
	}
	if !groupGone(first) {
		t.Error("the old worker is still alive")
	}
	testutil.Eventually(t, 15*time.Second, "the new worker to start", func() bool { return strings.Count(out.String(), "up") == 2 })
	// An exit of the new worker is reported again.
	_ = syscall.Kill(p.Pid(), syscall.SIGKILL)
	select {
	case e := <-p.Exited():
		if e.Signal != syscall.SIGKILL {
			t.Errorf("exit = %+v", e)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the new worker's exit was not reported")
	}
}
