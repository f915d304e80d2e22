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
	"github.com/dynocycle/dynocycle/jobevents"
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
	// eventsTreeTTL is how long eventsLive trusts a walk of the child's
	// tree. It runs at every sample (one per jobevents.DefaultMinSampleGap
	// at most), and a walk reads a file per thread of every process: 14% of
	// the agent's CPU at a few hundred jobs a second. A process gone from
	// the tree in between has closed its connection, so its events are not
	// live anyway.
	eventsTreeTTL = time.Second
	// drainedBeats is how many consecutive distinct beats must show a quiet,
	// idle process: one beat can race with a job fetched just before quiet.
	drainedBeats = 2
)

// EventSource is what the worker reports itself about its jobs
// (jobevents.Listener): exact and immediate where the heartbeats lag by a
// beat, but only for the processes whose events are live.
type EventSource interface {
	Proc(pid int) (jobevents.Proc, bool)
	Changed() <-chan struct{}
	JobEnded() <-chan struct{}
	TakeInterval() (classes []string, runs map[string]int)
}

var _ EventSource = (*jobevents.Listener)(nil)

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
	Fallback agent.Quieter
	// Events, when set, are the job events of the gem's middleware: the
	// worker prefers them, process by process, whenever they are live, and
	// reads the heartbeats otherwise.
	Events       EventSource
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
	quietAt      time.Time // when Quiet signalled them
	usedFallback bool
	running      map[string]string // jid -> class at the last read
	interval     map[string]bool   // classes seen running since the last Attribute
	growth       map[string]*heartbeat.JobGrowth
	errLoggedAt  time.Time
	treePIDs     []int // PIDs() for eventsLive, walked at treeAt
	treeAt       time.Time

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
	if w.eventsHealthy() {
		return true, nil
	}
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

// eventsHealthy: a process of the child reports its jobs and is not quiet.
// The middleware says hello at Sidekiq's startup, so this confirms a restart
// without waiting for a heartbeat.
func (w *Worker) eventsHealthy() bool {
	if w.Events == nil {
		return false
	}
	for _, pid := range w.pids() {
		if p, ok := w.Events.Proc(pid); ok && p.Live && p.QuietAt.IsZero() {
			return true
		}
	}
	return false
}

// eventsLive reports whether a process of the child reports its jobs: its
// events then replace the heartbeats for attribution and job ends.
func (w *Worker) eventsLive() bool {
	if w.Events == nil {
		return false
	}
	w.mu.Lock()
	pids, at := w.treePIDs, w.treeAt
	w.mu.Unlock()
	if now := w.now(); at.IsZero() || now.Sub(at) >= eventsTreeTTL || now.Before(at) {
		pids = w.pids()
		w.mu.Lock()
		w.treePIDs, w.treeAt = pids, now
		w.mu.Unlock()
	}
	for _, pid := range pids {
		if p, ok := w.Events.Proc(pid); ok && p.Live {
			return true
		}
	}
	return false
}

// liveProc is the events of pid when they are live.
func (w *Worker) liveProc(pid int) (jobevents.Proc, bool) {
	if w.Events == nil {
		return jobevents.Proc{}, false
	}
	p, ok := w.Events.Proc(pid)
	return p, ok && p.Live
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
	// Before the signals: a process's quiet line may come back at once.
	sentAt := w.now()
	for _, p := range procs {
		err := w.signal(p.PID, syscall.SIGTSTP)
		switch {
		case errors.Is(err, syscall.ESRCH):
			// Exited already: nothing to drain there.
		case err != nil:
			errs = append(errs, fmt.Errorf("quiet %s: %w", p.ID, err))
		default:
			// The true count when the process reports its jobs; else its
			// last heartbeat's.
			if ev, ok := w.liveProc(p.PID); ok {
				w.logger().Info("quieted sidekiq", "identity", p.ID, "pid", p.PID, "busy", ev.InFlight, "jobs", strings.Join(ev.Jobs, ","), "source", "events")
			} else {
				w.logger().Info("quieted sidekiq", "identity", p.ID, "pid", p.PID, "busy", p.Busy, "source", "heartbeat")
			}
		}
	}
	w.mu.Lock()
	w.quieted, w.usedFallback, w.quietAt = procs, false, sentAt
	w.mu.Unlock()
	return errors.Join(errs...)
}

