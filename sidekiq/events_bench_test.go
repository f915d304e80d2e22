package sidekiq

// Benchmarks of the job events against the heartbeats, with the real
// Sidekiq 6.4.1 (bench/events/run.sh runs them side by side):
//
//	go test -run '^$' -bench 'IdleDrain|JobEndToSample' -benchtime 3x ./sidekiq/
//	go test -run '^$' -bench JobEndToSampleUnderLoad -benchtime 2000x ./sidekiq/

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
	"github.com/dynocycle/dynocycle/jobevents"
	"github.com/dynocycle/dynocycle/memory"
	"github.com/redis/go-redis/v9"
)

// BenchmarkIdleDrain times Quiet + Drain of an idle Sidekiq: from the TSTP
// to "drained". heartbeat: two quiet beats (5 s apart on 6.x); events: the
// quiet line plus the settle.
func BenchmarkIdleDrain(b *testing.B) {
	for _, mode := range []string{"heartbeat", "events"} {
		b.Run(mode, func(b *testing.B) {
			srv := testredis.Start(b)
			var total time.Duration
			for range b.N {
				ev := startEvents(b)
				var env []string
				if mode == "events" {
					env = []string{jobevents.Env + "=" + ev.Path()}
				}
				sk := startSidekiqApp(b, srv, testHost, eventsApp, env, "-c", "2", "-t", "5")
				w := &Worker{Reader: &Reader{Client: newClient(b, srv)}, Hostname: testHost, PIDs: sk.pids,
					Logger: slog.New(slog.DiscardHandler), PollInterval: 200 * time.Millisecond}
				if mode == "events" {
					w.Events = ev
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				testutil.Until(ctx, b, "sidekiq up", func() bool {
					procs, err := w.Processes(ctx)
					return err == nil && len(procs) == 1 && (mode == "heartbeat" || w.eventsHealthy())
				})
				start := time.Now()
				if err := w.Quiet(ctx); err != nil {
					b.Fatal(err)
				}
				if err := w.Drain(ctx); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				sk.stop(ctx, b)
				cancel()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "drain_ms/op")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// sampleBench is what the job end to sample benchmarks share: a Sidekiq
// with events and the given number of threads, a Worker running on its
// events, and a meter of its tree.
type sampleBench struct {
	c      *redis.Client
	w      *Worker
	meter  *memory.Meter
	ctx    context.Context // the benchmark's
	runCtx context.Context // the Worker's Run; ends with stopRun
	// stopRun stops the Worker's Run (also done at the benchmark's end).
	stopRun func()
}

func startSampleBench(b *testing.B, threads string) *sampleBench {
	b.Helper()
	srv := testredis.Start(b)
	c := newClient(b, srv)
	ev := startEvents(b)
	sk := startSidekiqApp(b, srv, testHost, eventsApp, []string{jobevents.Env + "=" + ev.Path()}, "-c", threads, "-t", "5")
	w := &Worker{Reader: &Reader{Client: c}, Hostname: testHost, PIDs: sk.pids, Events: ev,
		Logger: slog.New(slog.DiscardHandler)}
	meter, err := memory.New("tree", "/proc", "/sys/fs/cgroup", sk.pid)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	b.Cleanup(cancel)
	runCtx, stopRun := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	b.Cleanup(func() { stopRun(); <-done })
	testutil.Until(ctx, b, "sidekiq up", func() bool { return w.eventsHealthy() })
	return &sampleBench{c: c, w: w, meter: meter, ctx: ctx, runCtx: runCtx, stopRun: stopRun}
}

// BenchmarkJobEndToSample times a job's end (the job's own clock, just
// before the middleware reports it) to a memory sample of the worker's
// tree taken on JobEnded: p50 and p99 over b.N jobs run one after another.
func BenchmarkJobEndToSample(b *testing.B) {
	sb := startSampleBench(b, "5")
	c, w, meter, ctx := sb.c, sb.w, sb.meter, sb.ctx

	lat := make([]float64, 0, b.N)
	for i := range b.N {
		push(b, c, "BloatJob", i, 0)
		select {
		case <-w.JobEnded():
		case <-ctx.Done():
			b.Fatal("no job end")
		}
		if _, err := meter.Sample(ctx); err != nil {
			b.Fatal(err)
		}
		sampled := float64(time.Now().UnixNano()) / 1e9
		var span []string
		testutil.Until(ctx, b, "span recorded", func() bool {
			span = strings.Fields(c.LIndex(ctx, "dynocycle:test:spans", int64(i)).Val())
			return len(span) == 4
		})
		end, err := strconv.ParseFloat(span[3], 64)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (sampled-end)*1000)
	}
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50_ms")
	b.ReportMetric(lat[min(len(lat)-1, len(lat)*99/100)], "p99_ms")
	b.ReportMetric(lat[len(lat)-1], "max_ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkJobEndToSampleUnderLoad is BenchmarkJobEndToSample with ten
// threads busy: b.N jobs of 5 ms each queued at once, so jobs end about a
// millisecond apart and the gem's batching, the agent's read pace and the
// sample gap all come into play. A sample is taken on each JobEnded; each
// job's latency is from its end to the first sample after it.
func BenchmarkJobEndToSampleUnderLoad(b *testing.B) {
	sb := startSampleBench(b, "10")
	c, w, meter, ctx, runCtx := sb.c, sb.w, sb.meter, sb.ctx, sb.runCtx

	sampled := make(chan []float64, 1)
	go func() {
		var at []float64
		for {
			select {
			case <-w.JobEnded():
				if _, err := meter.Sample(ctx); err == nil {
					at = append(at, float64(time.Now().UnixNano())/1e9)
				}
			case <-runCtx.Done():
				sampled <- at
				return
			}
		}
	}()
	for i := range b.N {
		push(b, c, "BloatJob", i, 0, 0.005)
	}
	testutil.Until(ctx, b, "all jobs done", func() bool {
		return c.SCard(ctx, "dynocycle:test:done").Val() == int64(b.N)
	})
	// Time for the last end's sample (twice the 50 ms goal); a job with no
	// sample after it fails the benchmark below.
	time.Sleep(100 * time.Millisecond)
	sb.stopRun()
	at := <-sampled
	lat := make([]float64, 0, b.N)
	for _, line := range c.LRange(ctx, "dynocycle:test:spans", 0, -1).Val() {
		span := strings.Fields(line)
		end, err := strconv.ParseFloat(span[3], 64)
		if err != nil {
			b.Fatal(err)
		}
		i, _ := slices.BinarySearch(at, end)
		if i == len(at) {
			b.Fatalf("no sample after the job that ended at %.6f", end)
		}
		lat = append(lat, (at[i]-end)*1000)
	}
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50_ms")
	b.ReportMetric(lat[min(len(lat)-1, len(lat)*99/100)], "p99_ms")
	b.ReportMetric(lat[len(lat)-1], "max_ms")
	b.ReportMetric(float64(len(at))/float64(b.N), "samples/job")
	b.ReportMetric(0, "ns/op")
}
