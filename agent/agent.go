// Package agent is dynocycle's control loop: it watches the worker's memory,
// decides when a restart is due (policy.go), and walks a restart through
// watching -> wanting -> leased -> quieting -> draining -> restarting, taking
// the fleet's lease before the worker is quieted.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/heartbeat"
)

// Child is the supervised worker process.
type Child interface {
	StartedAt() time.Time
	Running() bool
	Exited() <-chan *child.ExitError
	Terminate(ctx context.Context, sig syscall.Signal) (*child.ExitError, error)
	Stop(ctx context.Context) (*child.ExitError, error)
}

var _ Child = (*child.Process)(nil)

// HealthChecker is implemented by workers that can tell a freshly started
// worker is up and taking jobs; the reborn dyno then releases its lease.
type HealthChecker interface {
	Healthy(ctx context.Context) (bool, error)
}

// Settings are the agent's knobs, resolved from the configuration.
type Settings struct {
	Policy          Policy
	Limit           uint64 // the limit published and logged: MaxRSS, else CriticalRSS
	CheckSchedule   Schedule
	RestartSchedule Schedule // nil: no rolling restarts
	GraceTime       time.Duration
	ShutdownWait    time.Duration
	ConfirmAfter    time.Duration
	LeaseRenew      time.Duration // how often a held lease is renewed while quieting and draining
	DryRun          bool
	Dyno            string
	Version         string
	// TerminationWait bounds how long the agent waits for the platform's
	// SIGTERM after a successful API restart before it stops the worker itself.
	TerminationWait time.Duration
}

// ExitCodeRestart is the agent's exit code on PLATFORM=exit after a restart:
// EX_TEMPFAIL, which supervisors treat as "start me again".
const ExitCodeRestart = 75

// ExitError ends Run with a process exit code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Agent watches one worker (or the whole dyno when Child is nil).
type Agent struct {
	Settings  Settings
	Meter     Meter
	Worker    Worker // nil: nothing to quiet or drain
	Fleet     Fleet
	Restarter Restarter
	Child     Child // nil: no worker command
	Signals   <-chan os.Signal
	Logger    *slog.Logger
	Metrics   Metrics // nil: none
	Now       func() time.Time
	// Runners are more loops to run alongside the agent (a Redis subscriber,
	// the Sidekiq reader, the metrics server); the first to fail stops all.
	Runners []func(context.Context) error

	state      string
	startedAt  time.Time
	overChecks int
	lastRSS    uint64
	restarts   int
	lastReason string
	pending    *heartbeat.Lease // held from before the last restart, released once healthy
	holdLogged string
	heldKnown  bool // the lease lookup of the start has succeeded
	heldFailed bool
	waitLogged string
	lastSample time.Time
	leaseWait  time.Time
}

// Run runs until the worker exits, a signal stops the agent, or a restart
// ends it; the returned *ExitError carries the exit code.
func (a *Agent) Run(ctx context.Context) error {
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Logger == nil {
		a.Logger = slog.New(slog.DiscardHandler)
	}
	if a.Metrics == nil {
		a.Metrics = nopMetrics{}
	}
	a.Logger = a.Logger.With("dyno", a.Settings.Dyno)
	a.startedAt = a.Now()
	a.state = heartbeat.StateWatching

	g, ctx := errgroup.WithContext(ctx)
	// The first signal ends watching at once: no new restart starts, and an
	// API call in flight is abandoned rather than retried against the fresh
	// dyno the platform is already starting.
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	g.Go(func() error {
		if err := a.watch(watchCtx); err != nil && ctx.Err() == nil && watchCtx.Err() == nil {
			return err
		}
		<-ctx.Done() // the signal handler decides how the agent ends
		return ctx.Err()
	})
	g.Go(func() error { return a.handleSignals(ctx, stopWatching) })
	if a.Child != nil {
		g.Go(func() error {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case e := <-a.Child.Exited():
				a.Logger.Info("worker exited", "event", "worker_exit", "code", e.Code)
				return &ExitError{Code: e.Code, Err: e}
			}
		})
	}
	for _, run := range a.Runners {
		g.Go(func() error { return run(ctx) })
	}
	err := g.Wait()
	// The worker must not outlive the agent: a helper loop failed, or a
	// restart in place started a new worker while a signal was stopping the old.
	if a.Child != nil && a.Child.Running() {
		a.Logger.Warn("worker still running as the agent ends; stopping it", "event", "worker_orphan", "err", err)
		a.stopChild(context.Background())
	}
	return err
}

