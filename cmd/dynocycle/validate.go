package main

// The validation `run` and `check` share, so that check says exactly what
// run would refuse.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/internal/bytesize"
	"github.com/dynocycle/dynocycle/memory"
)

// plan is a validated configuration and what it resolves to.
type plan struct {
	cfg      *config.Config
	platform string
	meter    *memory.Meter
	limits   limitPlan
}

// validate reads the configuration and checks everything `run` checks
// before it starts anything, reporting every problem at once as
// config.Errors. haveCommand says whether a worker command was given.
func validate(haveCommand bool) (*plan, error) {
	cfg, errs := config.Read()
	p := &plan{cfg: cfg, platform: cfg.ResolvePlatform(haveCommand)}
	add := func(e *config.Error) { errs = errs.Add(e) }

	if p.platform == config.PlatformLocal && !haveCommand {
		add(&config.Error{Var: "PLATFORM", Value: "local", Problem: "restarting in place needs a worker command",
			Accepted: "dynocycle run -- COMMAND, or PLATFORM=exit or heroku"})
	}
	if redisURL := string(cfg.Redis()); redisURL != "" {
		name := "REDIS_URL"
		if cfg.RedisTLSURL != "" {
			name = "REDIS_TLS_URL"
		}
		if problem := redisURLProblem(redisURL); problem != "" {
			add(&config.Error{Var: name, Problem: problem, Accepted: "redis://[user:password@]host:port[/db] or rediss:// for TLS"})
		}
		// Without a scope every agent on the Redis would share one fleet:
		// another app's dyno of the same name could release this app's slot.
		if cfg.Scope() == "" {
			add(&config.Error{Var: "FLEET_SCOPE", Problem: "missing: " + name + " is set (fleet mode), and agents of different apps sharing a Redis must not share restart slots",
				Accepted: "HEROKU_APP_NAME (heroku labs:enable runtime-dyno-metadata), HEROKU_APP_ID, or FLEET_SCOPE=a name for this app's fleet"})
		}
	} else if cfg.Worker == config.WorkerSidekiq && haveCommand {
		add(&config.Error{Var: "WORKER", Value: "sidekiq", Problem: "needs REDIS_URL, where Sidekiq keeps its records",
			Accepted: "set REDIS_URL to Sidekiq's Redis, or WORKER=signals with QUIET_SIGNAL=TSTP"})
	}
	// The same for a fleet in PostgreSQL: apps may share a database.
	if cfg.ResolveFleetStore() == config.FleetPostgres && cfg.Scope() == "" {
		add(&config.Error{Var: "FLEET_SCOPE", Problem: "missing: DATABASE_URL is set (fleet mode in PostgreSQL), and agents of different apps sharing a database must not share restart slots",
			Accepted: "HEROKU_APP_NAME (heroku labs:enable runtime-dyno-metadata), HEROKU_APP_ID, FLEET_SCOPE=a name for this app's fleet, or FLEET_STORE=none"})
	}

	// The meter is built as run builds it; the worker's pid is not known
	// yet, and only its presence matters here.
	var pid func() int
	if haveCommand {
		pid = func() int { return 0 }
	}
	var err error
	if cfg.MemorySource == config.SourceAuto {
		p.meter, err = memory.Auto(p.platform == config.PlatformHeroku, cfg.ProcRoot, cfg.CgroupRoot, pid)
	} else {
		p.meter, err = memory.New(cfg.MemorySource, cfg.ProcRoot, cfg.CgroupRoot, pid)
	}
	if err != nil {
		add(&config.Error{Var: "MEMORY_SOURCE", Value: cfg.MemorySource, Problem: err.Error(),
			Accepted: "auto, tree, pss, cgroup or all, readable on this machine"})
	} else {
		var lerrs config.Errors
		p.limits, lerrs = resolveLimitPlan(cfg, p.meter)
		errs = errs.Add(lerrs...)
	}
	if len(errs) > 0 {
		return p, errs
	}
	return p, nil
}

// redisURLProblem says why go-redis cannot use the URL, or "", without
// ever quoting the URL (it holds the password).
func redisURLProblem(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "malformed (check the scheme, host, port, and that the password is percent-encoded)"
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return "scheme must be redis or rediss"
	}
	if _, err := redis.ParseURL(raw); err != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			return strings.ReplaceAll(err.Error(), p, "xxxxx")
		}
		return err.Error()
	}
	return ""
}

// limitPlan is MAX_RSS and CRITICAL_RSS resolved against this machine.
type limitPlan struct {
	Policy    agent.Policy
	Limit     uint64 // the soft limit in bytes
	Container uint64 // the container's memory limit; 0 when there is none
	Host      uint64 // the machine's memory (not a limit), when known
	Defaulted bool   // MAX_RSS was not set: 90% of the container limit
}

