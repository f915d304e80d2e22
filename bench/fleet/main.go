// Command fleet measures dynocycle's fleet at scale on one private
// redis-server: every agent is a process of the built binary.
//
//	go run ./bench/fleet                      # both parts, the sizes
//	go run ./bench/fleet -part watch -n 200   # one part, other sizes
//
// Watching (-n, default 10,50,200): N agents that only watch a worker that
// never crosses its limit, at the default CHECK_SCHEDULE. Over a window it
// reports Redis commands per second, connections per agent (CLIENT LIST),
// Redis CPU per agent (the server's utime+stime, less its idle rate), and
// the latency Redis adds in the busiest 50 ms of each second against the
// whole second (see latencyWindow).
//
// Storms (-storm-n 20,50 × -k 1,3): N agents whose workers are all over
// their limit as the storm starts, MAX_CONCURRENT_RESTARTS=K, restarting in
// place (PLATFORM=local: lease, stop, start, confirm after -hold, release:
// the steps a Platform API restart holds the lease for, without the API).
// It reports when the last dyno was served (its restart done), the longest
// wait for a lease, both against ceil(N/K) × the mean hold, and the most
// leases held at once.
//
// Run it from the repository root; it needs redis-server. It never uses
// port 6379. Figures go to stdout as Markdown.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

func main() {
	part := flag.String("part", "all", "watch, storm or all")
	ns := flag.String("n", "10,50,200", "watching fleet sizes")
	stormNs := flag.String("storm-n", "20,50", "storm sizes")
	ks := flag.String("k", "1,3", "MAX_CONCURRENT_RESTARTS of the storms")
	hold := flag.Duration("hold", 2*time.Second, "CONFIRM_AFTER: how long a restarted worker runs before its dyno releases the slot")
	window := flag.Duration("window", 20*time.Second, "each measuring window of the watching part")
	agentBin := flag.String("agent", "", "dynocycle binary (default: built from ./cmd/dynocycle)")
	flag.Parse()

	tmp, err := os.MkdirTemp("", "dynocycle-fleet")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(tmp)
	build := []string{"./examples/bloater"}
	if *agentBin == "" {
		build = append(build, "./cmd/dynocycle")
		*agentBin = filepath.Join(tmp, "dynocycle")
	}
	cmd := exec.Command("go", append([]string{"build", "-o", tmp + "/"}, build...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fail(fmt.Errorf("build (run me from the repository root): %w", err))
	}
	b := &bench{agent: *agentBin, bloater: filepath.Join(tmp, "bloater"), dir: tmp}

	fmt.Printf("# fleet benchmark, %s, %d CPUs, agent %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), numCPU(), *agentBin)
	if *part == "all" || *part == "watch" {
		fmt.Println("## Watching")
		fmt.Println()
		fmt.Println("| N | calls/s (per agent) | commands/s incl. in scripts (per agent) | connections | per agent (most) | Redis CPU per agent | calls in the busiest 50 ms of a second, mean (even share) | PING p99, busiest 50 ms | PING p99, whole second | ratio |")
		fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
		for _, n := range ints(*ns) {
			r, err := b.watch(n, *window)
			if err != nil {
				fail(err)
			}
			fmt.Printf("| %d | %.1f (%.2f) | %.1f (%.2f) | %d | %.2f (%d) | %.1f µs/s (%.4f%% of a core) | %.1f (%.1f) | %s | %s | %.2f× |\n",
				n, r.callsPerSec, r.callsPerSec/float64(n), r.cmdsPerSec, r.cmdsPerSec/float64(n),
				r.conns, float64(r.conns)/float64(n), r.maxConns,
				r.cpuPerAgent*1e6, r.cpuPerAgent*100, r.busiestMean, r.callsPerSec/20,
				ms(r.p99Busy), ms(r.p99All), float64(r.p99Busy)/float64(r.p99All))
		}
		fmt.Println()
	}
	if *part == "all" || *part == "storm" {
		fmt.Println("## Restart storms")
		fmt.Println()
		fmt.Println("| N | K | mean hold | ceil(N/K) × hold | last served | ratio (goal ≤ 1.2) | longest wait for a lease | (ceil(N/K) − 1) × hold | most leases at once: by log stamps (longest over K) | by each slot's token order | restarts |")
		fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
		for _, n := range ints(*stormNs) {
			for _, k := range ints(*ks) {
				r, err := b.storm(n, k, *hold)
				if err != nil {
					fail(err)
				}
				rounds := time.Duration(math.Ceil(float64(n) / float64(k)))
				fmt.Printf("| %d | %d | %s | %s | %s | %.2f | %s | %s | %d (%s) | %d (%d releases read after the slot's next grant) | %d |\n",
					n, k, secs(r.meanHold), secs(rounds*r.meanHold), secs(r.lastServed),
					float64(r.lastServed)/float64(rounds*r.meanHold), secs(r.longestWait), secs((rounds-1)*r.meanHold),
					r.mostAtOnce, ms(r.overK), r.mostBySlot, r.lateReleases, r.restarts)
				if r.tokenDisorder > 0 {
					fmt.Printf("\n**%d grants read before a grant of a lower token in the same slot.**\n\n", r.tokenDisorder)
				}
			}
		}
	}
}

type bench struct {
	agent, bloater, dir string
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fleet:", err)
	os.Exit(1)
}

// --- redis-server ----------------------------------------------------------

type server struct {
	port   int
	cmd    *exec.Cmd
	client *redis.Client // the bench's own: INFO, CLIENT LIST, keys
}

func startRedis(dir string) (*server, error) {
	var port int
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port != 6379 { // the shared Redis of the machine
			break
		}
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--maxclients", "4096")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server (apt-get install redis-server): %w", err)
	}
	s := &server{port: port, cmd: cmd}
	s.client = redis.NewClient(&redis.Options{Addr: s.addr(), ClientName: "bench", PoolSize: 1, PipelinePoolSize: -1})
	deadline := time.Now().Add(20 * time.Second)
	for s.client.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("redis-server on %d not ready", port)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s, nil
}

