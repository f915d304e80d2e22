package dynosim

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/fakeheroku"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// fakeAgent stands in for dynocycle: it logs like the agent, runs a
// "worker" in its own process group (set -m), and acts by $MODE.
const fakeAgent = `#!/bin/sh
set -m
echo "level=INFO msg=\"worker started\" event=worker_start dyno=$DYNO"
echo "worker line with event=worker_start that is not the agent's"
case "$MODE" in
crash)
	sleep 0.3
	exit 3 ;;
lease)
	echo "level=INFO msg=\"restart lease taken\" event=lease_acquired"
	echo "level=INFO msg=\"worker quiet, draining\" event=drain" ;;
stubborn)
	trap '' TERM ;;
esac
sleep 1000 &
echo "child=$!"
while :; do wait; done
`

func newSim(t *testing.T, cfg Config) *Sim {
	t.Helper()
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte(fakeAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Agent = agent
	if cfg.App == "" {
		cfg.App = "app"
	}
	if cfg.Token == "" {
		cfg.Token = "tok"
	}
	s := New(cfg)
	t.Cleanup(func() { s.Close() })
	return s
}

func gens(s *Sim, dyno string) int {
	n := 0
	for _, p := range s.Procs() {
		if p.Dyno == dyno {
			n++
		}
	}
	return n
}

var childLine = regexp.MustCompile(`^child=(\d+)$`)

func TestRestartStopsTheWholeDynoAndStartsItAgain(t *testing.T) {
	s := newSim(t, Config{Grace: 10 * time.Second})
	if err := s.Start("worker.1", []string{"worker"}, "MODE=lease"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the worker", func() bool { return len(s.Grep(childLine)) == 1 })
	child := s.Grep(childLine)[0].Text[len("child="):]
	if iv := s.Intervals(); len(iv) != 1 || iv[0].Kind != KindRestart || iv[0].Quiet.IsZero() || iv[0].Closed() {
		t.Fatalf("intervals after lease and drain = %+v, want one open restart interval", iv)
	}
	s.Restart("worker.1")
	testutil.Eventually(t, 10*time.Second, "a second generation", func() bool { return gens(s, "worker.1") == 2 })
	testutil.Eventually(t, 10*time.Second, "its worker_start", func() bool { return s.Report().Restarts["worker.1"] == 1 })
	if _, err := os.Stat("/proc/" + child); err == nil {
		if st, _, _, ok := stat(atoi(child)); ok && st != "Z" {
			t.Errorf("the first worker (pid %s, own process group) survived the restart", child)
		}
	}
	st := s.Stops()
	if len(st) != 1 || st[0].Why != "restart" || st[0].Killed {
		t.Errorf("stops = %+v, want one restart without SIGKILL", st)
	}
	if p := s.Procs()[0]; !p.Expected || p.Signal != syscall.SIGTERM {
		t.Errorf("first agent = %+v, want an expected exit by SIGTERM", p)
	}
	if s.Calls()[0] != "worker.1" {
		t.Errorf("calls = %v", s.Calls())
	}
	// A line of the worker that only mentions an event does not count.
	if got := len(s.Intervals()); got != 2 {
		t.Errorf("%d intervals, want 2 (the restart and the new lease)", got)
	}
}

// On Fir a restarted or crashed dyno comes back under a new name of its
// process type; the simulator follows it under the name it started with.
func TestFirRestartComesBackUnderANewName(t *testing.T) {
	s := newSim(t, Config{Fir: true, Grace: 10 * time.Second, CrashDelay: 50 * time.Millisecond})
	const first = "worker-5d8f7c9b4-k2x7p"
	if err := s.Start(first, []string{"worker"}, "MODE=lease"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the worker", func() bool { return len(s.Grep(childLine)) == 1 })
	s.Restart(first)
	testutil.Eventually(t, 10*time.Second, "a second generation", func() bool { return gens(s, first) == 2 })
	testutil.Eventually(t, 10*time.Second, "its worker_start", func() bool { return s.Report().Restarts[first] == 1 })
	second := s.Current(first)
	if second == first || !strings.HasPrefix(second, "worker-5d8f7c9b4-") || len(second) != len(first) {
		t.Fatalf("restarted dyno named %q, want a new worker-5d8f7c9b4-<id>", second)
	}
	procs := s.Procs()
	if procs[0].Name != first || procs[1].Name != second || procs[1].Dyno != first {
		t.Fatalf("procs %+v", procs)
	}
	// The agent of the new generation was told its new name.
	var told bool
	for _, l := range s.Lines() {
		told = told || (l.Gen == 2 && l.Name == second && strings.Contains(l.Text, "dyno="+second))
	}
	if !told {
		t.Errorf("no line of generation 2 shows DYNO=%s", second)
	}
	// The old name is gone: a restart of it is a call to a dyno that no
	// longer exists.
	s.Restart(first)
	s.Restart(second)
	testutil.Eventually(t, 10*time.Second, "a third generation", func() bool { return gens(s, first) == 3 })
	if third := s.Current(first); third == second || third == first {
		t.Errorf("third generation named %q", third)
	}
	if len(s.Stops()) != 2 {
		t.Errorf("stops %+v, want two", s.Stops())
	}
}

func TestCrashRestartsTheDyno(t *testing.T) {
	s := newSim(t, Config{CrashDelay: 50 * time.Millisecond})
	if err := s.Start("worker.1", []string{"worker"}, "MODE=crash"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "three crashes", func() bool { return s.Report().Crashes["worker.1"] >= 2 })
	for _, p := range s.Procs()[:2] {
		if p.Code != 3 || p.Expected {
			t.Errorf("proc %+v, want a crash with code 3", p)
		}
	}
}

func TestKilledAgentLeavesNoOrphanBehind(t *testing.T) {
	s := newSim(t, Config{CrashDelay: 50 * time.Millisecond})
	if err := s.Start("worker.1", []string{"worker"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the worker", func() bool { return len(s.Grep(childLine)) == 1 })
	child := atoi(s.Grep(childLine)[0].Text[len("child="):])
	if err := syscall.Kill(s.Agent("worker.1"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the dyno back", func() bool { return len(s.Grep(childLine)) == 2 })
	if st, _, _, ok := stat(child); ok && st != "Z" {
		t.Errorf("the orphaned worker %d survived the crash", child)
	}
	p := s.Procs()[0]
	if p.Signal != syscall.SIGKILL || p.Expected {
		t.Errorf("first agent = %+v, want a crash by SIGKILL", p)
	}
	if r := s.Report(); r.Crashes["worker.1"] != 1 {
		t.Errorf("report %+v, want one crash", r)
	}
}

func TestStubbornDynoIsKilledAfterGrace(t *testing.T) {
	s := newSim(t, Config{Grace: 500 * time.Millisecond})
	if err := s.Start("worker.1", []string{"worker"}, "MODE=stubborn"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the worker", func() bool { return len(s.Grep(childLine)) == 1 })
	stops := s.Close()
	if len(stops) != 1 || !stops[0].Killed || stops[0].Took() < 500*time.Millisecond {
		t.Fatalf("stops = %+v, want one SIGKILL after the grace", stops)
	}
	if err := s.Report().Check(1); err == nil || !strings.Contains(err.Error(), "SIGKILL") {
		t.Errorf("Check = %v, want the SIGKILL named", err)
	}
	s.Restart("worker.1") // after Close: ignored
	time.Sleep(100 * time.Millisecond)
	if gens(s, "worker.1") != 1 {
		t.Error("a restart after Close started the dyno again")
	}
}

func TestFakeAPIRestartsTheDyno(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte(fakeAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	s, fake := WithFake(Config{Agent: agent, App: "app", Token: "tok"})
	defer fake.Close()
	defer s.Close()
	if err := s.Start("worker.2", []string{"worker"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the worker", func() bool { return len(s.Grep(childLine)) == 1 })
	env, _ := os.ReadFile("/proc/" + strconv.Itoa(s.Agent("worker.2")) + "/environ")
	for _, kv := range []string{"DYNO=worker.2", "HEROKU_APP_NAME=app", "HEROKU_API_TOKEN=tok", "HEROKU_API_URL=" + fake.URL} {
		if !strings.Contains(string(env), kv+"\x00") {
			t.Errorf("agent environment lacks %s", kv)
		}
	}
	req, _ := http.NewRequest(http.MethodDelete, fake.URL+"/apps/app/dynos/worker.2", nil)
	req.Header.Set("Accept", fakeheroku.Accept)
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("User-Agent", "dynocycle/test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %d", resp.StatusCode)
	}
	testutil.Eventually(t, 10*time.Second, "the restarted dyno", func() bool { return len(s.Grep(childLine)) == 2 })
}

func TestMaxConcurrent(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	iv := func(start, end int) Interval {
		v := Interval{Kind: KindRestart, Start: at(start)}
		if end >= 0 {
			v.End = at(end)
		}
		return v
	}
	for _, tc := range []struct {
		name string
		ivs  []Interval
		want int
	}{
		{"none", nil, 0},
		{"one after another, touching", []Interval{iv(0, 5), iv(5, 9), iv(9, 12)}, 1},
		{"overlap", []Interval{iv(0, 5), iv(4, 9)}, 2},
		{"open counts until now", []Interval{iv(0, -1), iv(50, 60)}, 2},
		{"three", []Interval{iv(0, 10), iv(1, 3), iv(2, 4), iv(5, 6)}, 3},
		{"crash ignored", []Interval{iv(0, 5), {Kind: KindCrash, Start: at(1), End: at(2)}}, 1},
	} {
		if got, _ := MaxConcurrent(tc.ivs, KindRestart, at(100)); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
