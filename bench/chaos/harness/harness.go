// Package harness runs dynocycle's fleet chaos test: N Heroku-like worker
// dynos (internal/dynosim), each a real Sidekiq wrapped by the built
// dynocycle, sharing one redis-server, restarted through a fake Platform API,
// under a steady stream of bloating jobs, with faults injected on a seeded
// schedule. It records every restart and checks the fleet's invariants.
//
// The command in bench/chaos runs it at full size; e2e/chaos_test.go runs a
// small version in the test suite.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/internal/dynosim"
	"github.com/dynocycle/dynocycle/internal/fakeheroku"
)

// Config sets a run up. Zero values take the defaults noted.
type Config struct {
	Root  string // repository root: examples/sidekiq and bench/chaos live there
	Agent string // the built dynocycle binary
	Dir   string // scratch directory (Redis data, logs)

	Dynos    int           // default 10
	Duration time.Duration // load and faults; default 10m
	Seed     uint64        // the fault schedule and the job sizes
	Slots    int           // MAX_CONCURRENT_RESTARTS; default 1

	MaxRSSMB   int     // MAX_RSS in MB; default 110 (Sidekiq boots at about 35MB)
	JobMB      int     // memory each BloatJob retains; default 4
	JobsPerSec float64 // the job stream; default 0.8
	// Faults is how many faults to inject, spread over the run after a
	// warm-up; at least one of each kind when >= 6. Default: one a minute, at least 6.
	Faults int
	Grace  time.Duration // the dyno manager's SIGTERM to SIGKILL; default 30s, as on Heroku
	// Store is where the agents coordinate: StoreRedis (default, the jobs'
	// Redis) or StorePostgres (a private PostgreSQL, postgres.go).
	Store string

	Log      io.Writer // progress; nil: none
	FleetLog io.Writer // every line of every dyno; nil: none
}

// The agents' settings. SHUTDOWN_WAIT covers Sidekiq's -t 5 plus 5 s.
const (
	shutdownWait = 12 * time.Second
	graceTime    = 15 * time.Second
	minUptime    = 20 * time.Second
	sidekiqT     = 5
)

func (c *Config) defaults() {
	if c.Dynos <= 0 {
		c.Dynos = 10
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Minute
	}
	if c.Slots <= 0 {
		c.Slots = 1
	}
	if c.Store == "" {
		c.Store = StoreRedis
	}
	if c.MaxRSSMB <= 0 {
		c.MaxRSSMB = 110
	}
	if c.JobMB <= 0 {
		c.JobMB = 4
	}
	if c.JobsPerSec <= 0 {
		c.JobsPerSec = 0.8
	}
	if c.Faults <= 0 {
		c.Faults = max(6, int(c.Duration/time.Minute))
	}
	if c.Grace <= 0 {
		c.Grace = 30 * time.Second
	}
}

// Fault kinds.
const (
	FaultKillAgent = "kill_agent" // SIGKILL of one agent process (not its worker)
	FaultRedisDown = "redis_down" // redis-server killed, started again on the same data
	FaultAPI429    = "api_429"    // the Platform API answers 429 to every call
	FaultAPI500    = "api_500"    // the Platform API answers 500 to every call
	// FLUSHALL while a restart is under way (the last fault of the
	// schedule; it waits up to flushWait, past the end of the load if need
	// be, for a restart to start): Redis loses the fleet's leases, queue and epoch, as
	// after a failover to an empty replica. The app's queue and the jobs'
	// records are read and flushed in one transaction and written back at
	// once: a flush drops queued jobs whatever the supervisor does, and the
	// run checks that dynocycle loses none.
	FaultFlushAll = "flushall"
	// A second app starts on the same Redis (same database, the same dyno
	// names worker.1 and worker.2, its own HEROKU_APP_NAME), its bloating
	// workers restarting through its own Platform API for the rest of the
	// run: neither app may restart more than MAX_CONCURRENT_RESTARTS of its
	// own dynos at once, nor touch the other's slots.
	FaultSecondApp = "second_app"
)

