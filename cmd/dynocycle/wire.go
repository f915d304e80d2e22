package main

// The wiring of the agent: which meter, worker, fleet and restarter the
// configuration asks for, and every loop that runs beside the agent. Wiring
// keeps concrete types, so assigning one to the agent's port is the
// compile-time check that it fits.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/bytesize"
	"github.com/dynocycle/dynocycle/jobevents"
	"github.com/dynocycle/dynocycle/memory"
	"github.com/dynocycle/dynocycle/metrics"
	"github.com/dynocycle/dynocycle/platform"
	"github.com/dynocycle/dynocycle/sidekiq"
	"github.com/dynocycle/dynocycle/worker"
)

// service is the agent and the loops that run beside it (the Redis
// subscriber, the Sidekiq reader, the metrics server), each a Run(ctx);
// runService starts and stops them together. close frees what the wiring
// opened, once every loop has ended.
type service struct {
	agent *agent.Agent
	loops []func(context.Context) error
	close func()
}

// runService runs the agent and its loops in one group: the first to end,
// the agent included, stops the rest, and every loop is waited for. The
// agent's own ending (a signal, the worker's exit, a restart that exits) is
// its error, which the command turns into an exit code.
func runService(ctx context.Context, svc *service) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer cancel()
		return svc.agent.Run(ctx)
	})
	for _, run := range svc.loops {
		g.Go(func() error { return run(ctx) })
	}
	return g.Wait()
}