func (s *server) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

func (s *server) stop() {
	_ = s.client.Close()
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// cpu is the CPU time the server's threads have run so far, in
// nanoseconds from the scheduler (/proc/PID/task/*/schedstat): finer than
// utime+stime's 10 ms ticks, which a small fleet's load falls under.
func (s *server) cpu() time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", s.cmd.Process.Pid))
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}

func (s *server) commands() int64 {
	info, _ := s.client.Info(context.Background(), "stats").Result()
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// agentConns counts the agents' connections (named dynocycle:DYNO) and the
// most one agent holds, and returns their client addresses.
func (s *server) agentConns() (total, most int, addrs map[string]bool) {
	list, _ := s.client.ClientList(context.Background()).Result()
	per := map[string]int{}
	addrs = map[string]bool{}
	for line := range strings.SplitSeq(list, "\n") {
		var name, addr string
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "name="); ok {
				name = v
			}
			if v, ok := strings.CutPrefix(f, "addr="); ok {
				addr = v
			}
		}
		// dynocycle:DYNO; before 2026-11-26 every agent's were "dynocycle".
		if name == "dynocycle" || strings.HasPrefix(name, "dynocycle:") {
			per[name]++
			total++
			addrs[addr] = true
		}
	}
	for _, n := range per {
		most = max(most, n)
	}
	return total, most, addrs
}

// --- agents ----------------------------------------------------------------

type agentProc struct {
	dyno string
	cmd  *exec.Cmd
}

// fleet is the running agents and the events they log, stamped on arrival.
type fleet struct {
	mu     sync.Mutex
	agents []*agentProc
	events []event
	wg     sync.WaitGroup
}

type event struct {
	at          time.Time
	dyno        string
	event       string
	slot, token string // of a lease event
}

