package sidekiq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// fakeOS plays the child's process tree and records signals.
type fakeOS struct {
	mu   sync.Mutex
	pids []int
	sent []string
}

func (f *fakeOS) PIDs() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pids)
}

func (f *fakeOS) setPIDs(p ...int) {
	f.mu.Lock()
	f.pids = p
	f.mu.Unlock()
}

func (f *fakeOS) Signal(pid int, sig syscall.Signal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sig != 0 {
		f.sent = append(f.sent, fmt.Sprintf("%d:%v", pid, sig))
	}
	if !slices.Contains(f.pids, pid) {
		return syscall.ESRCH
	}
	return nil
}

func (f *fakeOS) signals() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}

// state writes a process hash with the given state; started orders several
// identities of one pid.
func state(id string, started float64, queues string, busy int, beat float64, quiet bool) map[string]string {
	ident, _ := ParseIdentity(id)
	info := fmt.Sprintf(`{"hostname":%q,"started_at":%v,"pid":%d,"tag":"","concurrency":5,"queues":%s,"labels":[],"identity":%q}`,
		ident.Hostname, started, ident.PID, queues, id)
	return map[string]string{"info": info, "busy": strconv.Itoa(busy),
		"beat": strconv.FormatFloat(beat, 'f', -1, 64), "quiet": strconv.FormatBool(quiet), "rss": "1000"}
}

func job(class, jid string) string {
	return fmt.Sprintf(`{"queue":"default","payload":"{\"class\":\"%s\",\"jid\":\"%s\",\"args\":[]}","run_at":1}`, class, jid)
}

type fixture struct {
	srv *testredis.Server
	c   *redis.Client
	os  *fakeOS
	w   *Worker
}

func newFixture(t *testing.T, pids ...int) *fixture {
	srv := testredis.Start(t)
	c := newClient(t, srv)
	f := &fixture{srv: srv, c: c, os: &fakeOS{pids: pids}}
	f.w = &Worker{
		Reader:       &Reader{Client: c},
		Hostname:     "worker.1",
		PIDs:         f.os.PIDs,
		Signal:       f.os.Signal,
		PollInterval: 5 * time.Millisecond,
	}
	return f
}

func (f *fixture) put(t *testing.T, id string, fields map[string]string, work map[string]string) {
	t.Helper()
	fakeProcess{id: id, fields: fields, workKey: "work", work: work}.write(t, f.c)
}

func TestWorkerProcessesOwnOnly(t *testing.T) {
	f := newFixture(t, 100, 101, 102)
	f.put(t, "worker.1:100:000000000old", state("worker.1:100:000000000old", 1000, `["default"]`, 0, 1100, false), nil)
	f.put(t, "worker.1:100:000000000new", state("worker.1:100:000000000new", 2000, `["default"]`, 0, 2100, false), nil)
	f.put(t, "worker.1:101:00000000swrm", state("worker.1:101:00000000swrm", 2000, `["default"]`, 0, 2100, false), nil)
	f.put(t, "worker.1:999:000000notme", state("worker.1:999:000000notme", 2000, `["default"]`, 0, 2100, false), nil)
	f.put(t, "worker.2:102:00otherhost", state("worker.2:102:00otherhost", 2000, `["default"]`, 0, 2100, false), nil)
	if knowsOwn(f.w) {
		t.Fatal("detected before any read")
	}
	procs, err := f.w.Processes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range procs {
		ids = append(ids, p.ID)
	}
	if want := []string{"worker.1:100:000000000new", "worker.1:101:00000000swrm"}; !slices.Equal(ids, want) {
		t.Errorf("own processes = %v, want %v", ids, want)
	}
	if !knowsOwn(f.w) {
		t.Error("not detected")
	}
	if ok, err := f.w.Healthy(context.Background()); !ok || err != nil {
		t.Errorf("healthy = %v, %v; want true", ok, err)
	}
	f.put(t, "worker.1:101:00000000swrm", state("worker.1:101:00000000swrm", 2000, `["default"]`, 0, 2105, true), nil)
	if ok, err := f.w.Healthy(context.Background()); ok || err != nil {
		t.Errorf("healthy with a quiet process = %v, %v; want false", ok, err)
	}
}

