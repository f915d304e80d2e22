// Package agent is dynocycle's control loop, and the place to start reading.
//
// Each check is observe, decide, act (Agent.check): observe samples memory
// through the Meter; decide asks the pure policy (Decide, policy.go) whether
// a restart is due, which is where a restart is decided; act walks a restart
// through watching -> wanting -> leased -> quieting -> draining -> restarting
// (Agent.restart), taking the fleet's lease (heartbeat.Fleet) before the
// worker is quieted, and hands the drained worker to a Restarter (package
// platform), which carries the restart out.
//
// Agent.Run owns the agent's own goroutines (the check loop, the signal
// handler, the worker's exit, the lease keeper) and waits for each; as it
// ends it releases its lease, or hands it over to the agent that replaces
// it. The loops of other
// packages (the Redis subscriber, the Sidekiq reader, the metrics server)
// are started and stopped beside it by cmd/dynocycle, in one group.
//
// The agent's ports, the interfaces it drives, are together in ports.go.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/bytesize"
)

// Settings are the agent's knobs, resolved from the configuration.
type Settings struct {
	Policy          Policy
	Limit           uint64 // the limit published and logged: MaxRSS, else CriticalRSS
	CheckSchedule   Schedule
	RestartSchedule Schedule // nil: no rolling restarts
	GraceTime       time.Duration
	ConfirmAfter    time.Duration
	LeaseRenew      time.Duration // how often a held lease is renewed, at every step until it is let go
	DryRun          bool
	Dyno            string
	Version         string
	// TerminationWait bounds how long the agent waits for the platform's
	// SIGTERM after a successful API restart before it stops the worker itself.
	TerminationWait time.Duration
	// PlatformStopWait, when set, is how long the worker gets after a
	// SIGTERM before the agent kills it, in place of SHUTDOWN_WAIT. On
	// Heroku the platform sends SIGTERM to every process and SIGKILL 30 s
	// later; a wait past that leaves the worker all the time Heroku gives.
	PlatformStopWait time.Duration
}

// ExitCodeRestart is the agent's exit code on PLATFORM=exit after a restart:
// EX_TEMPFAIL, which supervisors treat as "start me again".
const ExitCodeRestart = 75

