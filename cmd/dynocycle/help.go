package main

// Usage, per-command help, flag parsing and "did you mean".

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/agnivade/levenshtein"
)

const usage = `dynocycle restarts bloated job workers gracefully, one dyno at a time.

usage:
  dynocycle run [--] COMMAND [ARGS...]      run COMMAND and restart it when its memory bloats
  dynocycle run                             watch the whole dyno, act through the platform
  dynocycle check [--] [COMMAND [ARGS...]]  validate the configuration exactly as run would
  dynocycle status [-a APP] [--json]        show an app's dynos and restart slots from Redis
  dynocycle version                         print the version
  dynocycle help [COMMAND]                  show a command's flags and variables

Configuration comes from the environment (MAX_RSS, GRACE_TIME, ...), each
variable also as DYNOCYCLE_<NAME>; 'dynocycle help run' lists them all.
Exit codes: 0 ok; 2 bad usage or configuration; 1 failure; run exits with
its worker's code.
`

// helpTopic is one command's help: what it does, its flags, and the
// variables it reads.
type helpTopic struct {
	usage string
	about string
	flags [][2]string
	vars  []string
}

var helpFlag = [2]string{"-h, --help", "show this help"}

var topics = map[string]helpTopic{
	"run": {
		usage: "dynocycle run [--] COMMAND [ARGS...]\n       dynocycle run",
		about: `Runs COMMAND as the worker, passing stdin, stdout, stderr and SIGTERM/SIGINT
through, and exits with its exit code. On CHECK_SCHEDULE and after each Sidekiq
job it measures memory; over MAX_RSS for SUSTAIN_CHECKS checks it takes a
restart slot (in Redis with REDIS_URL, else in process), quiets and drains the
worker, and restarts it: the dyno through the Platform API on Heroku, the
worker in place elsewhere. Without COMMAND it watches the whole machine.
A first argument starting with '-' is a flag; put COMMAND after -- to run
such a program. Exit codes: the worker's; 2 configuration error; 75 after a
restart with PLATFORM=exit; 127 COMMAND not found; 1 the agent failed.`,
		flags: [][2]string{helpFlag},
		vars:  allVars(),
	},
	"check": {
		usage: "dynocycle check [--] [COMMAND [ARGS...]]",
		about: `Validates the configuration exactly as 'dynocycle run' with the same
arguments would, reports every problem at once (one line each: the variable,
the value's problem, the accepted form) and exits 2 on any, as run does.
When valid, prints the effective values, secrets redacted, and the memory
limit they resolve to on this machine.`,
		flags: [][2]string{helpFlag},
		vars:  allVars(),
	},
	"status": {
		usage: "dynocycle status [-a APP] [--json] [--verbose]",
		about: `Shows an app's fleet from Redis (or PostgreSQL, see FLEET_STORE), the way
'heroku ps' shows its dynos: each dyno's state, memory and limit, uptime and
restarts, who holds each restart slot, and Sidekiq's processes and queues.
Exits 1 when the fleet's store cannot be read.`,
		flags: [][2]string{
			{"-a, --app APP", "the fleet to show: the agents' FLEET_SCOPE, HEROKU_APP_NAME or HEROKU_APP_ID (default: from the environment)"},
			{"--json", "print JSON instead of text"},
			{"--verbose", "log what the command does on stderr"},
			helpFlag,
		},
		vars: []string{"REDIS_URL", "REDIS_TLS_URL", "REDIS_TLS_VERIFY", "FLEET_STORE", "DATABASE_URL", "FLEET_SCOPE", "HEROKU_APP_NAME", "HEROKU_APP_ID",
			"MAX_CONCURRENT_RESTARTS", "SIDEKIQ_NAMESPACE", "GRACE_TIME", "SHUTDOWN_WAIT", "CONFIRM_AFTER", "BOOT_ALLOWANCE", "LOG_FORMAT", "LOG_LEVEL"},
	},
	"version": {
		usage: "dynocycle version",
		about: "Prints the version of this build.",
		flags: [][2]string{helpFlag},
	},
	"help": {
		usage: "dynocycle help [COMMAND]",
		about: "Shows the usage, or a command's flags and the variables it reads.",
		flags: [][2]string{helpFlag},
	},
}

