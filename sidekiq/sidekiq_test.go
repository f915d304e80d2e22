package sidekiq

// Tests against the real Sidekiq 6.4.1 from Debian's ruby-sidekiq, running
// examples/sidekiq/jobs.rb against a private redis-server. Sidekiq
// heartbeats every 5 s, so a drain takes about 10 s: the deadlines below are
// generous and every wait polls a condition.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
	"github.com/redis/go-redis/v9"
)

const testHost = "worker.1"

func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make test`, which installs it (apt-get install ruby-sidekiq): %v", name, err)
	}
	return p
}

// sidekiqProc is a real Sidekiq process run by a test.
type sidekiqProc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // the exit, once done is closed
}

// appEnv is the environment of the test app: this process's, without
// anything that could point Sidekiq at another Redis.
func appEnv(srv *testredis.Server, dyno string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "REDIS_") || strings.HasPrefix(kv, "DYNO=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "DYNO="+dyno, "REDIS_URL="+srv.URL())
}

func startSidekiq(t *testing.T, srv *testredis.Server, args ...string) *sidekiqProc {
	t.Helper()
	return startSidekiqOn(t, srv, testHost, args...)
}

// startSidekiqOn starts Sidekiq as if on dyno (its DYNO).
func startSidekiqOn(t *testing.T, srv *testredis.Server, dyno string, args ...string) *sidekiqProc {
	t.Helper()
	return startSidekiqApp(t, srv, dyno, "../examples/sidekiq/jobs.rb", nil, args...)
}

// startSidekiqApp starts Sidekiq requiring app, with env added to the
// test app's environment.
func startSidekiqApp(t testing.TB, srv *testredis.Server, dyno, app string, env []string, args ...string) *sidekiqProc {
	t.Helper()
	bin := requireTool(t, "sidekiq")
	jobs, err := filepath.Abs(app)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "sidekiq.log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"-r", jobs}, args...)...)
	cmd.Env = append(appEnv(srv, dyno), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sidekiq: %v", err)
	}
	p := &sidekiqProc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("sidekiq %d log:\n%s", cmd.Process.Pid, p.output())
		}
	})
	return p
}

func (p *sidekiqProc) pid() int { return p.cmd.Process.Pid }

func (p *sidekiqProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// pids plays the supervisor's view of the child's process tree.
func (p *sidekiqProc) pids() []int {
	if p.exited() {
		return nil
	}
	return []int{p.pid()}
}

// output is the Sidekiq log without the deprecation noise of Debian's
// sidekiq 6.4.1 with redis-rb 4.8.
func (p *sidekiqProc) output() string {
	b, _ := os.ReadFile(p.log)
	var keep []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "will always return") || strings.Contains(l, "redis.brpop") ||
			strings.Contains(l, "positional argument") || strings.Contains(l, "(called from") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func (p *sidekiqProc) stop(ctx context.Context, t testing.TB) {
	t.Helper()
	if err := syscall.Kill(p.pid(), syscall.SIGTERM); err != nil {
		t.Fatalf("TERM sidekiq: %v", err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("sidekiq exited with %v after TERM", p.err)
		}
	case <-ctx.Done():
		t.Fatal("sidekiq did not exit after TERM")
	}
}

// push enqueues a job the way Sidekiq::Client does: the queue in the queues
// set, the job JSON LPUSHed to its list.
func push(t testing.TB, c *redis.Client, class string, args ...any) string {
	t.Helper()
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	jid := hex.EncodeToString(b)
	now := float64(time.Now().UnixNano()) / 1e9
	job, err := json.Marshal(map[string]any{"class": class, "args": args, "jid": jid, "queue": "default",
		"retry": false, "created_at": now, "enqueued_at": now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.SAdd(ctx, "queues", "default").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.LPush(ctx, "queue:default", job).Err(); err != nil {
		t.Fatal(err)
	}
	return jid
}

func isDone(t *testing.T, c *redis.Client, n int) bool {
	t.Helper()
	ok, err := c.SIsMember(context.Background(), "dynocycle:test:done", strconv.Itoa(n)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// signalLog wraps syscall.Kill and records every real signal sent.
type signalLog struct {
	mu   sync.Mutex
	sent []syscall.Signal
}

func (s *signalLog) Signal(pid int, sig syscall.Signal) error {
	if sig != 0 {
		s.mu.Lock()
		s.sent = append(s.sent, sig)
		s.mu.Unlock()
	}
	return syscall.Kill(pid, sig)
}

func (s *signalLog) signals() []syscall.Signal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sent)
}

func newRealWorker(t *testing.T, c *redis.Client, sk *sidekiqProc, sigs *signalLog) *Worker {
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	return &Worker{
		Reader:       &Reader{Client: c, Logger: log},
		Hostname:     testHost,
		PIDs:         sk.pids,
		Signal:       sigs.Signal,
		Logger:       log,
		PollInterval: 200 * time.Millisecond,
	}
}

// waitRunning waits until the child's Sidekiq reports jid in its work hash.
func waitRunning(ctx context.Context, t *testing.T, w *Worker, jid string) Work {
	t.Helper()
	var got Work
	testutil.Until(ctx, t, "job "+jid+" in the work hash", func() bool {
		procs, err := w.Processes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range procs {
			for _, wk := range p.Work {
				if wk.JID == jid {
					got = wk
					return true
				}
			}
		}
		return false
	})
	return got
}

func TestSidekiqFindQuietDrain(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClient(t, srv)
	sk := startSidekiq(t, srv, "-c", "2", "-t", "5", "-q", "default", "-q", "low")
	sigs := &signalLog{}
	w := newRealWorker(t, c, sk, sigs)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var procs []Process
	testutil.Until(ctx, t, "sidekiq in redis", func() bool {
		var err error
		procs, err = w.Processes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(procs) > 0
	})
	p := procs[0]
	if len(procs) != 1 || p.Hostname != testHost || p.PID != sk.pid() || !strings.HasPrefix(p.ID, fmt.Sprintf("%s:%d:", testHost, sk.pid())) ||
		p.Concurrency != 2 || !slices.Equal(p.Queues, []string{"default", "low"}) || p.Quiet || p.RSSKiB <= 0 {
		t.Fatalf("found %+v, want one process of pid %d, concurrency 2, queues default,low", procs, sk.pid())
	}
	if !knowsOwn(w) {
		t.Error("not detected")
	}
	if ok, err := w.Healthy(ctx); !ok || err != nil {
		t.Errorf("healthy = %v, %v; want true", ok, err)
	}
	startRun(t, w)

	jid := push(t, c, "SlowJob", 1, 8)
	if wk := waitRunning(ctx, t, w, jid); wk.Class != "SlowJob" || wk.Queue != "default" {
		t.Fatalf("running %+v, want SlowJob on default", wk)
	}
	if err := w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sigs.signals(); !slices.Equal(got, []syscall.Signal{syscall.SIGTSTP}) {
		t.Fatalf("signals sent = %v, want only SIGTSTP", got)
	}
	drainCtx, cancelDrain := context.WithTimeout(ctx, 60*time.Second)
	defer cancelDrain()
	if err := w.Drain(drainCtx); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if !isDone(t, c, 1) {
		t.Fatal("drained before the running job completed")
	}
	if ok, err := w.Healthy(ctx); ok || err != nil {
		t.Errorf("healthy after quiet = %v, %v; want false", ok, err)
	}
	select {
	case <-w.JobEnded():
	case <-ctx.Done():
		t.Fatal("JobEnded not signalled after the job completed")
	}
	// A job pushed while quiet is not picked up.
	push(t, c, "SlowJob", 99, 0)
	sk.stop(ctx, t)
	if isDone(t, c, 99) {
		t.Error("a quiet sidekiq ran a new job")
	}
	if n, _ := c.SCard(ctx, "processes").Result(); n != 0 {
		t.Errorf("processes set still has %d members after a clean stop", n)
	}
}

// TestSidekiqHandsBackLongJob: a job longer than the grace time makes Drain
// fail with the ctx error; TERM then makes Sidekiq push it back to its queue
// after -t, and the next Sidekiq completes it.
func TestSidekiqHandsBackLongJob(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClient(t, srv)
	sk := startSidekiq(t, srv, "-c", "1", "-t", "2", "-q", "default")
	sigs := &signalLog{}
	w := newRealWorker(t, c, sk, sigs)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	jid := push(t, c, "SlowJob", 2, 600)
	waitRunning(ctx, t, w, jid)
	if err := w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	graceCtx, cancelGrace := context.WithTimeout(ctx, 6*time.Second)
	defer cancelGrace()
	if err := w.Drain(graceCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain of a 600 s job = %v, want the ctx deadline", err)
	}
	sk.stop(ctx, t)
	if got := sigs.signals(); !slices.Equal(got, []syscall.Signal{syscall.SIGTSTP}) {
		t.Errorf("worker sent %v, want only SIGTSTP", got)
	}
	queued, err := c.LRange(ctx, "queue:default", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(queued) != 1 || !strings.Contains(queued[0], jid) {
		t.Fatalf("queue:default after TERM = %q, want the unfinished job %s handed back", queued, jid)
	}
	if isDone(t, c, 2) {
		t.Fatal("job recorded done although it was cut short")
	}

	startSidekiq(t, srv, "-c", "1", "-t", "2", "-q", "default")
	testutil.Until(ctx, t, "the handed-back job to complete", func() bool { return isDone(t, c, 2) })
	if n, _ := c.LLen(ctx, "queue:default").Result(); n != 0 {
		t.Errorf("queue:default has %d jobs after the rerun", n)
	}
}

// TestSidekiqBloatJob enqueues with examples/sidekiq/enqueue.rb and checks
// that a BloatJob is seen running, its end signalled, and growth attributed.
func TestSidekiqBloatJob(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClient(t, srv)
	ruby := requireTool(t, "ruby")
	sk := startSidekiq(t, srv, "-c", "2", "-t", "5", "-q", "default")
	w := newRealWorker(t, c, sk, &signalLog{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	startRun(t, w)

	// BloatJob 1 retains 5 MB and holds for 7 s, so at least one heartbeat
	// (every 5 s) shows it running.
	cmd := exec.CommandContext(ctx, ruby, "../examples/sidekiq/enqueue.rb", "1", "BloatJob", "5", "7")
	cmd.Env = appEnv(srv, testHost)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || len(strings.Fields(string(out))) == 0 {
		t.Fatalf("enqueue.rb: %v\n%s%s", err, out, stderr.String())
	}
	lines := strings.Fields(string(out))
	jid := lines[len(lines)-1]
	if wk := waitRunning(ctx, t, w, jid); wk.Class != "BloatJob" {
		t.Fatalf("running %+v, want BloatJob", wk)
	}
	testutil.Until(ctx, t, "BloatJob counted as running by Run", func() bool { return runningClass(w, jid) == "BloatJob" })
	select {
	case <-w.JobEnded():
	case <-ctx.Done():
		t.Fatal("JobEnded not signalled")
	}
	if !isDone(t, c, 1) {
		t.Error("JobEnded before the job recorded completion")
	}
	w.Attribute(5 << 20)
	if top := w.TopJobs(3); len(top) != 1 || top[0].Class != "BloatJob" || top[0].Bytes != 5<<20 || top[0].Runs != 1 {
		t.Errorf("TopJobs = %+v", top)
	}
	pid, _ := c.HGet(ctx, "dynocycle:test:pid", "1").Result()
	if pid != strconv.Itoa(sk.pid()) {
		t.Errorf("job 1 recorded pid %q, want %d", pid, sk.pid())
	}
}

// TestSidekiqSwarm: two Sidekiq processes in the child's tree are both
// found, quieted and drained; a Sidekiq on another dyno is left alone and
// counts as a live peer.
func TestSidekiqSwarm(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClient(t, srv)
	a := startSidekiq(t, srv, "-c", "1", "-t", "5", "-q", "default")
	b := startSidekiq(t, srv, "-c", "1", "-t", "5", "-q", "default")
	peer := startSidekiqOn(t, srv, "worker.2", "-c", "1", "-t", "5", "-q", "default", "-q", "other")
	sigs := &signalLog{}
	w := newRealWorker(t, c, a, sigs)
	w.PIDs = func() []int { return append(a.pids(), b.pids()...) }
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	testutil.Until(ctx, t, "all three processes in redis", func() bool {
		all, err := w.Reader.Processes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(all) == 3
	})
	// Processes of another host are never the child's.
	peerOf := func() (Process, bool) {
		all, err := w.Reader.Processes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range all {
			if p.Hostname == "worker.2" {
				return p, true
			}
		}
		return Process{}, false
	}
	if p, ok := peerOf(); !ok || p.PID != peer.pid() || p.Quiet {
		t.Fatalf("peer = %+v, want the worker.2 process %d, running", p, peer.pid())
	}
	// The peer is quiet here: it must not take the jobs meant for a and b.
	if err := syscall.Kill(peer.pid(), syscall.SIGTSTP); err != nil {
		t.Fatal(err)
	}
	testutil.Until(ctx, t, "the peer to report quiet", func() bool {
		p, ok := peerOf()
		return ok && p.Quiet
	})

	j1, j2 := push(t, c, "SlowJob", 11, 6), push(t, c, "SlowJob", 12, 6)
	waitRunning(ctx, t, w, j1)
	waitRunning(ctx, t, w, j2)
	procs, err := w.Processes(ctx)
	if err != nil || len(procs) != 2 {
		t.Fatalf("own processes = %+v, %v; want a and b", procs, err)
	}
	if err := w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sigs.signals(); !slices.Equal(got, []syscall.Signal{syscall.SIGTSTP, syscall.SIGTSTP}) {
		t.Fatalf("signals = %v, want SIGTSTP to each of the two", got)
	}
	drainCtx, cancelDrain := context.WithTimeout(ctx, 60*time.Second)
	defer cancelDrain()
	if err := w.Drain(drainCtx); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if !isDone(t, c, 11) || !isDone(t, c, 12) {
		t.Fatal("drained before both jobs completed")
	}
	ran := map[string]bool{}
	for _, n := range []string{"11", "12"} {
		pid, _ := c.HGet(ctx, "dynocycle:test:pid", n).Result()
		ran[pid] = true
	}
	if !ran[strconv.Itoa(a.pid())] || !ran[strconv.Itoa(b.pid())] {
		t.Errorf("jobs ran in %v, want one in each of %d and %d", ran, a.pid(), b.pid())
	}
}
