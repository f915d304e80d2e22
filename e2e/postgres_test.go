package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dynocycle/dynocycle/internal/dynosim"
	"github.com/dynocycle/dynocycle/internal/fakeheroku"
	"github.com/dynocycle/dynocycle/internal/testpg"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// Three bloating dynos of an app without Redis, coordinated only through
// its PostgreSQL (DATABASE_URL, FLEET_STORE left to auto), restarted by the
// fake Platform API the way Heroku restarts dynos: every dyno is cycled,
// never two at once, one API call per restart, each agent on one database
// connection, and neither the token nor the database password in any log.
func TestHerokuFleetOnPostgresCyclesOneAtATime(t *testing.T) {
	t.Parallel()
	for _, naming := range []string{"cedar", "fir"} {
		t.Run(naming, func(t *testing.T) {
			t.Parallel()
			testPostgresFleetCycles(t, naming == "fir")
		})
	}
}

// postgresFleet starts n bloating dynos under the built agent whose only
// fleet store is a private PostgreSQL, restarted by the fake Platform API.
func postgresFleet(t *testing.T, n int, fir bool) (*dynosim.Sim, *fakeheroku.Server, *testpg.Server, string) {
	t.Helper()
	pg := testpg.Start(t)
	token := newToken(t)
	sim, fake := dynosim.WithFake(dynosim.Config{
		Agent: filepath.Join(bin, "dynocycle"), App: herokuApp, Token: token,
		Env:   append(append([]string{}, bloatingDyno...), "DATABASE_URL="+pg.URL()),
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
	return sim, fake, pg, token
}

func testPostgresFleetCycles(t *testing.T, fir bool) {
	const n = 3
	sim, fake, pg, token := postgresFleet(t, n, fir)

	// Each agent's connections to the database, counted on the agent's side
	// (its sockets), sampled while the fleet cycles.
	mostConns, sampled := 0, 0
	testutil.Eventually(t, 4*time.Minute, "every dyno cycled and its reborn agent releasing the lease", func() bool {
		for _, d := range sim.Dynos() {
			if pid := sim.Agent(d); pid != 0 {
				mostConns = max(mostConns, tcpConns(pid, pg.Port))
				sampled++
			}
		}
		for dyno, n := range sim.Report().Restarts {
			if n == 0 || !handedBack(sim, dyno) {
				return false
			}
		}
		return true
	})
	// The report is read before the fleet is shut down: the shutdown's TERMs
	// can end a restart that then never closes (see heroku_test.go).
	report := sim.Report()
	sim.Close()
	t.Logf("restarts %v, crashes %v, most at once %d, API calls %d, most connections of one agent %d (%d samples)",
		report.Restarts, report.Crashes, report.MaxConcurrent, len(fake.Calls()), mostConns, sampled)

	if err := report.Check(1); err != nil {
		t.Error(err)
	}
	for dyno, n := range report.Crashes {
		if n != 0 {
			t.Errorf("%s crashed %d times; every restart should go through the API", dyno, n)
		}
	}
	if v := fake.Violations(); len(v) != 0 {
		t.Errorf("the fake Platform API saw invalid requests: %v", v)
	}
	restarts := 0
	for _, iv := range sim.Intervals() {
		if iv.Kind == dynosim.KindRestart && iv.Closed() && !iv.Aborted {
			restarts++
		}
	}
	accepted := 0
	for _, c := range fake.Calls() {
		if c.Status == http.StatusAccepted {
			accepted++
		}
	}
	if accepted < restarts || accepted > restarts+1 {
		t.Errorf("%d accepted API calls for %d completed restarts", accepted, restarts)
	}
	if mostConns != 1 {
		t.Errorf("an agent held up to %d connections to the database, want exactly 1", mostConns)
	}
	var sawPostgres bool
	for _, l := range sim.Lines() {
		sawPostgres = sawPostgres || strings.Contains(l.Text, "fleet=postgres")
		if strings.Contains(l.Text, "app-secret") {
			t.Errorf("the database password leaked into %s's log: %q", l.Dyno, l.Text)
		}
		if strings.Contains(l.Text, "event=redis") {
			t.Errorf("%s talks to Redis: %q", l.Dyno, l.Text)
		}
	}
	if !sawPostgres {
		t.Error("no agent logged fleet=postgres")
	}
	noToken(t, sim, token)
}

var drainStarted = regexp.MustCompile(`event=drain `)

// The database goes away in the middle of a restart (a crash and recovery,
// as in a Heroku Postgres maintenance or failover), and later every agent's
// session is ended by pg_terminate_backend: the restart under way finishes,
// the agents reconnect by themselves, every dyno is still cycled, never two
// at once, and no dyno crashes.
func TestPostgresFaultsDuringRestarts(t *testing.T) {
	t.Parallel()
	const n = 2
	sim, fake, pg, _ := postgresFleet(t, n, false)
	ctx := context.Background()
	testutil.Eventually(t, 2*time.Minute, "a dyno draining under the lease", func() bool {
		return len(sim.Grep(drainStarted)) > 0
	})
	pg.Crash()
	if err := pg.WaitDown(ctx); err != nil {
		t.Fatal(err)
	}
	pg.Restart()
	terminated := 0
	testutil.Eventually(t, 4*time.Minute, "every dyno cycled and its reborn agent releasing the lease", func() bool {
		// Once the first dyno is back, end every agent's session once.
		if terminated == 0 && len(sim.Grep(leaseHandedBack)) > 0 {
			if k, err := pg.Terminate(ctx, "dynocycle"); err == nil && k > 0 {
				terminated = k
			}
		}
		for dyno, n := range sim.Report().Restarts {
			if n == 0 || !handedBack(sim, dyno) {
				return false
			}
		}
		return true
	})
	// The report is read before the fleet is shut down: the shutdown's TERMs
	// can end a restart that then never closes (see heroku_test.go).
	report := sim.Report()
	sim.Close()
	t.Logf("restarts %v, crashes %v, most at once %d, API calls %d, sessions terminated %d",
		report.Restarts, report.Crashes, report.MaxConcurrent, len(fake.Calls()), terminated)
	if err := report.Check(1); err != nil {
		t.Error(err)
	}
	for dyno, n := range report.Crashes {
		if n != 0 {
			t.Errorf("%s crashed %d times", dyno, n)
		}
	}
	if terminated == 0 {
		t.Error("no agent session was terminated")
	}
	lost := 0
	for _, l := range sim.Lines() {
		if strings.Contains(l.Text, "event=pg_conn_lost") || strings.Contains(l.Text, "event=pg_unreachable") {
			lost++
		}
	}
	if lost == 0 {
		t.Error("no agent noticed the database going away")
	}
}

// buildPGWorker builds examples/pgworker next to the other binaries, once.
var buildPGWorker = sync.OnceValue(func() error {
	out, err := exec.Command("go", "build", "-o", bin+"/", "../examples/pgworker").CombinedOutput()
	if err != nil {
		return fmt.Errorf("build pgworker: %v: %s", err, out)
	}
	return nil
})

// jobsTable is the queue of examples/pgworker, in the app's own schema.
const jobsTable = `CREATE TABLE jobs (
  id          bigserial PRIMARY KEY,
  ms          integer NOT NULL,
  claimed_by  text,
  attempts    integer NOT NULL DEFAULT 0,
  handed_back integer NOT NULL DEFAULT 0,
  runs        integer NOT NULL DEFAULT 0,
  done_by     text,
  done_at     timestamptz
)`

var (
	workerStopping = regexp.MustCompile(`^pgworker (\S+): stopping, job (\d+) has`)
	workerHandBack = regexp.MustCompile(`^pgworker (\S+): job (\d+) handed back`)
	workerJobDone  = regexp.MustCompile(`^pgworker (\S+): job (\d+) done`)
)

// Workers of a Postgres-backed queue that stop like Solid Queue and GoodJob
// (no quiet signal; TERM: take no more jobs, finish or hand back the one in
// flight, exit), on three bloating dynos coordinated through the same
// PostgreSQL, with the recipe's settings (QUIET_SIGNAL=TERM). Every dyno is
// restarted, never two at once, and no job is lost: each is done exactly
// once, none is left claimed, and every job in flight at a stop was either
// finished or handed back. Debian packages neither Solid Queue nor GoodJob,
// so examples/pgworker plays them.
func TestPostgresQueueWorkersLoseNoJob(t *testing.T) {
	t.Parallel()
	if err := buildPGWorker(); err != nil {
		t.Fatal(err)
	}
	const dynos, jobs = 3, 120
	pg := testpg.Start(t)
	ctx := context.Background()
	db, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, jobsTable); err != nil {
		t.Fatal(err)
	}
	// Mostly short jobs, and every sixth one longer than the worker's
	// shutdown timeout, so a stop mid-job likely hands it back. Enough of
	// them to keep the workers busy past the first restarts (a new app's
	// fleet grants its first lease after the settle time, 15 s here).
	if _, err := db.Exec(ctx, `INSERT INTO jobs (ms) SELECT CASE WHEN i % 6 = 0 THEN 3000 ELSE 300 END FROM generate_series(1, $1) i`, jobs); err != nil {
		t.Fatal(err)
	}
	token := newToken(t)
	env := append(append([]string{}, bloatingDyno...),
		"DATABASE_URL="+pg.URL(), "QUIET_SIGNAL=TERM", "BLOAT_MB=3", "SHUTDOWN_TIMEOUT_MS=500")
	sim, fake := dynosim.WithFake(dynosim.Config{
		Agent: filepath.Join(bin, "dynocycle"), App: herokuApp, Token: token, Env: env,
		Grace: 10 * time.Second, CrashDelay: 500 * time.Millisecond,
	})
	t.Cleanup(func() {
		sim.Close()
		fake.Close()
		if t.Failed() {
			dumpLines(t, sim)
		}
	})
	for i := 1; i <= dynos; i++ {
		if err := sim.Start(fmt.Sprintf("worker.%d", i), []string{filepath.Join(bin, "pgworker")}); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Minute, "every job done and every dyno restarted", func() bool {
		var left int
		if err := db.QueryRow(ctx, "SELECT count(*) FROM jobs WHERE done_at IS NULL").Scan(&left); err != nil || left > 0 {
			return false
		}
		for dyno, n := range sim.Report().Restarts {
			if n == 0 || !handedBack(sim, dyno) {
				return false
			}
		}
		return true
	})
	// The report is read before the fleet is shut down: the shutdown's TERMs
	// can end a restart that then never closes (see heroku_test.go).
	report := sim.Report()
	sim.Close()
	if err := report.Check(1); err != nil {
		t.Error(err)
	}
	for dyno, n := range report.Crashes {
		if n != 0 {
			t.Errorf("%s crashed %d times", dyno, n)
		}
	}
	var done, twice, claimed, handedBackJobs int
	err = db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE done_at IS NOT NULL), count(*) FILTER (WHERE runs <> 1),
		count(*) FILTER (WHERE claimed_by IS NOT NULL AND done_at IS NULL), coalesce(sum(handed_back), 0) FROM jobs`).
		Scan(&done, &twice, &claimed, &handedBackJobs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restarts %v, jobs done %d of %d, handed back %d times", report.Restarts, done, jobs, handedBackJobs)
	if done != jobs || twice != 0 || claimed != 0 {
		t.Errorf("jobs: %d done of %d, %d not run exactly once, %d left claimed", done, jobs, twice, claimed)
	}
	// Every job in flight when its worker was stopped was finished or handed back.
	type inFlight struct{ worker, job string }
	stopping := map[inFlight]bool{}
	for _, l := range sim.Lines() {
		if m := workerStopping.FindStringSubmatch(l.Text); m != nil {
			stopping[inFlight{m[1], m[2]}] = true
		}
		for _, re := range []*regexp.Regexp{workerHandBack, workerJobDone} {
			if m := re.FindStringSubmatch(l.Text); m != nil {
				delete(stopping, inFlight{m[1], m[2]})
			}
		}
	}
	for f := range stopping {
		t.Errorf("worker %s stopped with job %s neither finished nor handed back", f.worker, f.job)
	}
	// The worker had all the time it asked for: no KILL from dynocycle or the platform.
	for _, st := range sim.Stops() {
		if st.Killed {
			t.Errorf("%s[%d] was killed on stop", st.Dyno, st.Gen)
		}
	}
}

// tcpConns counts the established TCP connections process pid holds to
// 127.0.0.1:port: its socket inodes matched against the kernel's table.
func tcpConns(pid, port int) int {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	// The kernel writes the table in pieces while sockets come and go, so
	// one socket can be listed twice in a read: count sockets, not lines.
	table, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	counted := map[string]bool{}
	for _, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		// sl local_address rem_address st ... inode (field 9); 01 is ESTABLISHED.
		if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
			continue
		}
		if i := strings.LastIndexByte(f[2], ':'); i > 0 {
			if p, err := strconv.ParseUint(f[2][i+1:], 16, 16); err == nil && int(p) == port {
				counted[f[9]] = true
			}
		}
	}
	return len(counted)
}