// commandNames lists the commands for "did you mean".
func commandNames() []string {
	names := make([]string, 0, len(topics))
	for n := range topics {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// variables describes every variable, in the order of the README's table.
var variables = [][2]string{
	{"MAX_RSS", "soft limit: 512MB, 1.5GB, a bare number of MB, or 90% of the container's memory limit (default 90% of it; required without one)"},
	{"CRITICAL_RSS", "hard limit: restart at once, without SUSTAIN_CHECKS or MIN_UPTIME (default off)"},
	{"GRACE_TIME", "longest drain after quiet: 120s, 2m, or bare seconds (default 120s)"},
	{"SHUTDOWN_WAIT", "after the stop signal, before KILL; Sidekiq's -t plus 5s or more (default 25s)"},
	{"CHECK_SCHEDULE", "when to measure: a cron spec or @every 5s, at least every 1s (default @every 5s)"},
	{"SUSTAIN_CHECKS", "checks in a row over MAX_RSS before acting (default 3)"},
	{"MIN_UPTIME", "no memory or scheduled restart before this uptime (default 5m)"},
	{"CONFIRM_AFTER", "a restarted worker counts as healthy after this long (default 30s)"},
	{"MAX_CONCURRENT_RESTARTS", "restart slots of the fleet (default 1)"},
	{"MIN_HEALTHY_PEERS", "other healthy dynos of the type required during a restart (default 1)"},
	{"BOOT_ALLOWANCE", "how long a lease handed over by a replaced dyno waits for the new dyno; also how long an empty Redis grants no lease (default 2m)"},
	{"RESTART_SCHEDULE", "rolling restarts, a cron spec such as 0 4 * * *, at most hourly (default off)"},
	{"PLATFORM", "auto, heroku, local or exit (default auto)"},
	{"HEROKU_API_TOKEN", "Platform API token (or HEROKU_API_KEY)"},
	{"HEROKU_API_KEY", "Platform API token, when HEROKU_API_TOKEN is unset"},
	{"HEROKU_APP_NAME", "the app (or HEROKU_APP_ID); also scopes the fleet in Redis"},
	{"HEROKU_APP_ID", "the app, when HEROKU_APP_NAME is unset"},
	{"FLEET_SCOPE", "names the fleet in Redis, over HEROKU_APP_NAME/HEROKU_APP_ID; one of them is required with REDIS_URL"},
	{"DYNO", "this dyno's name, set by Heroku"},
	{"HEROKU_API_URL", "Platform API base URL, https (default https://api.heroku.com)"},
	{"REDIS_URL", "coordination store; without one the agent runs standalone"},
	{"REDIS_TLS_URL", "coordination store over TLS, over REDIS_URL"},
	{"REDIS_TLS_VERIFY", "auto, true or false (default auto: skip on Heroku)"},
	{"FLEET_STORE", "where the dynos coordinate: auto, redis, postgres or none (default auto: Redis with a Redis URL, else PostgreSQL with DATABASE_URL)"},
	{"DATABASE_URL", "the app's PostgreSQL, the fleet's store without Redis (one connection per agent, schema dynocycle)"},
	{"WORKER", "auto, sidekiq or signals (default auto)"},
	{"SIDEKIQ_NAMESPACE", "Sidekiq 6.x redis-namespace prefix, if any"},
	{"QUIET_SIGNAL", "signal that quiets a signals worker, e.g. TSTP (default none)"},
	{"STOP_SIGNAL", "signal that stops the worker (default TERM)"},
	{"MEMORY_SOURCE", "auto, tree, pss, cgroup or all (default auto)"},
	{"PROC_ROOT", "procfs mount (default /proc)"},
	{"CGROUP_ROOT", "cgroup mount (default /sys/fs/cgroup)"},
	{"METRICS_ADDR", "Prometheus listener host:port, e.g. 127.0.0.1:9394 (default off)"},
	{"LOG_FORMAT", "logfmt or json (default logfmt)"},
	{"LOG_LEVEL", "debug, info, warn or error (default info)"},
	{"DRY_RUN", "decide and log, never quiet or restart (default false)"},
}

func allVars() []string {
	names := make([]string, len(variables))
	for i, v := range variables {
		names[i] = v[0]
	}
	return names
}

// writeHelp prints a command's help.
func writeHelp(w io.Writer, name string) {
	t := topics[name]
	fmt.Fprintf(w, "usage: %s\n\n%s\n", t.usage, t.about)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(t.flags) > 0 {
		fmt.Fprintln(tw, "\nflags:")
		for _, f := range t.flags {
			fmt.Fprintf(tw, "  %s\t%s\n", f[0], f[1])
		}
	}
	if len(t.vars) > 0 {
		fmt.Fprintln(tw, "\nenvironment (each also as DYNOCYCLE_<NAME>, which wins):")
		for _, name := range t.vars {
			for _, v := range variables {
				if v[0] == name {
					fmt.Fprintf(tw, "  %s\t%s\n", v[0], v[1])
				}
			}
		}
	}
	tw.Flush()
}

// suggest returns the candidate nearest to s, if it is near enough to be a
// typo: two edits, or a prefix of at least two letters.
func suggest(s string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if len(s) >= 2 && strings.HasPrefix(c, s) {
			return c
		}
		if d := levenshtein.ComputeDistance(s, c); d < bestDist && d < len(c) {
			best, bestDist = c, d
		}
	}
	return best
}

// misuse reports bad usage of a command, with a suggestion, and returns exit 2.
func misuse(stderr io.Writer, cmd, problem, suggestion string) int {
	msg := "dynocycle"
	if cmd != "" {
		msg += " " + cmd
	}
	msg += ": " + problem
	if suggestion != "" {
		msg += fmt.Sprintf("; did you mean %s?", suggestion)
	}
	see := "dynocycle --help"
	if cmd != "" {
		see = "dynocycle " + cmd + " --help"
	}
	fmt.Fprintf(stderr, "%s\nrun '%s' for usage\n", msg, see)
	return exitConfig
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help"
}

// commandArgs splits the arguments of run and check: an optional --, then
// the worker command. A leading argument that looks like a flag is one:
// -h/--help, or a mistake.
func commandArgs(cmd string, args []string) (command []string, help bool, err error) {
	if len(args) == 0 {
		return nil, false, nil
	}
	switch {
	case args[0] == "--":
		return args[1:], false, nil
	case isHelp(args[0]):
		return nil, true, nil
	case strings.HasPrefix(args[0], "-"):
		return nil, false, fmt.Errorf("unknown flag %s", args[0])
	}
	return args, false, nil
}

// flagError turns a flag package error into a clear line with a
// suggestion from the flag set's own names.
func flagError(stderr io.Writer, cmd string, fs *flag.FlagSet, err error) int {
	msg := err.Error()
	suggestion := ""
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		names = append(names, "help")
		if s := suggest(strings.TrimLeft(name, "-"), names); s != "" {
			suggestion = dashes(s)
		}
		msg = "unknown flag " + dashes(strings.TrimLeft(name, "-"))
	}
	return misuse(stderr, cmd, msg, suggestion)
}

// dashes writes a flag the way the help does: -a, --app.
func dashes(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// parseFlags parses a command's flags; done is true when the command should
// return code at once (help asked for, or misuse).
func parseFlags(fs *flag.FlagSet, cmd string, args []string, stdout, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		writeHelp(stdout, cmd)
		return exitOK, true
	case err != nil:
		return flagError(stderr, cmd, fs, err), true
	case fs.NArg() > 0:
		return misuse(stderr, cmd, fmt.Sprintf("unexpected argument %q", fs.Arg(0)), ""), true
	}
	return 0, false
}
