package main

// The wiring of the agent: which meter, worker, fleet and restarter the
// configuration asks for.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/memory"
	"github.com/dynocycle/dynocycle/metrics"
	"github.com/dynocycle/dynocycle/platform"
	"github.com/dynocycle/dynocycle/sidekiq"
	"github.com/dynocycle/dynocycle/worker"
)

func (c *CLI) buildAgent(ctx context.Context, cfg *config.Config, proc *child.Process, log *slog.Logger) (*agent.Agent, func(), error) {
	var pid func() int // nil: no worker, the whole machine is measured
	if proc != nil {
		pid = proc.Pid
	}
	plat := cfg.ResolvePlatform(proc != nil)
	if plat == config.PlatformLocal && proc == nil {
		return nil, nil, &config.Error{Var: "PLATFORM", Value: "local", Problem: "restarting in place needs a worker command",
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
		return nil, nil, &config.Error{Var: "MEMORY_SOURCE", Value: cfg.MemorySource, Problem: err.Error(),
			Accepted: "auto, tree, pss, cgroup or all, readable on this machine"}
	}
	policy, limit, err := resolveLimits(cfg, meter, log)
	if err != nil {
		return nil, nil, err
	}

	dyno := cfg.Dyno
	if dyno == "" {
		dyno, _ = os.Hostname()
	}
	settings := agent.Settings{
		Policy: policy, Limit: limit,
		CheckSchedule: cfg.CheckSchedule, GraceTime: cfg.GraceTime.D(), ShutdownWait: cfg.ShutdownWait.D(),
		ConfirmAfter: cfg.ConfirmAfter.D(), DryRun: cfg.DryRun, Dyno: dyno, Version: Version(),
		TerminationWait: 60*time.Second + cfg.ShutdownWait.D(),
	}
	if cfg.RestartSchedule.Set() {
		settings.RestartSchedule = cfg.RestartSchedule
	}
	settings.LeaseRenew = leaseRenew(cfg)

	a := &agent.Agent{Settings: settings, Meter: meter, Logger: log}
	var prom *metrics.Metrics
	var metricsServer *metrics.Server
	if cfg.MetricsAddr != "" {
		prom = metrics.New(dyno, Version())
		a.Metrics = prom
		metricsServer = &metrics.Server{Addr: cfg.MetricsAddr, Metrics: prom, Logger: log}
		a.Runners = append(a.Runners, metricsServer.Run)
	}
	cleanup := func() {}
	fleetKind := "standalone"
	var client *redis.Client
	if cfg.Redis() != "" {
		client, err = connectRedis(ctx, cfg, plat == config.PlatformHeroku, log)
		if err != nil {
			return nil, nil, err
		}
	}
	if proc != nil {
		a.Child = proc
		w, err := newWorker(cfg, proc, meter, client, dyno, log)
		if err != nil {
			return nil, nil, err
		}
		a.Worker = w
		if sw, ok := w.(*sidekiq.Worker); ok {
			a.Runners = append(a.Runners, sw.Run)
		}
	}
	if client == nil {
		a.Fleet = heartbeat.NewLocal(dyno, cfg.MaxConcurrentRestarts)
	} else {
		fleet := heartbeat.NewRedis(client, heartbeat.RedisOptions{
			App: appName(cfg), Dyno: dyno, Slots: cfg.MaxConcurrentRestarts, MinHealthyPeers: cfg.MinHealthyPeers,
			LeaseTTL: leaseTTL(cfg), PresenceTTL: presenceTTL(cfg), Settle: 3 * leaseRenew(cfg), Logger: log,
		})
		a.Fleet = fleet
		a.Runners = append(a.Runners, fleet.Run)
		cleanup = func() { fleet.Close(); client.Close() }
		fleetKind = "redis"
	}

	switch plat {
	case config.PlatformLocal:
		a.Restarter = &platform.Local{Worker: proc}
	case config.PlatformExit:
		var w platform.Worker
		if proc != nil {
			w = proc
		}
		a.Restarter = &platform.ExitRestarter{Worker: w}
	case config.PlatformHeroku:
		if cfg.Dyno == "" || cfg.App() == "" || cfg.Token() == "" {
			return nil, nil, &config.Error{Var: "PLATFORM", Value: plat, Problem: "missing DYNO, HEROKU_APP_NAME or HEROKU_API_TOKEN",
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
	}
	// Bound last, before the worker starts: an address that cannot be bound
	// is a configuration error (see metrics.Server).
	if metricsServer != nil {
		if err := metricsServer.Listen(); err != nil {
			cleanup()
			if inner := errors.Unwrap(err); inner != nil {
				err = inner // the address is named once, by the error's variable
			}
			return nil, nil, &config.Error{Var: "METRICS_ADDR", Value: cfg.MetricsAddr, Problem: "cannot listen: " + err.Error(),
				Accepted: "a free host:port on this machine, such as 127.0.0.1:9394, or unset for no metrics"}
		}
		closeFleet := cleanup
		cleanup = func() { _ = metricsServer.Close(); closeFleet() }
	}
	log.Info("agent starting", "event", "agent_start", "dyno", dyno, "version", Version(), "platform", plat,
		"memory_source", meter.Source, "limit", config.FormatBytes(limit), "critical", cfg.CriticalRSS.String(),
		"check", cfg.CheckSchedule.String(), "fleet", fleetKind, "dry_run", cfg.DryRun)
	return a, cleanup, nil
}

// newWorker picks how the worker is quieted and drained. Sidekiq is found
// through its own records in Redis; a child that turns out not to be Sidekiq
// falls back to plain signals.
func newWorker(cfg *config.Config, proc *child.Process, meter *memory.Meter, client *redis.Client, dyno string, log *slog.Logger) (agent.Worker, error) {
	signals := &worker.Signals{Process: proc, QuietSignal: cfg.QuietSignal.Sig, Logger: log}
	switch {
	case cfg.Worker == config.WorkerSignals:
		return signals, nil
	case cfg.Worker == config.WorkerSidekiq && client == nil:
		return nil, &config.Error{Var: "WORKER", Value: "sidekiq", Problem: "needs REDIS_URL, where Sidekiq keeps its records",
			Accepted: "set REDIS_URL to Sidekiq's Redis, or WORKER=signals with QUIET_SIGNAL=TSTP"}
	case client == nil:
		return signals, nil
	}
	if cfg.Worker == config.WorkerSidekiq && !cfg.QuietSignal.Set() {
		signals.QuietSignal = syscall.SIGTSTP // Sidekiq's quiet signal, should its records be missing
	}
	if t, ok := sidekiq.ShutdownTimeout(proc.Args); ok && t+5*time.Second > cfg.ShutdownWait.D() {
		log.Warn("SHUTDOWN_WAIT is shorter than Sidekiq's -t plus 5s: a busy Sidekiq may be killed before it hands its jobs back",
			"event", "config_warning", "sidekiq_timeout", t, "shutdown_wait", cfg.ShutdownWait.D())
	}
	return &sidekiq.Worker{
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

// connectRedis opens the coordination store. go-redis logs dial failures
// through a package-level logger; it is pointed at ours (at debug level,
// since the agent logs its own errors) once, here, where the process is set up.
func connectRedis(ctx context.Context, cfg *config.Config, onHeroku bool, log *slog.Logger) (*redis.Client, error) {
	redis.SetLogger(redisLogger{log})
	name := "REDIS_URL"
	if cfg.RedisTLSURL != "" {
		name = "REDIS_TLS_URL"
	}
	client, err := heartbeat.Connect(ctx, heartbeat.ConnectOptions{
		URL: string(cfg.Redis()), TLSVerify: cfg.RedisTLSVerify, OnHeroku: onHeroku, Logger: log,
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

// appName scopes the fleet's keys. Off Heroku, HEROKU_APP_NAME still names
// the app; without it every agent on that Redis is one fleet.
func appName(cfg *config.Config) string {
	if app := cfg.App(); app != "" {
		return app
	}
	return "default"
}

// presenceTTL lets a dead agent's presence vanish after three missed checks.
func presenceTTL(cfg *config.Config) time.Duration {
	now := time.Now()
	every := cfg.CheckSchedule.Next(now).Sub(now)
	return max(15*time.Second, 3*every)
}

// resolveLimits turns MAX_RSS and CRITICAL_RSS into bytes. Without MAX_RSS
// the soft limit is 90% of a detected container limit, the margin that keeps
// a dyno out of swap.
func resolveLimits(cfg *config.Config, meter *memory.Meter, log *slog.Logger) (agent.Policy, uint64, error) {
	detected, src := meter.Limit()
	containerLimit := uint64(0)
	if src == "cgroup" {
		containerLimit = detected
	}
	maxRSS := cfg.MaxRSS
	if !maxRSS.Set() {
		if containerLimit == 0 {
			return agent.Policy{}, 0, &config.Error{Var: "MAX_RSS", Problem: "required: no container memory limit was detected",
				Accepted: "a size such as 512MB or 1.5GB (a bare number is MB)"}
		}
		_ = maxRSS.Decode("90%")
		log.Info("MAX_RSS not set: using 90% of the container limit", "event", "limit_default", "container_limit", config.FormatBytes(containerLimit))
	}
	max, ok := maxRSS.Resolve(detected)
	if !ok {
		return agent.Policy{}, 0, &config.Error{Var: "MAX_RSS", Value: maxRSS.String(), Problem: "a percentage needs a detected memory limit, and none was found",
			Accepted: "a size such as 512MB or 1.5GB"}
	}
	critical, _ := cfg.CriticalRSS.Resolve(detected)
	if critical > 0 && critical < max {
		return agent.Policy{}, 0, &config.Error{Var: "CRITICAL_RSS", Value: cfg.CriticalRSS.String(),
			Problem: "resolves below MAX_RSS (" + config.FormatBytes(max) + ")", Accepted: "a size at or above MAX_RSS"}
	}
	return agent.Policy{MaxRSS: max, CriticalRSS: critical, SustainChecks: cfg.SustainChecks, MinUptime: cfg.MinUptime.D()}, max, nil
}

// leaseTTL frees a lease whose dyno never came back: long enough for the
// drain, the stop and a restart with boot.
func leaseTTL(cfg *config.Config) time.Duration {
	return cfg.GraceTime.D() + cfg.ShutdownWait.D() + cfg.ConfirmAfter.D() + 2*time.Minute
}

// leaseRenew is how often a held lease is renewed while quieting and
// draining. Short, so that after Redis loses its data a dyno mid-restart
// takes its slot back within seconds; an empty Redis grants no new lease for
// three of these intervals (heartbeat.RedisOptions.Settle) to let it.
func leaseRenew(cfg *config.Config) time.Duration {
	return min(leaseTTL(cfg)/3, 5*time.Second)
}