// field is the value of key=value in a logfmt line, or "".
func field(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v, _, _ := strings.Cut(line[i+len(key)+2:], " ")
	return v
}

func (b *bench) startAgent(f *fleet, dyno string, env []string, worker ...string) error {
	cmd := exec.Command(b.agent, append([]string{"run", "--"}, worker...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + b.dir, "DYNO=" + dyno}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return err
	}
	f.mu.Lock()
	f.agents = append(f.agents, &agentProc{dyno: dyno, cmd: cmd})
	f.mu.Unlock()
	f.wg.Go(func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			at := time.Now()
			line := sc.Text()
			i := strings.Index(line, "event=")
			if i < 0 {
				continue
			}
			ev, _, _ := strings.Cut(line[i+len("event="):], " ")
			f.mu.Lock()
			f.events = append(f.events, event{at: at, dyno: dyno, event: ev, slot: field(line, "slot"), token: field(line, "token")})
			f.mu.Unlock()
		}
	})
	return nil
}

// stop sends SIGTERM to every agent, waits, and kills what is left of each
// agent's process group.
func (f *fleet) stop() {
	for _, a := range f.agents {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, a := range f.agents {
		done := make(chan struct{})
		go func() { _ = a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = a.cmd.Process.Kill()
			<-done
		}
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	}
	f.wg.Wait()
}

func (f *fleet) snapshot() []event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

// dynosWith counts the dynos that logged ev.
func (f *fleet) dynosWith(ev string) int {
	seen := map[string]bool{}
	for _, e := range f.snapshot() {
		if e.event == ev {
			seen[e.dyno] = true
		}
	}
	return len(seen)
}

// --- watching --------------------------------------------------------------

type watchResult struct {
	cmdsPerSec       float64 // every command Redis ran, those inside scripts included
	callsPerSec      float64 // the agents' own calls (a script is one)
	conns, maxConns  int
	cpuPerAgent      float64 // seconds of Redis CPU per second, per agent
	p99Busy, p99All  time.Duration
	busiestMean      float64
	pings, busyPings int
}

func (b *bench) watch(n int, window time.Duration) (watchResult, error) {
	var r watchResult
	srv, err := startRedis(b.dir)
	if err != nil {
		return r, err
	}
	defer srv.stop()

	// Redis's own idle CPU (serverCron), to subtract.
	cpu0, t0 := srv.cpu(), time.Now()
	time.Sleep(10 * time.Second)
	idle := float64(srv.cpu()-cpu0) / float64(time.Since(t0))

	f := &fleet{}
	defer f.stop()
	env := []string{"REDIS_URL=redis://" + srv.addr() + "/0", "FLEET_SCOPE=watchbench", "PLATFORM=local",
		"MAX_RSS=4GB", "LOG_LEVEL=warn"}
	for i := 1; i <= n; i++ {
		if err := b.startAgent(f, fmt.Sprintf("worker.%d", i), env, "sleep", "100000"); err != nil {
			return r, err
		}
	}
	// Every agent up, connected and past its start check.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if total, _, _ := srv.agentConns(); total >= n {
			break
		}
		if time.Now().After(deadline) {
			total, _, _ := srv.agentConns()
			return r, fmt.Errorf("only %d of %d agents connected", total, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(15 * time.Second)

	// Commands, CPU and connections, with nothing else talking to Redis
	// but two INFO calls and one CLIENT LIST.
	c0, cpu0, t0 := srv.commands(), srv.cpu(), time.Now()
	time.Sleep(window)
	c1, cpu1, dt := srv.commands(), srv.cpu(), time.Since(t0)
	r.cmdsPerSec = float64(c1-c0-1) / dt.Seconds() // less the first INFO itself
	r.cpuPerAgent = (float64(cpu1-cpu0)/float64(dt) - idle) / float64(n)
	var addrs map[string]bool
	r.conns, r.maxConns, addrs = srv.agentConns()

	lat, err := latencyWindow(srv, addrs, window)
	if err != nil {
		return r, err
	}
	r.p99Busy, r.p99All, r.busiestMean, r.pings, r.busyPings = lat.p99Busy, lat.p99All, lat.busiestMean, lat.pings, lat.busyPings
	r.callsPerSec = lat.callsPerSec
	fmt.Fprintf(os.Stderr, "watch N=%d: %d pings, %d in the busiest 50 ms windows\n", n, r.pings, r.busyPings)
	return r, nil
}

type latency struct {
	callsPerSec      float64
	p99Busy, p99All  time.Duration
	busiestMean      float64
	pings, busyPings int
}

// latencyWindow measures what Redis's load does to a command's latency. A
// probe client sends a PING every millisecond and times each round trip;
// MONITOR (on its own connection) timestamps, on the server's clock, every
// command the agents send (lines from their connections; commands run
// inside their scripts are not counted separately). For each second it
// finds the 50 ms window holding the most agent commands, and compares the
// p99 of the PINGs sent inside those windows with the p99 of all PINGs.
// The probe and MONITOR add the same load to both sets.
func latencyWindow(srv *server, agentAddrs map[string]bool, window time.Duration) (latency, error) {
	var l latency
	mon, err := net.Dial("tcp", srv.addr())
	if err != nil {
		return l, err
	}
	defer mon.Close()
	if _, err := mon.Write([]byte("MONITOR\r\n")); err != nil {
		return l, err
	}
	var cmdTimes []float64 // unix seconds, of the agents' own calls
	monDone := make(chan struct{})
	go func() {
		defer close(monDone)
		rd := bufio.NewReaderSize(mon, 1<<20)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			// +1700000000.123456 [0 127.0.0.1:51234] "EVALSHA" ...
			ts, rest, ok := strings.Cut(strings.TrimPrefix(line, "+"), " [")
			if !ok {
				continue
			}
			_, addr, ok := strings.Cut(rest, " ")
			if !ok {
				continue
			}
			addr, _, _ = strings.Cut(addr, "]")
			if !agentAddrs[addr] {
				continue
			}
			if t, err := strconv.ParseFloat(ts, 64); err == nil {
				cmdTimes = append(cmdTimes, t)
			}
		}
	}()

	probe := redis.NewClient(&redis.Options{Addr: srv.addr(), ClientName: "probe", PoolSize: 1, PipelinePoolSize: -1})
	defer probe.Close()
	ctx := context.Background()
	_ = probe.Ping(ctx).Err()
	type ping struct {
		at  float64
		rtt time.Duration
	}
	var pings []ping
	end := time.Now().Add(window)
	tick := time.NewTicker(time.Millisecond)
	for now := range tick.C {
		if now.After(end) {
			break
		}
		start := time.Now()
		if err := probe.Ping(ctx).Err(); err != nil {
			tick.Stop()
			return l, fmt.Errorf("probe: %w", err)
		}
		pings = append(pings, ping{at: float64(start.UnixNano()) / 1e9, rtt: time.Since(start)})
	}
	tick.Stop()
	mon.Close()
	<-monDone

	// The busiest 50 ms of each whole second, by agent commands.
	slices.Sort(cmdTimes)
	type span struct{ from, to float64 }
	var busy []span
	var counts []int
	for i := 0; i < len(cmdTimes); {
		sec := math.Floor(cmdTimes[i])
		j := i
		for j < len(cmdTimes) && math.Floor(cmdTimes[j]) == sec {
			j++
		}
		best, bestAt := 0, 0.0
		hi := i
		for lo := i; lo < j; lo++ {
			for hi < len(cmdTimes) && cmdTimes[hi] < cmdTimes[lo]+0.050 {
				hi++
			}
			if hi-lo > best {
				best, bestAt = hi-lo, cmdTimes[lo]
			}
		}
		busy = append(busy, span{bestAt, bestAt + 0.050})
		counts = append(counts, best)
		i = j
	}
	var all, inBusy []time.Duration
	for _, p := range pings {
		all = append(all, p.rtt)
		for _, s := range busy {
			if p.at >= s.from && p.at < s.to {
				inBusy = append(inBusy, p.rtt)
				break
			}
		}
	}
	if len(inBusy) == 0 || len(all) == 0 {
		return l, fmt.Errorf("no pings measured (%d) or none in a busy window", len(all))
	}
	total := 0
	for _, c := range counts {
		total += c
	}
	l.busiestMean = float64(total) / float64(len(counts))
	l.callsPerSec = float64(len(cmdTimes)) / window.Seconds()
	l.p99All, l.p99Busy = p99(all), p99(inBusy)
	l.pings, l.busyPings = len(all), len(inBusy)
	return l, nil
}

func p99(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*0.99))]
}

