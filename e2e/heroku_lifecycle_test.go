package e2e

// Heroku's lifecycle with the real Sidekiq 6.4.1: the platform's SIGTERM to
// every process of the dyno, a Platform API that refuses the restart, and
// the log measurements Heroku's tools read. The dyno manager is
// internal/dynosim, the Platform API internal/fakeheroku.

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/dynosim"
	"github.com/dynocycle/dynocycle/internal/fakeheroku"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// sidekiqDyno starts worker.1 running the real Sidekiq (args after the
// jobs file) under the built agent, as the dyno manager would, with the
// environment env on top of what dynosim sets (DYNO, HEROKU_APP_NAME, the
// token, the fake API's URL and app's REDIS_URL). Grace is Heroku's 30 s.
func sidekiqDyno(t *testing.T, app *sidekiqApp, env []string, args ...string) (*dynosim.Sim, *fakeheroku.Server) {
	t.Helper()
	sim, fake := dynosim.WithFake(dynosim.Config{
		Agent: filepath.Join(bin, "dynocycle"), App: herokuApp, Token: newToken(t), RedisURL: app.srv.URL(),
		Env: append([]string{"WORKER=sidekiq", "MEMORY_SOURCE=tree", "CHECK_SCHEDULE=@every 1s", "BOOT_ALLOWANCE=10s"}, env...),
	})
	t.Cleanup(func() {
		sim.Close()
		fake.Close()
		if t.Failed() {
			dumpLines(t, sim)
		}
	})
	if err := sim.Start("worker.1", append([]string{"sidekiq", "-r", app.jobs, "-q", "default"}, args...)); err != nil {
		t.Fatal(err)
	}
	return sim, fake
}

// agentLines are the lines dynocycle itself printed (not Sidekiq's).
func agentLines(sim *dynosim.Sim) []string {
	var out []string
	for _, l := range sim.Lines() {
		if strings.HasPrefix(l.Text, "level=") || strings.HasPrefix(l.Text, "time=") {
			out = append(out, l.Text)
		}
	}
	return out
}

func countLines(lines []string, re *regexp.Regexp) int {
	n := 0
	for _, l := range lines {
		if re.MatchString(l) {
			n++
		}
	}
	return n
}

// measuredRightly fails the test for a measurement line (sample#, count#,
// measure#) without source=<dyno> or outside dynocycle's own prefix, which
// would merge it with another dyno's or with Heroku's own memory_rss.
func measuredRightly(t *testing.T, lines []string, dyno string) {
	t.Helper()
	measure := regexp.MustCompile(`(?:^|\s)(sample|count|measure)#(\S+?)=`)
	seen := 0
	for _, l := range lines {
		ms := measure.FindAllStringSubmatch(l, -1)
		if len(ms) == 0 {
			continue
		}
		seen++
		if !regexp.MustCompile(`(?:^|\s)source=` + regexp.QuoteMeta(dyno) + `(?:\s|$)`).MatchString(l) {
			t.Errorf("measurement line without source=%s: %s", dyno, l)
		}
		for _, m := range ms {
			if !strings.HasPrefix(m[2], "dynocycle.") {
				t.Errorf("measurement %s#%s not under dynocycle's prefix: %s", m[1], m[2], l)
			}
		}
	}
	if countLines(lines, regexp.MustCompile(`\ssample#dynocycle\.memory_rss=\d`)) == 0 {
		t.Errorf("no sample#dynocycle.memory_rss line among %d measurement lines", seen)
	}
}

