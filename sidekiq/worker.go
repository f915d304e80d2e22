package sidekiq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/heartbeat"
)

// The worker's capabilities, as the agent's ports name them.
var (
	_ agent.Quieter          = (*Worker)(nil)
	_ agent.JobWatcher       = (*Worker)(nil)
	_ agent.GrowthAttributor = (*Worker)(nil)
	_ agent.HealthChecker    = (*Worker)(nil)
)

// ErrNotFound is returned by Quiet and Drain when no Sidekiq process of the
// child is found and there is no Fallback.
var ErrNotFound = errors.New("no sidekiq process found for the child")

const (
	defaultPollInterval = time.Second
	// progressEvery spaces the drain progress lines.
	progressEvery = 5 * time.Second
	// rescanIdle and rescanKnown space full scans of the processes set when
	// nothing is found (the child may not be Sidekiq, or is still booting)
	// and when this child's processes are already known.
	rescanIdle  = 5 * time.Second
	rescanKnown = 30 * time.Second
	// drainedBeats is how many consecutive distinct beats must show a quiet,
	// idle process: one beat can race with a job fetched just before quiet.
	drainedBeats = 2
)

// Worker is the Sidekiq side of the agent: it finds the Sidekiq processes of
// the supervised child in Redis, quiets them with SIGTSTP, waits until they
// are drained, tells when a job ended, and attributes memory growth to the
// job classes that were running.
//
// Set Reader and PIDs; the other fields have defaults. Run must be running
// for JobEnded and Attribute to see jobs.
type Worker struct {
	Reader *Reader
	// Hostname is the first part of the identities Sidekiq writes: DYNO, or
	// the machine's hostname. Default: DefaultHostname().
	Hostname string
	// PIDs returns the pids of the supervised child's process tree.
	PIDs func() []int
	// Signal sends a signal to a pid. Default: syscall.Kill.
	Signal func(pid int, sig syscall.Signal) error
	// Fallback quiets and drains the child when no Sidekiq process of it is
	// found (the child is not Sidekiq). Nil: ErrNotFound.
	Fallback     agent.Quieter
	Logger       *slog.Logger
	Now          func() time.Time
	PollInterval time.Duration // default 1s

	initOnce sync.Once
	ended    chan struct{}

	mu           sync.Mutex
	known        []Process // this child's processes at the last scan
	knownPIDs    []int     // PIDs() at the last scan
	scannedAt    time.Time
	quieted      []Process // what Quiet signalled; nil before Quiet
	usedFallback bool
	running      map[string]string // jid -> class at the last read
	interval     map[string]bool   // classes seen running since the last Attribute
	growth       map[string]*heartbeat.JobGrowth
	errLoggedAt  time.Time

	polled func() // test hook: called after each poll of Drain
}

// DefaultHostname is the hostname Sidekiq puts in its identity when it runs
// with the agent's environment: DYNO, else the machine's hostname.
func DefaultHostname() string {
	if d := os.Getenv("DYNO"); d != "" {
		return d
	}
	h, _ := os.Hostname()
	return h
}

func (w *Worker) init() {
	w.initOnce.Do(func() {
		w.ended = make(chan struct{}, 1)
		w.running = map[string]string{}
		w.interval = map[string]bool{}
		w.growth = map[string]*heartbeat.JobGrowth{}
	})
}

func (w *Worker) hostname() string {
	if w.Hostname != "" {
		return w.Hostname
	}
	return DefaultHostname()
}

func (w *Worker) pids() []int {
	if w.PIDs == nil {
		return nil
	}
	return w.PIDs()
}

func (w *Worker) signal(pid int, sig syscall.Signal) error {
	if w.Signal != nil {
		return w.Signal(pid, sig)
	}
	return syscall.Kill(pid, sig)
}

func (w *Worker) logger() *slog.Logger {
	if w.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return w.Logger
}

func (w *Worker) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

func (w *Worker) pollInterval() time.Duration {
	if w.PollInterval > 0 {
		return w.PollInterval
	}
	return defaultPollInterval
}

// Processes returns the child's Sidekiq processes: identity hostname equal
// to Hostname, pid among PIDs() (the pid in info must agree, see
// ParseProcess). A swarm gives several. When Redis still lists an older
// identity with the same hostname and pid (a previous life killed before it
// could deregister, its pid reused), the one started last wins.
func (w *Worker) Processes(ctx context.Context) ([]Process, error) {
	pids := w.pids()
	all, err := w.Reader.Processes(ctx)
	if err != nil {
		return nil, err
	}
	own := w.filterOwn(all, pids)
	w.mu.Lock()
	w.known, w.knownPIDs, w.scannedAt = own, pids, w.now()
	w.mu.Unlock()
	return own, nil
}

