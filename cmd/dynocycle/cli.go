package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"strings"
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

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1
	exitConfig = 2
)

const usage = `dynocycle: restart bloated job workers gracefully, one dyno at a time

usage:
  dynocycle run [--] COMMAND [ARGS...]   run COMMAND and watch its memory
  dynocycle run                          watch the whole dyno, act through the platform
  dynocycle status [--json]              show the fleet (needs REDIS_URL)
  dynocycle check                        validate the configuration and print it
  dynocycle version                      print the version

Configuration comes from the environment (MAX_RSS, GRACE_TIME, ...; each
also as DYNOCYCLE_<NAME>). See README.md.
`

// CLI is the dynocycle command line, runnable in-process by tests.
type CLI struct {
	Stdin io.Reader
	// Signals, when set, replaces the process's SIGTERM/SIGINT (tests).
	Signals chan os.Signal
}

// Run executes one command and returns the process exit code.
func (c *CLI) Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitConfig
	}
	switch args[0] {
	case "run":
		return c.run(ctx, args[1:], stdout, stderr)
	case "check":
		return c.check(stdout, stderr)
	case "status":
		return c.status(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "dynocycle", Version())
		return exitOK
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "dynocycle: unknown command %q\n\n%s", args[0], usage)
	return exitConfig
}

// Version is the build's version: the -ldflags value, else the module version.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func (c *CLI) check(stdout, stderr io.Writer) int {
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle: configuration error:\n"+indent(err.Error()))
		return exitConfig
	}
	fmt.Fprintln(stdout, "# configuration is valid; effective values:")
	cfg.Print(stdout)
	meter, err := memory.New(memory.All, cfg.ProcRoot, cfg.CgroupRoot, nil)
	if err == nil {
		if limit, src := meter.Limit(); limit > 0 {
			fmt.Fprintf(stdout, "# detected memory limit: %s (from %s)\n", config.FormatBytes(limit), src)
			if max, ok := cfg.MaxRSS.Resolve(limit); ok {
				fmt.Fprintf(stdout, "# MAX_RSS resolves to %s\n", config.FormatBytes(max))
			}
		}
	}
	return exitOK
}

func (c *CLI) run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle: configuration error:\n"+indent(err.Error()))
		return exitConfig
	}
	log := newLogger(cfg, stderr)

	var proc *child.Process
	if len(args) > 0 {
		path, err := exec.LookPath(args[0])
		if err != nil {
			fmt.Fprintf(stderr, "dynocycle: worker command %q not found: %v\n", args[0], err)
			return 127
		}
		proc = &child.Process{
			Path: path, Args: args[1:], Stdin: c.Stdin, Stdout: stdout, Stderr: stderr,
			StopSignal: cfg.StopSignal.Sig, ShutdownWait: cfg.ShutdownWait.D(), Logger: log,
		}
	}
	sigs := c.signals(ctx)
	defer signal.Stop(sigs)

	if cfg.OneOff() {
		// One-off, scheduler and release dynos end by themselves: just run.
		log.Info("one-off dyno: running the command without watching it", "event", "one_off", "dyno", cfg.Dyno)
		return runPlain(proc, sigs, log)
	}

	a, cleanup, err := c.buildAgent(ctx, cfg, proc, log)
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, "dynocycle: configuration error:\n"+indent(err.Error()))
			return exitConfig
		}
		fmt.Fprintln(stderr, "dynocycle:", err)
		return exitFail
	}
	defer cleanup()
	a.Signals = sigs

	if proc != nil {
		if err := proc.Start(); err != nil {
			fmt.Fprintln(stderr, "dynocycle:", err)
			return 127
		}
		log.Info("worker started", "event", "worker_start", "dyno", a.Settings.Dyno, "pid", proc.Pid(), "command", args[0])
	}
	err = a.Run(context.WithoutCancel(ctx))
	var ee *agent.ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil && ee.Code != 0 {
			log.Info("agent exiting", "event", "agent_exit", "code", ee.Code, "err", ee.Err)
		}
		return ee.Code
	}
	if err != nil {
		log.Error("agent failed", "event", "agent_failed", "err", err)
		return exitFail
	}
	return exitOK
}