// ExitError ends Run with a process exit code: the worker's, when the agent
// ends with it. It is the one exit-error type; the command exits with Code.
type ExitError struct {
	Code int
	Err  error // why, when the agent ends on a failure or the worker's own exit
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Agent watches one worker (or the whole dyno when Child is nil).
//
// The worker's capabilities are explicit fields, all optional: Quieter for
// quiet and drain, JobEnds, Growth and Health for what a worker that reports
// its jobs (Sidekiq) can tell.
type Agent struct {
	Settings  Settings
	Meter     Meter
	Quieter   Quieter          // nil: nothing to quiet or drain
	JobEnds   JobWatcher       // nil: memory is sampled on the check schedule only
	Growth    GrowthAttributor // nil: growth is not attributed to job classes
	Health    HealthChecker    // nil: a restart is confirmed after ConfirmAfter alone
	Fleet     heartbeat.Fleet
	Restarter Restarter
	// Fallback restarts the worker in place when Restarter refuses for good
	// (ErrRestartRefused), and from then on; nil: a refusal ends the agent.
	Fallback Restarter
	Child    Child // nil: no worker command
	Signals  <-chan os.Signal
	Logger   *slog.Logger
	Metrics  Metrics // nil: none
	Now      func() time.Time

	st    loopState
	lease leaseKeeper
}

// loopState is what the check loop carries from one check to the next. Only
// the watch goroutine touches it.
type loopState struct {
	state      heartbeat.State
	startedAt  time.Time // when watching began; the worker's start when Child is set
	last       Decision  // the policy's memory (Decide)
	lastRSS    uint64    // the previous sample, for growth attribution
	restarts   int
	lastReason string
	wantedAt   time.Time // when the restart now waiting for a lease was first wanted

	pending   *heartbeat.Lease // held from before the last restart, released once healthy
	heldKnown bool             // the lease lookup of the start has succeeded

	sampleLoggedAt time.Time
	publishedAt    time.Time       // the last presence published
	publishedState heartbeat.State // and the state it carried
	logged         logOnce
	// refused: the platform refused a restart for good; restarts go to
	// Fallback without asking it again.
	refused bool
}

// publishEvery bounds how often checks after job ends publish the presence.
const publishEvery = time.Second

// leaseKeeper is the lease this agent holds and how it lets go of it,
// shared by the check loop, the keeper goroutine (keepLease), the worker's
// exit watcher and the end of Run; mu guards it.
type leaseKeeper struct {
	mu sync.Mutex
	// held is renewed every LeaseRenew until it is released or the agent
	// ends: the restart's lease, or the one pending confirmation.
	held *heartbeat.Lease
	// replaced is set once a restart was requested after which another
	// agent process carries on; the lease is then handed over, never
	// released, when this agent ends.
	replaced   bool
	handedOver bool
	// quietedStart is the start of the worker that was sent the quiet
	// signal: its exit is the drain, not the end of the agent.
	quietedStart time.Time
}

// logOnce remembers, per event, the last value logged, so a condition that
// lasts check after check (waiting for a slot, Redis away) is logged once.
type logOnce map[string]string

// changed reports whether v differs from what was last logged for event, and
// remembers v.
func (l logOnce) changed(event, v string) bool {
	if l[event] == v {
		return false
	}
	l[event] = v
	return true
}

// Run runs until the worker exits, a signal stops the agent, a restart ends
// it, or ctx ends; the returned *ExitError carries the exit code. It waits
// for every goroutine it starts, including the worker's graceful stop.
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
	a.st = loopState{state: heartbeat.StateWatching, startedAt: a.Now(), logged: logOnce{}}

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
			for {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case e := <-a.Child.Exited():
					if a.exitIsDrain(e) {
						// As Resque does on QUIT: the restart goes on.
						a.Logger.Info("worker exited after the quiet signal; counted as drained", "event", "worker_exit_quiet", "code", e.Code)
						continue
					}
					a.Logger.Info("worker exited", "event", "worker_exit", "code", e.Code)
					return &ExitError{Code: e.Code, Err: errors.New(e.String())}
				}
			}
		})
	}
	g.Go(func() error { return a.keepLease(ctx) })
	err := g.Wait()
	// Every exit path lets go of the lease: released, or handed over to the
	// agent that replaces this one. Its own bounded context: ctx has ended.
	a.letGo(context.WithoutCancel(ctx))
	// The worker must not outlive the agent: another loop failed, or a
	// restart in place started a new worker while a signal was stopping the old.
	if a.Child != nil && a.Child.Running() {
		a.Logger.Warn("worker still running as the agent ends; stopping it", "event", "worker_orphan", "err", err)
		a.stopChild(context.Background())
	}
	return err
}

// handleSignals forwards the first SIGTERM or SIGINT to the worker and ends
// the agent with the worker's exit code. Heroku may send SIGTERM more than
// once, so a repeated TERM is not forwarded again; a second INT (Ctrl-C
// twice) kills.
func (a *Agent) handleSignals(ctx context.Context, stopWatching context.CancelFunc) error {
	var sig syscall.Signal
	select {
	case <-ctx.Done():
		return ctx.Err()
	case s := <-a.Signals:
		sig = a.signalReceived(s)
	}
	stopWatching()
	if a.Child == nil {
		return &ExitError{Code: 0}
	}
	// The graceful stop outlives ctx: when another loop fails meanwhile, the
	// worker still gets its SHUTDOWN_WAIT (a cancelled Terminate means
	// SIGKILL). Only a second INT cuts it short.
	tctx, kill := context.WithCancel(context.WithoutCancel(ctx))
	defer kill()
	done := make(chan *ExitError, 1)
	go func() { done <- a.terminate(tctx, sig) }()
	ending := ctx.Done()
	for {
		select {
		case e := <-done:
			return e
		case <-ending:
			ending = nil
			a.Logger.Info("the agent is ending; the worker's graceful stop goes on", "event", "stop_continues")
		case s := <-a.Signals:
			if a.signalReceived(s) == syscall.SIGINT {
				kill()
			}
		}
	}
}

func (a *Agent) signalReceived(s os.Signal) syscall.Signal {
	sig, _ := s.(syscall.Signal)
	a.Logger.Info("signal received", "event", "signal", "signal", sig.String())
	return sig
}

