// Package config reads dynocycle's settings from the environment, validates
// them up front and prints them with secrets redacted.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Prefix is the optional prefix of every variable: DYNOCYCLE_MAX_RSS wins
// over MAX_RSS when both are set.
const Prefix = "DYNOCYCLE"

// Platforms, worker kinds and memory sources.
const (
	PlatformAuto   = "auto"
	PlatformHeroku = "heroku"
	PlatformLocal  = "local"
	PlatformExit   = "exit"

	WorkerAuto    = "auto"
	WorkerSidekiq = "sidekiq"
	WorkerSignals = "signals"

	SourceAuto   = "auto"
	SourceTree   = "tree"
	SourcePSS    = "pss"
	SourceCgroup = "cgroup"
	SourceAll    = "all"
)

// Config is every setting of the agent. Field tags name the variable.
type Config struct {
	MaxRSS                Size     `envconfig:"MAX_RSS"`
	CriticalRSS           Size     `envconfig:"CRITICAL_RSS"`
	GraceTime             Duration `envconfig:"GRACE_TIME" default:"120s"`
	ShutdownWait          Duration `envconfig:"SHUTDOWN_WAIT" default:"25s"`
	CheckSchedule         Schedule `envconfig:"CHECK_SCHEDULE" default:"@every 5s"`
	SustainChecks         int      `envconfig:"SUSTAIN_CHECKS" default:"3"`
	MinUptime             Duration `envconfig:"MIN_UPTIME" default:"5m"`
	ConfirmAfter          Duration `envconfig:"CONFIRM_AFTER" default:"30s"`
	MaxConcurrentRestarts int      `envconfig:"MAX_CONCURRENT_RESTARTS" default:"1"`
	MinHealthyPeers       int      `envconfig:"MIN_HEALTHY_PEERS" default:"1"`
	RestartSchedule       Schedule `envconfig:"RESTART_SCHEDULE"`
	Platform              string   `envconfig:"PLATFORM" default:"auto"`
	HerokuAPIToken        Secret   `envconfig:"HEROKU_API_TOKEN"`
	HerokuAPIKey          Secret   `envconfig:"HEROKU_API_KEY"`
	HerokuAppName         string   `envconfig:"HEROKU_APP_NAME"`
	HerokuAppID           string   `envconfig:"HEROKU_APP_ID"`
	FleetScope            string   `envconfig:"FLEET_SCOPE"`
	Dyno                  string   `envconfig:"DYNO"`
	HerokuAPIURL          string   `envconfig:"HEROKU_API_URL" default:"https://api.heroku.com"`
	RedisURL              Secret   `envconfig:"REDIS_URL"`
	RedisTLSURL           Secret   `envconfig:"REDIS_TLS_URL"`
	RedisTLSVerify        string   `envconfig:"REDIS_TLS_VERIFY" default:"auto"`
	Worker                string   `envconfig:"WORKER" default:"auto"`
	SidekiqNamespace      string   `envconfig:"SIDEKIQ_NAMESPACE"`
	QuietSignal           Signal   `envconfig:"QUIET_SIGNAL"`
	StopSignal            Signal   `envconfig:"STOP_SIGNAL" default:"TERM"`
	MemorySource          string   `envconfig:"MEMORY_SOURCE" default:"auto"`
	ProcRoot              string   `envconfig:"PROC_ROOT" default:"/proc"`
	CgroupRoot            string   `envconfig:"CGROUP_ROOT" default:"/sys/fs/cgroup"`
	MetricsAddr           string   `envconfig:"METRICS_ADDR"`
	LogFormat             string   `envconfig:"LOG_FORMAT" default:"logfmt"`
	LogLevel              string   `envconfig:"LOG_LEVEL" default:"info"`
	DryRun                bool     `envconfig:"DRY_RUN"`

	// The fleet lease's hand-over (see heartbeat.Redis).
	// BootAllowance: how long a lease handed over by a dyno the platform
	// replaces waits for the new dyno to claim it; also how long an empty
	// Redis grants no new lease.
	BootAllowance Duration `envconfig:"BOOT_ALLOWANCE" default:"2m"`

	// Where the fleet coordinates (fleetstore.go): FLEET_STORE is auto,
	// redis, postgres or none; DATABASE_URL is the app's PostgreSQL.
	FleetStore  string `envconfig:"FLEET_STORE" default:"auto"`
	DatabaseURL Secret `envconfig:"DATABASE_URL"`
}

// Error is one bad setting: the variable, what is wrong, and the accepted form.
type Error struct {
	Var, Value, Problem, Accepted string
}

func (e *Error) Error() string {
	msg := e.Var
	if e.Value != "" {
		msg += "=" + e.Value
	}
	msg += ": " + e.Problem
	if e.Accepted != "" {
		msg += "; accepted: " + e.Accepted
	}
	return msg
}

