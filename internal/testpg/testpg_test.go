package testpg

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func TestServerLifecycle(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	c := connect(t, s.URL())
	var user, db string
	var super bool
	if err := c.QueryRow(ctx, "SELECT current_user, current_database(), usesuper FROM pg_user WHERE usename = current_user").
		Scan(&user, &db, &super); err != nil {
		t.Fatal(err)
	}
	if user != "app" || db != "app" || super {
		t.Fatalf("URL connects as %s to %s (superuser %v), want the plain role app to its own database", user, db, super)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)"); err != nil {
		t.Fatal(err)
	}

	s.Crash()
	if err := s.WaitDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx); err == nil {
		t.Fatal("ping after the server crashed succeeded")
	}
	s.Restart()
	var v int
	if err := connect(t, s.URL()).QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != 7 {
		t.Fatalf("committed row after crash and restart: %d, %v", v, err)
	}

	s.Wipe()
	s.Restart()
	err := connect(t, s.URL()).QueryRow(ctx, "SELECT v FROM kept").Scan(&v)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("table after wipe: %v, want it gone", err)
	}
}

func TestTerminate(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	c := connect(t, s.URL()+"&application_name=victim")
	n, err := s.Terminate(ctx, "victim")
	if err != nil || n != 1 {
		t.Fatalf("terminate: %d, %v", n, err)
	}
	if err := c.Ping(ctx); err == nil {
		t.Fatal("terminated session still answers")
	}
}

func TestTLS(t *testing.T) {
	ctx := context.Background()
	s := Start(t, Options{TLS: true})
	c := connect(t, s.URL())
	var ssl bool
	if err := c.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("session over TLS: %v, %v", ssl, err)
	}
	// The certificate is self-signed: verifying it fails, as with Heroku's.
	if _, err := pgx.Connect(ctx, strings.Replace(s.URL(), "sslmode=require", "sslmode=verify-full", 1)); err == nil {
		t.Fatal("verify-full accepted a self-signed certificate")
	}
}
