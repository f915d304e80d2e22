package jobevents

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"
)

const (
	// The agent's CPU under events is about one wake-up per read (on this
	// VM 0.5 to 1 ms each, most of it the Go scheduler), so the reads and
	// samples follow the gem's writes, at most one per 30 ms, rather than
	// outpacing them (bench/sidekiq, BENCHMARKS.md).

	// DefaultMinSampleGap spaces the JobEnded signals: a burst of short jobs
	// ending is one sample per gap, not one per job (each sample reads
	// procfs and publishes the dyno's presence to Redis). Shorter than the
	// gem's 30 ms between writes, so a write's ends are sampled at once and
	// the gap never needs a timer of its own under steady load; job end to
	// sample stays within the 50 ms goal (p99 about 30 ms).
	DefaultMinSampleGap = 15 * time.Millisecond
	// readPace spaces the reads of a connection, for writers that do not
	// batch: a busy worker writing two lines per job and waking the agent
	// for each (thousands a second) cost the agent a fifth of a core and
	// Sidekiq 40% of its throughput in bench/sidekiq. Lines written
	// meanwhile wait in the socket (about 200 writes fit) and are read
	// together. Below the gem's 30 ms, so its writes are read on arrival.
	readPace = 15 * time.Millisecond
	// maxConns bounds the connections held: one per worker process is
	// the norm; more is a misbehaving writer.
	maxConns = 256
	// maxLost bounds the pids remembered as lost between two Procs calls
	// (which forget those whose process is gone): a worker that forks a
	// process per job (Resque) ends a connection per job. A writer that
	// lost lines says hello when it reconnects anyway.
	maxLost = 4096
)

// Proc is what the events say about one worker process.
type Proc struct {
	PID int
	// Live: a connection from the process is open and nothing it wrote was
	// lost, so InFlight is exact.
	Live     bool
	InFlight int
	// Jobs are the classes of the jobs in flight whose start was heard.
	Jobs      []string
	QuietAt   time.Time // when its quiet line arrived; zero before
	LastEvent time.Time // when its last line arrived
}

// Settled reports a process that said quiet at or after quietAt (the quiet
// signal), QuietSettle ago or more: from then on no job starts in it.
func (p Proc) Settled(quietAt, now time.Time) bool {
	return !p.QuietAt.IsZero() && !p.QuietAt.Before(quietAt) && !now.Before(p.QuietAt.Add(QuietSettle))
}

type proc struct {
	conn      uint64
	jobs      map[string]string // jid -> class
	extra     int               // in flight per hello, jids not heard of
	quietAt   time.Time
	lastEvent time.Time
}

// Listener receives the events on a unix socket. Create it with Listen
// before the worker starts (the worker's first hello must find it), then
// Run it.
type Listener struct {
	Logger *slog.Logger
	Now    func() time.Time
	// MinSampleGap: see DefaultMinSampleGap.
	MinSampleGap time.Duration

	ln      *net.UnixListener
	path    string
	ended   chan struct{}
	changed chan struct{}
	batches chan []line

	mu       sync.Mutex
	procs    map[int]*proc
	lost     map[int]bool // a connection broke: events of these pids are incomplete until a hello
	interval map[string]bool
	runs     map[string]int
	conns    map[uint64]net.Conn
}

type line struct {
	conn   uint64
	ev     Event
	at     time.Time
	closed bool // the connection ended; ev is empty
}

// Listen creates the socket at path (a stale one is replaced), readable
// and writable by this user only.
func Listen(path string) (*Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("events socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("events socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("events socket: %w", err)
	}
	return &Listener{
		ln: ln, path: path,
		ended: make(chan struct{}, 1), changed: make(chan struct{}, 1), batches: make(chan []line, 16),
		procs: map[int]*proc{}, lost: map[int]bool{}, interval: map[string]bool{}, runs: map[string]int{},
		conns: map[uint64]net.Conn{},
	}, nil
}

// Path is the socket's path, for the worker's environment.
func (l *Listener) Path() string { return l.path }

// Close removes the socket; for a Listener that never ran.
func (l *Listener) Close() error { return l.ln.Close() }

func (l *Listener) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func (l *Listener) logger() *slog.Logger {
	if l.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Logger
}

