package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// every is a check schedule with a fixed short interval.
type every time.Duration

func (e every) Next(t time.Time) time.Time { return t.Add(time.Duration(e)) }

// recorder keeps the order of what the fakes were asked to do.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) count(e string) int {
	n := 0
	for _, x := range r.list() {
		if x == e {
			n++
		}
	}
	return n
}

type fakeMeter struct {
	mu      sync.Mutex
	rss     uint64
	err     error
	samples int
}

func (m *fakeMeter) Sample(context.Context) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.samples++
	return m.rss, m.err
}

// moreChecks waits until n more checks have run, so a test can assert that
// something did not happen over several checks without guessing a duration.
func (m *fakeMeter) moreChecks(t *testing.T, n int) {
	t.Helper()
	m.mu.Lock()
	target := m.samples + n
	m.mu.Unlock()
	testutil.Eventually(t, within, fmt.Sprintf("%d more checks", n), func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.samples >= target
	})
}

func (m *fakeMeter) set(rss uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rss = rss
}

type fakeQuieter struct {
	rec      *recorder
	drainErr error
	// drained, when set, is polled until true before Drain returns.
	drained func() bool
	// onQuiet runs when the quiet signal is sent (a worker that exits on it).
	onQuiet func()
}

func (w *fakeQuieter) Quiet(context.Context) error {
	w.rec.add("quiet")
	if w.onQuiet != nil {
		w.onQuiet()
	}
	return nil
}
func (w *fakeQuieter) Drain(ctx context.Context) error {
	w.rec.add("drain")
	for w.drained != nil && !w.drained() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return w.drainErr
}

// fakeFleet wraps the standalone fleet to record calls and inject errors.
type fakeFleet struct {
	*heartbeat.Local
	rec        *recorder
	acquireErr error
	renewErr   error
	heldFails  int // Held fails this many times first
	renewOKFor int // renewals after this many fail (Redis went away mid-drain)

	mu            sync.Mutex
	renewals      int
	renewFailures int
	byState       map[heartbeat.State]int // renewals by the last state published
}

func (f *fakeFleet) renewedIn(state heartbeat.State) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byState[state]
}

func (f *fakeFleet) Held(ctx context.Context) (heartbeat.Lease, bool, error) {
	if f.heldFails > 0 {
		f.heldFails--
		return heartbeat.Lease{}, false, errors.New("redis: connection refused")
	}
	return f.Local.Held(ctx)
}

func (f *fakeFleet) Acquire(ctx context.Context) (heartbeat.Lease, error) {
	if f.acquireErr != nil {
		f.rec.add("acquire_failed")
		return heartbeat.Lease{}, f.acquireErr
	}
	l, err := f.Local.Acquire(ctx)
	if err == nil {
		f.rec.add("acquire")
	}
	return l, err
}

func (f *fakeFleet) Renew(ctx context.Context, l heartbeat.Lease) error {
	state := f.Local.Presence().State
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renewals++
	if f.byState == nil {
		f.byState = map[heartbeat.State]int{}
	}
	f.byState[state]++
	if f.renewErr != nil || (f.renewOKFor > 0 && f.renewals > f.renewOKFor) {
		f.renewFailures++
		return errors.Join(f.renewErr, errors.New("redis: connection refused"))
	}
	return f.Local.Renew(ctx, l)
}

func (f *fakeFleet) failedRenewals() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.renewFailures
}

func (f *fakeFleet) Release(ctx context.Context, l heartbeat.Lease) error {
	f.rec.add("release")
	return f.Local.Release(ctx, l)
}

func (f *fakeFleet) HandOver(ctx context.Context, l heartbeat.Lease) (heartbeat.Lease, error) {
	f.rec.add("handover")
	return f.Local.HandOver(ctx, l)
}

func (f *fakeFleet) TakeBack(ctx context.Context, l heartbeat.Lease) (heartbeat.Lease, error) {
	f.rec.add("take_back")
	return f.Local.TakeBack(ctx, l)
}

func (f *fakeFleet) renewCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.renewals
}

type fakeRestarter struct {
	rec  *recorder
	next Next
	err  error
	// onRestart runs inside Restart (a restart in place resets memory).
	onRestart func()
}

// ReplacesAgent: as the real restarters, every restart but one in place
// is carried on by another agent process.
func (r *fakeRestarter) ReplacesAgent() bool { return r.next != Continue }

func (r *fakeRestarter) Restart(ctx context.Context, reason string) (Next, error) {
	r.rec.add("restart:" + reason)
	if r.onRestart != nil {
		r.onRestart()
	}
	return r.next, r.err
}

