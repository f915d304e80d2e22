package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/dynosim"
	"github.com/dynocycle/dynocycle/internal/fakeheroku"
	"github.com/dynocycle/dynocycle/internal/testpg"
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

	// The agents' sessions, sampled while the fleet cycles.
	mostConns := 0
	ctx := context.Background()
	eventually(t, 4*time.Minute, "every dyno cycled and its reborn agent releasing the lease", func() bool {
		if c, err := pg.Connections(ctx, "dynocycle"); err == nil {
			mostConns = max(mostConns, c)
		}
		for dyno, n := range sim.Report().Restarts {
			if n == 0 || !handedBack(sim, dyno) {
				return false
			}
		}
		return true
	})
	sim.Close()
	report := sim.Report()
	t.Logf("restarts %v, crashes %v, most at once %d, API calls %d, most agent connections %d",
		report.Restarts, report.Crashes, report.MaxConcurrent, len(fake.Calls()), mostConns)

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
	// One connection per agent; a restarted dyno's agent is gone before
	// its successor starts, so never more than one per dyno.
	if mostConns < 1 || mostConns > n {
		t.Errorf("at most %d agent connections seen, want 1 to %d", mostConns, n)
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
	eventually(t, 2*time.Minute, "a dyno draining under the lease", func() bool {
		return len(sim.Grep(drainStarted)) > 0
	})
	pg.Crash()
	if err := pg.WaitDown(ctx); err != nil {
		t.Fatal(err)
	}
	pg.Restart()
	terminated := 0
	eventually(t, 4*time.Minute, "every dyno cycled and its reborn agent releasing the lease", func() bool {
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
	sim.Close()
	report := sim.Report()
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
