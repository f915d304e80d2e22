package main

// The PostgreSQL fleet (FLEET_STORE=postgres, or DATABASE_URL without a
// Redis URL): its wiring and its `status`.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/heartbeat"
)

// newPostgresFleet builds the fleet on DATABASE_URL with the Redis fleet's
// times (fleetOptions). It does not connect: the first call does, and a
// database that cannot be reached then leaves the worker running.
func newPostgresFleet(cfg *config.Config, dyno string, onHeroku bool, log *slog.Logger) (*heartbeat.Postgres, error) {
	pc, err := heartbeat.PostgresConfig(heartbeat.PostgresConnectOptions{URL: string(cfg.DatabaseURL), OnHeroku: onHeroku, Logger: log})
	if err != nil {
		return nil, &config.Error{Var: "DATABASE_URL", Problem: err.Error(),
			Accepted: "postgres://user:password@host:port/database, with libpq options such as ?sslmode=require"}
	}
	o := fleetOptions(cfg, dyno, log)
	return heartbeat.NewPostgres(pc, heartbeat.PostgresOptions{
		App: o.App, Dyno: o.Dyno, Slots: o.Slots, MinHealthyPeers: o.MinHealthyPeers, LeaseTTL: o.LeaseTTL,
		PresenceTTL: o.PresenceTTL, BootAllowance: o.BootAllowance, Settle: o.Settle, Logger: o.Logger,
	}), nil
}

// statusPostgres is `dynocycle status` for a fleet in PostgreSQL.
func statusPostgres(ctx context.Context, cfg *config.Config, app string, asJSON bool, stdout, stderr io.Writer, log *slog.Logger) int {
	pc, err := heartbeat.PostgresConfig(heartbeat.PostgresConnectOptions{URL: string(cfg.DatabaseURL),
		OnHeroku: cfg.ResolvePlatform(true) == config.PlatformHeroku, Logger: log})
	if err != nil {
		code, _ := configError(stderr, &config.Error{Var: "DATABASE_URL", Problem: err.Error(),
			Accepted: "postgres://user:password@host:port/database"})
		return code
	}
	o := fleetOptions(cfg, "", log)
	fleet := heartbeat.NewPostgres(pc, heartbeat.PostgresOptions{App: app, Slots: o.Slots, BootAllowance: o.BootAllowance,
		Settle: o.Settle, Logger: log})
	defer fleet.Close()
	snap, err := fleet.Snapshot(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "dynocycle status: cannot read the fleet from PostgreSQL at %s:%d: %s\n", pc.Host, pc.Port,
			strings.ReplaceAll(err.Error(), "\n", "; "))
		return exitFail
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(struct {
			Fleet heartbeat.FleetStatus `json:"fleet"`
		}{snap})
	} else {
		err = heartbeat.WriteTable(stdout, snap, time.Now())
	}
	if err != nil {
		fmt.Fprintln(stderr, "dynocycle status:", err)
		return exitFail
	}
	return exitOK
}