func (w *Worker) filterOwn(all []Process, pids []int) []Process {
	host := w.hostname()
	byPID := map[int]Process{}
	for _, p := range all {
		if p.Hostname != host || !slices.Contains(pids, p.PID) {
			continue
		}
		if q, ok := byPID[p.PID]; ok && !newer(p, q) {
			continue
		}
		byPID[p.PID] = p
	}
	own := make([]Process, 0, len(byPID))
	for _, p := range byPID {
		own = append(own, p)
	}
	sort.Slice(own, func(i, j int) bool { return own[i].ID < own[j].ID })
	return own
}

func newer(a, b Process) bool {
	if !a.StartedAt.Equal(b.StartedAt) {
		return a.StartedAt.After(b.StartedAt)
	}
	return a.Beat.After(b.Beat)
}

// Healthy reports whether the child runs Sidekiq that takes work: at least
// one of its processes found, none quiet. The agent uses it to confirm a
// restart before it releases its restart lease.
func (w *Worker) Healthy(ctx context.Context) (bool, error) {
	procs, err := w.Processes(ctx)
	if err != nil {
		return false, err
	}
	for _, p := range procs {
		if p.Quiet {
			return false, nil
		}
	}
	return len(procs) > 0, nil
}

// Quiet sends SIGTSTP to each Sidekiq process of the child: Sidekiq stops
// fetching jobs and finishes the running ones. No other signal is ever sent:
// Sidekiq dies at once, losing its jobs, on the ones it does not trap. With
// no Sidekiq process found, Fallback quiets the child.
func (w *Worker) Quiet(ctx context.Context) error {
	procs, err := w.Processes(ctx)
	if err != nil {
		w.mu.Lock()
		known := w.known
		w.mu.Unlock()
		// Only those still in the child's tree: a pid of a previous life
		// may have been reused.
		pids := w.pids()
		procs = nil
		for _, p := range known {
			if slices.Contains(pids, p.PID) {
				procs = append(procs, p)
			}
		}
		if len(procs) == 0 {
			if w.Fallback == nil {
				return fmt.Errorf("quiet: %w", err)
			}
			w.logger().Warn("sidekiq not readable, quieting with fallback", "err", err)
		} else {
			// Redis is down but we know the pids: quiet them anyway, the
			// restart must not wait for Redis.
			w.logger().Warn("sidekiq not readable, quieting known processes", "err", err)
		}
	}
	if len(procs) == 0 {
		w.mu.Lock()
		w.usedFallback = true
		w.mu.Unlock()
		if w.Fallback == nil {
			return ErrNotFound
		}
		return w.Fallback.Quiet(ctx)
	}
	var errs []error
	for _, p := range procs {
		err := w.signal(p.PID, syscall.SIGTSTP)
		switch {
		case errors.Is(err, syscall.ESRCH):
			// Exited already: nothing to drain there.
		case err != nil:
			errs = append(errs, fmt.Errorf("quiet %s: %w", p.ID, err))
		default:
			w.logger().Info("quieted sidekiq", "identity", p.ID, "pid", p.PID, "busy", p.Busy)
		}
	}
	w.mu.Lock()
	w.quieted, w.usedFallback = procs, false
	w.mu.Unlock()
	return errors.Join(errs...)
}

// drainState follows one process through its heartbeats.
type drainState struct {
	beat  time.Time
	clean int // consecutive distinct beats that were quiet and idle
	done  bool
}

// observe records a read of the process and reports whether it is drained:
// quiet, busy 0 and no work hash on drainedBeats consecutive distinct beats.
// Repeated reads of the same beat count once.
func (s *drainState) observe(p Process) bool {
	if !p.Beat.Equal(s.beat) {
		s.beat = p.Beat
		if p.Quiet && p.Busy == 0 && p.rawWork == 0 {
			s.clean++
		} else {
			s.clean = 0
		}
	}
	s.done = s.done || s.clean >= drainedBeats
	return s.done
}