// secondAppDynos is how many dynos the second app runs.
const secondAppDynos = 2

// The API faults answer the next calls, whenever they come, so that each
// one bites: 500 to a whole restart's budget of calls (platform's
// DefaultMaxAttempts: that agent exits 1 and is crash-restarted), 429 twice
// (the agent waits out the rate limit twice, then gets 202).
const (
	api500Calls = 5
	api429Calls = 2
)

// Fault is one injected fault. An API fault starts when its answers are
// queued and ends with the last of them; a kill is an instant.
type Fault struct {
	Kind       string
	Dyno       string // kill_agent
	Start, End time.Time
}

// Sample is one reading of a dyno worker's resident memory.
type Sample struct {
	At  time.Time
	RSS uint64
}

// Result is what a run saw.
type Result struct {
	Config     Config
	Start      time.Time
	LoadEnd    time.Time // the job stream and faults stopped
	DrainedAt  time.Time // every job completed (zero if not)
	End        time.Time // the fleet stopped
	TSTPDyno   string    // the dyno whose Sidekiq ignores TSTP
	Faults     []Fault
	Samples    map[string][]Sample
	Intervals  []dynosim.Interval
	Procs      []dynosim.Proc
	Stops      []dynosim.Stop // every stop, the final ones included
	FinalStops []dynosim.Stop
	APICalls   []fakeheroku.Call
	Violations []string // header violations seen by the fake API

	Enqueued, Started, Done int
	Lost                    []int // enqueued, never completed
	Reruns                  int   // runs begun more than once (handed back at a shutdown)

	MaxConcurrent int
	// The second app (FaultSecondApp), if it ran: the most of its dynos
	// restarting at once, and its completed restarts.
	SecondApp           bool
	SecondMaxConcurrent int
	SecondRestarts      int
	Cycles              []time.Duration // lease taken -> new worker started, per completed restart
	LeaseHolds          []time.Duration // lease taken -> released by the reborn agent
	Broken              []string        // invariants that did not hold
	Notes               []string        // what else was seen
	Lines               []dynosim.Line
}

// OK reports whether every invariant held.
func (r *Result) OK() bool { return len(r.Broken) == 0 }

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "%s chaos: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
}