type fakeChild struct {
	rec     *recorder
	mu      sync.Mutex
	started time.Time
	exited  chan *child.Exit
	code    int
	running bool // what Running reports once the agent ends
	// stopping, when set, makes Terminate a graceful stop that lasts until
	// it is closed; a cancelled ctx meanwhile is a SIGKILL, as for a real
	// worker.
	stopping chan struct{}
	// onTerminate runs inside Terminate.
	onTerminate func()
}

func newFakeChild(rec *recorder) *fakeChild {
	return &fakeChild{rec: rec, started: time.Now(), exited: make(chan *child.Exit, 1)}
}

func (c *fakeChild) StartedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started
}
func (c *fakeChild) restarted() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.started = time.Now()
}
func (c *fakeChild) Exited() <-chan *child.Exit { return c.exited }
func (c *fakeChild) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}
func (c *fakeChild) Terminate(ctx context.Context, sig syscall.Signal) (*child.Exit, error) {
	c.rec.add("terminate:" + sig.String())
	if c.onTerminate != nil {
		c.onTerminate() // the worker takes its time to stop
	}
	if c.stopping != nil {
		select {
		case <-ctx.Done():
			c.rec.add("kill")
			return &child.Exit{Code: 137, Signal: syscall.SIGKILL}, ctx.Err()
		case <-c.stopping:
		}
	}
	return &child.Exit{Code: c.code}, nil
}
func (c *fakeChild) TerminateWithin(ctx context.Context, sig syscall.Signal, wait time.Duration) (*child.Exit, error) {
	c.rec.add(fmt.Sprintf("within:%v", wait))
	return c.Terminate(ctx, sig)
}
func (c *fakeChild) Stop(context.Context) (*child.Exit, error) {
	c.rec.add("stop")
	return &child.Exit{Code: 0}, nil
}

const mb = 1 << 20

// within bounds every wait of these tests; none depends on machine speed.
const within = 15 * time.Second

type harness struct {
	rec       *recorder
	meter     *fakeMeter
	fleet     *fakeFleet
	restarter *fakeRestarter
	child     *fakeChild
	signals   chan os.Signal
	agent     *Agent
	done      chan error
	cancel    context.CancelFunc
}

func newHarness(t *testing.T, rss uint64) *harness {
	t.Helper()
	rec := &recorder{}
	h := &harness{
		rec:       rec,
		meter:     &fakeMeter{rss: rss},
		fleet:     &fakeFleet{Local: heartbeat.NewLocal("worker.1", 1), rec: rec},
		restarter: &fakeRestarter{rec: rec, next: Continue},
		child:     newFakeChild(rec),
		signals:   make(chan os.Signal, 2),
	}
	h.agent = &Agent{
		Settings: Settings{
			Policy: Policy{MaxRSS: 500 * mb, SustainChecks: 2}, Limit: 500 * mb,
			CheckSchedule: every(2 * time.Millisecond), GraceTime: time.Second,
			ConfirmAfter: time.Hour, LeaseRenew: time.Millisecond, Dyno: "worker.1", TerminationWait: 200 * time.Millisecond,
		},
		Meter: h.meter, Quieter: &fakeQuieter{rec: rec}, Fleet: h.fleet, Restarter: h.restarter,
		Child: h.child, Signals: h.signals,
	}
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- h.agent.Run(ctx) }()
}

func (h *harness) stop(t *testing.T) error {
	t.Helper()
	h.cancel()
	select {
	case err := <-h.done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop")
		return nil
	}
}

func (h *harness) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-h.done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not end")
		return nil
	}
}

func TestRestartInPlaceFollowsTheFlow(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.onRestart = func() { h.meter.set(100 * mb); h.child.restarted() }
	h.start()
	testutil.Eventually(t, within, "a restart", func() bool { return h.rec.count("restart:max_rss") == 1 })
	h.stop(t)
	got := h.rec.list()
	want := []string{"acquire", "quiet", "drain", "restart:max_rss"}
	if !slices.Equal(got[:4], want) {
		t.Errorf("events = %v, want %v first: the lease before the quiet", got, want)
	}
	if h.rec.count("restart:max_rss") != 1 {
		t.Errorf("restarted %d times while memory was back under the limit", h.rec.count("restart:max_rss"))
	}
}

func TestLeaseIsReleasedOnceTheNewWorkerIsHealthy(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.agent.Settings.ConfirmAfter = 50 * time.Millisecond
	h.restarter.onRestart = func() { h.meter.set(100 * mb); h.child.restarted() }
	h.start()
	testutil.Eventually(t, within, "the lease released after the restart", func() bool { return h.rec.count("release") == 1 })
	h.stop(t)
	if _, held, _ := h.fleet.Held(context.Background()); held {
		t.Error("lease still held")
	}
}