// Drain waits until every process Quiet signalled is drained (see
// drainState) or has exited. It returns nil only then, and an error
// wrapping ctx.Err() when ctx ends first (GRACE_TIME passed).
func (w *Worker) Drain(ctx context.Context) error {
	w.mu.Lock()
	procs, fallback := w.quieted, w.usedFallback
	w.mu.Unlock()
	if fallback {
		if w.Fallback == nil {
			return ErrNotFound
		}
		return w.Fallback.Drain(ctx)
	}
	if procs == nil {
		// Not quieted through us: drain whatever Sidekiq the child runs.
		var err error
		if procs, err = w.Processes(ctx); err != nil {
			return fmt.Errorf("drain: %w", err)
		}
		if len(procs) == 0 {
			if w.Fallback == nil {
				return ErrNotFound
			}
			return w.Fallback.Drain(ctx)
		}
	}
	log := w.logger()
	states := make(map[string]*drainState, len(procs))
	for _, p := range procs {
		states[p.ID] = &drainState{}
	}
	t := time.NewTicker(w.pollInterval())
	defer t.Stop()
	var lastProgress time.Time
	for {
		busy, jobs, err := w.drainPoll(ctx, procs, states)
		if w.polled != nil {
			w.polled()
		}
		switch {
		case err != nil && ctx.Err() == nil:
			w.logError("drain: read sidekiq", err)
		case err == nil && busy < 0:
			log.Info("sidekiq drained", "processes", len(procs))
			return nil
		}
		if now := w.now(); err == nil && now.Sub(lastProgress) >= progressEvery {
			lastProgress = now
			args := []any{"busy", busy, "jobs", strings.Join(jobs, ",")}
			if dl, ok := ctx.Deadline(); ok {
				args = append(args, "seconds_left", int(dl.Sub(now).Seconds()))
			}
			log.Info("draining sidekiq", args...)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d jobs still running: %w", max(busy, 0), ctx.Err())
		case <-t.C:
		}
	}
}

// drainPoll reads the processes not yet drained and updates their state. It
// returns busy = -1 when all are drained, else the busy count of the last
// beats and the running job classes.
func (w *Worker) drainPoll(ctx context.Context, procs []Process, states map[string]*drainState) (busy int, jobs []string, err error) {
	var ids []string
	for _, p := range procs {
		s := states[p.ID]
		if s.done {
			continue
		}
		if !w.alive(p.PID) {
			w.logger().Debug("sidekiq process exited while draining", "identity", p.ID, "pid", p.PID)
			s.done = true
			continue
		}
		ids = append(ids, p.ID)
	}
	if len(ids) == 0 {
		return -1, nil, nil
	}
	got, err := w.Reader.Read(ctx, ids)
	if err != nil {
		return 0, nil, err
	}
	pending := len(ids)
	for _, p := range got {
		if states[p.ID].observe(p) {
			pending--
			continue
		}
		busy += max(p.Busy, p.rawWork)
		for _, wk := range p.Work {
			jobs = append(jobs, wk.Class)
		}
	}
	if pending == 0 {
		return -1, nil, nil
	}
	// A live process whose hash is gone (a flushed Redis) cannot be judged;
	// it stays pending until it exits or ctx ends.
	return busy, jobs, nil
}

