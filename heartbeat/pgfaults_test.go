package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testpg"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// PostgreSQL restarts (a crash, then recovery) while worker.1 drains under
// its lease. While it is down every call fails fast with an error that is
// neither a lease nor a "try later"; once it is back the agents reconnect by
// themselves, the lease survived (the database is durable), nobody else got
// the slot, and the waiter is woken when the slot is released.
func TestPGRestartDuringDrain(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: 10 * time.Minute})
	b := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: 10 * time.Minute})
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	freed := listen(t, b)
	waitSignal(t, freed, 10*time.Second, "b listening")

	srv.Crash()
	if err := srv.WaitDown(ctx); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"b acquire": func() error { _, err := b.Acquire(ctx); return err },
		"a renew":   func() error { return a.Renew(ctx, la) },
		"b publish": func() error { return b.Publish(ctx, Presence{State: StateWanting}) },
		"b held":    func() error { _, _, err := b.Held(ctx); return err },
		"snapshot":  func() error { _, err := b.Snapshot(ctx); return err },
		"a release": func() error { return a.Release(ctx, la) },
	} {
		start := time.Now()
		err := call()
		if err == nil || errors.Is(err, ErrNotHolder) || errors.Is(err, ErrNoSlot) {
			t.Fatalf("%s with postgres down: %v, want a connection error", name, err)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("%s took %s with postgres down", name, d)
		}
	}

	srv.Restart()
	testutil.Eventually(t, 30*time.Second, "b reconnects", func() bool {
		return b.Publish(ctx, Presence{State: StateWanting}) == nil
	})
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire after the restart while a drains: %v, want ErrNoSlot", err)
	}
	if err := a.Renew(ctx, la); err != nil {
		t.Fatalf("a renew after the restart: %v", err)
	}
	waitSignal(t, freed, 30*time.Second, "b listens again (a release may have been missed)")
	if err := a.Release(ctx, la); err != nil {
		t.Fatalf("a release: %v", err)
	}
	waitSignal(t, freed, 10*time.Second, "b told of the freed slot")
	lb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("b acquire after release: %v", err)
	}
	if lb.Token <= la.Token {
		t.Fatalf("token %d after %d", lb.Token, la.Token)
	}
}

// An operator (or Heroku's maintenance) ends the agent's session with
// pg_terminate_backend: the listener notices at once and reconnects, and
// the next call works without the agent seeing an error.
func TestPGTerminatedConnection(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	var logs testutil.Buffer
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1, Logger: newLogger(&logs)})
	b := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1})
	freed := listen(t, a)
	waitSignal(t, freed, 10*time.Second, "a listening")
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// While idle in its LISTEN.
	if n, err := srv.Terminate(ctx, "dynocycle-worker.1"); err != nil || n != 1 {
		t.Fatalf("terminate: %d sessions, %v", n, err)
	}
	waitSignal(t, freed, 10*time.Second, "a listens again on a new connection")
	if !strings.Contains(logs.String(), "event=pg_conn_lost") {
		t.Fatalf("lost connection not logged:\n%s", logs.String())
	}
	if err := a.Renew(ctx, la); err != nil {
		t.Fatalf("renew after the connection was terminated: %v", err)
	}

	// Without a listener, the call itself meets the dead session and retries once.
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire: %v", err)
	}
	if n, err := srv.Terminate(ctx, "dynocycle-worker.2"); err != nil || n != 1 {
		t.Fatalf("terminate b: %d sessions, %v", n, err)
	}
	if err := b.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatalf("b publish after its connection was terminated: %v", err)
	}
	if err := a.Release(ctx, la); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx); err != nil {
		t.Fatalf("b acquire after release: %v", err)
	}
}

// The app's row is locked by someone else for longer than the agent's lock
// and statement timeouts: Acquire fails within seconds with an error (not a
// lease, not "no slot"), the connection stays usable, and once the lock is
// gone the lease is granted.
func TestPGStatementTimeout(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1})
	if err := a.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatal(err)
	}
	admin := adminConn(t, srv)
	tx, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1 FROM dynocycle.apps WHERE app = 'testapp' FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = a.Acquire(ctx)
	took := time.Since(start)
	if err == nil || errors.Is(err, ErrNoSlot) || errors.Is(err, ErrNotHolder) {
		t.Fatalf("acquire behind a held row lock: %v, want a timeout error", err)
	}
	if !strings.Contains(err.Error(), "lock timeout") && !strings.Contains(err.Error(), "statement timeout") {
		t.Fatalf("acquire behind a held row lock: %v, want the server's timeout", err)
	}
	if took > 10*time.Second {
		t.Fatalf("acquire took %s behind a held lock", took)
	}
	if err := a.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatalf("publish after the timeout: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatalf("acquire after the lock is gone: %v", err)
	}
}

