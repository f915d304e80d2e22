package e2e

// The built agent wrapping the real Sidekiq 6.4.1 (Debian's ruby-sidekiq)
// running examples/sidekiq/jobs.rb against a private redis-server. Sidekiq
// heartbeats every 5 s and a drain waits for two beats, and a fresh Redis
// grants no restart lease for its first seconds, so a restart takes ~10-15 s:
// the deadlines below are minutes, and every wait polls a condition.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// sidekiqApp is the test app: Sidekiq running jobs.rb against srv.
type sidekiqApp struct {
	srv    *testredis.Server
	client *redis.Client
	jobs   string // absolute path of jobs.rb
}

func newSidekiqApp(t *testing.T) *sidekiqApp {
	t.Helper()
	for _, tool := range []string{"ruby", "sidekiq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run `make test`, which installs it (apt-get install ruby-sidekiq): %v", tool, err)
		}
	}
	jobs, err := filepath.Abs("../examples/sidekiq/jobs.rb")
	if err != nil {
		t.Fatal(err)
	}
	srv := testredis.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { client.Close() })
	return &sidekiqApp{srv: srv, client: client, jobs: jobs}
}

// sidekiqArgs is the worker command the agent wraps.
func (a *sidekiqApp) sidekiqArgs() []string {
	return []string{"sidekiq", "-r", a.jobs, "-c", "5", "-t", "5", "-q", "default"}
}

// enqueue pushes count jobs of class numbered from first, with args after
// the number, through examples/sidekiq/enqueue.rb.
func (a *sidekiqApp) enqueue(t *testing.T, first, count int, class string, args ...string) {
	t.Helper()
	cmd := exec.Command("ruby", append([]string{filepath.Join(filepath.Dir(a.jobs), "enqueue.rb"), strconv.Itoa(count), class}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REDIS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "REDIS_URL="+a.srv.URL(), "FIRST="+strconv.Itoa(first))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("enqueue %d %s: %v\n%s", count, class, err, out)
	}
}

func (a *sidekiqApp) done(t *testing.T) int64 {
	t.Helper()
	n, err := a.client.SCard(context.Background(), "dynocycle:test:done").Result()
	if err != nil {
		t.Fatalf("SCARD dynocycle:test:done: %v", err)
	}
	return n
}

// run is one execution of a job, from jobs.rb's records: it began at Start
// in Sidekiq PID and, when Done, completed at End.
type run struct {
	N, PID     int
	Start, End float64 // Unix seconds
	Done       bool
}

func (r run) String() string {
	if !r.Done {
		return fmt.Sprintf("job %d in pid %d from %.3f, never completed", r.N, r.PID, r.Start)
	}
	return fmt.Sprintf("job %d in pid %d from %.3f to %.3f", r.N, r.PID, r.Start, r.End)
}

