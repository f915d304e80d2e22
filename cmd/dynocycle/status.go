package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/sidekiq"
)

// status shows an app's fleet. It prints no log line unless --verbose:
// its output is for people and for JSON readers.
func (c *CLI) status(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var app string
	var asJSON, verbose bool
	fs.StringVar(&app, "a", "", "")
	fs.StringVar(&app, "app", "", "")
	fs.BoolVar(&asJSON, "json", false, "")
	fs.BoolVar(&verbose, "verbose", false, "")
	if code, done := parseFlags(fs, "status", args, stdout, stderr); done {
		return code
	}
	cfg, err := config.Load()
	if err != nil {
		code, _ := configError(stderr, err)
		return code
	}
	postgres := cfg.ResolveFleetStore() == config.FleetPostgres
	if cfg.Redis() == "" && !postgres {
		fmt.Fprintln(stderr, "dynocycle status: REDIS_URL is not set; accepted: the Redis URL the agents use, or DATABASE_URL for a fleet in PostgreSQL (a standalone agent has no fleet to show)")
		return exitConfig
	}
	if app == "" {
		app = cfg.Scope()
	}
	if app == "" {
		return misuse(stderr, "status", "which app? pass -a APP, or set FLEET_SCOPE, HEROKU_APP_NAME or HEROKU_APP_ID as the agents have it", "")
	}
	log := slog.New(slog.DiscardHandler)
	if verbose {
		log = newLogger(cfg, stderr)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if postgres {
		return statusPostgres(ctx, cfg, app, asJSON, stdout, stderr, log) // fleetstore.go
	}
	client, err := connectRedis(ctx, cfg, cfg.ResolvePlatform(true) == config.PlatformHeroku, "", log)
	if err != nil {
		code, _ := configError(stderr, err)
		return code
	}
	defer client.Close()
	opts := fleetOptions(cfg, "", log)
	opts.App = app
	snap, err := heartbeat.NewRedis(client, opts).Snapshot(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "dynocycle status: cannot read the fleet from Redis at %s: %s\n", redisAddr(cfg), redisError(cfg, err))
		return exitFail
	}
	reader := &sidekiq.Reader{Client: client, Namespace: cfg.SidekiqNamespace, Logger: log}
	procs, perr := reader.Processes(ctx)
	stats, serr := reader.Stats(ctx)
	var sq *sidekiq.Status
	if perr == nil && serr == nil && (len(procs) > 0 || len(stats.Queues) > 0) {
		sq = &sidekiq.Status{Processes: procs, Stats: stats}
	} else if perr != nil || serr != nil {
		fmt.Fprintf(stderr, "dynocycle status: cannot read Sidekiq's records: %s\n", redisError(cfg, errors.Join(perr, serr)))
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

// redisAddr is host:port of the Redis in use, for messages.
func redisAddr(cfg *config.Config) string {
	if o, err := redis.ParseURL(string(cfg.Redis())); err == nil {
		return o.Addr
	}
	return "?"
}

// redisError is err on one line, without the Redis password.
func redisError(cfg *config.Config, err error) string {
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	if u, perr := url.Parse(string(cfg.Redis())); perr == nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	return msg
}