// handleSignals forwards SIGTERM and SIGINT to the worker and ends the agent
// with the worker's exit code. Heroku may send SIGTERM more than once, so a
// repeated TERM is not forwarded again; a second INT (Ctrl-C twice) kills.
func (a *Agent) handleSignals(ctx context.Context, stopWatching context.CancelFunc) error {
	var done chan *ExitError
	// Terminate outlives ctx (a failing loop must not cut the worker's
	// shutdown short); only a second INT kills at once.
	tctx, kill := context.WithCancel(context.WithoutCancel(ctx))
	defer kill()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-done:
			return e
		case s := <-a.Signals:
			sig, _ := s.(syscall.Signal)
			a.Logger.Info("signal received", "event", "signal", "signal", sig.String())
			stopWatching()
			if a.Child == nil {
				return &ExitError{Code: 0}
			}
			if done != nil {
				if sig == syscall.SIGINT {
					kill()
				}
				continue
			}
			done = make(chan *ExitError, 1)
			go func() {
				e, err := a.Child.Terminate(tctx, sig)
				switch {
				case e != nil:
					done <- &ExitError{Code: e.Code}
				case err != nil:
					done <- &ExitError{Code: 1, Err: err}
				default:
					done <- &ExitError{Code: 0}
				}
			}()
		}
	}
}

func (a *Agent) watch(ctx context.Context) error {
	var jobEnded <-chan struct{}
	if jw, ok := a.Worker.(JobWatcher); ok {
		jobEnded = jw.JobEnded()
	}
	if err := a.check(ctx, "start"); err != nil {
		return err
	}
	for {
		now := a.Now()
		next := NextCheck(a.Settings.CheckSchedule, now)
		timer := time.NewTimer(next.Sub(now))
		var err error
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
			err = a.check(ctx, "schedule")
		case <-jobEnded:
			timer.Stop()
			err = a.check(ctx, "job_end")
		case <-a.Fleet.SlotFreed():
			timer.Stop()
			if a.state == heartbeat.StateWanting {
				err = a.check(ctx, "slot_freed")
			}
		}
		if err != nil {
			return err
		}
	}
}