// Errors is every problem found in one configuration.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

var forms = map[string]string{
	"Size": sizeForm, "Duration": durationForm, "Schedule": scheduleForm, "Signal": signalForm,
	"int": "a whole number", "bool": "true or false",
}

// Load reads the configuration from the environment and validates it.
// Every error is an Errors value holding every problem found, so a user
// fixes them all in one deploy.
func Load() (*Config, error) {
	c, errs := Read()
	if len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// Read is Load for callers that check more on top: it returns the
// configuration even when some values are bad (those keep their zero value)
// along with every problem found.
func Read() (*Config, Errors) {
	var c Config
	var errs Errors
	failed := map[string]bool{}
	v := reflect.ValueOf(&c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		// envconfig stops at the first bad value; handing it one field at a
		// time keeps its parsing, defaults and prefix rules and reports all.
		one := reflect.New(reflect.StructOf([]reflect.StructField{{Name: f.Name, Type: f.Type, Tag: f.Tag}}))
		if err := envconfig.Process(Prefix, one.Interface()); err != nil {
			errs = append(errs, parseError(err))
			failed[f.Tag.Get("envconfig")] = true
			continue
		}
		v.Field(i).Set(one.Elem().Field(0))
	}
	return &c, errs.Add(c.Validate()...)
}

// Add appends the problems with variables not already reported: a value
// that did not parse is reported once, as such, not again by every check
// that then sees its zero value.
func (es Errors) Add(more ...*Error) Errors {
	seen := map[string]bool{}
	for _, e := range es {
		seen[strings.TrimPrefix(e.Var, Prefix+"_")] = true
	}
	for _, e := range more {
		if !seen[strings.TrimPrefix(e.Var, Prefix+"_")] {
			es = append(es, e)
		}
	}
	return es
}

// parseError turns an envconfig error into one line naming the spelling the
// user set, the value (unless secret) and the accepted form.
func parseError(err error) *Error {
	var pe *envconfig.ParseError
	if !errors.As(err, &pe) {
		return &Error{Var: "environment", Problem: err.Error()}
	}
	name := strings.TrimPrefix(pe.KeyName, Prefix+"_")
	key := name
	if _, ok := os.LookupEnv(Prefix + "_" + name); ok {
		key = Prefix + "_" + name
	}
	value := pe.Value
	if name == "REDIS_URL" || name == "REDIS_TLS_URL" || name == "DATABASE_URL" || strings.HasPrefix(name, "HEROKU_API_") {
		value = "" // never echo a secret back
	}
	problem := "invalid value"
	if inner := pe.Err; inner != nil {
		problem = inner.Error()
		var ne interface{ Unwrap() error }
		if errors.As(inner, &ne) && strings.HasPrefix(problem, "strconv.") {
			problem = "not a " + map[string]string{"int": "whole number", "bool": "boolean"}[pe.TypeName]
		}
	}
	typeName := pe.TypeName[strings.LastIndexByte(pe.TypeName, '.')+1:]
	return &Error{Var: key, Value: value, Problem: problem, Accepted: forms[typeName]}
}

// Validate checks the values against each other; it returns nil when fine.
func (c *Config) Validate() Errors {
	var errs Errors
	add := func(v, value, problem, accepted string) {
		errs = append(errs, &Error{Var: v, Value: value, Problem: problem, Accepted: accepted})
	}
	oneOf := func(v, value string, allowed ...string) string {
		low := strings.ToLower(strings.TrimSpace(value))
		for _, a := range allowed {
			if low == a {
				return low
			}
		}
		add(v, value, "unknown value", "one of "+strings.Join(allowed, ", "))
		return value
	}
	c.Platform = oneOf("PLATFORM", c.Platform, PlatformAuto, PlatformHeroku, PlatformLocal, PlatformExit)
	c.Worker = oneOf("WORKER", c.Worker, WorkerAuto, WorkerSidekiq, WorkerSignals)
	c.MemorySource = oneOf("MEMORY_SOURCE", c.MemorySource, SourceAuto, SourceTree, SourcePSS, SourceCgroup, SourceAll)
	c.LogFormat = oneOf("LOG_FORMAT", c.LogFormat, "logfmt", "json")
	c.LogLevel = oneOf("LOG_LEVEL", c.LogLevel, "debug", "info", "warn", "error")
	c.RedisTLSVerify = oneOf("REDIS_TLS_VERIFY", c.RedisTLSVerify, "auto", "true", "false")

	if c.SustainChecks < 1 {
		add("SUSTAIN_CHECKS", fmt.Sprint(c.SustainChecks), "must be at least 1", "a whole number, 1 or more")
	}
	if c.MaxConcurrentRestarts < 1 {
		add("MAX_CONCURRENT_RESTARTS", fmt.Sprint(c.MaxConcurrentRestarts), "must be at least 1", "a whole number, 1 or more")
	}
	if c.MinHealthyPeers < 0 {
		add("MIN_HEALTHY_PEERS", fmt.Sprint(c.MinHealthyPeers), "must not be negative", "a whole number, 0 or more")
	}
	if c.ShutdownWait.D() < time.Second {
		add("SHUTDOWN_WAIT", c.ShutdownWait.String(), "must be at least 1s, or the worker is killed before it can stop", durationForm)
	}
	if c.StopSignal.Sig == syscall.SIGTSTP {
		add("STOP_SIGNAL", "TSTP", "TSTP only pauses a process; it never stops one", "a signal that makes the worker exit, such as TERM, INT or QUIT")
	}
	if c.Worker == WorkerSidekiq {
		// Sidekiq traps only INT, TERM, TSTP and TTIN; any other signal kills
		// it at once and loses the jobs it was running.
		switch c.QuietSignal.Sig {
		case 0, syscall.SIGTSTP:
		default:
			add("QUIET_SIGNAL", c.QuietSignal.String(), "kills Sidekiq at once instead of quieting it", "TSTP (or leave it unset)")
		}
		if s := c.StopSignal.Sig; s != syscall.SIGTERM && s != syscall.SIGINT {
			add("STOP_SIGNAL", c.StopSignal.String(), "kills Sidekiq at once instead of stopping it gracefully", "TERM or INT")
		}
	}
	if c.MaxRSS.Bytes > 0 && c.CriticalRSS.Bytes > 0 && c.CriticalRSS.Bytes < c.MaxRSS.Bytes {
		add("CRITICAL_RSS", c.CriticalRSS.String(), "is below MAX_RSS ("+c.MaxRSS.String()+")", "a size at or above MAX_RSS")
	}
	for _, u := range []struct {
		name string
		val  Secret
	}{{"REDIS_URL", c.RedisURL}, {"REDIS_TLS_URL", c.RedisTLSURL}} {
		if u.val == "" {
			continue
		}
		parsed, err := url.Parse(string(u.val))
		if err != nil || (parsed.Scheme != "redis" && parsed.Scheme != "rediss") || parsed.Host == "" {
			add(u.name, "", "not a Redis URL", "redis://[user:password@]host:port[/db] or rediss:// for TLS")
		}
	}
	if c.HerokuAPIURL != "" {
		if problem := apiURLProblem(c.HerokuAPIURL); problem != "" {
			add("HEROKU_API_URL", RedactUserinfo(c.HerokuAPIURL), problem,
				"https://api.heroku.com or another https:// base URL (http:// only to a loopback address such as 127.0.0.1)")
		}
	}
	if c.MetricsAddr != "" {
		if problem := listenAddrProblem(c.MetricsAddr); problem != "" {
			add("METRICS_ADDR", c.MetricsAddr, problem, "host:port such as 127.0.0.1:9394, or :9394 for every interface (port 1-65535)")
		}
	}
	if c.FleetScope != "" && !validScope(c.FleetScope) {
		add("FLEET_SCOPE", c.FleetScope, "not a fleet name", scopeForm)
	}
	now := time.Now()
	for _, s := range []struct {
		name     string
		sched    Schedule
		minEvery time.Duration
	}{
		{"CHECK_SCHEDULE", c.CheckSchedule, time.Second},
		{"RESTART_SCHEDULE", c.RestartSchedule, MinRestartEvery},
	} {
		if problem := s.sched.problem(now, s.minEvery); problem != "" {
			add(s.name, s.sched.Spec, problem, scheduleForm+", firings at least "+fmtEvery(s.minEvery)+" apart")
		}
	}
	errs = append(errs, c.nameErrors()...)
	if c.Platform == PlatformHeroku {
		var missing []string
		if c.Token() == "" {
			missing = append(missing, "HEROKU_API_TOKEN (or HEROKU_API_KEY)")
		}
		if c.App() == "" {
			missing = append(missing, "HEROKU_APP_NAME (or HEROKU_APP_ID; enable runtime-dyno-metadata)")
		}
		if c.Dyno == "" {
			missing = append(missing, "DYNO")
		}
		if len(missing) > 0 {
			add("PLATFORM", "heroku", "missing "+strings.Join(missing, ", "), "set these config vars, or PLATFORM=local")
		}
	}
	errs = append(errs, c.validateFleetStore()...)
	return errs
}

// apiURLProblem says what is wrong with a Platform API base URL, or "".
// Plain http would carry the API token in clear text, so it is accepted only
// to this machine (tests and local fakes).
func apiURLProblem(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		return "not an http(s) URL"
	case u.Scheme == "http" && !loopback(u.Hostname()):
		return "plain http would send the API token in clear text"
	}
	return ""
}

