// Package platform holds the Restarters, which carry out a restart the agent
// has decided and prepared (lease held, worker drained): heroku (the Platform
// API restarts the dyno), local (restart the worker in place) and exit (stop
// the worker and exit, for supervisors such as Kubernetes or systemd that
// start it again). The agent's Next tells it what follows.
package platform

import (
	"context"
	"errors"
	"fmt"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/child"
)

// Process is the supervised worker process as the restarters see it.
type Process interface {
	Stop(ctx context.Context) (*child.Exit, error)
	Start() error
}

var _ Process = (*child.Process)(nil)

// Local restarts the worker in place: stop (TERM, SHUTDOWN_WAIT, KILL), start.
type Local struct {
	Process Process
}

var _ agent.Restarter = (*Local)(nil)

// Restart stops and starts the worker; the agent keeps watching.
func (l *Local) Restart(ctx context.Context, _ string) (agent.Next, error) {
	if l.Process == nil {
		return agent.Exit, errors.New("local restart needs a worker command")
	}
	// The stop is never cut short: a signal arriving meanwhile must not turn
	// a graceful stop into a KILL that loses the jobs in flight.
	if _, err := l.Process.Stop(context.WithoutCancel(ctx)); err != nil {
		return agent.Exit, fmt.Errorf("stop worker: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return agent.Exit, err // the agent is stopping: no new worker
	}
	if err := l.Process.Start(); err != nil {
		return agent.Exit, fmt.Errorf("start worker: %w", err)
	}
	return agent.Continue, nil
}

// ExitRestarter stops the worker and lets the agent exit; the process
// supervisor around dynocycle starts everything again.
type ExitRestarter struct {
	Process Process // nil when watching the whole machine
}

var _ agent.Restarter = (*ExitRestarter)(nil)

// ReplacesAgent is true: a new agent process carries on.
func (e *ExitRestarter) ReplacesAgent() bool { return true }

// ReplacesAgent is false: this agent carries on with a new worker.
func (l *Local) ReplacesAgent() bool { return false }

// Restart stops the worker (if any) and tells the agent to exit.
func (e *ExitRestarter) Restart(ctx context.Context, _ string) (agent.Next, error) {
	if e.Process != nil {
		if _, err := e.Process.Stop(context.WithoutCancel(ctx)); err != nil {
			return agent.Exit, fmt.Errorf("stop worker: %w", err)
		}
	}
	return agent.Exit, nil
}