// signals delivers SIGTERM and SIGINT, and a SIGTERM when ctx ends, so an
// in-process caller stops the agent the way the platform does.
func (c *CLI) signals(ctx context.Context) chan os.Signal {
	sigs := c.Signals
	if sigs == nil {
		sigs = make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	}
	go func() {
		<-ctx.Done()
		select {
		case sigs <- syscall.SIGTERM:
		default:
		}
	}()
	return sigs
}

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
	if cfg.MetricsAddr != "" {
		prom = metrics.New(dyno, Version())
		a.Metrics = prom
		a.Runners = append(a.Runners, (&metrics.Server{Addr: cfg.MetricsAddr, Metrics: prom}).Run)
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

// runPlain runs the command with signal forwarding and nothing else.
func runPlain(proc *child.Process, sigs <-chan os.Signal, log *slog.Logger) int {
	if proc == nil {
		return exitOK
	}
	if err := proc.Start(); err != nil {
		log.Error("start worker", "err", err)
		return 127
	}
	for {
		select {
		case e := <-proc.Exited():
			return e.Code
		case s := <-sigs:
			sig, _ := s.(syscall.Signal)
			e, _ := proc.Terminate(context.Background(), sig)
			if e == nil {
				return exitOK
			}
			return e.Code
		}
	}
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Dyno != "" {
		// Logplex stamps every line itself; a second timestamp is noise.
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

func (c *CLI) status(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	asJSON := false
	for _, a := range args {
		switch a {
		case "--json", "-json":
			asJSON = true
		default:
			fmt.Fprintf(stderr, "dynocycle status: unknown flag %q; accepted: --json\n", a)
			return exitConfig
		}
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle: configuration error:\n"+indent(err.Error()))
		return exitConfig
	}
	if cfg.Redis() == "" {
		fmt.Fprintln(stderr, "dynocycle status: REDIS_URL is not set; accepted: the Redis URL the agents use (a standalone agent has no fleet to show)")
		return exitConfig
	}
	log := newLogger(cfg, stderr)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	client, err := connectRedis(ctx, cfg, cfg.ResolvePlatform(true) == config.PlatformHeroku, log)
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle: configuration error:\n"+indent(err.Error()))
		return exitConfig
	}
	defer client.Close()
	fleet := heartbeat.NewRedis(client, heartbeat.RedisOptions{App: appName(cfg), Slots: cfg.MaxConcurrentRestarts, Logger: log})
	snap, err := fleet.Snapshot(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle status:", err)
		return exitFail
	}
	reader := &sidekiq.Reader{Client: client, Namespace: cfg.SidekiqNamespace, Logger: log}
	procs, perr := reader.Processes(ctx)
	stats, serr := reader.Stats(ctx)
	var sq *sidekiq.Status
	if perr == nil && serr == nil && (len(procs) > 0 || len(stats.Queues) > 0) {
		sq = &sidekiq.Status{Processes: procs, Stats: stats}
	} else if perr != nil || serr != nil {
		log.Warn("cannot read Sidekiq's records", "event", "status_sidekiq_failed", "err", errors.Join(perr, serr))
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(struct {
			Fleet   heartbeat.FleetStatus `json:"fleet"`
			Sidekiq *sidekiq.Status       `json:"sidekiq,omitempty"`
		}{snap, sq})
	} else {
		err = heartbeat.WriteTable(stdout, snap, time.Now())
		if err == nil && sq != nil {
			fmt.Fprintln(stdout)
			err = sidekiq.WriteStatus(stdout, sq.Processes, sq.Stats)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle status:", err)
		return exitFail
	}
	return exitOK
}
