// Package worker holds the quiet-and-drain behaviour of workers that are
// driven by Unix signals alone (Resque, Delayed::Job, any worker). Sidekiq,
// which reports its own state in Redis, lives in package sidekiq.
package worker

import (
	"context"
	"log/slog"
	"syscall"

	"github.com/dynocycle/dynocycle/agent"
)

// Process is the supervised worker.
type Process interface {
	Signal(sig syscall.Signal) error
	Done() <-chan struct{}
}

// Signals quiets a worker with QUIET_SIGNAL. A signals worker cannot say when
// its last job ended, so draining waits out GRACE_TIME unless the worker
// exits first; without a quiet signal there is nothing to drain and the stop
// signal alone gives the worker SHUTDOWN_WAIT to finish.
type Signals struct {
	Process     Process
	QuietSignal syscall.Signal // 0: none
	Logger      *slog.Logger
}

var _ agent.Quieter = (*Signals)(nil)

// Quiet sends the quiet signal, if one is configured.
func (s *Signals) Quiet(context.Context) error {
	if s.QuietSignal == 0 {
		return nil
	}
	return s.Process.Signal(s.QuietSignal)
}

// Drain waits for the worker to exit or for ctx (GRACE_TIME) to end.
func (s *Signals) Drain(ctx context.Context) error {
	if s.QuietSignal == 0 {
		return nil
	}
	select {
	case <-s.Process.Done():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