// One connection per agent, whatever it does: publishing, acquiring,
// listening for freed slots, and after its connection was terminated.
func TestPGOneConnectionPerAgent(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1})
	b := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1})
	freedA, freedB := listen(t, a), listen(t, b)
	waitSignal(t, freedA, 10*time.Second, "a listening")
	waitSignal(t, freedB, 10*time.Second, "b listening")
	count := func(dyno string) int {
		n, err := srv.Connections(ctx, "dynocycle-"+dyno)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for round := range 3 {
		for range 20 {
			if err := a.Publish(ctx, Presence{State: StateWanting}); err != nil {
				t.Fatal(err)
			}
			l, err := a.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
				t.Fatal(err)
			}
			if err := a.Release(ctx, l); err != nil {
				t.Fatal(err)
			}
			waitSignal(t, freedB, 10*time.Second, "b woken")
		}
		if round == 0 {
			if na, nb := count("worker.1"), count("worker.2"); na != 1 || nb != 1 {
				t.Fatalf("%d and %d connections, want 1 each", na, nb)
			}
		}
		// A terminated session's backend may linger a moment after its end.
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("round %d: one connection each", round), func() bool {
			return count("worker.1") == 1 && count("worker.2") == 1
		})
		if _, err := srv.Terminate(ctx, "dynocycle-worker.1"); err != nil {
			t.Fatal(err)
		}
		waitSignal(t, freedA, 10*time.Second, "a listens again")
	}
}

// A statement waits for the listener no longer than it takes to cancel its
// wait: calls on an agent that listens are as quick as on one that does not.
func TestPGListenerYieldsAtOnce(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1})
	waitSignal(t, listen(t, a), 10*time.Second, "listening")
	start := time.Now()
	const n = 50
	for range n {
		if err := a.Publish(ctx, Presence{State: StateWatching}); err != nil {
			t.Fatal(err)
		}
	}
	// The listener waits up to pgPingEvery (30s) per turn: a call that had
	// to wait for it to time out would take that long.
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("%d publishes took %s while listening", n, d)
	}
}

