package sidekiq

// The job events of the gem's middleware (gem/lib/dynocycle/sidekiq.rb),
// with the real Sidekiq 6.4.1 and a real jobevents.Listener.

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
	"github.com/dynocycle/dynocycle/jobevents"
)

const eventsApp = "testdata/events_app.rb"

func startEvents(t testing.TB) *jobevents.Listener {
	t.Helper()
	l, err := jobevents.Listen(filepath.Join(t.TempDir(), "events.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("events Run: %v", err)
		}
	})
	return l
}

// eventsWorker is a Worker with events, logging to t and to the returned
// buffer; its Run runs until the test ends.
func eventsWorker(t *testing.T, srv *testredis.Server, sk *sidekiqProc, ev *jobevents.Listener) (*Worker, *testutil.Buffer) {
	t.Helper()
	buf := &testutil.Buffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), buf), &slog.HandlerOptions{Level: slog.LevelDebug}))
	w := &Worker{
		Reader: &Reader{Client: newClient(t, srv), Logger: log}, Hostname: testHost, PIDs: sk.pids,
		Signal: (&signalLog{}).Signal, Events: ev, Logger: log, PollInterval: 200 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return w, buf
}

func liveInFlight(w *Worker, pid int) (int, bool) {
	p, ok := w.liveProc(pid)
	return p.InFlight, ok
}

func TestEventsFromSidekiq(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClient(t, srv)
	ev := startEvents(t)
	sk := startSidekiqApp(t, srv, testHost, eventsApp, []string{jobevents.Env + "=" + ev.Path()}, "-c", "2", "-t", "5")
	w, logs := eventsWorker(t, srv, sk, ev)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The hello at startup: healthy without a heartbeat read.
	testutil.Until(ctx, t, "hello from sidekiq", func() bool { return w.eventsHealthy() })
	w.Attribute(0) // start an interval

	push(t, c, "BloatJob", 1, 1)
	select {
	case <-w.JobEnded():
	case <-ctx.Done():
		t.Fatal("no job end")
	}
	testutil.Until(ctx, t, "job 1 done", func() bool { return isDone(t, c, 1) })
	testutil.Until(ctx, t, "no job in flight", func() bool { n, ok := liveInFlight(w, sk.pid()); return ok && n == 0 })
	// The growth goes to the job that just ran, with its run counted once.
	w.Attribute(1 << 20)
	if top := w.TopJobs(5); len(top) != 1 || top[0].Class != "BloatJob" || top[0].Runs != 1 || top[0].Bytes != 1<<20 {
		t.Fatalf("TopJobs = %+v; want BloatJob, 1 run, 1 MiB", top)
	}
	push(t, c, "ChainJob")
	testutil.Until(ctx, t, "chain recorded", func() bool { return c.LLen(ctx, "dynocycle:test:chain").Val() == 1 })
	if chain := c.LIndex(ctx, "dynocycle:test:chain", 0).Val(); !strings.HasPrefix(chain, "Dynocycle::Sidekiq::Middleware") {
		t.Fatalf("middleware chain %q: want the middleware first", chain)
	}

	// An idle Sidekiq: drained once its quiet line arrives, by the events.
	if err := w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if !strings.Contains(logs.String(), `msg="sidekiq drained" processes=1 source=events`) {
		t.Fatalf("not drained by the events:\n%s", logs.String())
	}
	if p, _ := ev.Proc(sk.pid()); p.QuietAt.IsZero() {
		t.Fatal("drained without the quiet line")
	}
}

func TestEventsDrainWaitsForJobAcrossQuiet(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClient(t, srv)
	ev := startEvents(t)
	sk := startSidekiqApp(t, srv, testHost, eventsApp, []string{jobevents.Env + "=" + ev.Path()}, "-c", "2", "-t", "20")
	w, logs := eventsWorker(t, srv, sk, ev)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	testutil.Until(ctx, t, "hello from sidekiq", func() bool { return w.eventsHealthy() })
	push(t, c, "SlowJob", 7, 2)
	testutil.Until(ctx, t, "job in flight", func() bool { n, ok := liveInFlight(w, sk.pid()); return ok && n == 1 })
	if err := w.Quiet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	drainedAt := float64(time.Now().UnixNano()) / 1e9
	if !isDone(t, c, 7) {
		t.Fatal("drained while the job ran")
	}
	spans := c.LRange(ctx, "dynocycle:test:spans", 0, -1).Val()
	if len(spans) != 1 {
		t.Fatalf("spans = %q", spans)
	}
	end, err := strconv.ParseFloat(strings.Fields(spans[0])[3], 64)
	if err != nil || end > drainedAt {
		t.Fatalf("job ended at %v, drained at %v", end, drainedAt)
	}
	if !strings.Contains(logs.String(), `busy=1 jobs=SlowJob source=events`) {
		t.Fatalf("the quiet log does not show the running job from the events:\n%s", logs.String())
	}
}

// The middleware never fails a job: without dynocycle it is not installed,
// and with a dead agent (nothing listens) every job still runs once.
func TestEventsMiddlewareWithoutAgent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		env   []string
		chain string
	}{
		{"outside dynocycle", nil, "-"},
		{"dead agent", []string{jobevents.Env + "=" + filepath.Join(t.TempDir(), "gone.sock")}, "Dynocycle::Sidekiq::Middleware"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := testredis.Start(t)
			c := newClient(t, srv)
			sk := startSidekiqApp(t, srv, testHost, eventsApp, tc.env, "-c", "5", "-t", "5")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			const n = 50
			for i := range n {
				push(t, c, "BloatJob", i, 0)
			}
			push(t, c, "ChainJob")
			testutil.Until(ctx, t, "all jobs done", func() bool {
				return c.SCard(ctx, "dynocycle:test:done").Val() == n && c.LLen(ctx, "dynocycle:test:chain").Val() == 1
			})
			if got := c.LLen(ctx, "dynocycle:test:spans").Val(); got != n {
				t.Fatalf("%d runs of %d jobs", got, n)
			}
			chain := c.LIndex(ctx, "dynocycle:test:chain", 0).Val()
			if !strings.HasPrefix(chain, tc.chain) {
				t.Fatalf("middleware chain %q; want it to start with %q", chain, tc.chain)
			}
			sk.stop(ctx, t)
		})
	}
}