// terminate forwards sig to the worker and waits for it to stop. A SIGTERM
// is the platform's (Heroku sends it to every process of the dyno): with
// PlatformStopWait the worker gets the platform's time, not SHUTDOWN_WAIT.
func (a *Agent) terminate(ctx context.Context, sig syscall.Signal) *ExitError {
	var e *child.Exit
	var err error
	if sig == syscall.SIGTERM && a.Settings.PlatformStopWait > 0 {
		e, err = a.Child.TerminateWithin(ctx, sig, a.Settings.PlatformStopWait)
	} else {
		e, err = a.Child.Terminate(ctx, sig)
	}
	switch {
	case e != nil:
		return &ExitError{Code: e.Code}
	case err != nil:
		return &ExitError{Code: 1, Err: err}
	default:
		return &ExitError{Code: 0}
	}
}

func (a *Agent) watch(ctx context.Context) error {
	var jobEnded <-chan struct{}
	if a.JobEnds != nil {
		jobEnded = a.JobEnds.JobEnded()
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
			if a.st.state == heartbeat.StateWanting {
				err = a.check(ctx, "slot_freed")
			}
		}
		if err != nil {
			return err
		}
	}
}

// check is one turn of the loop: observe, decide, act.
func (a *Agent) check(ctx context.Context, trigger string) error {
	obs, ok := a.observe(ctx, trigger)
	if !ok {
		return nil
	}
	a.lookUpHeld(ctx)
	a.confirm(ctx, obs.Uptime)
	// A burst of short jobs samples memory many times a second; the fleet
	// needs the presence far less often (it lasts PresenceTTL), and each
	// publish is a write to the Redis the app's jobs live in.
	if trigger != "job_end" || a.Now().Sub(a.st.publishedAt) >= publishEvery || a.st.publishedState != a.st.state {
		a.publish(ctx, obs.RSS)
	}
	d := a.decide(obs, trigger)
	return a.act(ctx, d, obs.RSS)
}

// observe samples memory and feeds the attribution and metrics; false when
// no sample could be read (nothing is decided on a missing sample).
func (a *Agent) observe(ctx context.Context, trigger string) (Observation, bool) {
	rss, err := a.Meter.Sample(ctx)
	if err != nil {
		a.Logger.Warn("memory sample failed", "event", "sample_failed", "err", err)
		return Observation{}, false
	}
	now := a.Now()
	startedAt := a.workerStartedAt()
	if a.Growth != nil && a.st.lastRSS > 0 {
		a.Growth.Attribute(int64(rss) - int64(a.st.lastRSS))
	}
	a.st.lastRSS = rss
	a.Metrics.Sample(rss, a.Settings.Limit)
	if now.Sub(a.st.sampleLoggedAt) >= 20*time.Second || trigger == "start" {
		a.st.sampleLoggedAt = now
		// source= and the dynocycle. prefix, as l2met and Librato group
		// measurements: by dyno, and apart from Heroku's own memory_rss.
		a.Logger.Info("memory", "event", "sample", "source", a.Settings.Dyno,
			"sample#dynocycle.memory_rss", bytesize.MB(rss), "sample#dynocycle.memory_limit", bytesize.MB(a.Settings.Limit), "state", a.st.state)
	}
	return Observation{
		RSS: rss, Uptime: now.Sub(startedAt),
		RollingDue: RollingDue(a.Settings.RestartSchedule, startedAt, now),
	}, true
}

// decide asks the policy and remembers its answer for the next check.
func (a *Agent) decide(obs Observation, trigger string) Decision {
	d := Decide(a.Settings.Policy, a.st.last, obs)
	a.Logger.Debug("memory", "event", "check", "trigger", trigger, "rss", bytesize.MB(obs.RSS), "over_checks", d.OverChecks)
	if d.Hold != "" && d.Hold != a.st.last.Hold {
		a.Logger.Info("over the limit, holding", "event", "hold", "hold", d.Hold, "rss", bytesize.MB(obs.RSS), "limit", bytesize.MB(a.Settings.Limit),
			"over_checks", d.OverChecks, "uptime", obs.Uptime.Round(time.Second))
	}
	a.st.last = d
	return d
}