// TestQuietRedisDown: the restart must not wait for Redis; the processes
// found earlier are quieted, but only those still in the child's tree.
func TestQuietRedisDown(t *testing.T) {
	f := newFixture(t, 100, 101)
	f.put(t, "worker.1:100:aaaaaaaaaaaa", state("worker.1:100:aaaaaaaaaaaa", 1, `["default"]`, 1, 10, false), nil)
	f.put(t, "worker.1:101:bbbbbbbbbbbb", state("worker.1:101:bbbbbbbbbbbb", 1, `["default"]`, 1, 10, false), nil)
	ctx := context.Background()
	if procs, err := f.w.Processes(ctx); err != nil || len(procs) != 2 {
		t.Fatalf("processes = %+v, %v", procs, err)
	}
	f.srv.Stop()
	f.os.setPIDs(101)
	if err := f.w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := f.os.signals(), []string{"101:stopped"}; !slices.Equal(got, want) {
		t.Errorf("signals = %v, want %v", got, want)
	}
}

type fakeFallback struct{ quiet, drain int }

func (f *fakeFallback) Quiet(context.Context) error { f.quiet++; return nil }
func (f *fakeFallback) Drain(context.Context) error { f.drain++; return nil }

func TestQuietSendsOnlyTSTP(t *testing.T) {
	f := newFixture(t, 100, 101)
	f.put(t, "worker.1:100:aaaaaaaaaaaa", state("worker.1:100:aaaaaaaaaaaa", 1, `["default"]`, 1, 10, false), nil)
	f.put(t, "worker.1:101:bbbbbbbbbbbb", state("worker.1:101:bbbbbbbbbbbb", 1, `["default"]`, 0, 10, false), nil)
	fb := &fakeFallback{}
	f.w.Fallback = fb
	if err := f.w.Quiet(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := f.os.signals(), []string{"100:stopped", "101:stopped"}; !slices.Equal(got, want) {
		t.Errorf("signals = %v, want %v (SIGTSTP only)", got, want)
	}
	if fb.quiet != 0 {
		t.Error("fallback used although sidekiq was found")
	}
}

func TestQuietDrainFallback(t *testing.T) {
	f := newFixture(t, 100)
	ctx := context.Background()
	if err := f.w.Quiet(ctx); !errors.Is(err, ErrNotFound) {
		t.Errorf("quiet without sidekiq nor fallback: %v, want ErrNotFound", err)
	}
	fb := &fakeFallback{}
	f.w.Fallback = fb
	if err := f.w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.w.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if fb.quiet != 1 || fb.drain != 1 || len(f.os.signals()) != 0 {
		t.Errorf("fallback quiet=%d drain=%d, signals %v", fb.quiet, fb.drain, f.os.signals())
	}
}

func TestDrainStateObserve(t *testing.T) {
	type beat struct {
		at      int64
		quiet   bool
		busy    int
		rawWork int
	}
	tests := []struct {
		name  string
		beats []beat
		want  []bool
	}{
		{"two clean beats", []beat{{1, true, 0, 0}, {2, true, 0, 0}}, []bool{false, true}},
		{"same beat read twice counts once", []beat{{1, true, 0, 0}, {1, true, 0, 0}, {2, true, 0, 0}}, []bool{false, false, true}},
		{"busy resets", []beat{{1, true, 0, 0}, {2, true, 1, 0}, {3, true, 0, 0}, {4, true, 0, 0}}, []bool{false, false, false, true}},
		{"work hash blocks", []beat{{1, true, 0, 1}, {2, true, 0, 1}, {3, true, 0, 0}}, []bool{false, false, false}},
		{"not quiet never drains", []beat{{1, false, 0, 0}, {2, false, 0, 0}}, []bool{false, false}},
		{"drained stays drained", []beat{{1, true, 0, 0}, {2, true, 0, 0}, {3, true, 2, 0}}, []bool{false, true, true}},
	}
	for _, tt := range tests {
		var s drainState
		for i, b := range tt.beats {
			got := s.observe(Process{Beat: time.Unix(b.at, 0), Quiet: b.quiet, Busy: b.busy, rawWork: b.rawWork})
			if got != tt.want[i] {
				t.Errorf("%s: beat %d drained=%v, want %v", tt.name, i, got, tt.want[i])
			}
		}
	}
}

// TestDrainWaitsForSecondBeat runs Drain against records that change under
// it: one quiet, idle beat is not enough, a second distinct one is.
func TestDrainWaitsForSecondBeat(t *testing.T) {
	f := newFixture(t, 100)
	const id = "worker.1:100:aaaaaaaaaaaa"
	f.put(t, id, state(id, 1, `["default"]`, 1, 10, false), map[string]string{"t1": job("SlowJob", "j1")})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	polls := make(chan struct{}, 100)
	f.w.polled = func() {
		select {
		case polls <- struct{}{}:
		default:
		}
	}
	done := make(chan error, 1)
	go func() { done <- f.w.Drain(ctx) }()
	waitPolls := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-polls:
			case err := <-done:
				t.Fatalf("drain returned early: %v", err)
			case <-ctx.Done():
				t.Fatal("no polls")
			}
		}
	}
	waitPolls(2)
	// First quiet, idle beat.
	f.put(t, id, state(id, 1, `["default"]`, 0, 15, true), nil)
	for len(polls) > 0 {
		<-polls
	}
	waitPolls(5)
	// Second beat.
	f.put(t, id, state(id, 1, `["default"]`, 0, 20, true), nil)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("drain: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("drain did not return after the second beat")
	}
}