// drainState follows one process through its heartbeats and its events.
type drainState struct {
	beat  time.Time
	clean int // consecutive distinct beats that were quiet and idle
	done  bool
	last  Process // the last read of its records
	read  bool    // last is set
}

// observe records a read of the process and reports whether its
// heartbeats say it is drained: quiet, busy 0 and no work hash on
// drainedBeats consecutive distinct beats. Repeated reads of the same beat
// count once.
func (s *drainState) observe(p Process) bool {
	s.last, s.read = p, true
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

// eventsDrained is the drain by events: the process reports its jobs
// (live: nothing lost), said it quiet after quietAt at least
// jobevents.QuietSettle ago, and has no job in flight. It returns when that became true, for the
// caller to read the heartbeats once more after it.
func eventsDrained(ev jobevents.Proc, live bool, quietAt, now time.Time) (time.Time, bool) {
	// Sidekiq fires :quiet once every processor has stopped fetching, but
	// one that had just fetched a job has yet to report its start.
	if !live || ev.InFlight > 0 || !ev.Settled(quietAt, now) {
		return time.Time{}, false
	}
	settled := ev.QuietAt.Add(jobevents.QuietSettle)
	if ev.LastEvent.After(settled) {
		return ev.LastEvent, true
	}
	return settled, true
}

// drained decides one process from both sources, so that neither can end a
// drain while the other shows a job running:
//   - by events (eventsDrained), unless a heartbeat newer than the last
//     event shows a job (Sidekiq counts a job busy a little longer than the
//     middleware runs; an older beat is stale);
//   - by heartbeats (drainState), unless live events show a job in flight.
//
// Without live events it is today's heartbeat rule alone.
func drained(s *drainState, ev jobevents.Proc, live bool, quietAt, now time.Time) bool {
	if _, ok := eventsDrained(ev, live, quietAt, now); ok {
		if !s.read || !s.last.Beat.After(ev.LastEvent) || (s.last.Busy == 0 && s.last.rawWork == 0) {
			return true
		}
	}
	return s.done && !(live && ev.InFlight > 0)
}

// Drain waits until every process Quiet signalled is drained (see drained)
// or has exited. It returns nil only then, and an error wrapping ctx.Err()
// when ctx ends first (GRACE_TIME passed). With events it looks at them
// whenever they change and reads the heartbeats once more when they say
// drained; without, it reads the heartbeats every PollInterval.
func (w *Worker) Drain(ctx context.Context) error {
	w.mu.Lock()
	procs, fallback, quietAt := w.quieted, w.usedFallback, w.quietAt
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
	poll := time.NewTicker(w.pollInterval())
	defer poll.Stop()
	var tick <-chan time.Time
	var changed <-chan struct{}
	if w.Events != nil {
		t := time.NewTicker(jobevents.DrainTick)
		defer t.Stop()
		tick, changed = t.C, w.Events.Changed()
	}
	var lastProgress, lastRead time.Time
	var readErr error
	for {
		now := w.now()
		// Read the heartbeats at each poll, and once more after the events
		// say a process is drained.
		read := lastRead.IsZero() || now.Sub(lastRead) >= w.pollInterval()
		for _, p := range procs {
			ev, live := w.liveProc(p.PID)
			if at, ok := eventsDrained(ev, live, quietAt, now); ok && !at.Before(lastRead) {
				read = true
			}
		}
		if read {
			readErr = w.drainRead(ctx, procs, states)
			lastRead = now
			if readErr != nil && ctx.Err() == nil {
				w.logError("drain: read sidekiq", readErr)
			}
		}
		busy, jobs, source := w.drainJudge(procs, states, quietAt, now)
		if w.polled != nil && read {
			w.polled()
		}
		if busy < 0 {
			log.Info("sidekiq drained", "processes", len(procs), "source", source)
			return nil
		}
		if now.Sub(lastProgress) >= progressEvery {
			lastProgress = now
			args := []any{"busy", busy, "jobs", strings.Join(jobs, ","), "source", source}
			if dl, ok := ctx.Deadline(); ok {
				args = append(args, "seconds_left", int(dl.Sub(now).Seconds()))
			}
			log.Info("draining sidekiq", args...)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d jobs still running: %w", max(busy, 0), ctx.Err())
		case <-poll.C:
		case <-tick:
		case <-changed:
		}
	}
}

// drainRead reads the records of the live processes not yet drained by
// their heartbeats and feeds their states. A live process whose hash is
// gone (a flushed Redis) cannot be judged by heartbeats; its events may.
func (w *Worker) drainRead(ctx context.Context, procs []Process, states map[string]*drainState) error {
	var ids []string
	for _, p := range procs {
		if !states[p.ID].done && w.alive(p.PID) {
			ids = append(ids, p.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	got, err := w.Reader.Read(ctx, ids)
	if err != nil {
		return err
	}
	for _, p := range got {
		states[p.ID].observe(p)
	}
	return nil
}

// drainJudge returns busy = -1 when every process is drained or has
// exited, else the jobs running (the true count where events are live,
// else the last beats'), their classes, and which source the count is
// from: events, heartbeat or both.
func (w *Worker) drainJudge(procs []Process, states map[string]*drainState, quietAt, now time.Time) (busy int, jobs []string, source string) {
	pending := 0
	var byEvents, byBeats bool
	for _, p := range procs {
		s := states[p.ID]
		if !w.alive(p.PID) {
			if !s.done {
				w.logger().Debug("sidekiq process exited while draining", "identity", p.ID, "pid", p.PID)
			}
			s.done = true
			continue
		}
		ev, live := w.liveProc(p.PID)
		if live {
			byEvents = true
		} else {
			byBeats = true
		}
		if drained(s, ev, live, quietAt, now) {
			continue
		}
		pending++
		if live {
			busy += ev.InFlight
			jobs = append(jobs, ev.Jobs...)
			continue
		}
		if s.read {
			busy += max(s.last.Busy, s.last.rawWork)
			for _, wk := range s.last.Work {
				jobs = append(jobs, wk.Class)
			}
		}
	}
	switch {
	case byEvents && byBeats:
		source = "events+heartbeat"
	case byEvents:
		source = "events"
	default:
		source = "heartbeat"
	}
	if pending == 0 {
		return -1, nil, source
	}
	return busy, jobs, source
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
// beat may never be seen at all. With Events, it is also signalled the
// moment a job ends (coalesced by the events' MinSampleGap); while they are
// live the heartbeats' ends are left out.
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
	var evEnded <-chan struct{}
	if w.Events != nil {
		evEnded = w.Events.JobEnded()
	}
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
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				waiting = false
			case <-evEnded:
				w.signalEnded()
			}
		}
	}
}

func (w *Worker) signalEnded() {
	select {
	case w.ended <- struct{}{}:
	default:
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
// While the events are live they count the runs and tell the ends, exactly:
// the heartbeats' view is only kept up to date, for when they are not.
func (w *Worker) observe(works []Work) {
	w.init()
	live := w.eventsLive()
	w.mu.Lock()
	cur := make(map[string]string, len(works))
	for _, wk := range works {
		cur[wk.JID] = wk.Class
		if _, ok := w.running[wk.JID]; !ok && !live {
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
	if ended && !live {
		w.signalEnded()
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
//
// With live events the classes are exactly those that ran in the interval
// (a job shorter than a beat included), and each run is counted: with a
// sample right after each job end, the growth goes to the job that just ran.
func (w *Worker) Attribute(delta int64) {
	w.init()
	var evClasses []string
	var evRuns map[string]int
	live := w.eventsLive()
	if w.Events != nil {
		// Taken even when not live, so a stale interval never carries over.
		evClasses, evRuns = w.Events.TakeInterval()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	classes := make([]string, 0, len(w.interval))
	for c := range w.interval {
		classes = append(classes, c)
	}
	if live {
		classes = evClasses
		for c, n := range evRuns {
			w.class(c).Runs += n
		}
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
