package e2e

import (
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

var bloaterPID = regexp.MustCompile(`bloater pid=(\d+): \d+MB per job`)

// The agent wraps the demo worker with a low limit, restarts it in place more
// than once, and on SIGTERM stops everything and leaves no process behind.
func TestStandaloneRestartsInPlaceAndStopsCleanly(t *testing.T) {
	env := []string{
		"MAX_RSS=40MB", "CHECK_SCHEDULE=@every 1s", "SUSTAIN_CHECKS=2", "MIN_UPTIME=1s",
		"GRACE_TIME=2s", "QUIET_SIGNAL=TSTP", "SHUTDOWN_WAIT=5s", "CONFIRM_AFTER=1s",
		"BLOAT_MB=8", "JOB_MS=200",
	}
	agent, out := startAgent(t, env, "bloater")
	eventually(t, 90*time.Second, "three workers (two restarts in place)", func() bool {
		return len(out.matches(bloaterPID)) >= 3
	})
	if n := len(out.matches(regexp.MustCompile(`event=restarted`))); n < 2 {
		t.Errorf("%d restarted events, want at least 2", n)
	}
	// Each worker was quieted before it was stopped.
	if n := len(out.matches(regexp.MustCompile(`quiet, finishing job`))); n < 2 {
		t.Errorf("%d workers quieted, want at least 2", n)
	}
	var pids []int
	for _, m := range out.matches(bloaterPID) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
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
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not exit after SIGTERM")
	}
	eventually(t, 10*time.Second, "every worker process gone", func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
}