func TestNoSlotMeansNoQuiet(t *testing.T) {
	h := newHarness(t, 600*mb)
	w2 := h.fleet.Local.Join("worker.2") // another dyno's restart holds the only slot
	other, err := w2.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h.start()
	testutil.Eventually(t, within, "several checks", func() bool {
		return h.fleet.Presence().State == heartbeat.StateWanting
	})
	h.meter.moreChecks(t, 5) // none of them may quiet
	if n := h.rec.count("quiet"); n != 0 {
		t.Fatalf("worker quieted %d times without a lease", n)
	}
	// The slot is freed: the waiting agent takes it and restarts.
	if err := w2.Release(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	// Memory stays high, so restarts follow one another: wait for the first.
	testutil.Eventually(t, within, "the restart after the slot was freed", func() bool { return h.rec.count("restart:max_rss") >= 1 })
	h.stop(t)
}

func TestFleetErrorsKeepTheWorkerRunning(t *testing.T) {
	for name, fault := range map[string]func(*fakeFleet){
		"acquire fails":              func(f *fakeFleet) { f.acquireErr = errors.New("redis: connection refused") },
		"peers missing":              func(f *fakeFleet) { f.acquireErr = &heartbeat.PeersError{ProcessType: "worker", Have: 0, Want: 1} },
		"lease lost before quieting": func(f *fakeFleet) { f.renewErr = heartbeat.ErrNotHolder },
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, 600*mb)
			fault(h.fleet)
			h.start()
			testutil.Eventually(t, within, "attempts", func() bool {
				return h.rec.count("acquire_failed") >= 3 || h.rec.count("acquire") >= 1
			})
			h.meter.moreChecks(t, 5)
			h.stop(t)
			if n := h.rec.count("quiet") + h.rec.count("restart:max_rss"); n != 0 {
				t.Errorf("quiet or restart without a lease: %v", h.rec.list())
			}
		})
	}
}

func TestDryRunNeverActs(t *testing.T) {
	h := newHarness(t, 900*mb)
	h.agent.Settings.DryRun = true
	h.agent.Settings.Policy.CriticalRSS = 800 * mb
	h.start()
	testutil.Eventually(t, within, "the restart wanted", func() bool { return h.fleet.Presence().State == heartbeat.StateWanting })
	h.meter.moreChecks(t, 5)
	h.stop(t)
	if got := h.rec.list(); len(got) != 0 {
		t.Errorf("dry run acted: %v", got)
	}
}

func TestFailedRestartStopsTheWorkerAndExitsNonZero(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.next, h.restarter.err = Exit, errors.New("heroku api: 500 after 5 attempts")
	h.start()
	err := h.wait(t)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("err = %v, want exit 1", err)
	}
	if h.rec.count("stop") != 1 {
		t.Errorf("worker not stopped: %v", h.rec.list())
	}
}

func TestExitPlatformExitsWithRestartCode(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.next = Exit
	h.start()
	var ee *ExitError
	if err := h.wait(t); !errors.As(err, &ee) || ee.Code != ExitCodeRestart {
		t.Fatalf("err = %v, want exit %d", err, ExitCodeRestart)
	}
}

func TestAwaitTerminationEndsWithTheSignal(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.next = AwaitTermination
	h.agent.Settings.TerminationWait = time.Minute
	h.child.code = 0
	h.start()
	testutil.Eventually(t, within, "the API restart", func() bool { return h.rec.count("restart:max_rss") == 1 })
	h.signals <- syscall.SIGTERM // what Heroku sends to every process of the dyno
	var ee *ExitError
	if err := h.wait(t); !errors.As(err, &ee) || ee.Code != 0 {
		t.Fatalf("err = %v, want a clean exit", err)
	}
	if h.rec.count("terminate:terminated") != 1 {
		t.Errorf("TERM not forwarded to the worker once: %v", h.rec.list())
	}
}

func TestAwaitTerminationGivesUpWhenNoSignalComes(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.next = AwaitTermination
	h.start()
	var ee *ExitError
	if err := h.wait(t); !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("err = %v, want exit 1", err)
	}
	if h.rec.count("stop") != 1 {
		t.Errorf("worker not stopped: %v", h.rec.list())
	}
}

func TestSignalsAreForwardedAndTheWorkersCodeReturned(t *testing.T) {
	h := newHarness(t, 100*mb)
	h.child.code = 143
	h.start()
	h.signals <- syscall.SIGINT
	h.signals <- syscall.SIGTERM // Heroku may repeat TERM; it is not forwarded twice
	var ee *ExitError
	if err := h.wait(t); !errors.As(err, &ee) || ee.Code != 143 {
		t.Fatalf("err = %v, want exit 143", err)
	}
	if got := h.rec.list(); !slices.Equal(got, []string{"terminate:interrupt"}) {
		t.Errorf("events = %v", got)
	}
}

