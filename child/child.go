// Package child runs the worker command as a child process in its own
// process group and stops it gracefully: the stop signal to the group, a wait,
// then SIGKILL to whatever is left.
//
// Nothing of the group outlives the agent. When the agent dies without
// stopping the worker (SIGKILL, a crash), the kernel sends the worker the stop
// signal (Pdeathsig) and a guard process kills what is left of the group after
// SHUTDOWN_WAIT (guard.go). When the worker exits by itself, what it left in
// its group gets LeftoverWait, then SIGKILL.
package child

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Exit is how a worker ended: its exit code, which the agent exits with
// too. It is a status, not an error; the agent's ExitError carries it out.
type Exit struct {
	Code   int
	Signal syscall.Signal // set when the worker was killed by a signal
	// Started is when the worker that exited was started, telling one
	// spawn's exit from the next one's.
	Started time.Time
}

func (e *Exit) String() string {
	if e.Signal != 0 {
		return fmt.Sprintf("worker killed by %v (exit code %d)", e.Signal, e.Code)
	}
	return fmt.Sprintf("worker exited with code %d", e.Code)
}

// Process is the supervised worker. Start it once; Restart replaces it.
type Process struct {
	Path         string
	Args         []string
	Env          []string // nil: the agent's environment
	Stdin        io.Reader
	Stdout       io.Writer
	Stderr       io.Writer
	StopSignal   syscall.Signal // default SIGTERM
	ShutdownWait time.Duration  // between the stop signal and SIGKILL
	// LeftoverWait is how long processes the worker left in its group may
	// run on after it exited by itself, before SIGKILL; DefaultLeftoverWait
	// when zero. Exited reports the exit once they are gone. (With Stdout or
	// Stderr not files, the wait starts once they let go of the output pipe
	// or LeftoverWait has passed.)
	LeftoverWait time.Duration
	Logger       *slog.Logger

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current spawn exited
	state    *os.ProcessState
	expected bool // the current spawn is being stopped on purpose
	exited   chan *Exit
	started  time.Time
	guard    *guard // of the current spawn; nil when it could not start
}

// DefaultLeftoverWait is the default of Process.LeftoverWait: enough for a
// pipeline's tail to finish writing, short enough not to hold up the exit.
const DefaultLeftoverWait = 2 * time.Second

// Start spawns the worker.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil {
		p.exited = make(chan *Exit, 1)
	}
	cmd := exec.Command(p.Path, p.Args...)
	cmd.Env = p.Env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.Stdin, p.Stdout, p.Stderr
	// Writers that are not files are fed through pipes, and Wait waits for
	// every process holding them; bounded, a worker's exit is seen even while
	// what it left behind still holds its output.
	cmd.WaitDelay = p.leftoverWait()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group, so stop signals reach every process the worker
		// forks and a terminal's Ctrl-C reaches the agent first.
		Setpgid: true,
		// The stop signal, not SIGKILL, when the agent dies without stopping
		// it: the worker hands its jobs back as on any stop; the guard kills
		// what is left after SHUTDOWN_WAIT. Go's fork re-checks the parent
		// after setting it, so an agent dying mid-fork is covered too.
		Pdeathsig: p.stopSignal(),
	}
	done := make(chan struct{})
	started := make(chan error, 1)
	go p.run(cmd, started, done)
	if err := <-started; err != nil {
		return &CommandError{Name: p.Path, Code: codeFor(err), Err: err}
	}
	p.cmd, p.done, p.state, p.expected, p.started = cmd, done, nil, false, time.Now()
	g, err := startGuard(cmd.Process.Pid, p.ShutdownWait)
	if err != nil {
		// The worker still gets the stop signal should the agent die; only
		// what it forks could then outlive the agent.
		p.logger().Warn("cannot start the guard of the worker's group", "event", "guard_failed", "err", err)
	}
	p.guard = g
	return nil
}

// run forks the worker and waits for it on one OS thread, locked for the
// worker's whole life. Linux sends the parent-death signal when the thread
// that forked the child ends, not the process; a Go program ends a thread
// whenever a goroutine locked to it returns without unlocking, which any
// caller of Start might do. Forking from this goroutine, locked until the
// worker has been reaped, ties the signal to the agent's death alone:
// unlocked, the thread goes back to the runtime's pool, which never ends it.
func (p *Process) run(cmd *exec.Cmd, started chan<- error, done chan struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		started <- err
		return
	}
	started <- nil
	p.wait(cmd, done)
}

func (p *Process) wait(cmd *exec.Cmd, done chan struct{}) {
	_ = cmd.Wait() // the exit status is read from ProcessState
	p.mu.Lock()
	p.state = cmd.ProcessState
	expected := p.expected
	g := p.guard
	// Start holds mu until started is set, so this is the start of this spawn.
	started := p.started
	p.mu.Unlock()
	close(done)
	if expected {
		return // Terminate ends the group and its guard
	}
	p.endLeftovers(cmd.Process.Pid)
	g.stop()
	e := exitOf(cmd.ProcessState)
	e.Started = started
	p.exited <- e
}