// check samples memory, publishes presence, and restarts when the policy says so.
func (a *Agent) check(ctx context.Context, trigger string) error {
	rss, err := a.Meter.Sample(ctx)
	if err != nil {
		a.Logger.Warn("memory sample failed", "event", "sample_failed", "err", err)
		return nil
	}
	now := a.Now()
	startedAt := a.workerStartedAt()
	uptime := now.Sub(startedAt)
	if ga, ok := a.Worker.(GrowthAttributor); ok && a.lastRSS > 0 {
		ga.Attribute(int64(rss) - int64(a.lastRSS))
	}
	a.lastRSS = rss
	a.overChecks = OverChecks(a.overChecks, rss, a.Settings.Policy.MaxRSS)
	a.Metrics.Sample(rss, a.Settings.Limit)
	if now.Sub(a.lastSample) >= 20*time.Second || trigger == "start" {
		a.lastSample = now
		a.Logger.Info("memory", "event", "sample", "sample#memory_rss", fmtMB(rss), "sample#memory_limit", fmtMB(a.Settings.Limit), "state", a.state)
	} else {
		a.Logger.Debug("memory", "event", "check", "trigger", trigger, "rss", fmtMB(rss), "over_checks", a.overChecks)
	}
	a.lookUpHeld(ctx)
	a.confirm(ctx, uptime)
	a.publish(ctx, rss, startedAt)

	d := Decide(a.Settings.Policy, Observation{
		RSS: rss, OverChecks: a.overChecks, Uptime: uptime,
		RollingDue: RollingDue(a.Settings.RestartSchedule, startedAt, now),
	})
	if !d.Restart {
		a.setState(heartbeat.StateWatching)
		if d.Hold != "" && a.holdLogged != d.Hold {
			a.Logger.Info("over the limit, holding", "event", "hold", "hold", d.Hold, "rss", fmtMB(rss), "limit", fmtMB(a.Settings.Limit),
				"over_checks", a.overChecks, "uptime", uptime.Round(time.Second))
		}
		a.holdLogged = d.Hold
		return nil
	}
	a.holdLogged = ""
	if a.Settings.DryRun {
		if a.state != heartbeat.StateWanting {
			a.Logger.Warn("restart wanted; DRY_RUN is on, so nothing is done", "event", "dry_run", "reason", d.Reason, "rss", fmtMB(rss), "limit", fmtMB(a.Settings.Limit))
		}
		a.setState(heartbeat.StateWanting)
		return nil
	}
	if a.state != heartbeat.StateWanting {
		a.leaseWait = now
		a.waitLogged = ""
		a.Logger.Warn("restart wanted", "event", "restart_wanted", "reason", d.Reason, "rss", fmtMB(rss), "limit", fmtMB(a.Settings.Limit),
			a.topJobs())
	}
	a.setState(heartbeat.StateWanting)
	if a.pending != nil {
		// Wanted again before the last restart was confirmed: hand the slot
		// to waiting dynos first rather than keep it, or one quick bloater
		// could hold the fleet's only slot forever.
		a.releasePending(ctx, "restart wanted again before the last one was confirmed")
		return nil
	}
	lease, err := a.Fleet.Acquire(ctx)
	if err != nil {
		var pe *heartbeat.PeersError
		switch {
		case errors.Is(err, heartbeat.ErrNoSlot), errors.As(err, &pe):
			kind := "no_slot"
			if pe != nil {
				kind = "peers"
			}
			if a.waitLogged != kind {
				a.Logger.Info("waiting for a restart slot", "event", "lease_wait", "why", err.Error())
			}
			a.waitLogged = kind
		default:
			// Without the lease nothing is quieted: the worker keeps running.
			a.Metrics.FleetError("acquire")
			a.Logger.Warn("cannot take the restart lease; the worker keeps running", "event", "lease_error", "err", err)
		}
		return nil
	}
	a.Metrics.LeaseWait(now.Sub(a.leaseWait))
	return a.restart(ctx, lease, d.Reason, rss)
}