func TestDrainEndsWhenProcessExits(t *testing.T) {
	f := newFixture(t, 100)
	const id = "worker.1:100:aaaaaaaaaaaa"
	f.put(t, id, state(id, 1, `["default"]`, 1, 10, true), map[string]string{"t1": job("SlowJob", "j1")})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	f.w.polled = func() { f.os.setPIDs() } // the process exits after the first poll
	if err := f.w.Drain(ctx); err != nil {
		t.Fatalf("drain: %v", err)
	}
}

func TestDrainDeadline(t *testing.T) {
	f := newFixture(t, 100)
	const id = "worker.1:100:aaaaaaaaaaaa"
	f.put(t, id, state(id, 1, `["default"]`, 1, 10, true), map[string]string{"t1": job("SlowJob", "j1")})
	if err := f.w.Quiet(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := f.w.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain = %v, want deadline exceeded", err)
	}
}

func TestRunJobEnded(t *testing.T) {
	f := newFixture(t, 100)
	const id = "worker.1:100:aaaaaaaaaaaa"
	f.put(t, id, state(id, 1, `["default"]`, 1, 10, false), map[string]string{"t1": job("ExportCsvJob", "j1")})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	startRun(t, f.w)
	testutil.Until(ctx, t, "job seen", func() bool { return runningClass(f.w, "j1") == "ExportCsvJob" })
	if !knowsOwn(f.w) {
		t.Error("not detected")
	}
	select {
	case <-f.w.JobEnded():
		t.Fatal("job ended while still in the work hash")
	default:
	}
	f.put(t, id, state(id, 1, `["default"]`, 0, 15, false), nil)
	select {
	case <-f.w.JobEnded():
	case <-ctx.Done():
		t.Fatal("JobEnded not signalled")
	}
	f.w.Attribute(1 << 20)
	if top := f.w.TopJobs(5); len(top) != 1 || top[0] != (heartbeat.JobGrowth{Class: "ExportCsvJob", Bytes: 1 << 20, Runs: 1}) {
		t.Errorf("top jobs = %+v", top)
	}
}

func TestAttribute(t *testing.T) {
	w := &Worker{}
	w.observe([]Work{{Class: "A", JID: "a1"}})
	w.observe([]Work{{Class: "A", JID: "a1"}, {Class: "B", JID: "b1"}})
	w.observe([]Work{{Class: "B", JID: "b1"}})
	select {
	case <-w.JobEnded():
	default:
		t.Fatal("a1 ended but JobEnded not signalled")
	}
	w.Attribute(300) // A and B ran: 150 each
	w.Attribute(-50) // B still running; shrinking is not growth
	w.Attribute(100) // B still running: all to B
	w.observe(nil)
	w.Attribute(40) // B ran until the read above
	w.Attribute(1000)
	w.observe([]Work{{Class: "A", JID: "a2"}, {Class: "C", JID: "c1"}})
	w.observe([]Work{{Class: "A", JID: "a3"}})

	got := w.TopJobs(10)
	want := []heartbeat.JobGrowth{{Class: "B", Bytes: 290, Runs: 1}, {Class: "A", Bytes: 150, Runs: 3}}
	if !slices.Equal(got, want) {
		t.Errorf("TopJobs = %+v, want %+v", got, want)
	}
	if got := w.TopJobs(1); len(got) != 1 || got[0].Class != "B" {
		t.Errorf("TopJobs(1) = %+v", got)
	}
	if got := w.TopJobs(0); len(got) != 0 {
		t.Errorf("TopJobs(0) = %+v", got)
	}
}

// knowsOwn reports whether the last scan found a Sidekiq process of the child.
func knowsOwn(w *Worker) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.known) > 0
}

func runningClass(w *Worker, jid string) string {
	w.init()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.running[jid]
}

// startRun runs w.Run until the test ends, and waits for it to return
// before the Redis client closes.
func startRun(t *testing.T, w *Worker) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}
