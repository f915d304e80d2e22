package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/dynosim"
	"github.com/dynocycle/dynocycle/internal/fakeheroku"
	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
	"github.com/dynocycle/dynocycle/platform"
)

const herokuApp = "dynocycle-e2e"

// bloatingDyno is the environment of a dyno whose worker (the bloater)
// crosses MAX_RSS within seconds: 2MB every 250ms against a 24MB limit.
var bloatingDyno = []string{
	"PLATFORM=heroku", "WORKER=signals", "QUIET_SIGNAL=TSTP", "MEMORY_SOURCE=tree",
	"MAX_RSS=24MB", "CHECK_SCHEDULE=@every 1s", "SUSTAIN_CHECKS=2", "MIN_UPTIME=2s",
	"GRACE_TIME=2s", "SHUTDOWN_WAIT=5s", "CONFIRM_AFTER=2s",
	"MAX_CONCURRENT_RESTARTS=1", "MIN_HEALTHY_PEERS=1",
	"BLOAT_MB=2", "JOB_MS=250",
	// A new dyno's agent claims a handed-over lease within a second here;
	// an empty Redis then settles for 15 s (three renewals), as before.
	"BOOT_ALLOWANCE=10s",
}

// herokuFleet starts n dynos (worker.1..n) of the bloater under the built
// agent, sharing a private redis-server, restarted by a fake Platform API the
// way Heroku restarts dynos. It returns the simulator, the fake and the token.
func herokuFleet(t *testing.T, n int, env ...string) (*dynosim.Sim, *fakeheroku.Server, string) {
	t.Helper()
	return herokuFleetNamed(t, n, false, env...)
}

// herokuFleetNamed is herokuFleet with Fir's dyno names when fir is set
// (worker-5d8f7c9b4-<id>, a new id after every restart).
func herokuFleetNamed(t *testing.T, n int, fir bool, env ...string) (*dynosim.Sim, *fakeheroku.Server, string) {
	t.Helper()
	redis := testredis.Start(t)
	token := newToken(t)
	sim, fake := dynosim.WithFake(dynosim.Config{
		Agent: filepath.Join(bin, "dynocycle"), App: herokuApp, Token: token, RedisURL: redis.URL(),
		Env: append(append([]string{}, bloatingDyno...), env...),
		// Shorter than Heroku's 30 s to bound the test, longer than SHUTDOWN_WAIT.
		Grace: 10 * time.Second, CrashDelay: 500 * time.Millisecond, Fir: fir,
	})
	t.Cleanup(func() {
		sim.Close()
		fake.Close()
		if t.Failed() {
			dumpLines(t, sim)
		}
	})
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("worker.%d", i)
		if fir {
			name = fmt.Sprintf("worker-5d8f7c9b4-%05d", i)
		}
		if err := sim.Start(name, []string{filepath.Join(bin, "bloater")}); err != nil {
			t.Fatal(err)
		}
	}
	return sim, fake, token
}

func newToken(t *testing.T) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "HRKU-e2e-" + hex.EncodeToString(b)
}

func dumpLines(t *testing.T, sim *dynosim.Sim) {
	t.Helper()
	var b strings.Builder
	for _, l := range sim.Lines() {
		if strings.HasPrefix(l.Text, "bloater pid=") && strings.Contains(l.Text, " done, holding ") {
			continue // one a job: noise
		}
		fmt.Fprintf(&b, "%s %s[%d] | %s\n", l.Time.Format("15:04:05.000"), l.Dyno, l.Gen, l.Text)
	}
	t.Logf("fleet log:\n%s", b.String())
	for _, iv := range sim.Intervals() {
		t.Logf("interval %+v", iv)
	}
}

// noToken fails the test if the token shows up in any line a dyno printed.
func noToken(t *testing.T, sim *dynosim.Sim, token string) {
	t.Helper()
	lines := sim.Lines()
	if len(lines) == 0 {
		t.Fatal("no log lines captured")
	}
	for _, l := range lines {
		if strings.Contains(l.Text, token) || strings.Contains(l.Text, token[len("HRKU-e2e-"):]) {
			t.Errorf("the API token leaked into %s's log: %q", l.Dyno, l.Text)
		}
	}
}

var leaseHandedBack = regexp.MustCompile(`msg="worker healthy after restart; lease released" .*event=lease_released`)

// handedBack reports whether a reborn agent of dyno released the lease its
// previous life took.
func handedBack(sim *dynosim.Sim, dyno string) bool {
	for _, l := range sim.Grep(leaseHandedBack) {
		if l.Dyno == dyno && l.Gen > 1 {
			return true
		}
	}
	return false
}

