package agent

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/heartbeat"
)

// The agent's ports: every outside system it drives, each as the small
// interface the agent needs. The fleet's interface is heartbeat.Fleet, kept
// with the words it speaks. Implementations: memory.Meter; worker.Signals and
// sidekiq.Worker (the worker's capabilities); child.Process; the restarters
// of package platform; metrics.Metrics. cmd/dynocycle wires them.

// Meter reads the memory the policy judges, in bytes.
type Meter interface {
	Sample(ctx context.Context) (uint64, error)
}

// Quieter quiets and drains the supervised worker so that no job is lost.
type Quieter interface {
	// Quiet tells the worker to stop taking new jobs. It cannot be undone.
	Quiet(ctx context.Context) error
	// Drain blocks until no job is in flight, or ctx ends; it returns nil
	// only when the worker is known to be drained.
	Drain(ctx context.Context) error
}

// JobWatcher tells when a job ended, so memory is sampled right after it
// rather than at the next scheduled check.
type JobWatcher interface {
	JobEnded() <-chan struct{}
}

// GrowthAttributor knows which job classes were running, so memory growth
// between two samples can be attributed to them.
type GrowthAttributor interface {
	Attribute(delta int64)
	TopJobs(n int) []heartbeat.JobGrowth
}

// HealthChecker tells that a freshly started worker is up and taking jobs,
// so the reborn dyno releases its lease before ConfirmAfter has passed.
type HealthChecker interface {
	Healthy(ctx context.Context) (bool, error)
}

// Child is the supervised worker process.
type Child interface {
	StartedAt() time.Time
	Running() bool
	// Exited delivers the worker's exit when it ended on its own.
	Exited() <-chan *child.Exit
	// Terminate sends sig and waits for the worker to stop; it kills the
	// worker when ctx ends first.
	Terminate(ctx context.Context, sig syscall.Signal) (*child.Exit, error)
	// TerminateWithin is Terminate with wait in place of the worker's
	// SHUTDOWN_WAIT before the kill.
	TerminateWithin(ctx context.Context, sig syscall.Signal, wait time.Duration) (*child.Exit, error)
	// Stop is Terminate with the configured stop signal.
	Stop(ctx context.Context) (*child.Exit, error)
}

var _ Child = (*child.Process)(nil)

// Next says what the agent does after a restart.
type Next int

const (
	// Continue: the worker runs again under this agent; keep watching.
	Continue Next = iota
	// Exit: the agent exits so the process supervisor starts it again.
	Exit
	// AwaitTermination: the platform restarts the dyno and will send SIGTERM.
	AwaitTermination
)

// ErrRestartRefused marks a Restarter's error that retrying cannot fix: the
// platform refused the restart for good (a token or app name that is wrong
// for this app). The agent then restarts the worker in place instead, and
// from then on, rather than exit into a crash loop.
var ErrRestartRefused = errors.New("restart refused by the platform")

// Restarter carries out a restart: it replaces a drained worker with a fresh
// one (package platform).
type Restarter interface {
	// Restart carries the restart out. An error that matches
	// ErrRestartRefused (errors.Is) is a permanent refusal.
	Restart(ctx context.Context, reason string) (Next, error)
	// ReplacesAgent reports whether another agent process carries on after
	// the restart (the platform replaces the dyno, or a supervisor starts
	// the agent again): the agent then hands its lease over before
	// restarting instead of releasing it.
	ReplacesAgent() bool
}

// Metrics receives what the agent observes; a Prometheus implementation
// lives in the metrics package.
type Metrics interface {
	Sample(rss, limit uint64)
	State(state heartbeat.State)
	Restart(reason string)
	Drain(d time.Duration)
	LeaseWait(d time.Duration)
	FleetError(op string)
	JobGrowth(jobs []heartbeat.JobGrowth)
	// RestartFallback counts restarts done in place because the platform
	// refused them (ErrRestartRefused).
	RestartFallback()
}

type nopMetrics struct{}

func (nopMetrics) FleetError(string)               {}
func (nopMetrics) JobGrowth([]heartbeat.JobGrowth) {}
func (nopMetrics) Sample(uint64, uint64)           {}
func (nopMetrics) State(heartbeat.State)           {}
func (nopMetrics) Restart(string)                  {}
func (nopMetrics) Drain(time.Duration)             {}
func (nopMetrics) LeaseWait(time.Duration)         {}
func (nopMetrics) RestartFallback()                {}