// A loop beside the agent (the Redis subscriber, the Sidekiq reader, the
// metrics server) failing while the worker stops gracefully ends the agent's
// context; the worker must still get its whole graceful stop, since for a
// real worker a cancelled Terminate is a SIGKILL that loses its jobs.
func TestAFailingLoopDoesNotCutTheWorkersGracefulStopShort(t *testing.T) {
	h := newHarness(t, 100*mb)
	logs := &testutil.Buffer{}
	h.agent.Logger = slog.New(slog.NewTextHandler(logs, nil))
	h.child.stopping = make(chan struct{})
	h.start()
	h.signals <- syscall.SIGTERM
	testutil.Eventually(t, within, "the TERM forwarded", func() bool { return h.rec.count("terminate:terminated") == 1 })
	h.cancel() // what cmd's group does when a loop beside the agent fails
	testutil.Eventually(t, within, "the agent to see it is ending (or the worker killed)", func() bool {
		return strings.Contains(logs.String(), "event=stop_continues") || h.rec.count("kill") > 0
	})
	if h.rec.count("kill") > 0 {
		t.Fatalf("the graceful stop was cut short: %v", h.rec.list())
	}
	select {
	case err := <-h.done:
		t.Fatalf("the agent ended (%v) before its worker stopped", err)
	default:
	}
	close(h.child.stopping) // the worker finishes its jobs and exits
	// The agent ends with its context's error: the command exits with the
	// failed loop's.
	if err := h.wait(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want the cancellation", err)
	}
	if got := h.rec.list(); !slices.Equal(got, []string{"terminate:terminated"}) {
		t.Errorf("events = %v, want the TERM alone", got)
	}
}

// A second INT still kills at once.
func TestASecondInterruptKills(t *testing.T) {
	h := newHarness(t, 100*mb)
	h.child.stopping = make(chan struct{})
	h.start()
	h.signals <- syscall.SIGINT
	testutil.Eventually(t, within, "the INT forwarded", func() bool { return h.rec.count("terminate:interrupt") == 1 })
	h.signals <- syscall.SIGINT
	var ee *ExitError
	if err := h.wait(t); !errors.As(err, &ee) || ee.Code != 137 {
		t.Fatalf("err = %v, want the killed worker's 137", err)
	}
	if h.rec.count("kill") != 1 {
		t.Errorf("events = %v, want a kill", h.rec.list())
	}
}

func TestWorkerExitEndsTheAgentWithItsCode(t *testing.T) {
	h := newHarness(t, 100*mb)
	h.start()
	h.child.exited <- &child.Exit{Code: 3}
	var ee *ExitError
	if err := h.wait(t); !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("err = %v, want exit 3", err)
	}
}

func TestCriticalSkipsSustainAndUptime(t *testing.T) {
	h := newHarness(t, 950*mb)
	h.agent.Settings.Policy = Policy{MaxRSS: 500 * mb, CriticalRSS: 900 * mb, SustainChecks: 100, MinUptime: time.Hour}
	h.restarter.onRestart = func() { h.meter.set(100 * mb); h.child.restarted() }
	h.start()
	testutil.Eventually(t, within, "a critical restart", func() bool { return h.rec.count("restart:critical_rss") == 1 })
	h.stop(t)
}

func TestSampleErrorsDoNotRestart(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.meter.err = fmt.Errorf("read status of 42: %w", os.ErrNotExist)
	h.start()
	h.meter.moreChecks(t, 5)
	h.stop(t)
	if got := h.rec.list(); len(got) != 0 {
		t.Errorf("acted without a memory sample: %v", got)
	}
}

func TestRepeatedRestartsHandTheSlotBackInBetween(t *testing.T) {
	h := newHarness(t, 600*mb) // memory stays high: the new worker wants a restart at once
	h.restarter.onRestart = h.child.restarted
	h.start()
	testutil.Eventually(t, within, "two restarts", func() bool { return h.rec.count("restart:max_rss") >= 2 })
	h.stop(t)
	got := h.rec.list()
	first := slices.Index(got, "restart:max_rss")
	second := first + 1 + slices.Index(got[first+1:], "restart:max_rss")
	between := got[first+1 : second]
	if !slices.Contains(between, "release") || !slices.Contains(between, "acquire") {
		t.Errorf("events between two restarts = %v, want the slot released and acquired again", between)
	}
}