func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// listenAddrProblem says what is wrong with a listen address, or "". The
// host is not resolved: check must not depend on the network.
func listenAddrProblem(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "not a host:port address"
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "port must be a number from 1 to 65535"
	}
	if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		return "not an IP address or host name"
	}
	return ""
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

const scopeForm = "1 to 64 letters, digits, '-', '_', '.' or ':', the same on every dyno of the app"

// validScope keeps the scope usable inside a Redis hash tag ({scope}) and
// printable in logs.
func validScope(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
			return false
		}
	}
	return s != ""
}

// Scope names the fleet in Redis: FLEET_SCOPE when set, else the Heroku
// app's name, else its id; "" when none is known.
func (c *Config) Scope() string {
	if c.FleetScope != "" {
		return c.FleetScope
	}
	return c.App()
}

// Token returns the Platform API token, HEROKU_API_TOKEN before HEROKU_API_KEY.
func (c *Config) Token() Secret {
	if c.HerokuAPIToken != "" {
		return c.HerokuAPIToken
	}
	return c.HerokuAPIKey
}

// App returns the Heroku app, by name when known, else by id.
func (c *Config) App() string {
	if c.HerokuAppName != "" {
		return c.HerokuAppName
	}
	return c.HerokuAppID
}

// Redis returns the coordination store's URL, REDIS_TLS_URL before REDIS_URL.
func (c *Config) Redis() Secret {
	if c.RedisTLSURL != "" {
		return c.RedisTLSURL
	}
	return c.RedisURL
}

