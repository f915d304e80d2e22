package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/testpg"
)

func pgMember(t *testing.T, srv *testpg.Server, dyno string) *heartbeat.Postgres {
	t.Helper()
	cfg, err := heartbeat.PostgresConfig(heartbeat.PostgresConnectOptions{URL: srv.URL(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	f := heartbeat.NewPostgres(cfg, heartbeat.PostgresOptions{App: "shop", Dyno: dyno, Settle: -1, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func TestStatusFromPostgres(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	w1, w2 := pgMember(t, srv, "worker.1"), pgMember(t, srv, "worker.2")
	for _, f := range []*heartbeat.Postgres{w1, w2} {
		if err := f.Publish(ctx, heartbeat.Presence{State: heartbeat.StateWanting, RSS: 300 << 20, Limit: 512 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	l, err := w1.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}

	cleanEnv(t)
	t.Setenv("DATABASE_URL", srv.URL())
	t.Setenv("HEROKU_APP_NAME", "shop")
	code, out, errOut := runCLI(t, "status")
	if code != 0 {
		t.Fatalf("status: %d\n%s", code, errOut)
	}
	for _, want := range []string{"worker.1: wanting 300MB / 512MB", "worker.2: wanting", "slot 0: worker.1 since"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out+errOut, "app-secret") {
		t.Errorf("password in the output:\n%s%s", out, errOut)
	}

	code, out, errOut = runCLI(t, "status", "--json")
	if code != 0 {
		t.Fatalf("status --json: %d\n%s", code, errOut)
	}
	var got struct {
		Fleet heartbeat.FleetStatus `json:"fleet"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if got.Fleet.Store != "postgres" || len(got.Fleet.Dynos) != 2 || got.Fleet.Slots[0].Token != l.Token {
		t.Fatalf("status --json = %+v", got)
	}

	// Unreachable: a clear failure, not a hang.
	srv.Stop()
	start := time.Now()
	if code, _, errOut := runCLI(t, "status"); code != 1 || !strings.Contains(errOut, "read fleet") {
		t.Fatalf("status with the database down: %d %q", code, errOut)
	}
	if d := time.Since(start); d > 12*time.Second {
		t.Fatalf("status took %s with the database down", d)
	}
}

func TestRunPicksTheFleetStore(t *testing.T) {
	// Fleet mode in PostgreSQL needs a scope, as with Redis.
	cleanEnv(t)
	t.Setenv("MAX_RSS", "1GB")
	t.Setenv("PLATFORM", "local")
	t.Setenv("DATABASE_URL", "postgres://u:pw@127.0.0.1:1/db")
	if code, _, errOut := runCLI(t, "run", "--", "true"); code != 2 || !strings.Contains(errOut, "FLEET_SCOPE: missing: DATABASE_URL is set") ||
		!strings.Contains(errOut, "FLEET_STORE=none") {
		t.Errorf("postgres fleet without a scope: code %d, stderr %q; want 2 naming FLEET_SCOPE", code, errOut)
	}

	srv := testpg.Start(t)
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"DATABASE_URL": srv.URL()}, "fleet=postgres"},
		{map[string]string{"DATABASE_URL": srv.URL(), "FLEET_STORE": "none"}, "fleet=standalone"},
		{map[string]string{"DATABASE_URL": srv.URL(), "REDIS_URL": "redis://127.0.0.1:1/0"}, "fleet=redis"},
	} {
		cleanEnv(t)
		t.Setenv("MAX_RSS", "1GB")
		t.Setenv("PLATFORM", "local")
		t.Setenv("FLEET_SCOPE", "shop")
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		code, _, errOut := runCLI(t, "run", "--", "true")
		if code != 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: code %d, want 0 and %q in:\n%s", tc.env, code, tc.want, errOut)
		}
		if strings.Contains(errOut, "app-secret") {
			t.Errorf("password in the log:\n%s", errOut)
		}
	}
}