func TestAWorkerStillRunningWhenTheAgentEndsIsStopped(t *testing.T) {
	h := newHarness(t, 100*mb)
	h.child.running = true // e.g. restarted in place while a signal was stopping the old one
	h.start()
	h.meter.moreChecks(t, 2)
	h.stop(t)
	if h.rec.count("stop") != 1 {
		t.Errorf("worker left running: %v", h.rec.list())
	}
}

func TestALeaseFromBeforeTheRestartIsReleasedEvenIfRedisWasDownAtStart(t *testing.T) {
	h := newHarness(t, 100*mb)
	h.agent.Settings.ConfirmAfter = 0
	h.fleet.Local = previousLife(t)
	h.fleet.heldFails = 3
	h.start()
	testutil.Eventually(t, within, "the old lease released", func() bool { return h.rec.count("release") == 1 })
	h.stop(t)
	if _, held, _ := h.fleet.Local.Held(context.Background()); held {
		t.Error("lease still held")
	}
}

func TestARestartUnderWayFinishesWhenRedisGoesAwayMidDrain(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.fleet.renewOKFor = 1 // the check before quieting succeeds, every renewal after fails
	h.agent.Quieter.(*fakeQuieter).drained = func() bool { return h.fleet.failedRenewals() >= 3 }
	h.restarter.onRestart = func() { h.meter.set(100 * mb); h.child.restarted() }
	h.start()
	testutil.Eventually(t, within, "the restart", func() bool { return h.rec.count("restart:max_rss") == 1 })
	h.stop(t)
	if got := h.rec.list()[:4]; !slices.Equal(got, []string{"acquire", "quiet", "drain", "restart:max_rss"}) {
		t.Errorf("events = %v: a quiet worker must be restarted even when the lease cannot be renewed", got)
	}
}