// Three dynos, one restart slot, the Platform API played by a fake that
// restarts a dyno like Heroku, with Cedar's names (a dyno comes back as
// itself) and Fir's (it comes back under a new name): every dyno is cycled,
// one after another in about N x (drain + boot), never two at once, with one
// API call per restart, valid headers, and the token in no log line.
func TestHerokuFleetCyclesEveryDynoOneAtATime(t *testing.T) {
	t.Parallel()
	for _, naming := range []string{"cedar", "fir"} {
		t.Run(naming, func(t *testing.T) {
			t.Parallel()
			testFleetCycles(t, naming == "fir")
		})
	}
}

// perRestart bounds one restart of the bloating fleet, from the lease to the
// reborn dyno's hand-back: drain (GRACE_TIME 2 s), the stop, the boot,
// CONFIRM_AFTER 2 s and a few 1 s checks, with room for a loaded machine.
// A lease the reborn dyno cannot find waits for its TTL, over 2 minutes.
const perRestart = 20 * time.Second

func testFleetCycles(t *testing.T, fir bool) {
	const n = 3
	sim, fake, token := herokuFleetNamed(t, n, fir)
	// An empty Redis grants no lease for ~15 s (heartbeat Settle), then each
	// restart takes a few seconds: drain 2 s, the stop, the boot, 2 s to confirm.
	// Each reborn dyno also hands the fleet's slot back once its worker is up.
	testutil.Eventually(t, 4*time.Minute, "every dyno cycled and its reborn agent releasing the lease", func() bool {
		for dyno, n := range sim.Report().Restarts {
			if n == 0 || !handedBack(sim, dyno) {
				return false
			}
		}
		return true
	})
	// The report is read before the fleet is shut down: at the shutdown every
	// agent gets its TERM, one mid-restart lets its slot go, and another may
	// take it in the milliseconds before its own TERM; the restart it left
	// never closes, since nothing starts after the shutdown.
	report := sim.Report()
	stops := sim.Close()
	t.Logf("restarts %v, crashes %v, most at once %d, API calls %d", report.Restarts, report.Crashes, report.MaxConcurrent, len(fake.Calls()))

	if err := report.Check(1); err != nil {
		t.Error(err)
	}
	// About N x (drain + boot): from the first lease to the n-th dyno back.
	var restarts []dynosim.Interval
	for _, iv := range sim.Intervals() {
		if iv.Kind == dynosim.KindRestart && iv.Closed() && !iv.Aborted {
			restarts = append(restarts, iv)
		}
	}
	if len(restarts) >= n {
		took := restarts[n-1].End.Sub(restarts[0].Start)
		t.Logf("%d restarts one after another took %v", n, took.Round(time.Millisecond))
		if took > n*perRestart {
			t.Errorf("%d restarts took %v, want about N x (drain + boot), under %v", n, took, n*perRestart)
		}
	}
	if fir {
		for _, p := range sim.Procs() {
			if p.Gen > 1 && p.Name == p.Dyno {
				t.Errorf("%s came back under its old name", p.Dyno)
			}
		}
	}
	if v := fake.Violations(); len(v) != 0 {
		t.Errorf("the fake Platform API saw invalid requests: %v", v)
	}
	for dyno, n := range report.Crashes {
		if n != 0 {
			t.Errorf("%s crashed %d times; every restart should go through the API", dyno, n)
		}
	}
	// One call per restart: each closed restart interval holds exactly one
	// accepted call of its dyno (under the name it had then), and every call
	// falls in such an interval.
	calls := fake.Calls()
	inside := 0
	for _, iv := range sim.Intervals() {
		if iv.Kind != dynosim.KindRestart || !iv.Closed() {
			continue
		}
		name := nameAt(sim, iv.Dyno, iv.Start)
		n := 0
		for _, c := range calls {
			if c.Dyno == name && !c.Time.Before(iv.Start) && !c.Time.After(iv.End) {
				n++
			}
		}
		if n != 1 || iv.Quiet.IsZero() {
			t.Errorf("%s restart %s..%s: %d API calls (want 1), quiet at %v", iv.Dyno,
				iv.Start.Format("15:04:05.000"), iv.End.Format("15:04:05.000"), n, iv.Quiet)
		}
		inside += n
	}
	open := 0
	for _, iv := range report.Open {
		if iv.Kind == dynosim.KindRestart && !iv.Quiet.IsZero() {
			open++ // a restart under way when the fleet was stopped may have called
		}
	}
	if len(calls) < inside || len(calls) > inside+open {
		t.Errorf("%d API calls, %d inside closed restarts, %d restarts open at the end", len(calls), inside, open)
	}
	for _, c := range calls {
		if c.Status != http.StatusAccepted {
			t.Errorf("call %+v not accepted", c)
		}
	}
	// Every agent exited on the platform's SIGTERM with its worker's code 0.
	for _, p := range sim.Procs() {
		if !p.Exit.IsZero() && p.Code != 0 {
			t.Errorf("agent %s[%d] exited with %d (signal %v)", p.Dyno, p.Gen, p.Code, p.Signal)
		}
	}
	for _, st := range stops {
		if st.Took() > 10*time.Second {
			t.Errorf("%s took %v to stop after SIGTERM", st.Dyno, st.Took())
		}
	}
	noToken(t, sim, token)
}

