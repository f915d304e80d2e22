package heartbeat

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/internal/testpg"
	"github.com/dynocycle/dynocycle/internal/testredis"
)

// Side-by-side benchmarks of the two fleet stores (BENCHMARKS.md):
//
//	go test ./heartbeat/ -run '^$' -bench 'StoreHandoff|StoreWatching' -benchtime=1x

// handoffFleet is what the hand-off benchmark needs of a store.
type handoffFleet interface {
	Acquire(ctx context.Context) (Lease, error)
	Release(ctx context.Context, l Lease) error
	SlotFreed() <-chan struct{}
}

// BenchmarkStoreHandoff measures, for each store, the time from a holder
// calling Release to the next of 20 waiting dynos returning from Acquire,
// the waiters woken by the store (Redis pub/sub, Postgres LISTEN/NOTIFY).
// b.N hand-offs per run.
func BenchmarkStoreHandoff(b *testing.B) {
	const waiters = 20
	b.Run("redis", func(b *testing.B) {
		srv := testredis.Start(b)
		var fleets []handoffFleet
		for i := range waiters + 1 {
			f := newFleet(b, srv, RedisOptions{Dyno: fmt.Sprintf("worker.%d", i), Settle: -1, LeaseTTL: time.Minute})
			waitSignal(b, f.SlotFreed(), 10*time.Second, "subscribed")
			fleets = append(fleets, f)
		}
		runHandoff(b, fleets)
	})
	b.Run("postgres", func(b *testing.B) {
		srv := testpg.Start(b)
		var fleets []handoffFleet
		for i := range waiters + 1 {
			f := newPG(b, srv, PostgresOptions{Dyno: fmt.Sprintf("worker.%d", i), Settle: -1, LeaseTTL: time.Minute})
			waitSignal(b, listen(b, f), 10*time.Second, "listening")
			fleets = append(fleets, f)
		}
		runHandoff(b, fleets)
	})
}

// runHandoff: fleets[0] takes the slot; the others wait on SlotFreed, and
// each winner releases at once, b.N times.
func runHandoff(b *testing.B, fleets []handoffFleet) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lease, err := fleets[0].Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu         sync.Mutex
		releasedAt time.Time
		lat        = make([]time.Duration, 0, b.N)
		done       = make(chan struct{})
		holding    atomic.Int32
	)
	var wg sync.WaitGroup
	for _, f := range fleets[1:] {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-f.SlotFreed():
				case <-time.After(time.Second): // a lost wake-up must not stall the run
				}
				l, err := f.Acquire(ctx)
				if err != nil {
					continue
				}
				if n := holding.Add(1); n > 1 {
					b.Errorf("%d holders at once: %+v", n, l)
				}
				mu.Lock()
				lat = append(lat, time.Since(releasedAt))
				last := len(lat) == b.N
				releasedAt = time.Now()
				mu.Unlock()
				if last {
					close(done)
					return
				}
				holding.Add(-1)
				// The run can end while this release's reply is still on its
				// way (the next holder only needed its commit): not an error.
				if err := f.Release(ctx, l); err != nil && ctx.Err() == nil {
					b.Errorf("release %+v: %v", l, err)
					return
				}
			}
		})
	}
	b.ResetTimer()
	mu.Lock()
	releasedAt = time.Now()
	mu.Unlock()
	if err := fleets[0].Release(ctx, lease); err != nil {
		b.Fatal(err)
	}
	<-done
	b.StopTimer()
	cancel()
	wg.Wait()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
}

// watchingFleet is what a watching agent does to its store.
type watchingFleet interface {
	Publish(ctx context.Context, p Presence) error
	Run(ctx context.Context) error
}

// BenchmarkStoreWatching runs N watching agents per store, each publishing
// its presence every interval (as at CHECK_SCHEDULE) and listening for
// freed slots, for a fixed time, and reports the server's CPU per agent
// (scaled to dynocycle's default check interval of 5 s), its CPU per
// Publish (both net of the server's idle CPU), and the connections the
// agents hold. CPU comes from /proc in 10 ms ticks: read it as an order of
// magnitude.
func BenchmarkStoreWatching(b *testing.B) {
	const (
		interval = 500 * time.Millisecond
		period   = 10 * time.Second
	)
	for _, n := range []int{10, 50, 200} {
		b.Run(fmt.Sprintf("redis/N=%d", n), func(b *testing.B) {
			srv := testredis.Start(b)
			pid := redisPID(b, srv.Port)
			fleets := make([]watchingFleet, n)
			for i := range fleets {
				fleets[i] = newFleet(b, srv, RedisOptions{Dyno: fmt.Sprintf("worker.%d", i+1), Settle: -1})
			}
			conns := func() int {
				c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
				defer c.Close()
				info, _ := c.Info(context.Background(), "clients").Result()
				for _, line := range strings.Split(info, "\r\n") {
					if v, ok := strings.CutPrefix(line, "connected_clients:"); ok {
						n, _ := strconv.Atoi(v)
						return n - 1 // this client
					}
				}
				return -1
			}
			runWatching(b, fleets, interval, period, func() time.Duration { return cpuOfTree(b, pid) }, conns)
		})
		b.Run(fmt.Sprintf("postgres/N=%d", n), func(b *testing.B) {
			srv := testpg.Start(b, testpg.Options{MaxConnections: 250})
			fleets := make([]watchingFleet, n)
			for i := range fleets {
				fleets[i] = newPG(b, srv, PostgresOptions{Dyno: fmt.Sprintf("worker.%d", i+1), Settle: -1})
			}
			admin := adminConn(b, srv)
			conns := func() int {
				var k int
				if err := admin.QueryRow(context.Background(),
					"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dynocycle-worker.%'").Scan(&k); err != nil {
					b.Fatal(err)
				}
				return k
			}
			runWatching(b, fleets, interval, period, func() time.Duration { return cpuOfTree(b, srv.PID()) }, conns)
		})
	}
}