// Heroku stops a dyno (a deploy, the daily restart) with SIGTERM to every
// process and SIGKILL 30 s later. The real Sidekiq at its default timeout
// (25 s), running a 28 s job: it pushes the job back to its queue when its
// timeout runs out, and dynocycle sends no KILL of its own, whatever
// SHUTDOWN_WAIT (default 25 s) says. The dyno is gone before Heroku's KILL.
func TestHerokusSigtermGivesSidekiqAllOfHerokusTime(t *testing.T) {
	t.Parallel()
	app := newSidekiqApp(t)
	app.enqueue(t, 1, 1, "SlowJob", "28")
	sim, _ := sidekiqDyno(t, app, []string{"MAX_RSS=4GB"}, "-c", "2")
	testutil.Eventually(t, 2*time.Minute, "the 28 s job running", func() bool {
		ok, err := app.client.SIsMember(context.Background(), "dynocycle:test:started", "1").Result()
		return err == nil && ok
	})
	stops := sim.Close() // SIGTERM to every process of the dyno, SIGKILL after 30 s
	if len(stops) != 1 {
		t.Fatalf("stops %+v", stops)
	}
	st := stops[0]
	t.Logf("dyno gone %v after Heroku's SIGTERM", st.Took().Round(time.Millisecond))
	if st.Killed {
		t.Errorf("processes left %v after SIGTERM got Heroku's SIGKILL", st.Took())
	}
	lines := agentLines(sim)
	if n := countLines(lines, regexp.MustCompile(`event=worker_kill\b`)); n != 0 {
		t.Errorf("dynocycle killed the worker (%d worker_kill lines) before Heroku's 30 s", n)
	}
	if countLines(lines, regexp.MustCompile(`event=worker_stop .*signal=TERM wait=35s`)) != 1 {
		t.Errorf("the worker's stop did not get Heroku's time (wait=35s)")
	}
	// Pushed back by Sidekiq itself, not run to its end, not lost.
	var pushed bool
	for _, l := range sim.Lines() {
		pushed = pushed || strings.Contains(l.Text, "Pushed 1 jobs back to Redis")
	}
	if !pushed {
		t.Error("Sidekiq did not log that it pushed the job back to Redis")
	}
	queued, err := app.client.LRange(context.Background(), "queue:default", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(queued) != 1 || !strings.Contains(queued[0], `"class":"SlowJob"`) {
		t.Errorf("queue:default = %q, want the SlowJob back in it", queued)
	}
	if app.done(t) != 0 {
		t.Errorf("the 28 s job completed: Sidekiq's timeout is 25 s")
	}
	for _, p := range sim.Procs() {
		if p.Code != 0 {
			t.Errorf("agent %s[%d] exited with %d (signal %v), want Sidekiq's clean 0", p.Dyno, p.Gen, p.Code, p.Signal)
		}
	}
	measuredRightly(t, lines, "worker.1")
}

// The Platform API refuses the restart (403: a review app's least-privilege
// token): the worker is restarted in place instead of the dyno crash-looping,
// the refusal is logged once at error level with what to fix, and counted in
// the metrics; the next restart goes in place without calling the API; every
// lease is released once the new Sidekiq is healthy; no job is lost.
func TestARefusedRestartIsDoneInPlaceWithoutACrashLoop(t *testing.T) {
	t.Parallel()
	app := newSidekiqApp(t)
	// Each BloatJob takes the Sidekiq that runs it over MAX_RSS: the first
	// now, the second once the first Sidekiq is replaced; the third Sidekiq
	// runs none and stays under.
	app.enqueue(t, 1, 1, "BloatJob", "80")
	metricsAddr := freeAddr(t)
	sim, fake := sidekiqDyno(t, app, []string{
		"MAX_RSS=80MB", "MIN_UPTIME=3s", "SUSTAIN_CHECKS=1", "GRACE_TIME=30s", "SHUTDOWN_WAIT=10s",
		"CONFIRM_AFTER=2s", "METRICS_ADDR=" + metricsAddr,
	}, "-c", "1", "-t", "5")
	fake.Always(fakeheroku.Answer{Status: http.StatusForbidden})

	restarted := regexp.MustCompile(`event=restarted\b`)
	released := regexp.MustCompile(`event=lease_released\b`)
	testutil.Eventually(t, 3*time.Minute, "the first restart in place", func() bool {
		if n := sim.Report().Crashes["worker.1"]; n > 0 {
			t.Fatalf("worker.1 crashed (%d) after the refusal instead of restarting in place", n)
		}
		return countLines(agentLines(sim), restarted) >= 1
	})
	app.enqueue(t, 2, 1, "BloatJob", "80")
	testutil.Eventually(t, 4*time.Minute, "two restarts in place, both jobs done, both leases released", func() bool {
		lines := agentLines(sim)
		return countLines(lines, restarted) >= 2 && countLines(lines, released) >= 2 && app.done(t) == 2
	})
	fallbacks := scrape(t, metricsAddr, "dynocycle_restart_fallbacks_total")
	sim.Close()
	lines := agentLines(sim)

	if fallbacks != "2" {
		t.Errorf("dynocycle_restart_fallbacks_total = %q, want 2", fallbacks)
	}
	calls := fake.Calls()
	if len(calls) != 1 || calls[0].Status != http.StatusForbidden {
		t.Errorf("API calls %+v, want the one refused: a token known to be refused is not tried again", calls)
	}
	if v := fake.Violations(); len(v) != 0 {
		t.Errorf("the fake Platform API saw invalid requests: %v", v)
	}
	report := sim.Report()
	if n := report.Crashes["worker.1"]; n != 0 {
		t.Errorf("worker.1 crashed %d times", n)
	}
	if procs := sim.Procs(); len(procs) != 1 {
		t.Errorf("%d agent processes, want the one that restarted its worker in place: %+v", len(procs), procs)
	}
	var errs []string
	for _, l := range lines {
		if strings.HasPrefix(l, "level=ERROR") || strings.Contains(l, " level=ERROR ") {
			errs = append(errs, l)
		}
	}
	if len(errs) != 1 || !strings.Contains(errs[0], "403") || !strings.Contains(errs[0], "collaborator on that app") {
		t.Errorf("error lines %q, want one naming the 403 and what to fix", errs)
	}
	if n := countLines(lines, regexp.MustCompile(`event=restart_fallback\b`)); n != 1 {
		t.Errorf("%d restart_fallback lines, want 1", n)
	}
	if n := countLines(lines, regexp.MustCompile(`event=lease_handover\b`)); n != 1 {
		t.Errorf("%d hand-overs, want only the one before the refused call", n)
	}
	// Each job ran once: the drains waited for them.
	if runs := app.runs(t); len(runs) != 2 {
		t.Errorf("runs %v, want each job once", runs)
	}
	measuredRightly(t, lines, "worker.1")
}

// freeAddr is a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrape reads the value of one series from the agent's /metrics.
func scrape(t *testing.T, addr, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(?:\{[^}]*\})? (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in /metrics:\n%.3000s", name, body)
	}
	return string(m[1])
}