// nameAt is the DYNO the dyno started as first ran under at time at.
func nameAt(sim *dynosim.Sim, first string, at time.Time) string {
	name := first
	for _, p := range sim.Procs() {
		if p.Dyno == first && !p.Start.After(at) {
			name = p.Name
		}
	}
	return name
}

var restartFailed = regexp.MustCompile(`event=restart_failed`)

// The Platform API answers 500 to everything: the agent holding the lease
// spends its bounded retries, stops its worker and exits non-zero; the dyno
// manager's crash restart brings the dyno back, and the reborn agent releases
// the lease it left behind.
func TestHerokuAPIFailureExitsNonZeroAndCrashRestarts(t *testing.T) {
	t.Parallel()
	sim, fake, token := herokuFleet(t, 2)
	fake.Always(fakeheroku.Answer{Status: http.StatusInternalServerError})

	var failed dynosim.Proc
	testutil.Eventually(t, 4*time.Minute, "an agent exiting non-zero and its dyno back with the lease released", func() bool {
		for _, p := range sim.Procs() {
			if p.Exit.IsZero() || p.Code == 0 || p.Expected {
				continue
			}
			for _, l := range sim.Grep(leaseHandedBack) {
				if l.Dyno == p.Dyno && l.Gen == p.Gen+1 {
					failed = p
					return true
				}
			}
		}
		return false
	})
	sim.Close()

	if failed.Code != 1 || failed.Signal != 0 {
		t.Errorf("failed agent %+v, want exit code 1", failed)
	}
	var failLog, workerStopped bool
	for _, l := range sim.Lines() {
		if l.Dyno != failed.Dyno || l.Gen != failed.Gen {
			continue
		}
		failLog = failLog || restartFailed.MatchString(l.Text)
		// The agent stopped its worker itself (TERM, then the worker's goodbye).
		workerStopped = workerStopped || (strings.HasPrefix(l.Text, "bloater pid=") && strings.Contains(l.Text, "terminated, exiting"))
	}
	if !failLog || !workerStopped {
		t.Errorf("%s[%d]: restart_failed logged %v, worker stopped %v", failed.Dyno, failed.Gen, failLog, workerStopped)
	}
	// Bounded: exactly MaxAttempts calls for that restart, all answered 500.
	n := 0
	for _, c := range fake.Calls() {
		if c.Dyno == failed.Dyno && c.Time.Before(failed.Exit) {
			n++
			if c.Status != http.StatusInternalServerError {
				t.Errorf("call %+v", c)
			}
		}
	}
	if n != platform.DefaultMaxAttempts {
		t.Errorf("%d API calls before the exit, want %d", n, platform.DefaultMaxAttempts)
	}
	if calls := sim.Calls(); len(calls) != 0 {
		t.Errorf("the fake accepted restarts of %v", calls)
	}
	// The crash restart came after the exit, and the interval that began with
	// the lease ended with the new worker.
	var reborn dynosim.Proc
	for _, p := range sim.Procs() {
		if p.Dyno == failed.Dyno && p.Gen == failed.Gen+1 {
			reborn = p
		}
	}
	if reborn.Start.Before(failed.Exit) {
		t.Errorf("reborn %+v started before the failed agent exited at %v", reborn, failed.Exit)
	}
	report := sim.Report()
	if report.Restarts[failed.Dyno] == 0 {
		t.Errorf("no closed restart interval for %s: %+v", failed.Dyno, sim.Intervals())
	}
	if report.MaxConcurrent > 1 {
		t.Errorf("%d dynos restarting at once", report.MaxConcurrent)
	}
	if v := fake.Violations(); len(v) != 0 {
		t.Errorf("violations: %v", v)
	}
	noToken(t, sim, token)
}