func runWatching(b *testing.B, fleets []watchingFleet, interval, period time.Duration, cpu func() time.Duration, conns func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, f := range fleets {
		wg.Go(func() { _ = f.Run(ctx) })
	}
	p := Presence{State: StateWatching, RSS: 300 << 20, Limit: 512 << 20, StartedAt: time.Now(), Version: "bench",
		TopJobs: []JobGrowth{{Class: "ImportJob", Bytes: 80 << 20, Runs: 3}}}
	// Warm up: every agent connected, its schema checked, its statements prepared.
	for _, f := range fleets {
		if err := f.Publish(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	held := conns()
	// The server's own background work (Redis's cron, Postgres's writer,
	// checkpointer and autovacuum), measured with the agents connected and
	// quiet, is taken out of the figures per publish.
	const idle = 3 * time.Second
	idleFrom, idleBefore := time.Now(), cpu()
	time.Sleep(idle)
	idleRate := float64(cpu()-idleBefore) / float64(time.Since(idleFrom))
	var published sync.WaitGroup
	var mu sync.Mutex
	count := 0
	b.ResetTimer()
	start, before := time.Now(), cpu()
	for i, f := range fleets {
		published.Go(func() {
			// Each agent keeps its own phase across the interval.
			t := time.NewTimer(interval * time.Duration(i) / time.Duration(len(fleets)))
			defer t.Stop()
			for time.Since(start) < period {
				<-t.C
				if err := f.Publish(ctx, p); err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				count++
				mu.Unlock()
				t.Reset(interval)
			}
		})
	}
	published.Wait()
	used, took := cpu()-before, time.Since(start)
	b.StopTimer()
	cancel()
	wg.Wait()
	perPublish := max(0, float64(used)-idleRate*float64(took)) / float64(count)
	// At the default CHECK_SCHEDULE (@every 5s) an agent publishes 0.2 times a second.
	b.ReportMetric(perPublish/float64(time.Microsecond), "server-cpu-µs/publish")
	b.ReportMetric(perPublish*0.2/float64(time.Second)*100, "server-cpu-%/agent@5s")
	b.ReportMetric(float64(held)/float64(len(fleets)), "conns/agent")
	b.ReportMetric(float64(count)/took.Seconds(), "publish/s")
	b.ReportMetric(idleRate*100, "server-idle-cpu-%")
}

// cpuOfTree is the CPU time used by pid and its live children, plus the
// children it reaped, from /proc (clock ticks of 10 ms).
func cpuOfTree(b *testing.B, pid int) time.Duration {
	ticks := func(stat string) (own, reaped int64) {
		// Fields after the command (which may hold spaces) in parentheses.
		f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+2:])
		n := func(i int) int64 { v, _ := strconv.ParseInt(f[i], 10, 64); return v }
		return n(11) + n(12), n(13) + n(14) // utime+stime, cutime+cstime
	}
	read := func(p string) string { s, _ := os.ReadFile(p); return string(s) }
	own, reaped := ticks(read(fmt.Sprintf("/proc/%d/stat", pid)))
	total := own + reaped
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		s := read(p)
		if s == "" {
			continue
		}
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
			o, _ := ticks(s)
			total += o
		}
	}
	return time.Duration(total) * 10 * time.Millisecond
}

// redisPID finds the redis-server listening on port.
func redisPID(b *testing.B, port int) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		c, _ := os.ReadFile(p)
		// redis-server retitles itself "redis-server 127.0.0.1:PORT".
		cmd := strings.ReplaceAll(string(c), "\x00", " ")
		if strings.Contains(cmd, "redis-server") && (strings.Contains(cmd, ":"+strconv.Itoa(port)+" ") ||
			strings.HasSuffix(strings.TrimSpace(cmd), ":"+strconv.Itoa(port)) || strings.Contains(cmd, "--port "+strconv.Itoa(port)+" ")) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	b.Fatalf("no redis-server on port %d", port)
	return 0
}
