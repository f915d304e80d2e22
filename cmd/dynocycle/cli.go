package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/child"
	"github.com/dynocycle/dynocycle/config"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1
	exitConfig = 2
)

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
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return c.run(ctx, rest, stdout, stderr)
	case "check":
		return c.check(rest, stdout, stderr)
	case "status":
		return c.status(ctx, rest, stdout, stderr)
	case "version", "--version", "-v":
		switch {
		case len(rest) > 0 && isHelp(rest[0]):
			writeHelp(stdout, "version")
			return exitOK
		case len(rest) > 0:
			return misuse(stderr, "version", fmt.Sprintf("unexpected argument %q", rest[0]), "")
		}
		fmt.Fprintln(stdout, "dynocycle", Version())
		return exitOK
	case "help", "--help", "-h", "-help":
		return c.help(rest, stdout, stderr)
	}
	if strings.HasPrefix(cmd, "-") {
		suggestion := suggest(strings.TrimLeft(cmd, "-"), []string{"help", "version"})
		if suggestion != "" {
			suggestion = dashes(suggestion)
		}
		return misuse(stderr, "", "unknown flag "+cmd, suggestion)
	}
	suggestion := suggest(cmd, commandNames())
	if suggestion != "" {
		suggestion = strconv.Quote(suggestion)
	}
	return misuse(stderr, "", fmt.Sprintf("unknown command %q", cmd), suggestion)
}

func (c *CLI) help(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if isHelp(args[0]) {
		writeHelp(stdout, "help")
		return exitOK
	}
	if _, ok := topics[args[0]]; !ok {
		suggestion := suggest(args[0], commandNames())
		if suggestion != "" {
			suggestion = strconv.Quote(suggestion)
		}
		return misuse(stderr, "", fmt.Sprintf("unknown command %q", args[0]), suggestion)
	}
	writeHelp(stdout, args[0])
	return exitOK
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

func (c *CLI) check(args []string, stdout, stderr io.Writer) int {
	command, help, err := commandArgs("check", args)
	switch {
	case help:
		writeHelp(stdout, "check")
		return exitOK
	case err != nil:
		return misuse(stderr, "check", err.Error(), suggestFlag(args[0]))
	}
	p, err := validate(len(command) > 0)
	if err != nil {
		code, _ := configError(stderr, err)
		return code
	}
	if len(command) > 0 {
		if _, err := child.LookPath(command[0]); err != nil {
			fmt.Fprintln(stderr, "dynocycle:", err)
			return child.ExitCode(err) // 127 not found, 126 not executable
		}
	}
	cfg := p.cfg
	form := "dynocycle run (no worker command: the whole machine is watched)"
	if len(command) > 0 {
		form = "dynocycle run -- " + strings.Join(command, " ")
	}
	fmt.Fprintf(stdout, "# configuration is valid for %s; effective values:\n", form)
	cfg.Print(stdout)
	fmt.Fprintf(stdout, "# platform %s, memory source %s\n", p.platform, p.meter.Source)
	fmt.Fprintf(stdout, "# %s\n", p.limits.describe(cfg))
	if cfg.OneOff() {
		fmt.Fprintf(stdout, "# DYNO=%s is a one-off dyno: there run only runs the command\n", cfg.Dyno)
	}
	for _, w := range stopWarnings(onHeroku(cfg, p.platform), cfg.ShutdownWait.D(), command) {
		fmt.Fprintf(stdout, "# warning: %s\n", w)
	}
	return exitOK
}

// suggestFlag is "--help" when arg looks like a mistyped --help.
func suggestFlag(arg string) string {
	if s := suggest(strings.TrimLeft(arg, "-"), []string{"help"}); s != "" {
		return "--help"
	}
	return ""
}

func (c *CLI) run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	command, help, err := commandArgs("run", args)
	switch {
	case help:
		writeHelp(stdout, "run")
		return exitOK
	case err != nil:
		return misuse(stderr, "run", err.Error()+" (to run a program whose name starts with -, put it after --)", suggestFlag(args[0]))
	}
	args = command
	cfg, errs := config.Read()
	if len(errs) > 0 || !cfg.OneOff() {
		// One-off dynos only run their command; every other run is
		// validated exactly as check validates it.
		p, err := validate(len(args) > 0)
		if err != nil {
			code, _ := configError(stderr, err)
			return code
		}
		cfg = p.cfg
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
		return runPlain(proc, sigs, platformStopWait(true, cfg.ShutdownWait.D()), log)
	}

	svc, err := c.buildAgent(ctx, cfg, proc, args, log)
	if err != nil {
		if code, ok := configError(stderr, err); ok {
			return code
		}
		fmt.Fprintln(stderr, "dynocycle:", err)
		return exitFail
	}
	defer svc.close()
	svc.agent.Signals = sigs

	if proc != nil {
		if err := proc.Start(); err != nil {
			fmt.Fprintln(stderr, "dynocycle:", err)
			return child.ExitCode(err)
		}
		log.Info("worker started", "event", "worker_start", "dyno", svc.agent.Settings.Dyno, "pid", proc.Pid(), "command", args[0])
	}
	// The agent ends on a signal, not on ctx: signals turns the end of ctx
	// into the SIGTERM the platform would send.
	err = runService(context.WithoutCancel(ctx), svc)
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

// runPlain runs the command with signal forwarding and nothing else. The
// platform's SIGTERM gives the command termWait, as for a watched worker.
func runPlain(proc *child.Process, sigs <-chan os.Signal, termWait time.Duration, log *slog.Logger) int {
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
			wait := proc.ShutdownWait
			if sig == syscall.SIGTERM {
				wait = termWait
			}
			e, _ := proc.TerminateWithin(context.Background(), sig, wait)
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