// JobEnded is signalled (buffer 1) when a job ended, at most once per
// MinSampleGap; ends within a gap are coalesced into one signal at its end.
func (l *Listener) JobEnded() <-chan struct{} { return l.ended }

// Changed is signalled (buffer 1) whenever what Proc reports may have
// changed, so a drain waits on it rather than polling.
func (l *Listener) Changed() <-chan struct{} { return l.changed }

// Proc reports on pid; false when nothing was heard from it, or its
// connection ended.
func (l *Listener) Proc(pid int) (Proc, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.procs[pid]
	if p == nil {
		return Proc{}, false
	}
	return l.report(pid, p), true
}

// report is what Proc says of p, with l.mu held.
func (l *Listener) report(pid int, p *proc) Proc {
	out := Proc{PID: pid, Live: !l.lost[pid], InFlight: len(p.jobs) + p.extra, QuietAt: p.quietAt, LastEvent: p.lastEvent}
	for _, c := range p.jobs {
		out.Jobs = append(out.Jobs, c)
	}
	sort.Strings(out.Jobs)
	return out
}

// Procs reports on every process whose connection is open, and the pids
// whose events were lost (their connection ended) and that have not said
// hello since, in pid order. A lost pid whose process is gone is forgotten
// here: nothing it lost can matter any more, and a worker that forks a
// process per job (Resque) would otherwise leave one per job.
func (l *Listener) Procs() (live []Proc, lost []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for pid, p := range l.procs {
		if !l.lost[pid] {
			live = append(live, l.report(pid, p))
		}
	}
	for pid := range l.lost {
		if !processExists(pid) {
			delete(l.lost, pid)
			continue
		}
		lost = append(lost, pid)
	}
	slices.SortFunc(live, func(a, b Proc) int { return a.PID - b.PID })
	slices.Sort(lost)
	return live, lost
}

// forgetLost makes room among the lost pids: those whose process is gone
// first, else any one (a worker with thousands of live processes that lost
// their events is beyond what a drain by events can judge). l.mu is held.
func (l *Listener) forgetLost() {
	for pid := range l.lost {
		if !processExists(pid) {
			delete(l.lost, pid)
		}
	}
	for pid := range l.lost {
		if len(l.lost) < maxLost {
			return
		}
		delete(l.lost, pid)
	}
}

// processExists: signal 0 reaches it (EPERM: it exists, as another user's).
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// TakeInterval returns the job classes that ran since the previous call
// (began, ended or were running) and how many runs of each began, then
// starts a new interval with the classes running now.
func (l *Listener) TakeInterval() (classes []string, runs map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.interval {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	runs = l.runs
	l.runs = map[string]int{}
	clear(l.interval)
	for _, p := range l.procs {
		for _, c := range p.jobs {
			l.interval[c] = true
		}
	}
	return classes, runs
}

// Run accepts connections and applies their lines until ctx ends; it then
// closes the socket and every connection and waits for their readers. It
// returns nil when ctx ends.
func (l *Listener) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		<-ctx.Done()
		l.ln.Close()
		l.mu.Lock()
		for _, c := range l.conns {
			c.Close()
		}
		l.mu.Unlock()
	})
	wg.Go(func() { l.accept(ctx, &wg) })

	gap := l.MinSampleGap
	if gap <= 0 {
		gap = DefaultMinSampleGap
	}
	// The throttle of JobEnded: an end within gap of the last signal is
	// held until the gap has passed.
	var lastSignal time.Time
	pending := false
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	signalEnded := func(now time.Time) {
		pending, lastSignal = false, now
		select {
		case l.ended <- struct{}{}:
		default:
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case batch := <-l.batches:
			changed, ended := l.applyAll(batch)
			if changed {
				select {
				case l.changed <- struct{}{}:
				default:
				}
			}
			if !ended {
				continue
			}
			if now := l.now(); now.Sub(lastSignal) >= gap {
				signalEnded(now)
			} else if !pending {
				pending = true
				timer.Reset(gap - now.Sub(lastSignal))
			}
		case <-timer.C:
			if pending {
				signalEnded(l.now())
			}
		}
	}
}