func (a *Agent) restart(ctx context.Context, lease heartbeat.Lease, reason string, rss uint64) error {
	log := a.Logger.With("slot", lease.Slot, "token", lease.Token, "reason", reason)
	a.setState(heartbeat.StateLeased)
	log.Info("restart lease taken", "event", "lease_acquired")
	// Lease first, quiet second: a quiet Sidekiq cannot be un-quieted, so make
	// sure the lease is still ours right before quieting.
	if err := a.Fleet.Renew(ctx, lease); err != nil {
		log.Warn("lease lost before quieting; the worker keeps running", "event", "lease_lost", "err", err)
		a.setState(heartbeat.StateWatching)
		return nil
	}
	renewCtx, stopRenew := context.WithCancel(ctx)
	defer stopRenew()
	go a.renew(renewCtx, lease, log)

	if a.Worker != nil {
		a.setState(heartbeat.StateQuieting)
		a.publish(ctx, rss, a.workerStartedAt())
		if err := a.Worker.Quiet(ctx); err != nil {
			log.Warn("quiet failed; draining anyway", "event", "quiet_failed", "err", err)
		}
		a.setState(heartbeat.StateDraining)
		a.publish(ctx, rss, a.workerStartedAt())
		log.Info("worker quiet, draining", "event", "drain", "grace", a.Settings.GraceTime)
		start := a.Now()
		dctx, cancel := context.WithTimeout(ctx, a.Settings.GraceTime)
		err := a.Worker.Drain(dctx)
		cancel()
		a.Metrics.Drain(a.Now().Sub(start))
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			log.Warn("grace time passed before the worker reported drained; stopping it (a graceful worker hands unfinished jobs back)",
				"event", "drain_timeout", "grace", a.Settings.GraceTime)
		default:
			log.Info("worker drained", "event", "drained", "took", a.Now().Sub(start).Round(time.Millisecond))
		}
	}

	a.setState(heartbeat.StateRestarting)
	a.publish(ctx, rss, a.workerStartedAt())
	log.Warn("restarting", "event", "restart", "rss", fmtMB(rss), "limit", fmtMB(a.Settings.Limit),
		"count#dynocycle.restart", 1, a.topJobs())
	a.Metrics.Restart(reason)
	next, err := a.Restarter.Restart(ctx, reason)
	stopRenew()
	a.restarts++
	a.lastReason = reason
	a.overChecks = 0
	a.lastRSS = 0
	switch {
	case ctx.Err() != nil:
		return ctx.Err() // stopping on a signal: the signal handler stops the worker
	case err != nil:
		log.Error("restart failed; stopping the worker and exiting so the platform restarts the process", "event", "restart_failed", "err", err)
		a.stopChild(ctx)
		return &ExitError{Code: 1, Err: fmt.Errorf("restart: %w", err)}
	case next == Exit:
		log.Info("worker stopped; exiting for the process supervisor to start it again", "event", "exit", "code", ExitCodeRestart)
		a.stopChild(ctx)
		return &ExitError{Code: ExitCodeRestart}
	case next == AwaitTermination:
		return a.awaitTermination(ctx, log)
	}
	// Restarted in place: keep the slot until the new worker is healthy.
	a.pending = &lease
	a.startedAt = a.Now()
	a.setState(heartbeat.StateWatching)
	log.Info("worker restarted in place", "event", "restarted", "restarts", a.restarts)
	return nil
}

func (a *Agent) renew(ctx context.Context, lease heartbeat.Lease, log *slog.Logger) {
	every := a.Settings.LeaseRenew
	if every <= 0 {
		every = 10 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// Once quiet, the restart goes through even if the lease is lost:
			// a quiet worker takes no jobs, so stopping would be worse.
			if err := a.Fleet.Renew(ctx, lease); err != nil && ctx.Err() == nil {
				a.Metrics.FleetError("renew")
				log.Warn("lease renewal failed; finishing the restart already under way", "event", "lease_renew_failed", "err", err)
			}
		}
	}
}

// awaitTermination waits for the platform's SIGTERM after an API restart;
// the signal handler then stops the worker and ends the agent.
func (a *Agent) awaitTermination(ctx context.Context, log *slog.Logger) error {
	wait := a.Settings.TerminationWait
	if wait <= 0 {
		wait = 2 * time.Minute
	}
	log.Info("restart requested; waiting for the platform to stop this dyno", "event", "await_termination", "wait", wait)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
		log.Error("the platform did not stop the dyno; stopping the worker and exiting", "event", "termination_timeout")
		a.stopChild(ctx)
		return &ExitError{Code: 1, Err: errors.New("platform did not restart the dyno")}
	}
}

func (a *Agent) stopChild(ctx context.Context) {
	if a.Child == nil {
		return
	}
	if _, err := a.Child.Stop(context.WithoutCancel(ctx)); err != nil {
		a.Logger.Warn("stop worker", "event", "worker_stop_failed", "err", err)
	}
}

// lookUpHeld finds a lease this dyno holds from its previous life. It is
// retried at every check until one lookup succeeds: a reborn dyno that
// started while Redis was away must still release its slot, or every other
// dyno's restart would wait for the lease to expire.
func (a *Agent) lookUpHeld(ctx context.Context) {
	if a.heldKnown {
		return
	}
	lease, ok, err := a.Fleet.Held(ctx)
	if err != nil {
		if !a.heldFailed {
			a.Logger.Warn("cannot look up a lease from before the restart; will retry", "event", "lease_lookup_failed", "err", err)
		}
		a.heldFailed = true
		a.Metrics.FleetError("held")
		return
	}
	a.heldKnown = true
	if ok {
		a.pending = &lease
		a.Logger.Info("holding the restart lease from before the restart; releasing it once the worker is healthy",
			"event", "lease_pending", "slot", lease.Slot, "token", lease.Token)
	}
}