// --- storms ----------------------------------------------------------------

type stormResult struct {
	meanHold, lastServed, longestWait time.Duration
	mostAtOnce, restarts              int
	overK                             time.Duration // the longest time more than K were counted
	mostBySlot                        int           // with each slot's leases ordered by token
	lateReleases, tokenDisorder       int
}

func (b *bench) storm(n, k int, hold time.Duration) (stormResult, error) {
	var r stormResult
	srv, err := startRedis(b.dir)
	if err != nil {
		return r, err
	}
	defer srv.stop()
	const scope = "stormbench"
	f := &fleet{}
	defer f.stop()
	// Every worker keeps 24 MB, over MAX_RSS, a second after its restart
	// is confirmed: every dyno wants a restart, and wants again as soon as
	// it has been served (it must queue behind the others).
	env := []string{"REDIS_URL=redis://" + srv.addr() + "/0", "FLEET_SCOPE=" + scope, "PLATFORM=local",
		"WORKER=signals", "MAX_RSS=16MB", "SUSTAIN_CHECKS=1", "MIN_UPTIME=0", "CHECK_SCHEDULE=@every 1s",
		"CONFIRM_AFTER=" + hold.String(), "MAX_CONCURRENT_RESTARTS=" + strconv.Itoa(k), "GRACE_TIME=5s",
		"SHUTDOWN_WAIT=5s", "LOG_LEVEL=info", "BLOAT_MB=24", "JOB_MS=3600000"}
	for i := 1; i <= n; i++ {
		worker := fmt.Sprintf("sleep %.3f; exec %s", (hold + time.Second).Seconds(), b.bloater)
		if err := b.startAgent(f, fmt.Sprintf("worker.%d", i), env, "sh", "-c", worker); err != nil {
			return r, err
		}
	}
	// This Redis is new: it grants no lease until it has settled
	// (BOOT_ALLOWANCE). Every dyno queues meanwhile; the storm starts when
	// the bench dates the fleet's epoch back and wakes the waiters.
	deadline := time.Now().Add(2 * time.Minute)
	for f.dynosWith("lease_wait") < n {
		if time.Now().After(deadline) {
			return r, fmt.Errorf("storm N=%d: only %d dynos waiting", n, f.dynosWith("lease_wait"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx := context.Background()
	t0 := time.Now()
	epoch := "dynocycle:{" + scope + "}:epoch"
	if err := srv.client.Set(ctx, epoch, t0.Add(-time.Hour).UnixMilli(), time.Hour).Err(); err != nil {
		return r, err
	}
	_ = srv.client.Publish(ctx, "dynocycle:{"+scope+"}:freed", "bench").Err()

	rounds := time.Duration(math.Ceil(float64(n) / float64(k)))
	limit := t0.Add(3*rounds*hold + time.Minute)
	for f.servedAfter(t0) < n {
		if time.Now().After(limit) {
			return r, fmt.Errorf("storm N=%d K=%d: %d of %d served by %s", n, k, f.servedAfter(t0), n, time.Since(t0).Round(time.Second))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Intervals of each dyno's leases, from its own log lines.
	type iv struct {
		from, to time.Time
		slot     string
		token    int
	}
	open := map[string]iv{}
	first := map[string]time.Time{}
	served := map[string]time.Time{}
	var ivs []iv
	for _, e := range f.snapshot() {
		switch e.event {
		case "lease_acquired":
			tok, _ := strconv.Atoi(e.token)
			open[e.dyno] = iv{from: e.at, slot: e.slot, token: tok}
			if _, ok := first[e.dyno]; !ok {
				first[e.dyno] = e.at
			}
		case "lease_released":
			if v, ok := open[e.dyno]; ok {
				v.to = e.at
				ivs = append(ivs, v)
				delete(open, e.dyno)
				if _, ok := served[e.dyno]; !ok {
					served[e.dyno] = e.at
				}
			}
		}
	}
	var sum time.Duration
	for _, v := range ivs {
		sum += v.to.Sub(v.from)
	}
	var held []iv
	for _, v := range open { // still held at the end
		held = append(held, v)
	}
	r.mostAtOnce, r.overK = mostAtOnce(append(slices.Clone(ivs), held...), k, func(v iv) (time.Time, time.Time) { return v.from, v.to })
	// Redis grants a slot's next token only after its previous lease is
	// gone, so within a slot a release logged after the next grant was read
	// late: end it at that grant, and count again.
	bySlot := map[string][]iv{}
	for _, v := range append(slices.Clone(ivs), held...) {
		if v.slot == "" || v.token == 0 {
			return r, fmt.Errorf("storm N=%d K=%d: a lease_acquired line without slot and token", n, k)
		}
		bySlot[v.slot] = append(bySlot[v.slot], v)
	}
	var ordered []iv
	for _, list := range bySlot {
		slices.SortFunc(list, func(a, b iv) int { return a.token - b.token })
		for i := range list {
			if i+1 < len(list) && !list[i].to.IsZero() && list[i+1].from.Before(list[i].to) {
				r.lateReleases++
				list[i].to = list[i+1].from
			}
			if i+1 < len(list) && list[i+1].from.Before(list[i].from) {
				r.tokenDisorder++ // a later token granted before an earlier one: never expected
			}
		}
		ordered = append(ordered, list...)
	}
	r.mostBySlot, _ = mostAtOnce(ordered, k, func(v iv) (time.Time, time.Time) { return v.from, v.to })
	r.restarts = len(ivs)
	r.meanHold = sum / time.Duration(len(ivs))
	for d, at := range served {
		r.lastServed = max(r.lastServed, at.Sub(t0))
		r.longestWait = max(r.longestWait, first[d].Sub(t0))
	}
	return r, nil
}

// mostAtOnce is the most intervals open at once (an open one has a zero
// end) and the longest time more than k were.
func mostAtOnce[T any](ivs []T, k int, span func(T) (time.Time, time.Time)) (most int, overK time.Duration) {
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	for _, v := range ivs {
		from, to := span(v)
		edges = append(edges, edge{from, +1})
		if !to.IsZero() {
			edges = append(edges, edge{to, -1})
		}
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d // a release before an acquire at the same instant
	})
	cur := 0
	var overSince time.Time
	for _, e := range edges {
		cur += e.d
		most = max(most, cur)
		switch {
		case cur > k && overSince.IsZero():
			overSince = e.at
		case cur <= k && !overSince.IsZero():
			overK = max(overK, e.at.Sub(overSince))
			overSince = time.Time{}
		}
	}
	return most, overK
}

// servedAfter counts the dynos whose first restart after t0 is done (their
// lease released).
func (f *fleet) servedAfter(t0 time.Time) int {
	seen := map[string]bool{}
	for _, e := range f.snapshot() {
		if e.event == "lease_released" && e.at.After(t0) {
			seen[e.dyno] = true
		}
	}
	return len(seen)
}

// --- helpers ---------------------------------------------------------------

func ints(s string) []int {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fail(fmt.Errorf("%q is not a list of positive numbers", s))
		}
		out = append(out, n)
	}
	return out
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