// act carries a decision out: keep watching, or want a restart and start it
// once the fleet grants a lease.
func (a *Agent) act(ctx context.Context, d Decision, rss uint64) error {
	if !d.Restart {
		a.setState(heartbeat.StateWatching)
		return nil
	}
	limit := bytesize.MB(a.Settings.Limit)
	if a.Settings.DryRun {
		if a.st.state != heartbeat.StateWanting {
			a.Logger.Warn("restart wanted; DRY_RUN is on, so nothing is done", "event", "dry_run", "reason", d.Reason, "rss", bytesize.MB(rss), "limit", limit)
		}
		a.setState(heartbeat.StateWanting)
		return nil
	}
	if a.st.state != heartbeat.StateWanting {
		a.st.wantedAt = a.Now()
		delete(a.st.logged, "lease_wait")
		a.Logger.Warn("restart wanted", "event", "restart_wanted", "reason", d.Reason, "rss", bytesize.MB(rss), "limit", limit,
			a.topJobs())
	}
	a.setState(heartbeat.StateWanting)
	if a.st.pending != nil {
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
			if a.st.logged.changed("lease_wait", kind) {
				a.Logger.Info("waiting for a restart slot", "event", "lease_wait", "why", err.Error())
			}
		default:
			// Without the lease nothing is quieted: the worker keeps running.
			a.Metrics.FleetError("acquire")
			a.Logger.Warn("cannot take the restart lease; the worker keeps running", "event", "lease_error", "err", err)
		}
		return nil
	}
	a.Metrics.LeaseWait(a.Now().Sub(a.st.wantedAt))
	return a.restart(ctx, lease, d.Reason, rss)
}

// restart walks a restart from the lease to the Restarter.
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
	// From here on the keeper renews the lease at every step, until it is
	// released or handed over and this agent ends.
	a.keep(&lease)

	if a.Quieter != nil {
		a.lease.mu.Lock()
		a.lease.quietedStart = a.workerStartedAt()
		a.lease.mu.Unlock()
		if err := a.quietAndDrain(ctx, log, rss); err != nil {
			return err
		}
	}

	a.setState(heartbeat.StateRestarting)
	a.publish(ctx, rss)
	log.Warn("restarting", "event", "restart", "rss", bytesize.MB(rss), "limit", bytesize.MB(a.Settings.Limit),
		"source", a.Settings.Dyno, "count#dynocycle.restart", 1, a.topJobs())
	a.Metrics.Restart(reason)
	restarter := a.Restarter
	if a.st.refused {
		restarter = a.Fallback // the token known to be refused is not tried again
	}
	if restarter.ReplacesAgent() {
		a.lease.mu.Lock()
		a.lease.replaced = true
		a.lease.mu.Unlock()
		lease = a.handOver(ctx, lease, log)
	}
	next, err := restarter.Restart(ctx, reason)
	if err != nil && ctx.Err() == nil && errors.Is(err, ErrRestartRefused) && a.Fallback != nil && !a.st.refused {
		lease = a.takeBack(ctx, lease, log)
		next, err = a.restartInPlace(ctx, log, reason, err)
	} else if a.st.refused {
		a.Metrics.RestartFallback()
	}
	a.st.restarts++
	a.st.lastReason = reason
	a.st.last = Decision{}
	a.st.lastRSS = 0
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
	a.st.pending = &lease
	a.st.startedAt = a.Now()
	a.setState(heartbeat.StateWatching)
	log.Info("worker restarted in place", "event", "restarted", "restarts", a.st.restarts)
	return nil
}

// takeBack undoes the hand-over of a restart the platform refused, so that
// no new dyno claims the lease (on Fir any new dyno of the type may) and
// releases it while this worker restarts in place. Failing that the restart
// in place goes on all the same.
func (a *Agent) takeBack(ctx context.Context, lease heartbeat.Lease, log *slog.Logger) heartbeat.Lease {
	l, err := a.Fleet.TakeBack(ctx, lease)
	if err != nil {
		a.Metrics.FleetError("take_back")
		log.Warn("cannot take the hand-over back; restarting in place all the same", "event", "lease_take_back_failed", "err", err)
		return lease
	}
	a.keep(&l)
	return l
}

// restartInPlace carries out in place a restart the platform refused for
// good: the new worker frees the same memory, where exiting would have the
// platform crash-restart the dyno with growing back-off, again at every
// restart. The refusal itself was logged, once, by the restarter. The lease,
// handed over for a successor that will never come, is this agent's again:
// it is released once the new worker is healthy, as after any restart in
// place.
func (a *Agent) restartInPlace(ctx context.Context, log *slog.Logger, reason string, refusal error) (Next, error) {
	a.st.refused = true
	a.lease.mu.Lock()
	a.lease.replaced, a.lease.handedOver = false, false
	a.lease.mu.Unlock()
	a.Metrics.RestartFallback()
	log.Warn("the platform refused the restart; restarting the worker in place instead, as every later restart of this dyno",
		"event", "restart_fallback", "err", refusal)
	return a.Fallback.Restart(ctx, reason)
}