func (l *Listener) accept(ctx context.Context, wg *sync.WaitGroup) {
	var id uint64
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or the like: the worker's events
			// are an optimization, never a reason to stop the agent.
			l.logger().Warn("events socket: accept failed", "event", "events_error", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		l.mu.Lock()
		full := len(l.conns) >= maxConns
		if !full {
			id++
			l.conns[id] = c
		}
		connID := id // id is the loop's, not the iteration's: read must keep its own
		l.mu.Unlock()
		if full {
			c.Close()
			continue
		}
		wg.Go(func() { l.read(ctx, connID, c) })
	}
}

// read parses the connection's lines and hands them to Run's loop, all
// that one read brought in one batch: a busy worker's lines cost the agent
// one wake-up and one lock per read, not per line. A malformed or overlong
// line ends the connection, as its end does.
func (l *Listener) read(ctx context.Context, id uint64, c net.Conn) {
	defer func() {
		c.Close()
		l.mu.Lock()
		delete(l.conns, id)
		l.mu.Unlock()
		select {
		case l.batches <- []line{{conn: id, closed: true}}:
		case <-ctx.Done():
		}
	}()
	buf := make([]byte, 64<<10)
	held := 0 // bytes of a line not yet whole, at the start of buf
	var last time.Time
	for {
		// Lines written meanwhile wait in the socket and are read together.
		if wait := readPace - time.Since(last); wait > 0 {
			time.Sleep(wait)
		}
		n, err := c.Read(buf[held:])
		last = time.Now()
		held += n
		var batch []line
		at := l.now()
		rest := buf[:held]
		for {
			i := bytes.IndexByte(rest, '\n')
			if i < 0 {
				break
			}
			ev, perr := Parse(string(rest[:i]))
			if perr != nil {
				l.logger().Warn("events socket: dropping a connection that does not speak the protocol", "event", "events_error", "err", perr)
				return
			}
			batch = append(batch, line{conn: id, ev: ev, at: at})
			rest = rest[i+1:]
		}
		if len(rest) >= MaxLine {
			l.logger().Warn("events socket: dropping a connection that does not speak the protocol", "event", "events_error",
				"err", fmt.Errorf("%w: a line longer than %d bytes", errMalformed, MaxLine))
			return
		}
		held = copy(buf, rest)
		if len(batch) > 0 {
			select {
			case l.batches <- batch:
			case <-ctx.Done():
				return
			}
		}
		if err != nil {
			// A last line without its newline is dropped: a writer that could
			// not write a line whole closes its connection, and the cut line
			// could parse as another, valid one ("start 12" of "start 1234 ...").
			return
		}
	}
}

// applyAll applies a batch under one lock; changed: something a drain
// looks at changed, ended: a job ended.
func (l *Listener) applyAll(batch []line) (changed, ended bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ln := range batch {
		if l.apply(ln) {
			changed = true
			ended = ended || ln.ev.Kind == End
		}
	}
	return changed, ended
}

// apply updates the state, with l.mu held; false when nothing changed.
func (l *Listener) apply(ln line) bool {
	if ln.closed {
		changed := false
		for pid, p := range l.procs {
			if p.conn == ln.conn {
				if len(l.lost) >= maxLost {
					l.forgetLost()
				}
				l.lost[pid] = true
				delete(l.procs, pid)
				changed = true
			}
		}
		return changed
	}
	ev := ln.ev
	p := l.procs[ev.PID]
	if ev.Kind == Hello {
		delete(l.lost, ev.PID)
		p = &proc{jobs: map[string]string{}, extra: ev.InFlight}
		l.procs[ev.PID] = p
	}
	if p == nil {
		// First heard of without a hello: no job was in flight. A pid whose
		// connection broke stays lost until it says hello, its state kept
		// so its lines are still followed.
		p = &proc{jobs: map[string]string{}}
		l.procs[ev.PID] = p
	}
	p.conn = ln.conn
	p.lastEvent = ln.at
	switch ev.Kind {
	case Start:
		p.jobs[ev.JID] = ev.Class
		l.runs[ev.Class]++
		l.interval[ev.Class] = true
	case End:
		if _, ok := p.jobs[ev.JID]; ok {
			delete(p.jobs, ev.JID)
		} else if p.extra > 0 {
			p.extra--
		}
		l.interval[ev.Class] = true
	case Quiet:
		p.quietAt = ln.at
	}
	return true
}