// previousLife is this dyno's previous agent process: it took the lease and
// handed it over before the platform restart. It returns the fleet of the
// agent that replaces it, started afterwards.
func previousLife(t *testing.T) *heartbeat.Local {
	t.Helper()
	old := heartbeat.NewLocal("worker.1", 1)
	l, err := old.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.HandOver(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	return old.Join("worker.1")
}

func TestTheRebornDynoRenewsTheLeaseWhileItsWorkerBootsThenReleasesIt(t *testing.T) {
	h := newHarness(t, 100*mb)
	h.agent.Settings.ConfirmAfter = 300 * time.Millisecond
	h.fleet.Local = previousLife(t)
	h.start()
	testutil.Eventually(t, within, "the claimed lease released", func() bool { return h.rec.count("release") == 1 })
	h.stop(t)
	if n := h.fleet.renewCount(); n < 3 {
		t.Errorf("%d renewals while the worker booted, want several", n)
	}
	if _, held, _ := h.fleet.Local.Held(context.Background()); held {
		t.Error("lease still held")
	}
}

// A platform restart: the lease is handed over before the API call, renewed
// while the agent awaits the platform's TERM, and left to the successor
// when the agent ends.
func TestAPlatformRestartHandsTheLeaseOverAndKeepsRenewingIt(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.next = AwaitTermination
	h.agent.Settings.TerminationWait = time.Minute
	h.start()
	testutil.Eventually(t, within, "the API restart", func() bool { return h.rec.count("restart:max_rss") == 1 })
	got := h.rec.list()
	if i, j := slices.Index(got, "handover"), slices.Index(got, "restart:max_rss"); i < 0 || i > j {
		t.Fatalf("events %v: the hand-over must come before the restart request", got)
	}
	before := h.fleet.renewCount()
	testutil.Eventually(t, within, "renewals while awaiting TERM", func() bool { return h.fleet.renewCount() >= before+5 })
	h.signals <- syscall.SIGTERM
	if err := h.wait(t); err != nil && !errors.As(err, new(*ExitError)) {
		t.Fatal(err)
	}
	if h.rec.count("release") != 0 {
		t.Errorf("the handed-over lease was released: %v", h.rec.list())
	}
	lease, held, _ := h.fleet.Local.Held(context.Background())
	if !held || !lease.HandedOver() {
		t.Fatalf("lease after the agent ended = %+v, %v; want it handed over", lease, held)
	}
	reborn := h.fleet.Local.Join("worker.1")
	if got, ok, _ := reborn.Held(context.Background()); !ok || got.Token != lease.Token {
		t.Errorf("the reborn dyno cannot claim the lease: %+v, %v", got, ok)
	}
}

// As Resque does on QUIT: the worker exits on the quiet signal. That is its
// drain; the restart goes on instead of the agent ending with the lease.
func TestAWorkerThatExitsOnQuietCountsAsDrained(t *testing.T) {
	for _, next := range []Next{Continue, AwaitTermination, Exit} {
		t.Run(fmt.Sprint(next), func(t *testing.T) {
			h := newHarness(t, 600*mb)
			h.restarter.next = next
			h.agent.Settings.TerminationWait = time.Minute
			h.agent.Settings.GraceTime = time.Minute
			w := h.agent.Quieter.(*fakeQuieter)
			exited := make(chan struct{})
			w.onQuiet = func() { h.child.exited <- &child.Exit{Code: 0, Started: h.child.StartedAt()}; close(exited) }
			// Drain returns once the worker is gone, as worker.Signals does.
			w.drained = func() bool {
				select {
				case <-exited:
					return true
				default:
					return false
				}
			}
			h.restarter.onRestart = func() { h.meter.set(100 * mb); h.child.restarted() }
			h.start()
			testutil.Eventually(t, within, "the restart", func() bool { return h.rec.count("restart:max_rss") == 1 })
			var err error
			switch next {
			case Continue:
				h.meter.moreChecks(t, 3)
				err = h.stop(t)
			case AwaitTermination:
				h.signals <- syscall.SIGTERM
				err = h.wait(t)
			case Exit:
				err = h.wait(t)
			}
			var ee *ExitError
			wantCode := map[Next]int{Continue: -1, AwaitTermination: 0, Exit: ExitCodeRestart}[next]
			if wantCode >= 0 && (!errors.As(err, &ee) || ee.Code != wantCode) {
				t.Fatalf("agent ended with %v, want exit %d", err, wantCode)
			}
			if next == Continue && errors.As(err, &ee) {
				t.Fatalf("agent ended with %v while the new worker ran", err)
			}
		})
	}
}

func TestNoExitOfTheAgentLeavesItsLeaseHeld(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		set  func(h *harness)
		end  func(t *testing.T, h *harness)
	}{
		{"signal while draining", func(h *harness) {
			h.agent.Quieter.(*fakeQuieter).drained = func() bool { return false }
			h.agent.Settings.GraceTime = time.Minute
		}, func(t *testing.T, h *harness) {
			testutil.Eventually(t, within, "the drain", func() bool { return h.rec.count("drain") == 1 })
			h.signals <- syscall.SIGTERM
			h.wait(t)
		}},
		{"worker crashes before its restart is confirmed", func(h *harness) {
			h.restarter.onRestart = func() { h.meter.set(100 * mb); h.child.restarted() }
		}, func(t *testing.T, h *harness) {
			testutil.Eventually(t, within, "the restart in place", func() bool { return h.rec.count("restart:max_rss") == 1 })
			h.meter.moreChecks(t, 2)
			h.child.exited <- &child.Exit{Code: 1, Started: h.child.StartedAt()}
			h.wait(t)
		}},
		{"restart in place fails", func(h *harness) {
			h.restarter.err = errors.New("start worker: exec: no such file")
		}, func(t *testing.T, h *harness) { h.wait(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 600*mb)
			tc.set(h)
			h.start()
			tc.end(t, h)
			if _, held, _ := h.fleet.Local.Held(ctx); held {
				t.Fatalf("lease still held after the agent ended: %v", h.rec.list())
			}
			if h.rec.count("handover") != 0 {
				t.Errorf("handed over though no other agent carries on: %v", h.rec.list())
			}
		})
	}
	// The platform's restart failed: the dyno crash-restarts, so the lease
	// is handed over for the agent that comes next, not released.
	h := newHarness(t, 600*mb)
	h.restarter.next, h.restarter.err = Exit, errors.New("heroku api: 500 after 5 attempts")
	h.start()
	h.wait(t)
	lease, held, _ := h.fleet.Local.Held(ctx)
	if !held || !lease.HandedOver() || h.rec.count("release") != 0 {
		t.Fatalf("after a failed platform restart: lease %+v held %v, events %v; want it handed over", lease, held, h.rec.list())
	}
}

// Renewed at every step: while quieting and draining, while the platform
// is asked, while the agent awaits the TERM, and after it until the worker
// has stopped (Redis may lose its data at any of them).
func TestTheLeaseIsRenewedAtEveryStep(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.next = AwaitTermination
	h.agent.Settings.TerminationWait = time.Minute
	h.agent.Settings.GraceTime = time.Minute
	h.agent.Quieter.(*fakeQuieter).drained = func() bool { return h.fleet.renewedIn(heartbeat.StateDraining) >= 3 }
	h.restarter.onRestart = func() {
		testutil.Eventually(t, within, "renewals while the platform is asked", func() bool { return h.fleet.renewedIn(heartbeat.StateRestarting) >= 3 })
	}
	var afterTerm int
	h.child.onTerminate = func() {
		start := h.fleet.renewCount()
		testutil.Eventually(t, within, "renewals while the worker stops after TERM", func() bool { return h.fleet.renewCount() >= start+3 })
		afterTerm = h.fleet.renewCount() - start
	}
	h.start()
	testutil.Eventually(t, within, "the API restart", func() bool { return h.rec.count("restart:max_rss") == 1 })
	before := h.fleet.renewCount()
	testutil.Eventually(t, within, "renewals while awaiting TERM", func() bool { return h.fleet.renewCount() >= before+3 })
	h.signals <- syscall.SIGTERM
	h.wait(t)
	if afterTerm < 3 {
		t.Errorf("%d renewals after TERM", afterTerm)
	}
}

