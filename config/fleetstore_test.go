package config

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestResolveFleetStore(t *testing.T) {
	const db = "postgres://u:pw@db.example:5432/app"
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, FleetNone},
		{map[string]string{"REDIS_URL": "redis://r:6379"}, FleetRedis},
		{map[string]string{"DATABASE_URL": db}, FleetPostgres},
		// A Sidekiq app has both: Redis stays the default.
		{map[string]string{"REDIS_URL": "redis://r:6379", "DATABASE_URL": db}, FleetRedis},
		{map[string]string{"REDIS_URL": "redis://r:6379", "DATABASE_URL": db, "FLEET_STORE": "postgres"}, FleetPostgres},
		{map[string]string{"DATABASE_URL": db, "FLEET_STORE": "None"}, FleetNone},
		{map[string]string{"DATABASE_URL": db, "DYNOCYCLE_FLEET_STORE": "none", "FLEET_STORE": "postgres"}, FleetNone},
	} {
		c, err := load(t, tc.env)
		if err != nil {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if got := c.ResolveFleetStore(); got != tc.want {
			t.Errorf("%v: store %s, want %s", tc.env, got, tc.want)
		}
	}
}

func TestFleetStoreErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"FLEET_STORE": "etcd"}, []string{"FLEET_STORE=etcd: unknown value", "auto, redis, postgres or none"}},
		{map[string]string{"FLEET_STORE": "postgres"}, []string{"FLEET_STORE=postgres: needs DATABASE_URL"}},
		{map[string]string{"FLEET_STORE": "redis", "DATABASE_URL": "postgres://h/db"}, []string{"FLEET_STORE=redis: needs REDIS_URL"}},
		{map[string]string{"DATABASE_URL": "mysql://u:hunter2@h/db"}, []string{"DATABASE_URL: not a PostgreSQL URL", "postgres://user:password@host:port/database"}},
		{map[string]string{"DATABASE_URL": "postgres://u:hunter2@h:port/db"}, []string{"DATABASE_URL: not a PostgreSQL URL"}},
	} {
		_, err := load(t, tc.env)
		var errs Errors
		if !errors.As(err, &errs) {
			t.Fatalf("%v: %v, want configuration errors", tc.env, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %q lacks %q", tc.env, err, w)
			}
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("secret leaked: %q", err)
		}
	}
}

func TestPrintFleetStore(t *testing.T) {
	c, err := load(t, map[string]string{"DATABASE_URL": "postgres://u:s3cr3t@db.example:5432/app"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c.Print(&buf)
	out := buf.String()
	if strings.Contains(out, "s3cr3t") {
		t.Fatalf("output leaks the password:\n%s", out)
	}
	for _, want := range []string{"FLEET_STORE=auto (postgres)", "DATABASE_URL=postgres://u:xxxxx@db.example:5432/app"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