// quietAndDrain quiets the worker and waits up to GRACE_TIME for its jobs to
// finish; it fails only when ctx ends.
func (a *Agent) quietAndDrain(ctx context.Context, log *slog.Logger, rss uint64) error {
	a.setState(heartbeat.StateQuieting)
	a.publish(ctx, rss)
	if err := a.Quieter.Quiet(ctx); err != nil {
		log.Warn("quiet failed; draining anyway", "event", "quiet_failed", "err", err)
	}
	a.setState(heartbeat.StateDraining)
	a.publish(ctx, rss)
	log.Info("worker quiet, draining", "event", "drain", "grace", a.Settings.GraceTime)
	start := a.Now()
	dctx, cancel := context.WithTimeout(ctx, a.Settings.GraceTime)
	err := a.Quieter.Drain(dctx)
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
	return nil
}

// keepLease renews the lease the agent holds every LeaseRenew, so that
// the slot stays visibly taken at every step of a restart and is restored
// at once should Redis lose its data.
func (a *Agent) keepLease(ctx context.Context) error {
	every := a.Settings.LeaseRenew
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			lease, ok := a.keptLease()
			if !ok {
				continue
			}
			// Once quiet, the restart goes through even if the lease is lost:
			// a quiet worker takes no jobs, so stopping would be worse.
			if err := a.Fleet.Renew(ctx, lease); err != nil && ctx.Err() == nil {
				a.Metrics.FleetError("renew")
				a.Logger.Warn("lease renewal failed; finishing the restart already under way", "event", "lease_renew_failed",
					"slot", lease.Slot, "token", lease.Token, "err", err)
			}
		}
	}
}

// keep makes l the lease the keeper renews; nil once it is let go.
func (a *Agent) keep(l *heartbeat.Lease) {
	a.lease.mu.Lock()
	defer a.lease.mu.Unlock()
	a.lease.held = l
}

func (a *Agent) keptLease() (heartbeat.Lease, bool) {
	a.lease.mu.Lock()
	defer a.lease.mu.Unlock()
	if a.lease.held == nil {
		return heartbeat.Lease{}, false
	}
	return *a.lease.held, true
}

// handOver records on the lease that the platform is about to replace this
// dyno. Failing that the restart still goes on; the hand-over is tried again
// as the agent ends.
func (a *Agent) handOver(ctx context.Context, lease heartbeat.Lease, log *slog.Logger) heartbeat.Lease {
	h, err := a.Fleet.HandOver(ctx, lease)
	if err != nil {
		a.Metrics.FleetError("handover")
		log.Warn("cannot hand the lease over before the restart; will retry as the agent ends", "event", "lease_handover_failed", "err", err)
		return lease
	}
	log.Info("lease handed over to the dyno that replaces this one", "event", "lease_handover",
		"process_type", h.ProcessType, "restart_at", h.RestartAt)
	a.lease.mu.Lock()
	a.lease.handedOver = true
	a.lease.held = &h
	a.lease.mu.Unlock()
	return h
}

// letGo makes sure no exit of the agent leaves its lease held: a lease
// whose dyno the platform replaces is handed over to the agent that
// replaces it; any other is released.
func (a *Agent) letGo(ctx context.Context) {
	lease, ok := a.keptLease()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	a.lease.mu.Lock()
	replaced, handedOver := a.lease.replaced, a.lease.handedOver
	a.lease.mu.Unlock()
	log := a.Logger.With("slot", lease.Slot, "token", lease.Token)
	if replaced {
		if !handedOver {
			a.handOver(ctx, lease, log)
		}
		return
	}
	err := a.Fleet.Release(ctx, lease)
	switch {
	case err == nil:
		log.Info("agent ending; lease released", "event", "lease_released")
	case errors.Is(err, heartbeat.ErrNotHolder):
	default:
		a.Metrics.FleetError("release")
		log.Warn("agent ending; cannot release the lease, it runs out by itself", "event", "lease_release_failed", "err", err)
	}
	a.keep(nil)
}