// describe says where the limit comes from, in one line for check and the log.
func (l limitPlan) describe(cfg *config.Config) string {
	var b strings.Builder
	if l.Container > 0 {
		fmt.Fprintf(&b, "container memory limit %s", bytesize.MB(l.Container))
	} else {
		b.WriteString("no container memory limit")
		if l.Host > 0 {
			fmt.Fprintf(&b, " (this machine has %s, which is not a limit)", bytesize.MB(l.Host))
		}
	}
	switch {
	case l.Defaulted:
		fmt.Fprintf(&b, "; MAX_RSS unset: 90%% of the container limit = %s", bytesize.MB(l.Limit))
	case cfg.MaxRSS.Percent > 0:
		fmt.Fprintf(&b, "; MAX_RSS=%s of the container limit = %s", cfg.MaxRSS, bytesize.MB(l.Limit))
	default:
		fmt.Fprintf(&b, "; MAX_RSS=%s", bytesize.MB(l.Limit))
	}
	if l.Policy.CriticalRSS > 0 {
		fmt.Fprintf(&b, ", CRITICAL_RSS=%s", bytesize.MB(l.Policy.CriticalRSS))
	}
	return b.String()
}

// resolveLimitPlan turns MAX_RSS and CRITICAL_RSS into bytes. A percentage
// is of the container's memory limit, never of the host's memory: on a
// shared machine that would be no limit at all. Without MAX_RSS the soft
// limit is 90% of the container limit, the margin that keeps a dyno out of swap.
func resolveLimitPlan(cfg *config.Config, meter *memory.Meter) (limitPlan, config.Errors) {
	var l limitPlan
	var errs config.Errors
	detected, src := meter.Limit()
	switch src {
	case "cgroup":
		l.Container = detected
	case "meminfo":
		l.Host = detected
	}
	const sizeForm = "a size such as 512MB or 1.5GB (a bare number is MB)"
	noContainer := "no container memory limit was detected"
	if l.Host > 0 {
		noContainer += " (this machine's " + bytesize.MB(l.Host) + " of memory is not a limit)"
	}
	maxRSS := cfg.MaxRSS
	if !maxRSS.Set() {
		if l.Container == 0 {
			return l, append(errs, &config.Error{Var: "MAX_RSS", Problem: "required: " + noContainer, Accepted: sizeForm})
		}
		_ = maxRSS.Decode("90%")
		l.Defaulted = true
	}
	resolve := func(name string, s config.Size) uint64 {
		b, ok := s.Resolve(l.Container)
		switch {
		case !s.Set():
			return 0
		case !ok:
			errs = append(errs, &config.Error{Var: name, Value: s.String(),
				Problem: "a percentage of the container memory limit, and " + noContainer, Accepted: sizeForm})
		case b < 1<<20:
			errs = append(errs, &config.Error{Var: name, Value: s.String(),
				Problem: "resolves to " + bytesize.MB(b) + " of the " + bytesize.MB(l.Container) + " container limit, below 1MB", Accepted: sizeForm + ", or a larger percentage"})
		}
		return b
	}
	l.Limit = resolve("MAX_RSS", maxRSS)
	critical := resolve("CRITICAL_RSS", cfg.CriticalRSS)
	if len(errs) == 0 && critical > 0 && critical < l.Limit {
		errs = append(errs, &config.Error{Var: "CRITICAL_RSS", Value: cfg.CriticalRSS.String(),
			Problem: "resolves below MAX_RSS (" + bytesize.MB(l.Limit) + ")", Accepted: "a size at or above MAX_RSS"})
	}
	l.Policy = agent.Policy{MaxRSS: l.Limit, CriticalRSS: critical, SustainChecks: cfg.SustainChecks, MinUptime: cfg.MinUptime.D()}
	return l, errs
}

// resolveLimits is resolveLimitPlan for the agent's wiring: it logs where
// the limit comes from.
func resolveLimits(cfg *config.Config, meter *memory.Meter, log *slog.Logger) (agent.Policy, uint64, error) {
	l, errs := resolveLimitPlan(cfg, meter)
	if len(errs) > 0 {
		return agent.Policy{}, 0, errs
	}
	container := "none"
	if l.Container > 0 {
		container = bytesize.MB(l.Container)
	}
	log.Info(l.describe(cfg), "event", "limit", "container_limit", container, "max_rss", bytesize.MB(l.Limit))
	return l.Policy, l.Limit, nil
}

// configError reports a configuration error, one problem a line, and returns
// the exit code; ok is false when err is not a configuration error.
func configError(stderr io.Writer, err error) (code int, ok bool) {
	var es config.Errors
	var e *config.Error
	switch {
	case errors.As(err, &es):
	case errors.As(err, &e):
		es = config.Errors{e}
	default:
		return 0, false
	}
	fmt.Fprintln(stderr, "dynocycle: configuration error:\n"+indent(es.Error()))
	return exitConfig, true
}