// ResolvePlatform returns the platform to use: heroku when the dyno's
// identity and a token are set, otherwise local (or exit without a worker
// command, where there is nothing to restart in place).
func (c *Config) ResolvePlatform(haveCommand bool) string {
	if c.Platform != PlatformAuto {
		return c.Platform
	}
	if c.Dyno != "" && c.App() != "" && c.Token() != "" {
		return PlatformHeroku
	}
	if !haveCommand {
		return PlatformExit
	}
	return PlatformLocal
}

// OneOff reports whether DYNO names a one-off, scheduler or release dyno,
// where the agent only runs the command.
func (c *Config) OneOff() bool {
	for _, p := range []string{"run.", "scheduler.", "release.", "run-", "scheduler-", "release-"} {
		if strings.HasPrefix(c.Dyno, p) {
			return true
		}
	}
	return false
}

// Print writes the effective configuration, one VARIABLE=value a line, with
// secrets redacted.
func (c *Config) Print(w io.Writer) {
	rows := []struct{ k, v string }{
		{"MAX_RSS", c.MaxRSS.String()},
		{"CRITICAL_RSS", c.CriticalRSS.String()},
		{"GRACE_TIME", c.GraceTime.String()},
		{"SHUTDOWN_WAIT", c.ShutdownWait.String()},
		{"CHECK_SCHEDULE", c.CheckSchedule.String()},
		{"SUSTAIN_CHECKS", fmt.Sprint(c.SustainChecks)},
		{"MIN_UPTIME", c.MinUptime.String()},
		{"CONFIRM_AFTER", c.ConfirmAfter.String()},
		{"MAX_CONCURRENT_RESTARTS", fmt.Sprint(c.MaxConcurrentRestarts)},
		{"MIN_HEALTHY_PEERS", fmt.Sprint(c.MinHealthyPeers)},
		{"RESTART_SCHEDULE", c.RestartSchedule.String()},
		{"PLATFORM", c.Platform},
		{"HEROKU_API_TOKEN", c.Token().Redacted()},
		{"HEROKU_APP_NAME", orNone(c.App())},
		{"DYNO", orNone(c.Dyno)},
		{"FLEET_SCOPE", orNone(c.Scope())},
		{"HEROKU_API_URL", RedactUserinfo(c.HerokuAPIURL)},
		{"REDIS_URL", RedactURL(string(c.Redis()))},
		{"REDIS_TLS_VERIFY", c.RedisTLSVerify},
		{"WORKER", c.Worker},
		{"SIDEKIQ_NAMESPACE", orNone(c.SidekiqNamespace)},
		{"QUIET_SIGNAL", c.QuietSignal.String()},
		{"STOP_SIGNAL", c.StopSignal.String()},
		{"MEMORY_SOURCE", c.MemorySource},
		{"PROC_ROOT", c.ProcRoot},
		{"CGROUP_ROOT", c.CgroupRoot},
		{"METRICS_ADDR", orNone(c.MetricsAddr)},
		{"LOG_FORMAT", c.LogFormat},
		{"LOG_LEVEL", c.LogLevel},
		{"DRY_RUN", fmt.Sprint(c.DryRun)},
		{"BOOT_ALLOWANCE", c.BootAllowance.String()},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%s=%s\n", r.k, r.v)
	}
	c.printFleetStore(w)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
