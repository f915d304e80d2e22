package main

// The PostgreSQL fleet (FLEET_STORE=postgres, or DATABASE_URL without a
// Redis URL): its wiring and its `status`.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/heartbeat"
)

// newPostgresFleet builds the fleet on DATABASE_URL with the same times as
// the Redis fleet. It does not connect: the first call does, and a database
// that cannot be reached then leaves the worker running.
func newPostgresFleet(cfg *config.Config, dyno string, onHeroku bool, log *slog.Logger) (*heartbeat.Postgres, error) {
	pc, err := heartbeat.PostgresConfig(heartbeat.PostgresConnectOptions{URL: string(cfg.DatabaseURL), OnHeroku: onHeroku, Logger: log})
	if err != nil {
		return nil, &config.Error{Var: "DATABASE_URL", Problem: err.Error(),
			Accepted: "postgres://user:password@host:port/database, with libpq options such as ?sslmode=require"}
	}
	return heartbeat.NewPostgres(pc, heartbeat.PostgresOptions{
		App: appName(cfg), Dyno: dyno, Slots: cfg.MaxConcurrentRestarts, MinHealthyPeers: cfg.MinHealthyPeers,
		LeaseTTL: leaseTTL(cfg), PresenceTTL: presenceTTL(cfg), BootAllowance: cfg.BootAllowance.D(),
		Settle: settle(cfg), Logger: log,
	}), nil
}

// statusPostgres is `dynocycle status` for a fleet in PostgreSQL.
func statusPostgres(ctx context.Context, cfg *config.Config, asJSON bool, stdout, stderr io.Writer, log *slog.Logger) int {
	fleet, err := newPostgresFleet(cfg, "", cfg.ResolvePlatform(true) == config.PlatformHeroku, log)
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle: configuration error:\n"+indent(err.Error()))
		return exitConfig
	}
	defer fleet.Close()
	snap, err := fleet.Snapshot(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle status:", err)
		return exitFail
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(struct {
			Fleet heartbeat.FleetStatus `json:"fleet"`
			Store string                `json:"store"`
		}{snap, config.FleetPostgres})
	} else {
		err = heartbeat.WriteTable(stdout, snap, time.Now())
	}
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle status:", err)
		return exitFail
	}
	return exitOK
}