func (c *CLI) buildAgent(ctx context.Context, cfg *config.Config, proc *child.Process, command []string, log *slog.Logger) (*service, error) {
	var pid func() int // nil: no worker, the whole machine is measured
	if proc != nil {
		pid = proc.Pid
	}
	plat := cfg.ResolvePlatform(proc != nil)
	if plat == config.PlatformLocal && proc == nil {
		return nil, &config.Error{Var: "PLATFORM", Value: "local", Problem: "restarting in place needs a worker command",
			Accepted: "dynocycle run -- COMMAND, or PLATFORM=exit or heroku"}
	}

	var meter *memory.Meter
	var err error
	if cfg.MemorySource == config.SourceAuto {
		meter, err = memory.Auto(plat == config.PlatformHeroku, cfg.ProcRoot, cfg.CgroupRoot, pid)
	} else {
		meter, err = memory.New(cfg.MemorySource, cfg.ProcRoot, cfg.CgroupRoot, pid)
	}
	if err != nil {
		return nil, &config.Error{Var: "MEMORY_SOURCE", Value: cfg.MemorySource, Problem: err.Error(),
			Accepted: "auto, tree, pss, cgroup or all, readable on this machine"}
	}
	policy, limit, err := resolveLimits(cfg, meter, log)
	if err != nil {
		return nil, err
	}

	dyno := cfg.Dyno
	if dyno == "" {
		dyno, _ = os.Hostname()
	}
	// Each dyno checks at its own phase of the interval, so a fleet's agents
	// do not all call Redis on the same whole second.
	phase := agent.Phase(appName(cfg), dyno, agent.Interval(cfg.CheckSchedule, time.Now()))
	settings := agent.Settings{
		Policy: policy, Limit: limit,
		CheckSchedule: agent.Phased(cfg.CheckSchedule, phase), GraceTime: cfg.GraceTime.D(),
		ConfirmAfter: cfg.ConfirmAfter.D(), DryRun: cfg.DryRun, Dyno: dyno, Version: Version(),
		TerminationWait:  60*time.Second + cfg.ShutdownWait.D(),
		PlatformStopWait: platformStopWait(onHeroku(cfg, plat), cfg.ShutdownWait.D()),
	}
	if cfg.RestartSchedule.Set() {
		settings.RestartSchedule = cfg.RestartSchedule
	}
	settings.LeaseRenew = leaseRenew(cfg)

	a := &agent.Agent{Settings: settings, Meter: meter, Logger: log}
	svc := &service{agent: a, close: func() {}}
	var prom *metrics.Metrics
	var metricsServer *metrics.Server
	if cfg.MetricsAddr != "" {
		prom = metrics.New(dyno, Version())
		a.Metrics = prom
		metricsServer = &metrics.Server{Addr: cfg.MetricsAddr, Metrics: prom, Logger: log}
		svc.loops = append(svc.loops, metricsServer.Run)
	}
	fleetKind := "standalone"
	var client *redis.Client
	if cfg.Redis() != "" {
		client, err = connectRedis(ctx, cfg, plat == config.PlatformHeroku, dyno, log)
		if err != nil {
			return nil, err
		}
	}
	var events *jobevents.Listener
	if proc != nil {
		a.Child = proc
		signals, sk, err := newWorker(cfg, proc, meter, client, dyno, log)
		if err != nil {
			return nil, err
		}
		if sk != nil {
			a.Quieter, a.JobEnds, a.Growth, a.Health = sk, sk, sk, sk
			svc.loops = append(svc.loops, sk.Run)
			if ev := listenEvents(proc, log); ev != nil {
				sk.Events = ev
				svc.loops = append(svc.loops, ev.Run)
				events = ev
			}
		} else {
			a.Quieter = signals
			// Any worker may speak the protocol (README): its job ends are
			// sampled and its drain ends when its events say so.
			if ev := listenEvents(proc, log); ev != nil {
				signals.Events = ev
				a.JobEnds = ev
				svc.loops = append(svc.loops, ev.Run)
				events = ev
			}
		}
	}
	switch store := cfg.ResolveFleetStore(); {
	case store == config.FleetPostgres: // fleetstore.go
		fleet, err := newPostgresFleet(cfg, dyno, plat == config.PlatformHeroku, log)
		if err != nil {
			return nil, err
		}
		a.Fleet = fleet
		svc.loops = append(svc.loops, fleet.Run)
		svc.close = func() {
			fleet.Close()
			if client != nil {
				client.Close()
			}
		}
		fleetKind = store
	case client == nil || store == config.FleetNone:
		a.Fleet = heartbeat.NewLocal(dyno, cfg.MaxConcurrentRestarts)
		if client != nil {
			svc.close = func() { client.Close() }
		}
	default:
		fleet := heartbeat.NewRedis(client, fleetOptions(cfg, dyno, log))
		a.Fleet = fleet
		svc.loops = append(svc.loops, fleet.Run)
		svc.close = func() { client.Close() }
		fleetKind = "redis"
	}

	if events != nil {
		// The socket file, should the group never run its Run (which
		// removes it when it ends).
		closeFleet := svc.close
		svc.close = func() { closeFleet(); events.Close() }
	}

	switch plat {
	case config.PlatformLocal:
		a.Restarter = &platform.Local{Process: proc}
	case config.PlatformExit:
		var p platform.Process
		if proc != nil {
			p = proc
		}
		a.Restarter = &platform.ExitRestarter{Process: p}
	case config.PlatformHeroku:
		if cfg.Dyno == "" || cfg.App() == "" || cfg.Token() == "" {
			return nil, &config.Error{Var: "PLATFORM", Value: plat, Problem: "missing DYNO, HEROKU_APP_NAME or HEROKU_API_TOKEN",
				Accepted: "set these config vars, or PLATFORM=local"}
		}
		opts := platform.HerokuOptions{
			Token: string(cfg.Token()), App: cfg.App(), Dyno: cfg.Dyno, BaseURL: cfg.HerokuAPIURL,
			Version: Version(), Logger: log,
		}
		if prom != nil {
			opts.OnFailure = prom.APIError
		}
		a.Restarter = platform.NewHeroku(opts)
		if proc != nil {
			// A permanent refusal (a review app's token) restarts in place.
			a.Fallback = &platform.Local{Process: proc}
		}
	}
	// Bound last, before the worker starts: an address that cannot be bound
	// is a configuration error (see metrics.Server).
	if metricsServer != nil {
		if err := metricsServer.Listen(); err != nil {
			svc.close()
			if inner := errors.Unwrap(err); inner != nil {
				err = inner // the address is named once, by the error's variable
			}
			return nil, &config.Error{Var: "METRICS_ADDR", Value: cfg.MetricsAddr, Problem: "cannot listen: " + err.Error(),
				Accepted: "a free host:port on this machine, such as 127.0.0.1:9394, or unset for no metrics"}
		}
		closeFleet := svc.close
		svc.close = func() { _ = metricsServer.Close(); closeFleet() }
	}
	for _, w := range stopWarnings(onHeroku(cfg, plat), cfg.ShutdownWait.D(), command) {
		log.Warn(w, "event", "config_warning")
	}
	log.Info("agent starting", "event", "agent_start", "dyno", dyno, "version", Version(), "platform", plat,
		"memory_source", meter.Source, "limit", bytesize.MB(limit), "critical", cfg.CriticalRSS.String(),
		"check", cfg.CheckSchedule.String(), "check_phase", phase, "fleet", fleetKind, "dry_run", cfg.DryRun)
	return svc, nil
}

// newWorker picks how the worker is quieted and drained: by signals alone,
// or through Sidekiq (sk non-nil), which is found through its own records in
// Redis and falls back to the signals when the child turns out not to be
// Sidekiq.
func newWorker(cfg *config.Config, proc *child.Process, meter *memory.Meter, client *redis.Client, dyno string, log *slog.Logger) (signals *worker.Signals, sk *sidekiq.Worker, err error) {
	signals = &worker.Signals{Process: proc, QuietSignal: cfg.QuietSignal.Sig, Logger: log}
	switch {
	case cfg.Worker == config.WorkerSignals:
		return signals, nil, nil
	case cfg.Worker == config.WorkerSidekiq && client == nil:
		return nil, nil, &config.Error{Var: "WORKER", Value: "sidekiq", Problem: "needs REDIS_URL, where Sidekiq keeps its records",
			Accepted: "set REDIS_URL to Sidekiq's Redis, or WORKER=signals with QUIET_SIGNAL=TSTP"}
	case client == nil:
		return signals, nil, nil
	}
	if cfg.Worker == config.WorkerSidekiq && !cfg.QuietSignal.Set() {
		signals.QuietSignal = syscall.SIGTSTP // Sidekiq's quiet signal, should its records be missing
	}
	return signals, &sidekiq.Worker{
		Reader:   &sidekiq.Reader{Client: client, Namespace: cfg.SidekiqNamespace, Logger: log},
		Hostname: dyno,
		PIDs: func() []int {
			pids, _ := meter.Tree(proc.Pid())
			return pids
		},
		Fallback: signals,
		Logger:   log,
	}, nil
}

