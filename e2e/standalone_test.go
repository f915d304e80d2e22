package e2e

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testutil"
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
	testutil.Eventually(t, 90*time.Second, "three workers (two restarts in place)", func() bool {
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
	stopAgent(t, agent, func() []int { return pids })
}

// METRICS_ADDR serves what the agent did: a scrape after a restart in place
// shows it.
func TestMetricsAfterARestart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	env := []string{
		"MAX_RSS=40MB", "CHECK_SCHEDULE=@every 1s", "SUSTAIN_CHECKS=1", "MIN_UPTIME=1s",
		"GRACE_TIME=1s", "SHUTDOWN_WAIT=5s", "BLOAT_MB=8", "JOB_MS=200", "METRICS_ADDR=" + addr,
	}
	_, out := startAgent(t, env, "bloater")
	testutil.Eventually(t, 60*time.Second, "a restart", func() bool {
		return len(out.matches(regexp.MustCompile(`event=restarted`))) >= 1
	})
	restarted := regexp.MustCompile(`(?m)^dynocycle_restarts_total\{dyno="[^"]+",reason="max_rss"\} [1-9]`)
	var body string
	testutil.Eventually(t, 30*time.Second, "the restart in the scrape", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return restarted.MatchString(body)
	})
	for _, want := range []string{"dynocycle_memory_bytes{", "dynocycle_memory_limit_bytes{dyno=", "dynocycle_drain_seconds_count{", `dynocycle_state{dyno=`} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

// A worker that exits by itself on its quiet signal, as Resque does on
// QUIT: that exit is its drain, and the agent restarts it in place instead
// of ending (which on a fleet left the lease held until it ran out).
func TestAWorkerThatExitsOnQuietIsRestartedInPlace(t *testing.T) {
	env := []string{
		"MAX_RSS=40MB", "CHECK_SCHEDULE=@every 1s", "SUSTAIN_CHECKS=2", "MIN_UPTIME=1s",
		"GRACE_TIME=30s", "QUIET_SIGNAL=QUIT", "SHUTDOWN_WAIT=5s", "CONFIRM_AFTER=1s",
		"BLOAT_MB=8", "JOB_MS=200",
	}
	// The shell is the worker: QUIT makes it exit 0 at once, as Resque does
	// once its job is done; so does TERM, for a clean stop at the end.
	agent, out := startAgent(t, env, "sh", "-c", `trap 'exit 0' QUIT TERM; bloater & wait`)
	testutil.Eventually(t, 90*time.Second, "a restart in place after the worker left on QUIT", func() bool {
		return len(out.matches(regexp.MustCompile(`event=worker_exit_quiet`))) >= 1 &&
			len(out.matches(regexp.MustCompile(`event=restarted`))) >= 1 &&
			len(out.matches(bloaterPID)) >= 2
	})
	if !alive(agent.Process.Pid) {
		t.Fatal("the agent ended when the quieted worker exited")
	}
	// Counted as drained long before GRACE_TIME.
	if n := len(out.matches(regexp.MustCompile(`event=drain_timeout`))); n != 0 {
		t.Errorf("%d drain timeouts, want the exit to count as drained", n)
	}
	var pids []int
	for _, m := range out.matches(bloaterPID) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	stopAgent(t, agent, func() []int { return pids })
}
