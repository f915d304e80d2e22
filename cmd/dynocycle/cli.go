package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/memory"
	"github.com/dynocycle/dynocycle/sidekiq"
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
		path, err := child.LookPath(args[0])
		if err != nil {
			fmt.Fprintln(stderr, "dynocycle:", err)
			return child.ExitCode(err) // 127 not found, 126 not executable
		}
		proc = &child.Process{
			Path: path, Args: args[1:], Stdin: c.Stdin, Stdout: stdout, Stderr: stderr,
			StopSignal: cfg.StopSignal.Sig, ShutdownWait: cfg.ShutdownWait.D(), Logger: log,
		}
	}
	sigs, stopSignals := c.signals(ctx, log)
	defer stopSignals()

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
			return child.ExitCode(err)
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

// signals delivers the signals the agent acts on (see agentSignal), and a
// SIGTERM when ctx ends, so an in-process caller stops the agent the way the
// platform does. Call stop when done.
func (c *CLI) signals(ctx context.Context, log *slog.Logger) (sigs <-chan os.Signal, stop func()) {
	in := c.Signals
	unsubscribe := func() {}
	if in == nil {
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
		in, unsubscribe = ch, func() { signal.Stop(ch) }
	}
	out := make(chan os.Signal, 4)
	done := make(chan struct{})
	go relaySignals(ctx, in, out, done, log)
	return out, func() { unsubscribe(); close(done) }
}

// runPlain runs the command with signal forwarding and nothing else.
func runPlain(proc *child.Process, sigs <-chan os.Signal, log *slog.Logger) int {
	if proc == nil {
		return exitOK
	}
	if err := proc.Start(); err != nil {
		log.Error("start worker", "err", err)
		return child.ExitCode(err)
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