// endLeftovers gives what the worker left in its group LeftoverWait to end,
// then kills it: with the worker gone nobody watches it, and it would hold
// memory and jobs past the agent's exit.
func (p *Process) endLeftovers(pgid int) {
	wait := p.leftoverWait()
	deadline := time.Now().Add(wait)
	for groupAlive(pgid) {
		if time.Now().After(deadline) {
			p.logger().Warn("worker exited leaving processes in its group; killing them", "event", "worker_leftovers_kill", "pgid", pgid, "wait", wait)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			waitGroupGone(pgid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exitOf(st *os.ProcessState) *Exit {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return &Exit{Code: 128 + int(ws.Signal()), Signal: ws.Signal()}
	}
	return &Exit{Code: st.ExitCode()}
}

// Pid is the worker's pid, or 0 before Start.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// StartedAt is when the current worker was spawned.
func (p *Process) StartedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

// Exited delivers the worker's exit when it ended on its own (not by Stop).
func (p *Process) Exited() <-chan *Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil {
		p.exited = make(chan *Exit, 1)
	}
	return p.exited
}

// Signal sends sig to the worker process itself (not its group): a quiet
// signal must reach the worker, not a wrapping shell that would be suspended
// by it.
func (p *Process) Signal(sig syscall.Signal) error {
	pid := p.Pid()
	if pid == 0 {
		return errors.New("worker not started")
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal worker: %w", err)
	}
	return nil
}

// Running reports whether the current worker has not exited.
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Done is closed when the current worker exits.
func (p *Process) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Stop ends the worker on purpose with the stop signal; see Terminate.
func (p *Process) Stop(ctx context.Context) (*Exit, error) {
	return p.Terminate(ctx, p.stopSignal())
}

// Terminate sends sig to the worker's process group, waits up to
// ShutdownWait (or until ctx ends) for the group to exit, then kills what is
// left. It guarantees the group is gone when it returns nil.
func (p *Process) Terminate(ctx context.Context, sig syscall.Signal) (*Exit, error) {
	return p.TerminateWithin(ctx, sig, p.ShutdownWait)
}

// TerminateWithin is Terminate with wait in place of ShutdownWait: a stop
// the platform started gets the time the platform gives, not dynocycle's own.
func (p *Process) TerminateWithin(ctx context.Context, sig syscall.Signal, wait time.Duration) (*Exit, error) {
	p.mu.Lock()
	if p.cmd == nil {
		p.mu.Unlock()
		return nil, errors.New("worker not started")
	}
	p.expected = true
	pgid, done, g := p.cmd.Process.Pid, p.done, p.guard
	p.mu.Unlock()

	log := p.logger()
	if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return nil, fmt.Errorf("signal worker group: %w", err)
	}
	defer g.stop() // from here on the group is gone when Terminate returns
	log.Info("worker stopping", "event", "worker_stop", "pid", pgid, "signal", sigName(sig), "wait", wait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	// Wait for the leader, then for any process it left behind in the group.
	for groupAlive(pgid) || !closed(done) {
		select {
		case <-timer.C:
			log.Warn("worker did not stop in time, killing it", "event", "worker_kill", "pid", pgid, "wait", wait)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
			waitGroupGone(pgid)
			return p.lastExit(), nil
		case <-ctx.Done():
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
			waitGroupGone(pgid)
			return p.lastExit(), ctx.Err()
		case <-done:
		case <-time.After(20 * time.Millisecond):
		}
	}
	return p.lastExit(), nil
}

// Restart stops the worker and starts it again in place.
func (p *Process) Restart(ctx context.Context) error {
	if _, err := p.Stop(ctx); err != nil {
		return err
	}
	return p.Start()
}

func (p *Process) lastExit() *Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return nil
	}
	return exitOf(p.state)
}

func (p *Process) leftoverWait() time.Duration {
	if p.LeftoverWait <= 0 {
		return DefaultLeftoverWait
	}
	return p.LeftoverWait
}

func (p *Process) stopSignal() syscall.Signal {
	if p.StopSignal == 0 {
		return syscall.SIGTERM
	}
	return p.StopSignal
}

func (p *Process) logger() *slog.Logger {
	if p.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Logger
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// groupAlive reports whether any process of the group still exists. A zombie
// leader counts until it is reaped, which done covers.
func groupAlive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}

// waitGroupGone gives the kernel a moment to reap killed group members that
// are not our children; SIGKILL cannot be ignored, so this ends quickly.
func waitGroupGone(pgid int) {
	deadline := time.Now().Add(5 * time.Second)
	for groupAlive(pgid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

func sigName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGINT:
		return "INT"
	case syscall.SIGKILL:
		return "KILL"
	case syscall.SIGQUIT:
		return "QUIT"
	case syscall.SIGTSTP:
		return "TSTP"
	}
	return s.String()
}