// alive reports whether pid is still a live process of the child: in the
// child's tree, signalable, and not a zombie waiting to be reaped. Redis
// records outlive a killed process by up to 60 s, so the OS decides.
func (w *Worker) alive(pid int) bool {
	if !slices.Contains(w.pids(), pid) {
		return false
	}
	if errors.Is(w.signal(pid, 0), syscall.ESRCH) {
		return false
	}
	return !zombie(pid)
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain ") ".
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

func (w *Worker) logError(msg string, err error) {
	w.mu.Lock()
	now := w.now()
	quiet := now.Sub(w.errLoggedAt) < time.Minute
	if !quiet {
		w.errLoggedAt = now
	}
	w.mu.Unlock()
	if quiet {
		w.logger().Debug(msg, "err", err)
		return
	}
	w.logger().Warn(msg, "err", err)
}

// JobEnded is signalled (buffer 1, never blocking Run) when a jid left the
// work hash of one of the child's processes, or its process went away.
// Sidekiq writes the work hash at each heartbeat, so this lags the job's end
// by up to one beat (5 s on 6.x, 10 s from 7.0), and a job shorter than a
// beat may never be seen at all.
func (w *Worker) JobEnded() <-chan struct{} {
	w.init()
	return w.ended
}

// Run polls the work hashes of the child's Sidekiq processes every
// PollInterval until ctx ends, feeding JobEnded and Attribute. Redis errors
// are logged (rate-limited) and retried at the next tick. It returns nil
// when ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	w.init()
	t := time.NewTicker(w.pollInterval())
	defer t.Stop()
	for {
		if procs, err := w.current(ctx); err != nil {
			if ctx.Err() == nil {
				w.logError("read sidekiq work", err)
			}
		} else {
			var works []Work
			for _, p := range procs {
				works = append(works, p.Work...)
			}
			w.observe(works)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// current returns the child's processes with their work. It rescans the
// processes set only when the child's pids changed or now and then; between
// scans it reads only the known identities.
func (w *Worker) current(ctx context.Context) ([]Process, error) {
	pids := w.pids()
	w.mu.Lock()
	known, knownPIDs, age := w.known, w.knownPIDs, w.now().Sub(w.scannedAt)
	w.mu.Unlock()
	rescan := rescanKnown
	if len(known) == 0 {
		rescan = rescanIdle
	}
	if !sameInts(pids, knownPIDs) || age >= rescan {
		return w.Processes(ctx)
	}
	if len(known) == 0 {
		return nil, nil
	}
	ids := make([]string, len(known))
	for i, p := range known {
		ids[i] = p.ID
	}
	got, err := w.Reader.Read(ctx, ids)
	if err != nil {
		return nil, err
	}
	if len(got) < len(known) {
		// A known process went stale: look again at the next tick.
		w.mu.Lock()
		w.scannedAt = time.Time{}
		w.mu.Unlock()
	}
	return got, nil
}

func sameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// observe takes the jobs running now. A jid seen for the first time counts
// as a run of its class; a jid gone since the last read means a job ended.
func (w *Worker) observe(works []Work) {
	w.init()
	w.mu.Lock()
	cur := make(map[string]string, len(works))
	for _, wk := range works {
		cur[wk.JID] = wk.Class
		if _, ok := w.running[wk.JID]; !ok {
			w.class(wk.Class).Runs++
		}
		w.interval[wk.Class] = true
	}
	ended := false
	for jid := range w.running {
		if _, ok := cur[jid]; !ok {
			ended = true
		}
	}
	w.running = cur
	w.mu.Unlock()
	if ended {
		select {
		case w.ended <- struct{}{}:
		default:
		}
	}
}

func (w *Worker) class(name string) *heartbeat.JobGrowth {
	g := w.growth[name]
	if g == nil {
		g = &heartbeat.JobGrowth{Class: name}
		w.growth[name] = g
	}
	return g
}

// Attribute splits the memory growth since the previous call equally among
// the job classes seen running in between, then starts a new interval with
// the classes still running. Equal per class, not per run or per running
// time: growth comes from what a class does, so a high-throughput trivial
// class would soak up the blame if each run counted, and a long idle job
// (waiting on an API) would if running time did. Over many intervals the
// class present whenever memory grows collects the growth. A delta <= 0 is
// not growth (the heap does not shrink back in steps) and is dropped.
func (w *Worker) Attribute(delta int64) {
	w.init()
	w.mu.Lock()
	defer w.mu.Unlock()
	classes := make([]string, 0, len(w.interval))
	for c := range w.interval {
		classes = append(classes, c)
	}
	clear(w.interval)
	for _, c := range w.running {
		w.interval[c] = true
	}
	if delta <= 0 || len(classes) == 0 {
		return
	}
	share := delta / int64(len(classes))
	for _, c := range classes {
		w.class(c).Bytes += share
	}
}

// TopJobs returns up to n job classes with the most attributed growth,
// largest first; classes with no growth are left out.
func (w *Worker) TopJobs(n int) []heartbeat.JobGrowth {
	w.init()
	w.mu.Lock()
	var top []heartbeat.JobGrowth
	for _, g := range w.growth {
		if g.Bytes > 0 {
			top = append(top, *g)
		}
	}
	w.mu.Unlock()
	sort.Slice(top, func(i, j int) bool {
		if top[i].Bytes != top[j].Bytes {
			return top[i].Bytes > top[j].Bytes
		}
		if top[i].Runs != top[j].Runs {
			return top[i].Runs > top[j].Runs
		}
		return top[i].Class < top[j].Class
	})
	if n < len(top) {
		top = top[:max(n, 0)]
	}
	return top
}