// Run runs the fleet for cfg.Duration under load and faults, lets it finish
// its jobs, stops it, and checks the invariants. An error means the run
// could not be carried out; broken invariants are in Result.Broken.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	if cfg.Dir == "" {
		return nil, fmt.Errorf("harness: Config.Dir is required")
	}
	sidekiq, err := lookPath("sidekiq")
	if err != nil {
		return nil, fmt.Errorf("sidekiq not found (apt-get install ruby-sidekiq): %w", err)
	}
	// go-redis logs every failed dial while redis-server is down on purpose.
	redis.SetLogger(quietLogger{})
	rs, err := startRedis(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer rs.kill()
	db, dbEnv, err := startFleetDB(cfg) // postgres.go
	if err != nil {
		return nil, err
	}
	defer db.close()
	client := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", rs.port),
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, MaxRetries: -1})
	defer client.Close()

	token := "HRKU-chaos-" + randHex(12)
	sim, fake := dynosim.WithFake(dynosim.Config{
		Agent: cfg.Agent, App: "dynocycle-chaos", Token: token, RedisURL: rs.url(),
		Grace: cfg.Grace, CrashDelay: time.Second, Log: cfg.FleetLog,
		Env: append([]string{
			"PLATFORM=heroku", "WORKER=sidekiq", "MEMORY_SOURCE=tree",
			fmt.Sprintf("MAX_RSS=%dMB", cfg.MaxRSSMB), "CHECK_SCHEDULE=@every 2s", "SUSTAIN_CHECKS=2",
			"MIN_UPTIME=" + minUptime.String(), "GRACE_TIME=" + graceTime.String(),
			"SHUTDOWN_WAIT=" + shutdownWait.String(), "CONFIRM_AFTER=20s",
			"MAX_CONCURRENT_RESTARTS=" + strconv.Itoa(cfg.Slots), "MIN_HEALTHY_PEERS=1",
			// New dynos claim a hand-over within seconds here; an empty
			// Redis settles for the boot allowance.
			"BOOT_ALLOWANCE=15s",
		}, dbEnv...),
	})
	defer fake.Close()
	defer sim.Close()
	second, err := newSecondApp(cfg, rs.url())
	if err != nil {
		return nil, err
	}
	defer second.close()

	res := &Result{Config: cfg, Start: time.Now(), Samples: map[string][]Sample{}}
	res.TSTPDyno = fmt.Sprintf("worker.%d", cfg.Dynos)
	for i := 1; i <= cfg.Dynos; i++ {
		name := fmt.Sprintf("worker.%d", i)
		app := filepath.Join(cfg.Root, "bench/chaos/app.rb")
		if name == res.TSTPDyno {
			app = filepath.Join(cfg.Root, "bench/chaos/app_ignore_tstp.rb")
		}
		if err := sim.Start(name, []string{sidekiq, "-r", app, "-c", "5", "-t", strconv.Itoa(sidekiqT)}); err != nil {
			return nil, err
		}
	}
	cfg.logf("%d dynos started; redis %s; waiting for every Sidekiq", cfg.Dynos, rs.url())
	if err := waitSidekiqs(ctx, client, cfg.Dynos, 90*time.Second); err != nil {
		return nil, err
	}

	// Load, sampling and faults run side by side until LoadEnd.
	rng := mrand.New(mrand.NewPCG(cfg.Seed, 0x5eed))
	loadCtx, stopLoad := context.WithTimeout(ctx, cfg.Duration)
	defer stopLoad()
	var wg sync.WaitGroup
	var enqueued int
	wg.Add(1)
	go func() {
		defer wg.Done()
		enqueued = enqueue(loadCtx, client, cfg, mrand.New(mrand.NewPCG(cfg.Seed, 1)))
	}()
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var samplerWG sync.WaitGroup
	samplerWG.Add(1)
	go func() { defer samplerWG.Done(); sample(sampleCtx, sim, res) }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.Faults = inject(loadCtx, cfg, rng, schedule(cfg, rng), sim, fake, rs, db, client, second)
	}()
	wg.Wait()
	res.LoadEnd = time.Now()
	res.Enqueued = enqueued
	cfg.logf("load and faults over: %d jobs enqueued; waiting for them to complete", enqueued)

	// Let the fleet finish every job (it keeps restarting as it needs to).
	drainDeadline := time.Now().Add(4 * time.Minute)
	for time.Now().Before(drainDeadline) && ctx.Err() == nil {
		n, err := client.SCard(ctx, "dynocycle:test:done").Result()
		if err == nil && int(n) >= enqueued {
			res.DrainedAt = time.Now()
			break
		}
		time.Sleep(time.Second)
	}
	// A restart still under way finishes before the fleet is stopped, so
	// that its interval closes, and a restart already wanted is carried out
	// (a FLUSHALL near the end holds every new lease back for
	// BOOT_ALLOWANCE); bounded.
	settleDeadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(settleDeadline) && (len(sim.Report().Open) > 0 || wantPending(sim)) && ctx.Err() == nil {
		time.Sleep(500 * time.Millisecond)
	}
	res.FinalStops = sim.Close()
	if second.started {
		// A new app's fleet settles before its first lease (BOOT_ALLOWANCE):
		// give it time for one restart, however late it started.
		waitSecondRestart(ctx, second.sim, 60*time.Second)
		_ = second.sim.Close()
		rep := second.sim.Report()
		res.SecondApp, res.SecondMaxConcurrent = true, rep.MaxConcurrent
		for _, n := range rep.Restarts {
			res.SecondRestarts += n
		}
	}
	res.End = time.Now()
	stopSampling()
	samplerWG.Wait()
	cfg.logf("fleet stopped")

	res.Intervals, res.Procs, res.Stops = sim.Intervals(), sim.Procs(), sim.Stops()
	res.APICalls, res.Violations, res.Lines = fake.Calls(), fake.Violations(), sim.Lines()
	apiFaultEnds(res)
	if err := account(ctx, client, res); err != nil {
		return res, err
	}
	check(res, sim.Report(), token)
	checkStore(res) // postgres.go
	return res, nil
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not in PATH", name)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// waitSidekiqs waits until Redis lists n Sidekiq processes.
func waitSidekiqs(ctx context.Context, c *redis.Client, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := c.SCard(ctx, "processes").Result()
		if err == nil && int(got) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d Sidekiq processes up after %v (err %v)", got, n, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// enqueue pushes BloatJobs at cfg.JobsPerSec until ctx ends, the way
// Sidekiq::Client does (SADD queues, LPUSH queue:default), and returns how
// many were pushed. Job n holds JobMB for 0.2 to 2 s. A push that fails
// (Redis down) is retried with the same n until it succeeds or the load ends.
func enqueue(ctx context.Context, c *redis.Client, cfg Config, rng *mrand.Rand) int {
	every := time.Duration(float64(time.Second) / cfg.JobsPerSec)
	t := time.NewTicker(every)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return n
		case <-t.C:
		}
		secs := 0.2 + rng.Float64()*1.8
		now := float64(time.Now().UnixMicro()) / 1e6
		job, _ := json.Marshal(map[string]any{
			"class": "BloatJob", "args": []any{n + 1, cfg.JobMB, secs}, "retry": false, "queue": "default",
			"jid": randHex(12), "created_at": now, "enqueued_at": now,
		})
		for ctx.Err() == nil {
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			_, err := c.TxPipelined(pctx, func(p redis.Pipeliner) error {
				p.SAdd(pctx, "queues", "default")
				p.LPush(pctx, "queue:default", job)
				return nil
			})
			cancel()
			if err == nil {
				n++
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// sample reads every dyno worker's RSS once a second.
func sample(ctx context.Context, sim *dynosim.Sim, res *Result) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		now := time.Now()
		for dyno, rss := range sim.RSS() {
			if rss == 0 {
				continue // the agent is up but its worker is not (yet)
			}
			res.Samples[dyno] = append(res.Samples[dyno], Sample{At: now, RSS: rss})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// planned is one fault of the schedule, at an offset from the start of the load.
type planned struct {
	kind     string
	at, span time.Duration
}

// schedule spreads cfg.Faults faults over the run after a warm-up (the
// settle time of an empty Redis plus the first bloat), one per slot with a
// seeded kind, jitter and length; each kind at least once when there are
// as many faults as kinds (six). Faults never overlap, so each one's effect can be read alone.
func schedule(cfg Config, rng *mrand.Rand) []planned {
	kinds := []string{FaultKillAgent, FaultRedisDown, FaultAPI429, FaultAPI500, FaultFlushAll, FaultSecondApp}
	var seq []string
	for len(seq) < cfg.Faults {
		perm := slices.Clone(kinds)
		rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		seq = append(seq, perm...)
	}
	seq = storeOutages(cfg, seq[:cfg.Faults]) // postgres.go
	// A FLUSHALL waits for a restart to be under way, past the end of the
	// load if need be: it comes last, so that no other fault waits for it.
	slices.SortStableFunc(seq, func(a, b string) int {
		return boolInt(a == FaultFlushAll) - boolInt(b == FaultFlushAll)
	})
	warm := min(30*time.Second, cfg.Duration/3)
	slot := (cfg.Duration - warm) / time.Duration(cfg.Faults)
	var out []planned
	for i, kind := range seq {
		var span time.Duration
		if kind == FaultRedisDown || kind == FaultDBDown {
			span = min(8*time.Second, slot/2)
		}
		jitter := time.Duration(rng.Int64N(int64(slot/4) + 1))
		out = append(out, planned{kind: kind, at: warm + time.Duration(i)*slot + jitter, span: span})
	}
	return out
}

// inject carries the schedule out until ctx ends; a fault under way is
// always healed (Redis up again, the API answering 202).
func inject(ctx context.Context, cfg Config, rng *mrand.Rand, plan []planned, sim *dynosim.Sim, fake *fakeheroku.Server,
	rs *redisServer, db *fleetDB, client *redis.Client, second *secondApp) []Fault {
	start := time.Now()
	var out []Fault
	for _, p := range plan {
		select {
		case <-ctx.Done():
			return out
		case <-time.After(time.Until(start.Add(p.at))):
		}
		f := Fault{Kind: p.kind, Start: time.Now()}
		switch p.kind {
		case FaultKillAgent:
			dynos := sim.Dynos()
			f.Dyno = dynos[rng.IntN(len(dynos))]
			if pid := sim.Agent(f.Dyno); pid != 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		case FaultRedisDown:
			rs.kill()
		case FaultDBDown:
			db.crash()
		case FaultAPI429:
			fake.QueueStatus(slices.Repeat([]int{http.StatusTooManyRequests}, api429Calls)...)
		case FaultAPI500:
			fake.QueueStatus(slices.Repeat([]int{http.StatusInternalServerError}, api500Calls)...)
		case FaultFlushAll:
			// Past the end of the load if need be: not bound by ctx.
			f.Dyno = waitRestarting(context.WithoutCancel(ctx), sim, flushWait)
			f.Start = time.Now()
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			err := flushKeepingJobs(fctx, client)
			cancel()
			if err != nil {
				cfg.logf("flushall: %v", err)
			}
		case FaultSecondApp:
			if err := second.start(); err != nil {
				cfg.logf("second app: %v", err)
			}
		}
		cfg.logf("fault %s %s", p.kind, f.Dyno)
		if p.kind == FaultRedisDown || p.kind == FaultDBDown {
			select {
			case <-ctx.Done():
			case <-time.After(p.span):
			}
		}
		if p.kind == FaultRedisDown {
			if err := rs.start(); err != nil {
				cfg.logf("redis-server did not come back: %v", err)
			}
		}
		if p.kind == FaultDBDown {
			if err := db.up(); err != nil {
				cfg.logf("postgres did not come back: %v", err)
			}
		}
		f.End = time.Now()
		out = append(out, f)
	}
	return out
}

// apiFaultEnds sets the end of each API fault: the time its last queued
// answer was given (the run's end if some were never asked for).
func apiFaultEnds(res *Result) {
	used := map[int]bool{}
	for i := range res.Faults {
		f := &res.Faults[i]
		status, n := http.StatusTooManyRequests, api429Calls
		switch f.Kind {
		case FaultAPI500:
			status, n = http.StatusInternalServerError, api500Calls
		case FaultAPI429:
		default:
			continue
		}
		f.End = res.End
		for j, c := range res.APICalls {
			if n > 0 && !used[j] && c.Status == status && !c.Time.Before(f.Start) {
				used[j] = true
				n--
				f.End = c.Time
			}
		}
		if n > 0 {
			f.End = res.End
		}
	}
}

// account reads the jobs' records: which completed, which began more than once.
func account(ctx context.Context, c *redis.Client, res *Result) error {
	done, err := c.SMembers(ctx, "dynocycle:test:done").Result()
	if err != nil {
		return fmt.Errorf("read completed jobs: %w", err)
	}
	started, err := c.SCard(ctx, "dynocycle:test:started").Result()
	if err != nil {
		return fmt.Errorf("read started jobs: %w", err)
	}
	starts, _ := c.LLen(ctx, "dynocycle:test:starts").Result()
	res.Started, res.Done = int(started), len(done)
	if starts > started {
		res.Reruns = int(starts - started)
	}
	seen := map[int]bool{}
	for _, s := range done {
		n, _ := strconv.Atoi(s)
		seen[n] = true
	}
	for n := 1; n <= res.Enqueued; n++ {
		if !seen[n] {
			res.Lost = append(res.Lost, n)
		}
	}
	return nil
}

var (
	quietReceived = regexp.MustCompile(`Received TSTP`)
	termTimeout   = regexp.MustCompile(`event=termination_timeout`)
	leaseReleased = regexp.MustCompile(`event=lease_released`)
)

// check evaluates the invariants and fills Broken and Notes.
func check(res *Result, report dynosim.Report, token string) {
	cfg := res.Config
	broke := func(format string, args ...any) { res.Broken = append(res.Broken, fmt.Sprintf(format, args...)) }
	note := func(format string, args ...any) { res.Notes = append(res.Notes, fmt.Sprintf(format, args...)) }

	// 1. Never more than Slots dynos restarting at once.
	res.MaxConcurrent = report.MaxConcurrent
	if report.MaxConcurrent > cfg.Slots {
		broke("%d dynos restarting at once at %s (MAX_CONCURRENT_RESTARTS=%d)", report.MaxConcurrent, report.MaxAt.Format(time.TimeOnly), cfg.Slots)
	}
	if res.SecondApp && res.SecondMaxConcurrent > cfg.Slots {
		broke("the second app had %d dynos restarting at once (MAX_CONCURRENT_RESTARTS=%d)", res.SecondMaxConcurrent, cfg.Slots)
	}
	// 2. No job lost.
	if len(res.Lost) > 0 {
		broke("%d of %d jobs never completed: %v", len(res.Lost), res.Enqueued, head(res.Lost, 20))
	}
	if res.Enqueued == 0 {
		broke("no job was enqueued")
	}
	// 3. Every bloated dyno cycled: a dyno over MAX_RSS at some sample taken
	// a minute or more before the load ended started a new worker after it.
	limit := uint64(cfg.MaxRSSMB) << 20
	for dyno, samples := range res.Samples {
		var lastOver time.Time
		for _, s := range samples {
			if s.RSS > limit && s.At.Before(res.LoadEnd.Add(-time.Minute)) {
				lastOver = s.At
			}
		}
		if lastOver.IsZero() {
			continue
		}
		cycled := false
		for _, l := range res.Lines {
			cycled = cycled || (l.Dyno == dyno && strings.Contains(l.Text, "event=worker_start") && l.Time.After(lastOver))
		}
		if !cycled {
			broke("%s was over MAX_RSS at %s and never started a new worker after", dyno, lastOver.Format(time.TimeOnly))
		}
	}
	for _, dyno := range slices.Sorted(func(yield func(string) bool) {
		for d := range report.Restarts {
			if !yield(d) {
				return
			}
		}
	}) {
		if report.Restarts[dyno] == 0 {
			note("%s was never restarted by dynocycle (crash restarts: %d)", dyno, report.Crashes[dyno])
		}
	}
	// 4. No agent left hung: each stop of the run and at the end was over
	// without SIGKILL, the final ones within SHUTDOWN_WAIT and a margin.
	for _, st := range res.Stops {
		if st.Killed {
			broke("%s[%d] (%s) still had processes %v after SIGTERM: SIGKILL (Heroku's R12)", st.Dyno, st.Gen, st.Why, st.Took().Round(time.Millisecond))
		}
	}
	for _, st := range res.FinalStops {
		if st.Took() > shutdownWait+5*time.Second {
			broke("%s took %v to stop after SIGTERM", st.Dyno, st.Took().Round(time.Millisecond))
		}
	}
	for _, l := range res.Lines {
		if termTimeout.MatchString(l.Text) {
			broke("%s[%d] waited in vain for the platform's SIGTERM: %s", l.Dyno, l.Gen, l.Text)
		}
		if strings.Contains(l.Text, token) {
			broke("the API token leaked into %s's log", l.Dyno)
		}
	}
	if len(res.Violations) > 0 {
		broke("the fake Platform API saw invalid requests: %v", res.Violations)
	}
	// 5. The worker that ignores TSTP really ignored it, and its restarts
	// drained only by GRACE_TIME.
	for _, l := range res.Lines {
		if l.Dyno == res.TSTPDyno && quietReceived.MatchString(l.Text) {
			broke("%s was meant to ignore TSTP but logged %q", l.Dyno, l.Text)
			break
		}
	}
	for _, iv := range res.Intervals {
		if iv.Dyno == res.TSTPDyno && iv.Kind == dynosim.KindRestart && iv.Drained {
			broke("%s ignores TSTP yet reported drained at a restart starting %s", iv.Dyno, iv.Start.Format(time.TimeOnly))
		}
	}

	// Figures: cycle times and lease holds of completed restarts.
	for _, iv := range res.Intervals {
		if iv.Kind != dynosim.KindRestart || !iv.Closed() || iv.Aborted {
			continue
		}
		res.Cycles = append(res.Cycles, iv.End.Sub(iv.Start))
		for _, l := range res.Lines {
			if l.Dyno == iv.Dyno && l.Time.After(iv.End) && leaseReleased.MatchString(l.Text) {
				res.LeaseHolds = append(res.LeaseHolds, l.Time.Sub(iv.Start))
				break
			}
		}
	}
	if res.DrainedAt.IsZero() {
		note("the fleet did not complete every job within 4 minutes of the load's end")
	}
	for _, iv := range report.Open {
		note("%s interval of %s still open at the end (from %s)", iv.Kind, iv.Dyno, iv.Start.Format(time.TimeOnly))
	}
}

func head(xs []int, n int) []int {
	if len(xs) > n {
		return xs[:n]
	}
	return xs
}

// Percentile returns the p-th percentile (0..100) of ds, nearest rank.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// flushWait bounds how long a FLUSHALL waits for a restart to be under way:
// longer than the agents' lease TTL (GRACE_TIME + SHUTDOWN_WAIT +
// CONFIRM_AFTER + 2m), for which the lease of an agent SIGKILLed before it
// handed over holds every other restart back.
const flushWait = 4 * time.Minute

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// waitRestarting waits up to max for a dyno of sim to be in a restart and
// returns its name ("" if none came).
func waitRestarting(ctx context.Context, sim *dynosim.Sim, max time.Duration) string {
	deadline := time.Now().Add(max)
	for {
		for _, iv := range sim.Report().Open {
			if iv.Kind == dynosim.KindRestart {
				return iv.Dyno
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return ""
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The app's data a flush would take with it: Sidekiq's queue and the test
// jobs' records (examples/sidekiq/jobs.rb).
const (
	queueKey = "queue:default"
	doneKey  = "dynocycle:test:done"
	startKey = "dynocycle:test:started"
	runsKey  = "dynocycle:test:starts"
)

// flushKeepingJobs runs FLUSHALL and reads, in the same transaction, what
// the app had queued and recorded, then writes that back: everything
// dynocycle keeps (leases, queue of waiters, presences, epoch) and Sidekiq's
// process records stay lost.
func flushKeepingJobs(ctx context.Context, c *redis.Client) error {
	var queued, runs *redis.StringSliceCmd
	var done, started *redis.StringSliceCmd
	_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		queued = p.LRange(ctx, queueKey, 0, -1)
		done = p.SMembers(ctx, doneKey)
		started = p.SMembers(ctx, startKey)
		runs = p.LRange(ctx, runsKey, 0, -1)
		p.FlushAll(ctx)
		return nil
	})
	if err != nil {
		return err
	}
	_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, "queues", "default")
		for _, list := range []struct {
			key   string
			items []string
		}{{queueKey, queued.Val()}, {runsKey, runs.Val()}} {
			if len(list.items) > 0 {
				p.RPush(ctx, list.key, toAny(list.items)...)
			}
		}
		for _, set := range []struct {
			key   string
			items []string
		}{{doneKey, done.Val()}, {startKey, started.Val()}} {
			if len(set.items) > 0 {
				p.SAdd(ctx, set.key, toAny(set.items)...)
			}
		}
		return nil
	})
	return err
}

func toAny(xs []string) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// secondApp is another app's fleet on the same Redis, started by the
// FaultSecondApp fault: bloater workers under dynocycle, restarted through
// their own fake Platform API.
type secondApp struct {
	sim     *dynosim.Sim
	fake    *fakeheroku.Server
	bloater string
	started bool
}

func newSecondApp(cfg Config, redisURL string) (*secondApp, error) {
	bloater := filepath.Join(cfg.Dir, "bloater")
	build := exec.Command("go", "build", "-o", bloater, "./examples/bloater")
	build.Dir = cfg.Root
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the second app's worker: %w: %s", err, out)
	}
	var log io.Writer
	if cfg.FleetLog != nil {
		log = &prefixWriter{prefix: "app-b ", w: cfg.FleetLog}
	}
	sim, fake := dynosim.WithFake(dynosim.Config{
		Agent: cfg.Agent, App: "dynocycle-chaos-b", Token: "HRKU-chaos-b-" + randHex(12), RedisURL: redisURL,
		Grace: 10 * time.Second, CrashDelay: time.Second, Log: log,
		Env: []string{
			"PLATFORM=heroku", "WORKER=signals", "QUIET_SIGNAL=TSTP", "MEMORY_SOURCE=tree",
			"MAX_RSS=40MB", "CHECK_SCHEDULE=@every 1s", "SUSTAIN_CHECKS=1", "MIN_UPTIME=5s",
			"GRACE_TIME=3s", "SHUTDOWN_WAIT=5s", "CONFIRM_AFTER=3s",
			"MAX_CONCURRENT_RESTARTS=" + strconv.Itoa(cfg.Slots), "MIN_HEALTHY_PEERS=1", "BOOT_ALLOWANCE=15s",
			"BLOAT_MB=8", "JOB_MS=300",
		},
	})
	return &secondApp{sim: sim, fake: fake, bloater: bloater}, nil
}

func (a *secondApp) start() error {
	if a.started {
		return nil
	}
	a.started = true
	for i := 1; i <= secondAppDynos; i++ {
		if err := a.sim.Start(fmt.Sprintf("worker.%d", i), []string{a.bloater}); err != nil {
			return err
		}
	}
	return nil
}

func (a *secondApp) close() {
	a.sim.Close()
	a.fake.Close()
}

// prefixWriter marks the second app's lines in the fleet log.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// One write per line, as the simulator writes: lines of the two apps
	// never interleave.
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// waitSecondRestart waits up to max until the second app has completed a
// restart and has none under way.
func waitSecondRestart(ctx context.Context, sim *dynosim.Sim, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rep := sim.Report()
		done := 0
		for _, n := range rep.Restarts {
			done += n
		}
		if done > 0 && len(rep.Open) == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// wantPending reports whether a dyno has wanted a restart (event
// restart_wanted) and not started a new worker since.
func wantPending(sim *dynosim.Sim) bool {
	wanted, started := map[string]time.Time{}, map[string]time.Time{}
	for _, l := range sim.Lines() {
		switch {
		case strings.Contains(l.Text, "event=restart_wanted"):
			wanted[l.Dyno] = l.Time
		case strings.Contains(l.Text, "event=worker_start"):
			started[l.Dyno] = l.Time
		}
	}
	for dyno, at := range wanted {
		if at.After(started[dyno]) {
			return true
		}
	}
	return false
}
