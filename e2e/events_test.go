package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testutil"
)

var drainTook = regexp.MustCompile(`\bevent=drained\b.*\btook=(\S+)`)

// The built agent hands the worker its events socket (DYNOCYCLE_EVENTS),
// the real Sidekiq with the gem's middleware reports its jobs on it, and
// the restarts in place are drained by the events: each quiet is judged by
// them (source=events) and each drain ends within a few hundred
// milliseconds of the last job, where two heartbeats would take 5 s at
// least. No job is lost.
func TestSidekiqWithJobEventsDrainsByEvents(t *testing.T) {
	app := newSidekiqApp(t)
	eventsApp, err := filepath.Abs("../sidekiq/testdata/events_app.rb")
	if err != nil {
		t.Fatal(err)
	}
	const jobs = 60
	app.enqueue(t, 1, jobs, "BloatJob", bloatMB, "0.2")
	env := []string{
		"REDIS_URL=" + app.srv.URL(), "FLEET_SCOPE=shop", "DYNO=worker.1", "PLATFORM=local",
		fmt.Sprintf("MAX_RSS=%dMB", maxRSSMB), "MIN_UPTIME=3s", "SUSTAIN_CHECKS=1", "CHECK_SCHEDULE=@every 1s",
		"GRACE_TIME=30s", "SHUTDOWN_WAIT=10s", "CONFIRM_AFTER=2s", "BOOT_ALLOWANCE=10s",
	}
	agent, out := startAgent(t, env, "sidekiq", "-r", eventsApp, "-c", "5", "-t", "5", "-q", "default")
	killLeftovers(t, agent, out)

	testutil.Eventually(t, 5*time.Minute, fmt.Sprintf("%d jobs done, a restart drained and its new Sidekiq booted", jobs), func() bool {
		restarted := countEvent(out, "restarted")
		return app.done(t) >= jobs && restarted >= 1 && countEvent(out, "restart") == restarted &&
			len(bootPIDs(out)) == restarted+1
	})
	if n := app.done(t); n != jobs {
		t.Errorf("%d jobs done, want %d", n, jobs)
	}
	quiets := out.matches(regexp.MustCompile(`msg="quieted sidekiq".*\bsource=(\w+)`))
	if len(quiets) == 0 {
		t.Fatalf("no quieted sidekiq line:\n%s", out)
	}
	for _, q := range quiets {
		if q[1] != "events" {
			t.Errorf("a quiet judged by %s, want events: %s", q[1], q[0])
		}
	}
	took := out.matches(drainTook)
	if len(took) == 0 {
		t.Fatalf("no drained line:\n%s", out)
	}
	var drains []time.Duration
	for _, m := range took {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("drained took=%q: %v", m[1], err)
		}
		// A BloatJob runs 0.2 s; the events settle 200 ms after the quiet.
		if d >= 3*time.Second {
			t.Errorf("a drain took %v: the events did not end it (two heartbeats take 5 s)", d)
		}
		drains = append(drains, d)
	}
	t.Logf("%d restarts, drains took %v", countEvent(out, "restarted"), drains)
	stopAgent(t, agent, func() []int { return bootPIDs(out) })
}