// Heroku Postgres requires TLS and its certificate cannot be verified: on
// Heroku a URL without sslmode connects with TLS, unverified.
func TestPGTLSOnHeroku(t *testing.T) {
	srv := testpg.Start(t, testpg.Options{TLS: true, Settings: map[string]string{}})
	ctx := context.Background()
	url := strings.Replace(srv.URL(), "?sslmode=require", "?application_name=dynocycle-tls", 1)
	var logs testutil.Buffer
	cfg, err := PostgresConfig(PostgresConnectOptions{URL: url, OnHeroku: true, Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TLSConfig == nil || len(cfg.Fallbacks) != 0 {
		t.Fatalf("on Heroku without sslmode: TLS %v, %d fallbacks; want TLS required", cfg.TLSConfig != nil, len(cfg.Fallbacks))
	}
	if !strings.Contains(logs.String(), "event=pg_tls_noverify") {
		t.Fatalf("unverified TLS not logged:\n%s", logs.String())
	}
	f := NewPostgres(cfg, PostgresOptions{App: "testapp", Dyno: "worker.1", Settle: -1, Logger: discardLogger()})
	t.Cleanup(func() { _ = f.Close() })
	if _, err := f.Acquire(ctx); err != nil {
		t.Fatalf("acquire over TLS: %v", err)
	}
	var ssl bool
	err = adminConn(t, srv).QueryRow(ctx, `SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
		WHERE a.application_name = 'dynocycle-tls'`).Scan(&ssl)
	if err != nil || !ssl {
		t.Fatalf("agent's session over TLS: %v, %v", ssl, err)
	}

	// verify-full against a certificate nobody signed fails, and says so.
	strict, err := PostgresConfig(PostgresConnectOptions{URL: strings.Replace(srv.URL(), "require", "verify-full", 1), OnHeroku: true, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	g := NewPostgres(strict, PostgresOptions{App: "testapp", Dyno: "worker.2", Settle: -1, Logger: discardLogger()})
	t.Cleanup(func() { _ = g.Close() })
	if err := g.Ping(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("verify-full with a self-signed certificate: %v", err)
	}
}

func TestPostgresConfig(t *testing.T) {
	for _, tc := range []struct {
		name, url string
		heroku    bool
		wantErr   string
		check     func(t *testing.T, s string)
	}{
		{name: "empty", url: " ", wantErr: "database url is empty"},
		{name: "scheme", url: "mysql://u:hunter2@h/db", wantErr: `scheme "mysql"`},
		{name: "malformed keeps the password out", url: "postgres://u:hunter2@h:port/db", wantErr: "malformed"},
		{name: "bad option keeps the password out", url: "postgres://u:hunter2@h/db?sslmode=sometimes", wantErr: "sslmode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PostgresConfig(PostgresConnectOptions{URL: tc.url, OnHeroku: tc.heroku, Logger: discardLogger()})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
	t.Run("session defaults unless set", func(t *testing.T) {
		cfg, err := PostgresConfig(PostgresConnectOptions{URL: "postgres://u:p@h/db?statement_timeout=9s", Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		rp := cfg.RuntimeParams
		if rp["statement_timeout"] != "9s" || rp["application_name"] != "dynocycle" || rp["lock_timeout"] == "" ||
			rp["idle_in_transaction_session_timeout"] == "" || cfg.ConnectTimeout != pgDialTimeout {
			t.Fatalf("runtime params %v, connect timeout %s", rp, cfg.ConnectTimeout)
		}
	})
	t.Run("sslmode kept as given on Heroku", func(t *testing.T) {
		cfg, err := PostgresConfig(PostgresConnectOptions{URL: "postgres://u:p@h/db?sslmode=disable", OnHeroku: true, Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.TLSConfig != nil {
			t.Fatal("sslmode=disable in the URL overridden")
		}
	})
}

// Run keeps the listener until its context ends; Close then ends the
// connection.
func TestPGRun(t *testing.T) {
	srv := testpg.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	waiter := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1})
	holder := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1})
	ran := make(chan error, 1)
	go func() { ran <- waiter.Run(ctx) }()
	waitSignal(t, waiter.freed, 10*time.Second, "listening by Run")
	l, err := holder.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, waiter.SlotFreed(), 10*time.Second, "release seen")
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The fleet still answers after Run, on the same connection.
	if _, err := holder.Acquire(context.Background()); err != nil {
		t.Fatalf("acquire after Run ended: %v", err)
	}
	if err := waiter.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "connection closed", func() bool {
		n, err := srv.Connections(context.Background(), "dynocycle-worker.1")
		return err == nil && n == 0
	})
}

// The agent cancels calls routinely (a renewal when its restart moves on,
// every call at shutdown). A call cancelled while it runs finishes on the
// server's terms and keeps the agent's one session: no reconnect, no second
// connection.
func TestPGCancelledCallKeepsTheSession(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1})
	listen(t, a)
	if err := a.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatal(err)
	}
	admin := adminConn(t, srv)
	session := func() (pid int, waiting bool) {
		var event *string
		if err := admin.QueryRow(ctx, `SELECT pid, wait_event_type FROM pg_stat_activity
			WHERE application_name = 'dynocycle-worker.1'`).Scan(&pid, &event); err != nil {
			t.Fatalf("the agent's session: %v", err)
		}
		return pid, event != nil && *event == "Lock"
	}
	before, _ := session()

	// Hold the agent's presence row so that its Publish (one statement) and
	// then its Acquire (a transaction) wait on a lock, and cancel each there.
	for _, c := range []struct {
		what, lock string
		call       func(ctx context.Context) error
	}{
		{"publish", "SELECT 1 FROM dynocycle.presences WHERE dyno = 'worker.1' FOR UPDATE",
			func(ctx context.Context) error { return a.Publish(ctx, Presence{State: StateWanting}) }},
		{"acquire", "SELECT 1 FROM dynocycle.apps WHERE app = 'testapp' FOR UPDATE",
			func(ctx context.Context) error { _, err := a.Acquire(ctx); return err }},
	} {
		tx, err := admin.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, c.lock); err != nil {
			t.Fatal(err)
		}
		callCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.call(callCtx) }()
		testutil.Eventually(t, 10*time.Second, c.what+" waiting on the row lock", func() bool {
			_, waiting := session()
			return waiting
		})
		cancel()
		time.Sleep(50 * time.Millisecond) // let a cancellation reach the connection, if it would
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the cancelled %s did not return", c.what)
		}
		if after, _ := session(); after != before {
			t.Fatalf("%s: session %d replaced by %d after a cancelled call", c.what, before, after)
		}
	}
	if after, _ := session(); after != before {
		t.Fatalf("session %d replaced by %d after a cancelled call", before, after)
	}
	if n, err := srv.Connections(ctx, "dynocycle-worker.1"); err != nil || n != 1 {
		t.Fatalf("%d connections, %v; want the one", n, err)
	}
	// A call that starts cancelled does not start.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.Acquire(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("acquire with a cancelled context: %v", err)
	}
}
