package heartbeat

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresConnectOptions says how to reach the coordination database.
type PostgresConnectOptions struct {
	// URL is DATABASE_URL: postgres://user:password@host:port/database,
	// with libpq's query parameters (sslmode, connect_timeout, ...).
	URL string
	// OnHeroku is true when the agent runs in a Heroku dyno: without an
	// sslmode in the URL (or PGSSLMODE) the connection then requires TLS
	// without verifying the certificate, which Heroku Postgres does not sign
	// for verification.
	OnHeroku bool
	Logger   *slog.Logger
}

// Session settings of the agent's connection, unless the URL sets them: a
// statement that cannot finish in time fails on the server and leaves the
// connection usable; a transaction left open by a stalled agent cannot hold
// the app's row lock for long.
var pgSessionDefaults = map[string]string{
	"application_name":                    "dynocycle",
	"statement_timeout":                   "4s",
	"lock_timeout":                        "3s",
	"idle_in_transaction_session_timeout": "10s",
}

// PostgresConfig parses a DATABASE_URL into the agent's connection
// settings. It fails only on a bad URL; errors never carry the password.
// The connection itself is made on first use, and again whenever it breaks.
func PostgresConfig(opts PostgresConnectOptions) (*pgx.ConnConfig, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	raw := strings.TrimSpace(opts.URL)
	if raw == "" {
		return nil, errors.New("database url is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("parse database url: malformed (check scheme, host, port, and that the password is percent-encoded)")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, fmt.Errorf("parse database url: scheme %q: want postgres or postgresql", u.Scheme)
	}
	secret := urlPassword(raw)
	q := u.Query()
	if q.Get("sslmode") == "" && os.Getenv("PGSSLMODE") == "" && opts.OnHeroku {
		q.Set("sslmode", "require")
		u.RawQuery = q.Encode()
	}
	cfg, err := pgx.ParseConfig(u.String())
	if err != nil {
		return nil, redact(fmt.Errorf("parse database url: %w", err), secret)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = pgDialTimeout
	}
	for k, v := range pgSessionDefaults {
		if _, set := cfg.RuntimeParams[k]; !set {
			cfg.RuntimeParams[k] = v
		}
	}
	if cfg.TLSConfig != nil && cfg.TLSConfig.InsecureSkipVerify {
		log.Warn("postgres tls certificate verification off",
			"event", "pg_tls_noverify", "host", cfg.Host, "on_heroku", opts.OnHeroku,
			"reason", "sslmode require or prefer does not verify (Heroku Postgres certificates cannot be); set sslmode=verify-full and sslrootcert to verify")
	}
	log.Info("postgres fleet", "event", "pg_config", "host", cfg.Host, "port", cfg.Port, "database", cfg.Database,
		"tls", cfg.TLSConfig != nil, "connect_timeout", cfg.ConnectTimeout.Round(time.Millisecond))
	return cfg, nil
}
