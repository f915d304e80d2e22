package config

import (
	"fmt"
	"io"
	"net/url"
	"strings"
)

// Fleet stores: where the agents of an app coordinate their restarts.
const (
	FleetAuto     = "auto"     // Redis when a Redis URL is set, else PostgreSQL when DATABASE_URL is, else none
	FleetRedis    = "redis"    // REDIS_TLS_URL or REDIS_URL
	FleetPostgres = "postgres" // DATABASE_URL: Rails apps without Redis (Solid Queue, GoodJob)
	FleetNone     = "none"     // every dyno decides alone (standalone)
)

// ResolveFleetStore returns the store the agents coordinate through.
func (c *Config) ResolveFleetStore() string {
	switch {
	case c.FleetStore != FleetAuto:
		return c.FleetStore
	case c.Redis() != "":
		return FleetRedis
	case c.DatabaseURL != "":
		return FleetPostgres
	}
	return FleetNone
}

// validateFleetStore checks FLEET_STORE against the URLs it needs.
func (c *Config) validateFleetStore() Errors {
	var errs Errors
	const accepted = "auto, redis, postgres or none"
	store := strings.ToLower(strings.TrimSpace(c.FleetStore))
	switch store {
	case FleetAuto, FleetRedis, FleetPostgres, FleetNone:
		c.FleetStore = store
	default:
		return Errors{{Var: "FLEET_STORE", Value: c.FleetStore, Problem: "unknown value", Accepted: accepted}}
	}
	if c.DatabaseURL != "" {
		u, err := url.Parse(string(c.DatabaseURL))
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
			errs = append(errs, &Error{Var: "DATABASE_URL", Problem: "not a PostgreSQL URL",
				Accepted: "postgres://user:password@host:port/database (as Heroku sets it)"})
		}
	}
	switch {
	case store == FleetRedis && c.Redis() == "":
		errs = append(errs, &Error{Var: "FLEET_STORE", Value: store, Problem: "needs REDIS_URL (or REDIS_TLS_URL)",
			Accepted: "set REDIS_URL, or FLEET_STORE=postgres with DATABASE_URL, or " + accepted})
	case store == FleetPostgres && c.DatabaseURL == "":
		errs = append(errs, &Error{Var: "FLEET_STORE", Value: store, Problem: "needs DATABASE_URL",
			Accepted: "set DATABASE_URL (Heroku Postgres sets it), or " + accepted})
	}
	return errs
}

func (c *Config) printFleetStore(w io.Writer) {
	fmt.Fprintf(w, "FLEET_STORE=%s (%s)\n", c.FleetStore, c.ResolveFleetStore())
	fmt.Fprintf(w, "DATABASE_URL=%s\n", RedactURL(string(c.DatabaseURL)))
}
