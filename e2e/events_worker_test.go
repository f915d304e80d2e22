package e2e

import (
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testutil"
)

var eventsWorkerPID = regexp.MustCompile(`events worker pid=(\d+)$`)

// A worker that is not Sidekiq speaks the job events protocol: with
// WORKER=signals the agent still hands it the socket, and each restart's
// drain ends when the worker says quiet with no job in flight, not when
// GRACE_TIME (a minute here) runs out.
func TestASignalsWorkerSpeakingTheProtocolIsDrainedByItsEvents(t *testing.T) {
	script, err := filepath.Abs("testdata/events_worker.rb")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{
		"WORKER=signals", "QUIET_SIGNAL=USR2", "GRACE_TIME=60s", "SHUTDOWN_WAIT=5s",
		"MAX_RSS=60MB", "CHECK_SCHEDULE=@every 1s", "SUSTAIN_CHECKS=1", "MIN_UPTIME=1s", "CONFIRM_AFTER=1s",
		"BLOAT_MB=4",
	}
	agent, out := startAgent(t, env, "ruby", script)
	testutil.Eventually(t, 2*time.Minute, "two restarts drained by events, and the new worker up", func() bool {
		restarted := countEvent(out, "restarted")
		return countEvent(out, "events_drained") >= 2 && restarted >= 2 &&
			len(out.matches(eventsWorkerPID)) == restarted+1 // the newest has trapped TERM
	})
	for _, m := range out.matches(drainTook) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("drained took=%q: %v", m[1], err)
		}
		// A job runs 0.1 s; the events settle 200 ms after the quiet line.
		if d >= 10*time.Second {
			t.Errorf("a drain took %v: the events did not end it", d)
		}
	}
	if n := countEvent(out, "drain_timeout"); n != 0 {
		t.Errorf("%d drains ran out of GRACE_TIME", n)
	}
	stopAgent(t, agent, func() []int {
		var pids []int
		for _, m := range out.matches(eventsWorkerPID) {
			pid, _ := strconv.Atoi(m[1])
			pids = append(pids, pid)
		}
		return pids
	})
}
