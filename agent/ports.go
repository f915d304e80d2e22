package agent

import (
	"context"

	"github.com/dynocycle/dynocycle/heartbeat"
)

// Meter reads the memory the policy judges, in bytes.
type Meter interface {
	Sample(ctx context.Context) (uint64, error)
}

// Worker quiets and drains the supervised worker so that no job is lost.
type Worker interface {
	// Quiet tells the worker to stop taking new jobs. It cannot be undone.
	Quiet(ctx context.Context) error
	// Drain blocks until no job is in flight, or ctx ends; it returns nil
	// only when the worker is known to be drained.
	Drain(ctx context.Context) error
}

// JobWatcher is implemented by workers that can tell when a job ended, so
// memory is sampled right after it rather than at the next scheduled check.
type JobWatcher interface {
	JobEnded() <-chan struct{}
}

// GrowthAttributor is implemented by workers that know which job classes
// were running, so memory growth between two samples can be attributed to
// them.
type GrowthAttributor interface {
	Attribute(delta int64)
	TopJobs(n int) []heartbeat.JobGrowth
}

// Fleet coordinates restarts among the dynos of an app.
type Fleet interface {
	// Publish records this agent's presence; it expires unless refreshed.
	Publish(ctx context.Context, p heartbeat.Presence) error
	// Acquire takes a restart slot. It fails with heartbeat.ErrNoSlot when
	// all slots are taken and with *heartbeat.PeersError when too few healthy
	// peers are up.
	Acquire(ctx context.Context) (heartbeat.Lease, error)
	// Renew extends a held lease; heartbeat.ErrNotHolder when it was lost.
	Renew(ctx context.Context, l heartbeat.Lease) error
	// Release frees a held lease; heartbeat.ErrNotHolder when it was lost.
	Release(ctx context.Context, l heartbeat.Lease) error
	// HandOver records on a held lease that the platform is about to
	// replace this agent's dyno, so the agent that replaces it can claim the
	// lease; it returns the lease as recorded.
	HandOver(ctx context.Context, l heartbeat.Lease) (heartbeat.Lease, error)
	// Held returns the lease this agent holds, or claims the lease handed
	// over by the dyno this one replaces.
	Held(ctx context.Context) (heartbeat.Lease, bool, error)
	// SlotFreed is signalled when a slot may have been freed.
	SlotFreed() <-chan struct{}
}

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

// Restarter replaces a drained worker with a fresh one.
type Restarter interface {
	Restart(ctx context.Context, reason string) (Next, error)
}

// Replacer is implemented by restarters after which another agent process
// carries on (the platform replaces the dyno, or a supervisor starts the
// agent again): the agent hands its lease over before restarting.
type Replacer interface {
	ReplacesAgent() bool
}