// exitIsDrain reports whether a worker exit is the quieted worker leaving
// on its own during its restart: that exit is its drain.
func (a *Agent) exitIsDrain(e *child.Exit) bool {
	a.lease.mu.Lock()
	defer a.lease.mu.Unlock()
	return !a.lease.quietedStart.IsZero() && e.Started.Equal(a.lease.quietedStart)
}

// awaitTermination waits for the platform's SIGTERM after an API restart;
// the signal handler then stops the worker and ends the agent.
func (a *Agent) awaitTermination(ctx context.Context, log *slog.Logger) error {
	wait := a.Settings.TerminationWait
	if wait <= 0 {
		wait = 2 * time.Minute
	}
	log.Info("restart requested; waiting for the platform to stop this dyno", "event", "await_termination", "wait", wait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
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
	if a.st.heldKnown {
		return
	}
	lease, ok, err := a.Fleet.Held(ctx)
	if err != nil {
		if a.st.logged.changed("lease_lookup_failed", "failed") {
			a.Logger.Warn("cannot look up a lease from before the restart; will retry", "event", "lease_lookup_failed", "err", err)
		}
		a.Metrics.FleetError("held")
		return
	}
	a.st.heldKnown = true
	if ok {
		a.st.pending = &lease
		a.keep(&lease) // renewed while the worker boots
		log := a.Logger.With("event", "lease_pending", "slot", lease.Slot, "token", lease.Token)
		if lease.HandedOver() {
			log = log.With("holder", lease.Holder, "handed_over_at", lease.RestartAt)
		}
		log.Info("holding the restart lease from before the restart; releasing it once the worker is healthy")
	}
}

// confirm releases a lease held from before the restart once the new worker
// is healthy: what keeps restarts strictly one after another.
func (a *Agent) confirm(ctx context.Context, uptime time.Duration) {
	if a.st.pending == nil {
		return
	}
	healthy := uptime >= a.Settings.ConfirmAfter
	if !healthy && a.Health != nil {
		if ok, err := a.Health.Healthy(ctx); err == nil && ok {
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
	lease := *a.st.pending
	if err := a.Fleet.Release(ctx, lease); err != nil && !errors.Is(err, heartbeat.ErrNotHolder) {
		a.Metrics.FleetError("release")
		a.Logger.Warn("cannot release the restart lease yet", "event", "lease_release_failed", "err", err)
		return
	}
	a.st.pending = nil
	a.keep(nil)
	a.Logger.Info(why+"; lease released", "event", "lease_released", "slot", lease.Slot, "token", lease.Token)
}

func (a *Agent) publish(ctx context.Context, rss uint64) {
	p := heartbeat.Presence{
		Dyno: a.Settings.Dyno, ProcessType: heartbeat.ProcessType(a.Settings.Dyno), State: a.st.state,
		RSS: rss, Limit: a.Settings.Limit, StartedAt: a.workerStartedAt(), Restarts: a.st.restarts,
		LastReason: a.st.lastReason, Version: a.Settings.Version, UpdatedAt: a.Now(),
	}
	if a.Growth != nil {
		p.TopJobs = a.Growth.TopJobs(3)
		a.Metrics.JobGrowth(a.Growth.TopJobs(20))
	}
	a.st.publishedAt, a.st.publishedState = p.UpdatedAt, p.State
	if err := a.Fleet.Publish(ctx, p); err != nil {
		a.Metrics.FleetError("publish")
		a.Logger.Warn("publish presence failed", "event", "publish_failed", "err", err)
	}
}

func (a *Agent) setState(s heartbeat.State) {
	if a.st.state == s {
		return
	}
	a.Logger.Debug("state", "event", "state", "from", a.st.state, "state", s)
	a.st.state = s
	a.Metrics.State(s)
}

func (a *Agent) workerStartedAt() time.Time {
	if a.Child != nil {
		if t := a.Child.StartedAt(); !t.IsZero() {
			return t
		}
	}
	return a.st.startedAt
}

// topJobs is the log attribute naming the job classes that grew memory the
// most, so the user learns which job to fix; empty when none are known.
func (a *Agent) topJobs() slog.Attr {
	if a.Growth == nil {
		return slog.Attr{}
	}
	var parts []string
	for _, j := range a.Growth.TopJobs(3) {
		parts = append(parts, j.String())
	}
	if len(parts) == 0 {
		return slog.Attr{}
	}
	return slog.String("top_jobs", strings.Join(parts, ", "))
}