// runs reads every run jobs.rb recorded: starts matched with spans (same
// job, pid and start time).
func (a *sidekiqApp) runs(t *testing.T) []run {
	t.Helper()
	ctx := context.Background()
	starts, err := a.client.LRange(ctx, "dynocycle:test:starts", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	spans, err := a.client.LRange(ctx, "dynocycle:test:spans", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	ends := map[string]float64{} // "n pid start" -> end
	for _, s := range spans {
		f := strings.Fields(s)
		if len(f) != 4 {
			t.Fatalf("malformed span %q", s)
		}
		ends[strings.Join(f[:3], " ")] = parseFloat(t, f[3])
	}
	var out []run
	for _, s := range starts {
		f := strings.Fields(s)
		if len(f) != 3 {
			t.Fatalf("malformed start %q", s)
		}
		r := run{N: atoi(t, f[0]), PID: atoi(t, f[1]), Start: parseFloat(t, f[2])}
		r.End, r.Done = ends[s]
		delete(ends, s)
		out = append(out, r)
	}
	if len(ends) > 0 {
		t.Fatalf("spans without a start: %v", ends)
	}
	return out
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func parseFloat(t *testing.T, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

var (
	sidekiqBoot = regexp.MustCompile(`\bpid=(\d+) tid=\S+ INFO: Booting Sidekiq`)
	agentEvent  = regexp.MustCompile(`\blevel=\w+ msg=.*\bevent=(\w+)\b(.*)`)
	stopPID     = regexp.MustCompile(`\bpid=(\d+)`)
)

// bootPIDs are the pids of the Sidekiq processes the agent started, in order.
func bootPIDs(out *output) []int {
	var pids []int
	for _, m := range out.matches(sidekiqBoot) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	return pids
}

func countEvent(out *output, event string) int {
	return len(out.matches(regexp.MustCompile(`\bevent=` + event + `\b`)))
}

// stop is a TERM the agent sent to a Sidekiq process.
type stop struct {
	PID int
	// At is when that Sidekiq began its shutdown (jobs.rb's :shutdown
	// hook), right as it handled the TERM; zero when it did not record one.
	At float64
	// Restart: part of a restart (not the agent's own shutdown);
	// DrainTimeout: that restart's drain ran out of GRACE_TIME.
	Restart, DrainTimeout bool
}

// stops walks the agent's log, where a restart reads drain -> drained or
// drain_timeout -> restart -> worker_stop pid=N -> restarted, and takes the
// time of each TERM from the Sidekiq that got it.
func (a *sidekiqApp) stops(t *testing.T, out *output) []stop {
	t.Helper()
	shutdown := map[int]float64{}
	events, err := a.client.LRange(context.Background(), "dynocycle:test:lifecycle", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		f := strings.Fields(e)
		if len(f) != 3 {
			t.Fatalf("malformed lifecycle event %q", e)
		}
		if f[1] == "shutdown" {
			shutdown[atoi(t, f[0])] = parseFloat(t, f[2])
		}
	}
	var all []stop
	inRestart, timedOut := false, false
	for _, m := range out.matches(agentEvent) {
		switch m[1] {
		case "drain":
			timedOut = false
		case "drain_timeout":
			timedOut = true
		case "restart":
			inRestart = true
		case "restarted":
			inRestart, timedOut = false, false
		case "worker_stop":
			pm := stopPID.FindStringSubmatch(m[2])
			if pm == nil {
				t.Fatalf("worker_stop without a pid: %q", m[0])
			}
			pid := atoi(t, pm[1])
			all = append(all, stop{PID: pid, At: shutdown[pid], Restart: inRestart, DrainTimeout: inRestart && timedOut})
		}
	}
	return all
}

func fmtUnix(f float64) string {
	return time.Unix(0, int64(f*1e9)).UTC().Format("15:04:05.000000")
}

// killLeftovers, registered after startAgent so that it runs first, kills
// the agent and whatever Sidekiq processes a failed test left behind: an
// orphaned Sidekiq keeps the output pipe open and startAgent's cleanup
// would wait for it forever.
func killLeftovers(t *testing.T, agent *exec.Cmd, out *output) {
	t.Cleanup(func() {
		pids := bootPIDs(out)
		// The agent's children, including one that has not logged its boot yet.
		if tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", agent.Process.Pid)); err == nil {
			for _, f := range tasks {
				b, _ := os.ReadFile(f)
				for _, p := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(p); err == nil {
						pids = append(pids, pid)
					}
				}
			}
		}
		_ = agent.Process.Kill()
		for _, pid := range pids {
			if alive(pid) {
				if !t.Failed() {
					t.Errorf("sidekiq %d still running at the end of the test; killing it", pid)
				}
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

const (
	bloatJobs = 300 // BloatJobs enqueued
	bloatMB   = "3" // retained by each
	bloatSecs = "0.4"
	maxRSSMB  = 120
)

// Several restarts in place of a real Sidekiq that bloats: every job
// completes exactly once, in more than one Sidekiq process, and no job was
// running in a process when it got TERM (the drain waited for them), unless
// that restart's drain ran out of GRACE_TIME.
func TestSidekiqRestartsInPlaceWithoutLosingJobs(t *testing.T) {
	app := newSidekiqApp(t)
	// Queued before Sidekiq starts, so the first process bloats from its start.
	app.enqueue(t, 1, bloatJobs, "BloatJob", bloatMB, bloatSecs)
	env := []string{
		"REDIS_URL=" + app.srv.URL(), "FLEET_SCOPE=shop", "DYNO=worker.1", "PLATFORM=local",
		fmt.Sprintf("MAX_RSS=%dMB", maxRSSMB), "MIN_UPTIME=3s", "SUSTAIN_CHECKS=1", "CHECK_SCHEDULE=@every 1s",
		"GRACE_TIME=30s", "SHUTDOWN_WAIT=10s", "CONFIRM_AFTER=2s", "BOOT_ALLOWANCE=10s",
	}
	agent, out := startAgent(t, env, app.sidekiqArgs()...)
	killLeftovers(t, agent, out)

	testutil.Eventually(t, 8*time.Minute, fmt.Sprintf("%d jobs done", bloatJobs), func() bool {
		return app.done(t) >= bloatJobs
	})
	// One last job bloats whichever process runs it past the limit, so that
	// process is restarted too and the last process has run no job: it stays
	// under the limit and the agent is left watching, with no restart under
	// way when it gets SIGTERM.
	last := bloatJobs + 1
	app.enqueue(t, last, 1, "BloatJob", strconv.Itoa(maxRSSMB))
	testutil.Eventually(t, 3*time.Minute, "the last job done and its process restarted", func() bool {
		if app.done(t) != int64(last) {
			return false
		}
		restarted := countEvent(out, "restarted")
		if countEvent(out, "restart") != restarted {
			return false // a restart is under way
		}
		boots := bootPIDs(out)
		if len(boots) != restarted+1 {
			return false
		}
		lastPID, _ := app.client.HGet(context.Background(), "dynocycle:test:pid", strconv.Itoa(last)).Int()
		return lastPID != 0 && lastPID != boots[len(boots)-1]
	})
	boots := bootPIDs(out)
	runs := app.runs(t)
	for _, r := range runs {
		if r.PID == boots[len(boots)-1] {
			t.Fatalf("the last process ran a job (%v): it may be restarted at any time", r)
		}
	}

	// None lost.
	if n := app.done(t); n != int64(last) {
		t.Errorf("%d jobs done, want %d", n, last)
	}
	// In more than one Sidekiq process.
	pidOf, err := app.client.HGetAll(context.Background(), "dynocycle:test:pid").Result()
	if err != nil {
		t.Fatal(err)
	}
	perPID := map[string]int{}
	for _, pid := range pidOf {
		perPID[pid]++
	}
	if len(perPID) < 3 {
		t.Errorf("jobs ran in %d sidekiq processes (%v), want at least 3", len(perPID), perPID)
	}
	t.Logf("jobs completed per sidekiq pid: %v", perPID)

	restarted := countEvent(out, "restarted")
	drained, timeouts := countEvent(out, "drained"), countEvent(out, "drain_timeout")
	if restarted < 2 {
		t.Errorf("%d restarted events, want at least 2", restarted)
	}
	if drained+timeouts != restarted || drained == 0 {
		t.Errorf("%d drained and %d drain_timeout events for %d restarts", drained, timeouts, restarted)
	}
	t.Logf("%d restarts: %d drained, %d drain timeouts", restarted, drained, timeouts)

	// No job was running when its process got TERM, unless GRACE_TIME passed.
	var restartStops []stop
	for _, s := range app.stops(t, out) {
		if s.Restart {
			restartStops = append(restartStops, s)
		}
	}
	if len(restartStops) != restarted {
		t.Fatalf("%d worker_stop lines in restarts, want %d (one per restart): %+v", len(restartStops), restarted, app.stops(t, out))
	}
	termOf := map[int]stop{}
	for i, s := range restartStops {
		// The restarts stop the processes in the order they were started.
		if s.PID != boots[i] {
			t.Errorf("restart %d stopped pid %d, want %d (boots %v)", i+1, s.PID, boots[i], boots)
		}
		if s.At == 0 {
			t.Errorf("sidekiq %d recorded no shutdown after the agent's TERM", s.PID)
		}
		termOf[s.PID] = s
	}
	checked := 0
	lastEnd := map[int]float64{}
	for _, r := range runs {
		s, ok := termOf[r.PID]
		if !ok || s.DrainTimeout || s.At == 0 {
			continue
		}
		checked++
		if !r.Done || r.End >= s.At {
			t.Errorf("%v: running when its process got TERM at %s after a drain", r, fmtUnix(s.At))
		}
		lastEnd[r.PID] = max(lastEnd[r.PID], r.End)
	}
	for _, s := range restartStops {
		if end, ok := lastEnd[s.PID]; ok {
			t.Logf("sidekiq %d: last job ended %.2fs before its TERM", s.PID, s.At-end)
		}
	}
	if checked == 0 {
		t.Error("no run was checked against its process's TERM")
	}
	// Exactly once: with every drain complete no job was handed back and run again.
	if timeouts == 0 {
		count := map[int]int{}
		for _, r := range runs {
			count[r.N]++
		}
		for n := 1; n <= last; n++ {
			if count[n] != 1 {
				t.Errorf("job %d ran %d times, want once", n, count[n])
			}
		}
		if len(runs) != last {
			t.Errorf("%d runs recorded, want %d", len(runs), last)
		}
	}

	stopAgent(t, agent, func() []int { return bootPIDs(out) })
}

// A job longer than GRACE_TIME: the drain times out, Sidekiq gets TERM with
// the job running and hands it back to its queue, and the restarted Sidekiq
// runs it to completion.
func TestSidekiqHandsBackJobLongerThanGraceTime(t *testing.T) {
	app := newSidekiqApp(t)
	// Both are fetched by the first process at boot: the BloatJob takes it
	// over MAX_RSS (the processes after it stay under), and the SlowJob
	// sleeps far longer than GRACE_TIME on its first run (a second run of it
	// is quick, see jobs.rb).
	app.enqueue(t, 1, 1, "SlowJob", "600")
	app.enqueue(t, 2, 1, "BloatJob", "80")
	env := []string{
		"REDIS_URL=" + app.srv.URL(), "FLEET_SCOPE=shop", "DYNO=worker.1", "PLATFORM=local",
		"MAX_RSS=80MB", "MIN_UPTIME=3s", "SUSTAIN_CHECKS=1", "CHECK_SCHEDULE=@every 1s",
		"GRACE_TIME=3s", "SHUTDOWN_WAIT=10s", "CONFIRM_AFTER=2s", "BOOT_ALLOWANCE=10s",
	}
	agent, out := startAgent(t, env, app.sidekiqArgs()...)
	killLeftovers(t, agent, out)

	testutil.Eventually(t, 4*time.Minute, "the SlowJob done after a restart", func() bool {
		return app.done(t) == 2 && countEvent(out, "restarted") >= 1
	})
	boots := bootPIDs(out)
	first := boots[0]
	all := app.stops(t, out)
	if len(all) == 0 || !all[0].Restart || all[0].PID != first || all[0].At == 0 {
		t.Fatalf("first worker_stop %+v, want the restart of pid %d", all, first)
	}
	term := all[0]
	if !term.DrainTimeout {
		t.Errorf("the restart of pid %d did not log event=drain_timeout before its TERM", first)
	}

	var slow []run
	for _, r := range app.runs(t) {
		if r.N == 1 {
			slow = append(slow, r)
		}
	}
	if len(slow) != 2 {
		t.Fatalf("SlowJob runs %v, want 2: cut short in pid %d, then completed in a later one", slow, first)
	}
	cut, again := slow[0], slow[1]
	// It was running when its process got TERM, and never completed there.
	if cut.PID != first || cut.Done || cut.Start >= term.At {
		t.Errorf("first run %v, want one in pid %d begun before its TERM at %s and cut short", cut, first, fmtUnix(term.At))
	}
	// Handed back by Sidekiq itself ...
	if len(out.matches(regexp.MustCompile(fmt.Sprintf(`\bpid=%d .*Pushed 1 jobs back to Redis`, first)))) != 1 {
		t.Errorf("sidekiq %d did not log that it pushed the job back to Redis", first)
	}
	// ... and completed exactly once, later, in a Sidekiq the agent started after the TERM.
	later := boots[1:]
	if !again.Done || !slices.Contains(later, again.PID) || again.Start <= term.At {
		t.Errorf("second run %v, want it completed in one of the later processes %v after %s", again, later, fmtUnix(term.At))
	}
	if pid, _ := app.client.HGet(context.Background(), "dynocycle:test:pid", "1").Int(); pid != again.PID {
		t.Errorf("dynocycle:test:pid says job 1 completed in pid %d, want %d", pid, again.PID)
	}
	// The BloatJob ran once, in the first process, before the quiet.
	if pid, _ := app.client.HGet(context.Background(), "dynocycle:test:pid", "2").Int(); pid != first {
		t.Errorf("BloatJob completed in pid %d, want the first process %d", pid, first)
	}
	// The processes after the first stay under MAX_RSS: one restart.
	if n := countEvent(out, "restart"); n != 1 {
		t.Errorf("%d restarts, want 1", n)
	}

	stopAgent(t, agent, func() []int { return bootPIDs(out) })
}
