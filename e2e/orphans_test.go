package e2e

import (
	"github.com/dynocycle/dynocycle/internal/testutil"

	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	workerPID     = regexp.MustCompile(`^worker=(\d+)$`)
	grandchildPID = regexp.MustCompile(`^grandchild=(\d+)$`)
)

// orphanEnv runs the agent standalone, far from any memory limit, with a
// short SHUTDOWN_WAIT.
var orphanEnv = []string{"MAX_RSS=1GB", "PLATFORM=local", "SHUTDOWN_WAIT=1s"}

// pidOf waits for the line re matches and returns its pid. Should the test
// fail and leave the process running, it is killed, provided its command
// line still says it is the one (the pid may have been reused).
func pidOf(t *testing.T, out *output, re *regexp.Regexp, cmdline string) int {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, re.String(), func() bool { return len(out.matches(re)) > 0 })
	pid, _ := strconv.Atoi(out.matches(re)[0][1])
	t.Cleanup(func() {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), cmdline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return pid
}

// waitExit waits for the agent to exit and returns its exit code.
func waitExit(t *testing.T, agent *exec.Cmd, timeout time.Duration) int {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = agent.Wait(); close(done) }()
	select {
	case <-done:
		return agent.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("the agent did not exit within %v", timeout)
		return 0
	}
}

// A SIGKILLed agent takes its worker along: the worker gets its stop signal
// (and stops gracefully), and what it forked is killed after SHUTDOWN_WAIT.
func TestKilledAgentLeavesNoProcessBehind(t *testing.T) {
	agent, out := startAgent(t, orphanEnv, "sh", "-c", `
trap 'echo worker got TERM; exit 0' TERM
(trap '' TERM; exec sleep 300) &
echo "grandchild=$!"
echo "worker=$$"
while :; do sleep 0.1; done`)
	worker, grandchild := pidOf(t, out, workerPID, "worker="), pidOf(t, out, grandchildPID, "sleep\x00300")
	if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the worker and its grandchild gone", func() bool {
		return !alive(worker) && !alive(grandchild)
	})
	if !strings.Contains(out.String(), "worker got TERM") {
		t.Errorf("the worker was not stopped gracefully:\n%s", out)
	}
}

// SIGHUP is ignored (the worker keeps running, and is not sent it); SIGQUIT
// stops the worker gracefully, as SIGTERM does; neither leaves an orphan.
func TestHangupIsIgnoredAndQuitStopsGracefully(t *testing.T) {
	agent, out := startAgent(t, orphanEnv, "sh", "-c", `
trap 'echo worker got HUP' HUP
trap 'echo worker got QUIT' QUIT
trap 'echo worker got TERM; exit 0' TERM
echo "worker=$$"
while :; do sleep 0.1; done`)
	worker := pidOf(t, out, workerPID, "worker=")
	if err := agent.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the agent to log the ignored SIGHUP", func() bool {
		return strings.Contains(out.String(), "event=signal_ignored signal=hangup")
	})
	if !alive(agent.Process.Pid) || !alive(worker) {
		t.Fatalf("after SIGHUP: agent alive %v, worker alive %v; want both", alive(agent.Process.Pid), alive(worker))
	}
	if err := agent.Process.Signal(syscall.SIGQUIT); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, agent, 30*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGQUIT, want the worker's 0", code)
	}
	if alive(worker) {
		t.Error("the worker outlived the agent")
	}
	o := out.String()
	if !strings.Contains(o, "worker got TERM") || strings.Contains(o, "worker got HUP") || strings.Contains(o, "worker got QUIT") {
		t.Errorf("want the worker to get TERM only:\n%s", o)
	}
}

// A worker that exits by itself leaving a process in its group: the agent
// exits with the worker's code, and nothing of the group is left.
func TestWorkerExitLeavesNoProcessBehind(t *testing.T) {
	agent, out := startAgent(t, orphanEnv, "sh", "-c", `
(trap '' TERM HUP; exec sleep 300) &
echo "grandchild=$!"
exec sleep 0.5`)
	grandchild := pidOf(t, out, grandchildPID, "sleep\x00300")
	if code := waitExit(t, agent, 30*time.Second); code != 0 {
		t.Errorf("exit code %d, want the worker's 0", code)
	}
	testutil.Eventually(t, 15*time.Second, "the grandchild gone", func() bool { return !alive(grandchild) })
}
