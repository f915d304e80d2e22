package heartbeat_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/fleettest"
	"github.com/dynocycle/dynocycle/internal/testpg"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// pgStore is one app's fleet on a private PostgreSQL server; every member
// is an agent process with its own connection.
type pgStore struct {
	srv  *testpg.Server
	app  string
	opts fleettest.Options
}

func (s *pgStore) Join(t *testing.T, dyno string) fleettest.Fleet {
	t.Helper()
	cfg, err := heartbeat.PostgresConfig(heartbeat.PostgresConnectOptions{URL: s.srv.URL(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	f := heartbeat.NewPostgres(cfg, heartbeat.PostgresOptions{
		App: s.app, Dyno: dyno, Slots: s.opts.Slots, LeaseTTL: 10 * time.Minute,
		PresenceTTL: s.opts.PresenceTTL, BootAllowance: s.opts.BootAllowance, Settle: s.opts.Settle,
		Now: s.opts.Now, Logger: slog.New(slog.DiscardHandler),
	})
	t.Cleanup(func() { _ = f.Close() })
	// The listener runs beside each member, as the command runs it beside
	// the agent.
	testutil.Loop(t, f.Run)
	return f
}

func TestPostgresFleetConformance(t *testing.T) {
	// One server for the whole suite: each test is its own app.
	srv := testpg.Start(t)
	n := 0
	fleettest.Run(t, fleettest.Setup{
		New: func(t *testing.T, opts fleettest.Options) fleettest.Store {
			n++
			return &pgStore{srv: srv, app: fmt.Sprintf("shop%d", n), opts: opts}
		},
		// The fleet's data lost: the schema dropped, as a reset database
		// or a restored old backup has it.
		Lose: func(t *testing.T, s fleettest.Store) {
			ctx := context.Background()
			c, err := pgx.Connect(ctx, s.(*pgStore).srv.AdminURL())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			if _, err := c.Exec(ctx, "DROP SCHEMA dynocycle CASCADE"); err != nil {
				t.Fatalf("drop schema: %v", err)
			}
		},
		Restart: func(t *testing.T, s fleettest.Store) time.Time {
			srv := s.(*pgStore).srv
			srv.Crash()
			if err := srv.WaitDown(context.Background()); err != nil {
				t.Fatal(err)
			}
			up := time.Now()
			srv.Restart()
			return up
		},
	})
}
