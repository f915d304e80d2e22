package e2e

import (
	"context"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/bench/chaos/harness"
)

// The small version of the fleet chaos run (bench/chaos runs the full one):
// three real Sidekiq dynos under dynocycle, one of them ignoring TSTP, a
// minute and a half of bloating jobs, and one of each fault: an agent
// SIGKILLed, redis-server killed and started again, the Platform API
// answering 429 and then 500 for a while, FLUSHALL while a dyno restarts,
// and a second app starting on the same Redis with the same dyno names.
// Every invariant must hold: never two dynos of an app restarting at once,
// no job lost, every bloated dyno cycled, no agent hung.
func TestChaosSmallFleet(t *testing.T) {
	requireOnPath(t, "sidekiq")
	requireOnPath(t, "redis-server")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "fleet.log")
	fleetLog, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer fleetLog.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	res, err := harness.Run(ctx, harness.Config{
		Root: root, Agent: filepath.Join(bin, "dynocycle"), Dir: t.TempDir(),
		Dynos: 3, Duration: 100 * time.Second, Seed: 6, Slots: 1, Faults: 6,
		MaxRSSMB: 100, JobMB: 4, JobsPerSec: 1.5,
		// Shorter than Heroku's 30 s, longer than the agents' SHUTDOWN_WAIT.
		Grace:    20 * time.Second,
		Log:      testWriter{t},
		FleetLog: fleetLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary:\n%s", res.Summary())
	for _, b := range res.Broken {
		t.Error(b)
	}
	kinds := map[string]bool{}
	for _, f := range res.Faults {
		kinds[f.Kind] = true
	}
	for _, k := range []string{harness.FaultKillAgent, harness.FaultRedisDown, harness.FaultAPI429, harness.FaultAPI500,
		harness.FaultFlushAll, harness.FaultSecondApp} {
		if !kinds[k] {
			t.Errorf("fault %s was not injected", k)
		}
	}
	for _, f := range res.Faults {
		if f.Kind == harness.FaultFlushAll && f.Dyno == "" {
			t.Error("FLUSHALL came while no dyno was restarting")
		}
	}
	if len(res.Cycles) == 0 {
		t.Error("no restart completed")
	}
	if !res.SecondApp || res.SecondRestarts == 0 {
		t.Errorf("the second app ran %v and restarted %d times: its slots were not exercised", res.SecondApp, res.SecondRestarts)
	}
	// The picture is well-formed SVG with a curve per dyno and the limit.
	var svg strings.Builder
	if err := harness.WriteSVG(&svg, res); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(strings.NewReader(svg.String()))
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("chaos picture is not well-formed: %v", err)
		}
	}
	if n := strings.Count(svg.String(), "<polyline"); n < 3 || !strings.Contains(svg.String(), "MAX_RSS 100 MB") {
		t.Errorf("picture has %d curves and the limit line %v", n, strings.Contains(svg.String(), "MAX_RSS"))
	}
	if t.Failed() {
		b, _ := os.ReadFile(logPath)
		t.Logf("fleet log:\n%s", b)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func requireOnPath(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: run `make test`, which installs it: %v", name, err)
	}
}

// The small chaos run with the fleet in PostgreSQL (FLEET_STORE=postgres;
// Sidekiq's jobs stay in Redis), the same schedule as TestChaosSmallFleet
// but for its outage, which crashes PostgreSQL and starts it again: the
// same invariants hold.
func TestChaosSmallFleetOnPostgres(t *testing.T) {
	requireOnPath(t, "sidekiq")
	requireOnPath(t, "redis-server")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "fleet.log")
	fleetLog, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer fleetLog.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	res, err := harness.Run(ctx, harness.Config{
		Root: root, Agent: filepath.Join(bin, "dynocycle"), Dir: t.TempDir(),
		Dynos: 3, Duration: 75 * time.Second, Seed: 6, Slots: 1, Faults: 6,
		MaxRSSMB: 100, JobMB: 4, JobsPerSec: 1.5, Grace: 20 * time.Second,
		Store: harness.StorePostgres, Log: testWriter{t}, FleetLog: fleetLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary:\n%s", res.Summary())
	for _, b := range res.Broken {
		t.Error(b)
	}
	kinds := map[string]bool{}
	for _, f := range res.Faults {
		kinds[f.Kind] = true
	}
	// Six faults: one of each kind, the outage hitting the fleet's PostgreSQL
	// (a FLUSHALL then empties only the jobs' Redis, whose jobs it keeps).
	for _, k := range []string{harness.FaultKillAgent, harness.FaultDBDown, harness.FaultAPI429, harness.FaultAPI500,
		harness.FaultSecondApp, harness.FaultFlushAll} {
		if !kinds[k] {
			t.Errorf("fault %s was not injected", k)
		}
	}
	if len(res.Cycles) == 0 {
		t.Error("no restart completed")
	}
	if t.Failed() {
		b, _ := os.ReadFile(logPath)
		t.Logf("fleet log:\n%s", b)
	}
}
