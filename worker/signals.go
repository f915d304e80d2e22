// Package worker holds the quiet-and-drain behaviour of workers that are
// driven by Unix signals (Resque, Delayed::Job, any worker). Sidekiq, which
// reports its own state in Redis, lives in package sidekiq.
package worker

import (
	"context"
	"log/slog"
	"syscall"
	"time"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/jobevents"
)

// Process is the supervised worker.
type Process interface {
	Signal(sig syscall.Signal) error
	Done() <-chan struct{}
}

// EventSource is the job events the worker's processes report themselves
// (jobevents.Listener), when the worker speaks the protocol.
type EventSource interface {
	// Procs: the processes whose events are live, and the pids of those
	// still running whose events were lost.
	Procs() (live []jobevents.Proc, lost []int)
	Changed() <-chan struct{}
}

var (
	_ EventSource      = (*jobevents.Listener)(nil)
	_ agent.JobWatcher = (*jobevents.Listener)(nil)
)

// Signals quiets a worker with QUIET_SIGNAL. Without events a signals worker
// cannot say when its last job ended, so draining waits out GRACE_TIME
// unless the worker exits first; with events (Events set, and the worker
// writing them) it is drained the moment they say so. Without a quiet
// signal there is nothing to drain and the stop signal alone gives the
// worker SHUTDOWN_WAIT to finish.
type Signals struct {
	Process     Process
	QuietSignal syscall.Signal // 0: none
	Events      EventSource    // nil: none
	Logger      *slog.Logger
	Now         func() time.Time // time.Now when nil

	quietAt time.Time
}

var _ agent.Quieter = (*Signals)(nil)

func (s *Signals) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Quiet sends the quiet signal, if one is configured.
func (s *Signals) Quiet(context.Context) error {
	if s.QuietSignal == 0 {
		return nil
	}
	s.quietAt = s.now()
	return s.Process.Signal(s.QuietSignal)
}

// Drain waits for the worker to exit, for its events to say it is drained,
// or for ctx (GRACE_TIME) to end.
func (s *Signals) Drain(ctx context.Context) error {
	if s.QuietSignal == 0 {
		return nil
	}
	var changed <-chan struct{}
	var tick <-chan time.Time
	if s.Events != nil {
		changed = s.Events.Changed()
		t := time.NewTicker(jobevents.DrainTick)
		defer t.Stop()
		tick = t.C
	}
	for {
		if s.Events != nil && s.drainedByEvents() {
			return nil
		}
		select {
		case <-s.Process.Done():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-tick:
		}
	}
}

func (s *Signals) drainedByEvents() bool {
	// Procs lists only the lost pids whose process still exists.
	live, lost := s.Events.Procs()
	if !EventsDrained(live, len(lost) > 0, s.quietAt, s.now()) {
		return false
	}
	if s.Logger != nil {
		s.Logger.Info("drained by the worker's job events", "event", "events_drained", "processes", len(live), "source", "events")
	}
	return true
}

// EventsDrained is the drain by job events: a process said quiet after the
// quiet signal (quietAt), at least jobevents.QuietSettle ago; no process whose
// events are live has a job in flight; and no process whose events were
// lost is still alive. Without any quiet line it is never true: a worker
// that does not say quiet is drained by its exit or GRACE_TIME, as without
// events.
func EventsDrained(live []jobevents.Proc, lostAlive bool, quietAt, now time.Time) bool {
	if lostAlive || quietAt.IsZero() {
		return false
	}
	quiet := false
	for _, p := range live {
		if p.InFlight > 0 {
			return false
		}
		quiet = quiet || p.Settled(quietAt, now)
	}
	return quiet
}