type countingFleet struct {
	*heartbeat.Local
	mu        sync.Mutex
	publishes int
}

func (f *countingFleet) Publish(ctx context.Context, p heartbeat.Presence) error {
	f.mu.Lock()
	f.publishes++
	f.mu.Unlock()
	return f.Local.Publish(ctx, p)
}

func (f *countingFleet) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.publishes
}

type jobEnds chan struct{}

func (j jobEnds) JobEnded() <-chan struct{} { return j }

// A burst of job ends samples memory after each, but publishes the presence
// (a Redis write per check) at most once a second.
func TestJobEndsBurstPublishesAtMostOncePerSecond(t *testing.T) {
	clock := testutil.NewClock()
	meter := &fakeMeter{rss: 100 * mb}
	fleet := &countingFleet{Local: heartbeat.NewLocal("worker.1", 1)}
	ends := make(jobEnds)
	a := &Agent{
		Settings: Settings{Policy: Policy{MaxRSS: 500 * mb, SustainChecks: 2}, Limit: 500 * mb,
			CheckSchedule: every(time.Hour), GraceTime: time.Second, Dyno: "worker.1"},
		Meter: meter, Fleet: fleet, JobEnds: ends, Now: clock.Now,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testutil.Eventually(t, within, "the start check", func() bool { return fleet.count() == 1 })
	for range 50 {
		ends <- struct{}{}
	}
	testutil.Eventually(t, within, "a check after each job end", func() bool {
		meter.mu.Lock()
		defer meter.mu.Unlock()
		return meter.samples == 51
	})
	if n := fleet.count(); n != 1 {
		t.Fatalf("%d presences published for a start check and 50 job ends within a second, want 1", n)
	}
	clock.Add(publishEvery)
	ends <- struct{}{}
	testutil.Eventually(t, within, "a publish once a second has passed", func() bool { return fleet.count() == 2 })
}

// On Heroku the platform's SIGTERM reaches the worker too, and Heroku's own
// KILL follows 30 s later: the worker gets that time (PlatformStopWait), not
// SHUTDOWN_WAIT. An interrupt from a terminal keeps SHUTDOWN_WAIT.
func TestThePlatformsTermGetsThePlatformsTime(t *testing.T) {
	for _, tc := range []struct {
		sig      syscall.Signal
		platform time.Duration
		within   bool
	}{
		{syscall.SIGTERM, 35 * time.Second, true},
		{syscall.SIGINT, 35 * time.Second, false},
		{syscall.SIGTERM, 0, false}, // off Heroku: SHUTDOWN_WAIT
	} {
		t.Run(fmt.Sprintf("%v/%v", tc.sig, tc.platform), func(t *testing.T) {
			h := newHarness(t, 100*mb)
			h.agent.Settings.PlatformStopWait = tc.platform
			h.start()
			h.meter.moreChecks(t, 1)
			h.signals <- tc.sig
			h.wait(t)
			if got := h.rec.count("within:35s"); got != map[bool]int{true: 1, false: 0}[tc.within] {
				t.Errorf("events %v: want the platform's wait %v", h.rec.list(), tc.within)
			}
			if h.rec.count("terminate:"+tc.sig.String()) != 1 {
				t.Errorf("events %v: %v not forwarded once", h.rec.list(), tc.sig)
			}
		})
	}
}

// countingMetrics counts the restarts done in place after a refusal.
type countingMetrics struct {
	nopMetrics
	mu        sync.Mutex
	fallbacks int
}

func (m *countingMetrics) RestartFallback() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fallbacks++
}

func (m *countingMetrics) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fallbacks
}