// listenEvents opens the socket on which the gem's Sidekiq middleware
// (require "dynocycle/sidekiq"), or any worker speaking the protocol,
// reports each job's start and end, and names it in the worker's
// environment. A worker that never connects is judged as before (Sidekiq's
// heartbeats, or the signals worker's exit and GRACE_TIME). A socket that
// cannot be made is not fatal for the same reason: nil.
func listenEvents(proc *child.Process, log *slog.Logger) *jobevents.Listener {
	path := filepath.Join(os.TempDir(), "dynocycle-"+strconv.Itoa(os.Getpid())+".sock")
	ev, err := jobevents.Listen(path)
	if err != nil {
		log.Warn("job events unavailable; draining as without them", "event", "events_unavailable", "err", err)
		return nil
	}
	ev.Logger = log
	env := proc.Env
	if env == nil {
		env = os.Environ()
	}
	proc.Env = append(slices.Clone(env), jobevents.Env+"="+path)
	return ev
}

// connectRedis opens the coordination store. go-redis logs dial failures
// through a package-level logger; it is pointed at ours (at debug level,
// since the agent logs its own errors) once, here, where the process is set up.
func connectRedis(ctx context.Context, cfg *config.Config, onHeroku bool, dyno string, log *slog.Logger) (*redis.Client, error) {
	redis.SetLogger(redisLogger{log})
	name := "REDIS_URL"
	if cfg.RedisTLSURL != "" {
		name = "REDIS_TLS_URL"
	}
	client, err := heartbeat.Connect(ctx, heartbeat.ConnectOptions{
		URL: string(cfg.Redis()), TLSVerify: cfg.RedisTLSVerify, OnHeroku: onHeroku, Dyno: dyno, Logger: log,
	})
	if err != nil {
		return nil, &config.Error{Var: name, Problem: err.Error(), Accepted: "redis://[user:password@]host:port[/db] or rediss:// for TLS"}
	}
	return client, nil
}

type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...), "event", "redis_client")
}

// fleetOptions is the fleet as every agent of the app sees it; status uses
// it too, so it reports the settle period the agents observe.
func fleetOptions(cfg *config.Config, dyno string, log *slog.Logger) heartbeat.RedisOptions {
	return heartbeat.RedisOptions{
		App: appName(cfg), Dyno: dyno, Slots: cfg.MaxConcurrentRestarts, MinHealthyPeers: cfg.MinHealthyPeers,
		LeaseTTL: leaseTTL(cfg), PresenceTTL: presenceTTL(cfg), BootAllowance: cfg.BootAllowance.D(),
		Settle: settle(cfg), Logger: log,
	}
}

// appName scopes the fleet's keys: FLEET_SCOPE, HEROKU_APP_NAME or
// HEROKU_APP_ID; validate refuses fleet mode without one.
func appName(cfg *config.Config) string {
	return cfg.Scope()
}

// presenceTTL lets a dead agent's presence vanish after three missed checks.
func presenceTTL(cfg *config.Config) time.Duration {
	now := time.Now()
	every := cfg.CheckSchedule.Next(now).Sub(now)
	return max(15*time.Second, 3*every)
}

// leaseTTL frees a lease whose dyno never came back: long enough for the
// drain, the stop and a restart with boot.
func leaseTTL(cfg *config.Config) time.Duration {
	return cfg.GraceTime.D() + cfg.ShutdownWait.D() + cfg.ConfirmAfter.D() + 2*time.Minute
}

// leaseRenew is how often a held lease is renewed, at every step from its
// grant until it is released or handed over and the agent ends. Short, so
// that after Redis loses its data every lease still in use is back within
// seconds.
func leaseRenew(cfg *config.Config) time.Duration {
	return min(leaseTTL(cfg)/3, 5*time.Second)
}

// settle is how long an empty Redis grants no new lease: as long as a lease
// nobody renews can still be in use, a hand-over whose new dyno is booting
// (BOOT_ALLOWANCE), and never shorter than three renewals.
func settle(cfg *config.Config) time.Duration {
	return max(cfg.BootAllowance.D(), 3*leaseRenew(cfg))
}