// confirm releases a lease held from before the restart once the new worker
// is healthy: what keeps restarts strictly one after another.
func (a *Agent) confirm(ctx context.Context, uptime time.Duration) {
	if a.pending == nil {
		return
	}
	healthy := uptime >= a.Settings.ConfirmAfter
	if hc, ok := a.Worker.(HealthChecker); ok && !healthy {
		if ok, err := hc.Healthy(ctx); err == nil && ok {
			healthy = true
		}
	}
	if !healthy {
		return
	}
	a.releasePending(ctx, "worker healthy after restart")
}

// releasePending frees the lease held from before the last restart.
func (a *Agent) releasePending(ctx context.Context, why string) {
	lease := *a.pending
	if err := a.Fleet.Release(ctx, lease); err != nil && !errors.Is(err, heartbeat.ErrNotHolder) {
		a.Metrics.FleetError("release")
		a.Logger.Warn("cannot release the restart lease yet", "event", "lease_release_failed", "err", err)
		return
	}
	a.pending = nil
	a.Logger.Info(why+"; lease released", "event", "lease_released", "slot", lease.Slot, "token", lease.Token)
}

func (a *Agent) publish(ctx context.Context, rss uint64, startedAt time.Time) {
	p := heartbeat.Presence{
		Dyno: a.Settings.Dyno, ProcessType: heartbeat.ProcessType(a.Settings.Dyno), State: a.state,
		RSS: rss, Limit: a.Settings.Limit, StartedAt: startedAt, Restarts: a.restarts,
		LastReason: a.lastReason, Version: a.Settings.Version, UpdatedAt: a.Now(),
	}
	if ga, ok := a.Worker.(GrowthAttributor); ok {
		p.TopJobs = ga.TopJobs(3)
		a.Metrics.JobGrowth(ga.TopJobs(20))
	}
	if err := a.Fleet.Publish(ctx, p); err != nil {
		a.Metrics.FleetError("publish")
		a.Logger.Warn("publish presence failed", "event", "publish_failed", "err", err)
	}
}

func (a *Agent) setState(s string) {
	if a.state == s {
		return
	}
	a.Logger.Debug("state", "event", "state", "from", a.state, "state", s)
	a.state = s
	a.Metrics.State(s)
}

func (a *Agent) workerStartedAt() time.Time {
	if a.Child != nil {
		if t := a.Child.StartedAt(); !t.IsZero() {
			return t
		}
	}
	return a.startedAt
}

// topJobs is the log attribute naming the job classes that grew memory the
// most, so the user learns which job to fix; empty when none are known.
func (a *Agent) topJobs() slog.Attr {
	ga, ok := a.Worker.(GrowthAttributor)
	if !ok {
		return slog.Attr{}
	}
	var parts []string
	for _, j := range ga.TopJobs(3) {
		parts = append(parts, fmt.Sprintf("%s +%s over %d runs", j.Class, fmtMB(uint64(max(j.Bytes, 0))), j.Runs))
	}
	if len(parts) == 0 {
		return slog.Attr{}
	}
	return slog.String("top_jobs", strings.Join(parts, ", "))
}

func fmtMB(b uint64) string { return fmt.Sprintf("%.1fMB", float64(b)/(1<<20)) }

// Metrics receives what the agent observes; a Prometheus implementation
// lives in the metrics package.
type Metrics interface {
	Sample(rss, limit uint64)
	State(state string)
	Restart(reason string)
	Drain(d time.Duration)
	LeaseWait(d time.Duration)
	FleetError(op string)
	JobGrowth(jobs []heartbeat.JobGrowth)
}

type nopMetrics struct{}

func (nopMetrics) FleetError(string)               {}
func (nopMetrics) JobGrowth([]heartbeat.JobGrowth) {}
func (nopMetrics) Sample(uint64, uint64)           {}
func (nopMetrics) State(string)                    {}
func (nopMetrics) Restart(string)                  {}
func (nopMetrics) Drain(time.Duration)             {}
func (nopMetrics) LeaseWait(time.Duration)         {}