// The platform refuses the restart for good (a review app's token gets
// 403): the worker is restarted in place instead of the agent exiting into
// a crash loop; the lease handed over for a successor that will never come
// is released once the new worker is healthy; the next restart goes in
// place without asking the platform again; and when the agent ends the
// lease is not left handed over.
func TestARefusedPlatformRestartIsDoneInPlace(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.agent.Settings.ConfirmAfter = 20 * time.Millisecond
	h.restarter.next = Exit
	h.restarter.err = fmt.Errorf("heroku api: 403 forbidden: %w", ErrRestartRefused)
	h.restarter.onRestart = func() { h.rec.add("api") }
	inPlace := &fakeRestarter{rec: h.rec, next: Continue, onRestart: func() {
		h.rec.add("in_place")
		h.child.restarted()
	}}
	h.agent.Fallback = inPlace
	m := &countingMetrics{}
	h.agent.Metrics = m
	logs := &testutil.Buffer{}
	h.agent.Logger = slog.New(slog.NewTextHandler(logs, nil))
	h.start()
	testutil.Eventually(t, within, "two restarts in place, each lease released", func() bool {
		return h.rec.count("in_place") >= 2 && h.rec.count("release") >= 2
	})
	err := h.stop(t)
	var ee *ExitError
	if errors.As(err, &ee) && ee.Code != 0 {
		t.Fatalf("agent ended with %v", err)
	}
	got := h.rec.list()
	if n := h.rec.count("api"); n != 1 {
		t.Errorf("the platform was asked %d times, want once: %v", n, got)
	}
	if n := h.rec.count("handover"); n != 1 {
		t.Errorf("%d hand-overs, want only the one before the refused call: %v", n, got)
	}
	// Taken back before the restart in place: no new dyno may claim it.
	if i, j := slices.Index(got, "take_back"), slices.Index(got, "in_place"); i < 0 || i > j {
		t.Errorf("events %v: the hand-over was not taken back before the restart in place", got)
	}
	if h.rec.count("stop") != 0 {
		t.Errorf("the worker was stopped as if the agent exited: %v", got)
	}
	first := slices.Index(got, "in_place")
	second := first + 1 + slices.Index(got[first+1:], "in_place")
	if !slices.Contains(got[first:second], "release") {
		t.Errorf("events %v: the first restart's lease not released before the second", got)
	}
	if lease, held, _ := h.fleet.Local.Held(context.Background()); held {
		t.Errorf("lease left %+v after the agent ended", lease)
	}
	if n := m.count(); n < 2 {
		t.Errorf("%d fallbacks counted, want one per restart in place (>= 2)", n)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 0 {
		t.Errorf("the agent logged %d errors; the refusal is logged once, by the restarter:\n%s", n, logs)
	}
	if n := strings.Count(logs.String(), "event=restart_fallback"); n != 1 {
		t.Errorf("restart_fallback logged %d times, want once:\n%s", n, logs)
	}
}

// A refusal with no worker to restart in place still ends the agent.
func TestARefusedPlatformRestartWithoutFallbackExits(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.next = Exit
	h.restarter.err = fmt.Errorf("heroku api: 403 forbidden: %w", ErrRestartRefused)
	h.start()
	var ee *ExitError
	if err := h.wait(t); !errors.As(err, &ee) || ee.Code != 1 {
		t.Fatalf("err = %v, want exit 1", err)
	}
}

// l2met and Librato group a measurement by name and source=: every
// measurement line names its dyno, under dynocycle's own prefix, never
// Heroku's memory_rss.
func TestMeasurementLinesCarryTheirSourceAndPrefix(t *testing.T) {
	h := newHarness(t, 600*mb)
	h.restarter.onRestart = func() { h.meter.set(100 * mb); h.child.restarted() }
	logs := &testutil.Buffer{}
	h.agent.Logger = slog.New(slog.NewTextHandler(logs, nil))
	h.start()
	testutil.Eventually(t, within, "a restart", func() bool { return h.rec.count("restart:max_rss") == 1 })
	h.stop(t)
	var measured int
	for _, l := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(l, "sample#") && !strings.Contains(l, "count#") && !strings.Contains(l, "measure#") {
			continue
		}
		measured++
		if !strings.Contains(l, " source=worker.1 ") {
			t.Errorf("measurement without source=worker.1: %s", l)
		}
		for _, f := range strings.Fields(l) {
			for _, p := range []string{"sample#", "count#", "measure#"} {
				if strings.HasPrefix(f, p) && !strings.HasPrefix(f, p+"dynocycle.") {
					t.Errorf("measurement %s outside the dynocycle. prefix: %s", f, l)
				}
			}
		}
	}
	for _, want := range []string{"sample#dynocycle.memory_rss=600.0MB", "sample#dynocycle.memory_limit=500.0MB", "count#dynocycle.restart=1"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %s in the log:\n%s", want, logs)
		}
	}
	if measured < 2 {
		t.Errorf("%d measurement lines", measured)
	}
}
