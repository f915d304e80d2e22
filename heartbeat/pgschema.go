package heartbeat

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The fleet's tables live in their own schema, apart from the app's: the
// agent never reads or writes anything else in the database. Every agent
// checks the schema when it connects and creates what is missing; dropping
// it is safe whenever no restart is under way:
//
//	DROP SCHEMA dynocycle CASCADE;
//
// (running agents make it again at their next call; the first lease is then
// granted after the settle time, as after any loss of the fleet's data).
//
//	dynocycle.schema_version  one row per version applied
//	dynocycle.apps            app -> fencing token counter, created_at (the epoch, see Settle)
//	dynocycle.presences       (app, dyno) -> process type, state, Presence JSON, expires_at
//	dynocycle.leases          (app, slot) -> token, holder (dyno, boot), hand-over, successor, expires_at,
//	                          the server process that wrote it last
//	dynocycle.queue           (app, dyno) -> asked_at: the dynos waiting for a slot, in asking order
//
// A lease or presence whose expires_at has passed is as good as absent; rows
// are overwritten or trimmed rather than deleted by a timer.
const pgSchema = "dynocycle"

// pgSchemaVersion is the version this build creates and understands.
const pgSchemaVersion = 2

// pgMigrationLock serialises schema changes of concurrent agents (the bytes
// of "dynocycl"): CREATE ... IF NOT EXISTS alone races in the catalog.
const pgMigrationLock int64 = 0x64796e6f6379636c

var pgMigrations = []string{
	1: `
CREATE SCHEMA IF NOT EXISTS dynocycle;
COMMENT ON SCHEMA dynocycle IS 'dynocycle: restart coordination of the app''s dynos. Safe to drop when no restart is under way: DROP SCHEMA dynocycle CASCADE';
CREATE TABLE IF NOT EXISTS dynocycle.schema_version (
  version    integer PRIMARY KEY,
  applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS dynocycle.apps (
  app        text PRIMARY KEY,
  token      bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS dynocycle.presences (
  app          text NOT NULL,
  dyno         text NOT NULL,
  process_type text NOT NULL,
  state        text NOT NULL,
  body         jsonb NOT NULL,
  expires_at   timestamptz NOT NULL,
  PRIMARY KEY (app, dyno)
) WITH (fillfactor = 50);
CREATE TABLE IF NOT EXISTS dynocycle.leases (
  app            text NOT NULL,
  slot           integer NOT NULL,
  token          bigint NOT NULL,
  process_type   text NOT NULL,
  holder         text NOT NULL,
  holder_boot    text NOT NULL,
  acquired_at    timestamptz NOT NULL,
  holder_seen    timestamptz,
  restart_at     timestamptz,
  successor      text NOT NULL DEFAULT '',
  successor_boot text NOT NULL DEFAULT '',
  claimed_at     timestamptz,
  successor_seen timestamptz,
  expires_at     timestamptz NOT NULL,
  PRIMARY KEY (app, slot)
) WITH (fillfactor = 50);
CREATE TABLE IF NOT EXISTS dynocycle.queue (
  app      text NOT NULL,
  dyno     text NOT NULL,
  asked_at timestamptz NOT NULL,
  PRIMARY KEY (app, dyno)
);
`,
	// The server process that wrote a lease last (see leaseRow.silent).
	2: `
ALTER TABLE dynocycle.leases ADD COLUMN IF NOT EXISTS server_started timestamptz;
`,
}

// ensureSchema creates or upgrades the fleet's schema. It costs two round
// trips when the schema is current.
func ensureSchema(ctx context.Context, c *pgx.Conn) (int, error) {
	have, err := schemaVersion(ctx, c)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if have >= pgSchemaVersion {
		return have, nil
	}
	err = pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", pgMigrationLock); err != nil {
			return err
		}
		// Another agent may have migrated while this one waited for the lock.
		have, err := schemaVersion(ctx, tx)
		if err != nil {
			return err
		}
		for v := have + 1; v <= pgSchemaVersion; v++ {
			if _, err := tx.Exec(ctx, pgMigrations[v]); err != nil {
				return fmt.Errorf("version %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO dynocycle.schema_version (version) VALUES ($1) ON CONFLICT DO NOTHING", v); err != nil {
				return fmt.Errorf("version %d: %w", v, err)
			}
		}
		return nil
	})
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42501" { // insufficient_privilege
			return 0, fmt.Errorf("create schema %s: %w (the database role needs CREATE on the database, "+
				"or the schema made ahead by its owner; see docs/postgres.md)", pgSchema, err)
		}
		return 0, fmt.Errorf("create schema %s: %w", pgSchema, err)
	}
	return pgSchemaVersion, nil
}

type queryer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// schemaVersion is 0 when the schema or its version table is missing.
func schemaVersion(ctx context.Context, q queryer) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass('dynocycle.schema_version') IS NOT NULL").Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := q.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM dynocycle.schema_version").Scan(&v)
	return v, err
}

// isSchemaMissing reports an error from a table or schema that is gone
// (someone dropped it while agents ran): the call is retried after
// ensureSchema.
func isSchemaMissing(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000") // undefined_table, invalid_schema_name
}
