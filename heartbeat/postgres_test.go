package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dynocycle/dynocycle/internal/testpg"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// pgConfig returns the agent's connection settings for srv, with an
// application_name that tells the test's agents apart in pg_stat_activity.
func pgConfig(t testing.TB, srv *testpg.Server, name string) *pgx.ConnConfig {
	t.Helper()
	cfg, err := PostgresConfig(PostgresConnectOptions{URL: srv.URL() + "&application_name=" + name, Logger: discardLogger()})
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// newPG returns a fleet member with its own connection; opts.Dyno must be
// set. Its application_name is "dynocycle-<dyno>".
func newPG(t testing.TB, srv *testpg.Server, opts PostgresOptions) *Postgres {
	t.Helper()
	if opts.App == "" {
		opts.App = "testapp"
	}
	if opts.Logger == nil {
		opts.Logger = discardLogger()
	}
	f := NewPostgres(pgConfig(t, srv, "dynocycle-"+opts.Dyno), opts)
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// listen runs f's listener for the test and returns its wake-ups.
func listen(t testing.TB, f *Postgres) <-chan struct{} {
	t.Helper()
	testutil.Loop(t, f.Run)
	return f.SlotFreed()
}

func adminConn(t testing.TB, srv *testpg.Server) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, srv.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func TestPGSchemaCreatedOnFirstUse(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	// Ten agents start at once against an empty database.
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := range 10 {
		f := newPG(t, srv, PostgresOptions{Dyno: fmt.Sprintf("worker.%d", i+1), Settle: -1})
		wg.Go(func() { errs <- f.Publish(ctx, Presence{State: StateWatching}) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("publish on an empty database: %v", err)
		}
	}
	admin := adminConn(t, srv)
	var version, owned int
	if err := admin.QueryRow(ctx, "SELECT max(version) FROM dynocycle.schema_version").Scan(&version); err != nil || version != pgSchemaVersion {
		t.Fatalf("schema version %d, %v; want %d", version, err, pgSchemaVersion)
	}
	// Everything the agent made is in its own schema, owned by the app role.
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tableowner = 'app' AND schemaname <> 'dynocycle'`).Scan(&owned); err != nil || owned != 0 {
		t.Fatalf("%d tables outside the schema dynocycle, %v", owned, err)
	}
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM dynocycle.presences").Scan(&n); err != nil || n != 10 {
		t.Fatalf("%d presences, %v", n, err)
	}

	// The documented drop, while agents run: the next call makes it again.
	if _, err := admin.Exec(ctx, "DROP SCHEMA dynocycle CASCADE"); err != nil {
		t.Fatal(err)
	}
	old := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1})
	if err := old.Publish(ctx, Presence{State: StateWatching}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "DROP SCHEMA dynocycle CASCADE"); err != nil {
		t.Fatal(err)
	}
	if err := old.Publish(ctx, Presence{State: StateWatching}); err != nil {
		t.Fatalf("publish after the schema was dropped under a live connection: %v", err)
	}
	if _, err := old.Acquire(ctx); err != nil {
		t.Fatalf("acquire after the schema was made again: %v", err)
	}
}

func TestPGLeaseBasics(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: time.Minute})
	b := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})

	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatalf("a acquire: %v", err)
	}
	if la.Slot != 0 || la.Holder != "worker.1" || la.Token != 1 {
		t.Fatalf("a lease = %+v", la)
	}
	if d := la.ExpiresAt.Sub(la.AcquiredAt); d != time.Minute {
		t.Fatalf("lease lasts %s, want the lease TTL", d)
	}
	again, err := a.Acquire(ctx)
	if err != nil || again.Token != la.Token || again.Slot != la.Slot {
		t.Fatalf("a acquire again = %+v, %v; want the same lease", again, err)
	}
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire: %v, want ErrNoSlot", err)
	}
	if err := a.Renew(ctx, la); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if err := b.Release(ctx, la); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("b releases a's lease: %v, want ErrNotHolder", err)
	}
	forged := la
	forged.Holder = "worker.2"
	if err := b.Release(ctx, forged); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("b releases forged lease: %v, want ErrNotHolder", err)
	}
	if err := b.Renew(ctx, forged); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("b renews forged lease: %v, want ErrNotHolder", err)
	}
	if err := a.Release(ctx, la); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := a.Release(ctx, la); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("second release: %v, want ErrNotHolder", err)
	}
	lb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("b acquire after release: %v", err)
	}
	if lb.Token <= la.Token {
		t.Fatalf("token %d after %d: fencing tokens must grow", lb.Token, la.Token)
	}
	// Apps sharing the database do not share slots or tokens.
	other := newPG(t, srv, PostgresOptions{App: "otherapp", Dyno: "worker.2", Settle: -1})
	lo, err := other.Acquire(ctx)
	if err != nil || lo.Token != 1 {
		t.Fatalf("another app's acquire = %+v, %v", lo, err)
	}
	if err := other.Release(ctx, lb); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("another app's worker.2 releases this app's worker.2 lease: %v, want ErrNotHolder", err)
	}
}

func TestPGExpiredHolderAndRebornDyno(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	short := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: 200 * time.Millisecond})
	b := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})
	waiter := newPG(t, srv, PostgresOptions{Dyno: "worker.3", Settle: -1})

	stale, err := short.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lb Lease
	testutil.Eventually(t, 10*time.Second, "lease of worker.1 expires and b gets the slot", func() bool {
		lb, err = b.Acquire(ctx)
		return err == nil
	})
	if lb.Slot != stale.Slot || lb.Token <= stale.Token {
		t.Fatalf("b lease %+v after stale %+v", lb, stale)
	}
	if err := short.Release(ctx, stale); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("stale release: %v, want ErrNotHolder", err)
	}
	if err := short.Renew(ctx, stale); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("stale renew: %v, want ErrNotHolder", err)
	}
	if _, held, err := short.Held(ctx); err != nil || held {
		t.Fatalf("stale holder Held = %v, %v; want false", held, err)
	}

	freed := listen(t, waiter)
	waitSignal(t, freed, 10*time.Second, "listening")

	// worker.2 restarts: a new process under the same name. The name alone
	// does not make it the holder; the hand-over of its previous life does.
	early := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})
	if _, held, err := early.Held(ctx); err != nil || held {
		t.Fatalf("a namesake without a hand-over Held = %v, %v; want nothing", held, err)
	}
	handed, err := b.HandOver(ctx, lb)
	if err != nil || handed.RestartAt.IsZero() {
		t.Fatalf("hand over: %+v, %v", handed, err)
	}
	reborn := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute,
		StartedAt: time.Now().Add(time.Second)})
	got, held, err := reborn.Held(ctx)
	if err != nil || !held {
		t.Fatalf("reborn Held = %v, %v; want its lease", held, err)
	}
	if got.Token != lb.Token || got.Slot != lb.Slot || !got.AcquiredAt.Equal(lb.AcquiredAt) || got.ExpiresAt.IsZero() ||
		got.Successor != "worker.2" || got.SuccessorBoot != reborn.Boot() {
		t.Fatalf("reborn found %+v, want %+v claimed", got, lb)
	}
	if err := reborn.Release(ctx, got); err != nil {
		t.Fatalf("reborn release: %v", err)
	}
	waitSignal(t, freed, 10*time.Second, "freed slot notified to the waiter")
	if _, err := waiter.Acquire(ctx); err != nil {
		t.Fatalf("waiter acquire: %v", err)
	}
}

// The fleet's data is lost (the database reset) while worker.1 holds a
// lease: its renewal restores it with its own token, the counter is raised
// past it, and nobody else gets the slot meanwhile.
func TestPGRenewRestoresLostLease(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: time.Minute})
	b := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adminConn(t, srv).Exec(ctx, "DROP SCHEMA dynocycle CASCADE"); err != nil {
		t.Fatal(err)
	}
	if err := a.Renew(ctx, la); err != nil {
		t.Fatalf("renew of a lost lease whose slot is free: %v", err)
	}
	got, held, err := a.Held(ctx)
	if err != nil || !held || got.Token != la.Token || !got.AcquiredAt.Equal(la.AcquiredAt) {
		t.Fatalf("after restore Held = %+v, %v, %v", got, held, err)
	}
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire while restored lease held: %v", err)
	}
	if err := a.Release(ctx, la); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lb.Token <= la.Token {
		t.Fatalf("token %d after restored %d: counter not raised", lb.Token, la.Token)
	}
}

func TestPGSettleOnNewApp(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	clock := testutil.NewClock()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: time.Minute, Now: clock.Now})
	if err := a.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatal(err)
	}
	_, err := a.Acquire(ctx)
	if !errors.Is(err, ErrNoSlot) || !strings.Contains(err.Error(), "no fleet history") {
		t.Fatalf("acquire on a new database: %v, want ErrNoSlot while settling", err)
	}
	clock.Add(30 * time.Second)
	if _, err := a.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("acquire half way: %v, want ErrNoSlot", err)
	}
	clock.Add(31 * time.Second)
	if _, err := a.Acquire(ctx); err != nil {
		t.Fatalf("acquire after settle: %v", err)
	}
}

// The server's clock decides expiry: a dyno whose clock runs an hour late
// or early sees the same leases.
func TestPGServerClock(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	a := newPG(t, srv, PostgresOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: time.Minute})
	b := newPG(t, srv, PostgresOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var server time.Time
	if err := adminConn(t, srv).QueryRow(ctx, "SELECT now()").Scan(&server); err != nil {
		t.Fatal(err)
	}
	if d := la.AcquiredAt.Sub(server); d > time.Second || d < -time.Second {
		t.Fatalf("lease acquired at %s, server time %s", la.AcquiredAt, server)
	}
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire: %v", err)
	}
}

func TestPGPeers(t *testing.T) {
	ctx := context.Background()
	publish := func(t *testing.T, f *Postgres, p Presence) {
		t.Helper()
		if err := f.Publish(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	opts := func(dyno string, logs *testutil.Buffer) PostgresOptions {
		o := PostgresOptions{Dyno: dyno, Settle: -1, Slots: 2, MinHealthyPeers: 1}
		if logs != nil {
			o.Logger = newLogger(logs)
		}
		return o
	}
	srv := testpg.Start(t)
	app := 0
	fresh := func(o PostgresOptions) PostgresOptions {
		o.App = fmt.Sprintf("app%d", app)
		return o
	}

	t.Run("single dyno waived with a warning", func(t *testing.T) {
		app++
		var logs testutil.Buffer
		w1 := newPG(t, srv, fresh(opts("worker.1", &logs)))
		publish(t, w1, Presence{State: StateWanting})
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire alone: %v", err)
		}
		if n := strings.Count(logs.String(), "event=peers_waived"); n != 1 {
			t.Fatalf("%d waiver warnings, want 1:\n%s", n, logs.String())
		}
	})

	t.Run("draining peer is not healthy", func(t *testing.T) {
		app++
		w1 := newPG(t, srv, fresh(opts("worker.1", nil)))
		w2 := newPG(t, srv, fresh(opts("worker.2", nil)))
		publish(t, w1, Presence{State: StateWanting})
		publish(t, w2, Presence{State: StateDraining})
		_, err := w1.Acquire(ctx)
		var pe *PeersError
		if !errors.As(err, &pe) || pe.Have != 0 || pe.Want != 1 || pe.ProcessType != "worker" {
			t.Fatalf("acquire: %v, want PeersError 0/1 worker", err)
		}
		publish(t, w2, Presence{State: StateWatching})
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire with a watching peer: %v", err)
		}
	})

	t.Run("other process types do not count", func(t *testing.T) {
		app++
		var logs testutil.Buffer
		w1 := newPG(t, srv, fresh(opts("worker.1", &logs)))
		web := newPG(t, srv, fresh(opts("web.1", nil)))
		publish(t, web, Presence{State: StateWatching})
		publish(t, w1, Presence{State: StateWanting})
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire: %v", err)
		}
		if !strings.Contains(logs.String(), "event=peers_waived") {
			t.Fatalf("web.1 counted as a worker peer; logs:\n%s", logs.String())
		}
		w2 := newPG(t, srv, fresh(opts("worker.2", nil)))
		w3 := newPG(t, srv, fresh(opts("worker.3", nil)))
		publish(t, w2, Presence{State: StateWanting})
		publish(t, w3, Presence{State: StateDraining})
		var pe *PeersError
		if _, err := w2.Acquire(ctx); !errors.As(err, &pe) || pe.Have != 0 {
			t.Fatalf("worker.2 with web.1 watching, worker.1 leased, worker.3 draining: %v, want PeersError", err)
		}
	})

	t.Run("lease holder is not a healthy peer", func(t *testing.T) {
		app++
		w1 := newPG(t, srv, fresh(opts("worker.1", nil)))
		w2 := newPG(t, srv, fresh(opts("worker.2", nil)))
		publish(t, w2, Presence{State: StateWanting})
		publish(t, w1, Presence{State: StateWanting})
		if _, err := w2.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		publish(t, w2, Presence{State: StateWatching})
		var pe *PeersError
		if _, err := w1.Acquire(ctx); !errors.As(err, &pe) {
			t.Fatalf("acquire while the only peer holds a lease: %v, want PeersError", err)
		}
	})

	t.Run("holder whose presence lapsed still counts as formation", func(t *testing.T) {
		app++
		clock := testutil.NewClock()
		o1, o2 := fresh(opts("worker.1", nil)), fresh(opts("worker.2", nil))
		o1.Now, o2.Now = clock.Now, clock.Now
		w1, w2 := newPG(t, srv, o1), newPG(t, srv, o2)
		publish(t, w2, Presence{State: StateWanting})
		publish(t, w1, Presence{State: StateWanting})
		if _, err := w2.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		clock.Add(time.Minute)
		publish(t, w1, Presence{State: StateWanting})
		var pe *PeersError
		if _, err := w1.Acquire(ctx); !errors.As(err, &pe) {
			t.Fatalf("acquire while the other worker is being replaced: %v, want PeersError", err)
		}
	})

	t.Run("expired presence does not count and is trimmed", func(t *testing.T) {
		app++
		clock := testutil.NewClock()
		o1, o2 := fresh(opts("worker.1", nil)), fresh(opts("worker.2", nil))
		o1.Now, o2.Now = clock.Now, clock.Now
		w1, w2 := newPG(t, srv, o1), newPG(t, srv, o2)
		publish(t, w2, Presence{State: StateDraining})
		clock.Add(16 * time.Second)
		publish(t, w1, Presence{State: StateWanting})
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire after the draining peer vanished: %v", err)
		}
		var n int
		if err := adminConn(t, srv).QueryRow(ctx, "SELECT count(*) FROM dynocycle.presences WHERE app = $1", o1.App).Scan(&n); err != nil || n != 1 {
			t.Fatalf("%d presences left, %v; want the expired one trimmed", n, err)
		}
	})
}

// TestPGFleetRestartsAtMostK runs 20 agents, all over their limit at once,
// against one real PostgreSQL, and checks from the recorded intervals that
// no more than K ever restart together and that everyone restarts.
func TestPGFleetRestartsAtMostK(t *testing.T) {
	for _, tc := range []struct {
		name                string
		slots, peers, limit int
	}{
		{name: "K=1", slots: 1, limit: 1},
		{name: "K=3", slots: 3, limit: 3},
		{name: "K=3 min healthy peers 18", slots: 3, peers: 18, limit: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testpg.Start(t)
			got := runPGFleet(t, srv, 20, tc.slots, tc.peers)
			if len(got) != 20 {
				t.Fatalf("%d of 20 agents restarted", len(got))
			}
			seen := map[string]bool{}
			tokens := map[int64]bool{}
			for _, iv := range got {
				if seen[iv.dyno] {
					t.Errorf("%s restarted twice", iv.dyno)
				}
				seen[iv.dyno] = true
				if tokens[iv.token] {
					t.Errorf("token %d granted twice", iv.token)
				}
				tokens[iv.token] = true
			}
			most := maxOverlap(got)
			if most > tc.limit {
				t.Fatalf("%d restarts at once, limit %d", most, tc.limit)
			}
			t.Logf("most restarts at once: %d (limit %d)", most, tc.limit)
		})
	}
}

func runPGFleet(t *testing.T, srv *testpg.Server, n, slots, peers int) []interval {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fleets := make([]*Postgres, n)
	for i := range fleets {
		fleets[i] = newPG(t, srv, PostgresOptions{
			Dyno: fmt.Sprintf("worker.%d", i+1), Slots: slots, MinHealthyPeers: peers,
			Settle: -1, LeaseTTL: 30 * time.Second,
		})
		if err := fleets[i].Publish(ctx, Presence{State: StateWanting}); err != nil {
			t.Fatal(err)
		}
		listen(t, fleets[i])
	}
	var mu sync.Mutex
	var got []interval
	var wg sync.WaitGroup
	for _, f := range fleets {
		wg.Go(func() {
			iv, err := restartOnceWith(ctx, f, f.dyno)
			if err != nil {
				t.Errorf("%s: %v", f.dyno, err)
				return
			}
			mu.Lock()
			got = append(got, iv)
			mu.Unlock()
		})
	}
	wg.Wait()
	return got
}

// restartOnceWith is restartOnce for any fleet.
func restartOnceWith(ctx context.Context, f Fleet, dyno string) (interval, error) {
	freed := f.SlotFreed() // listened to by runPGFleet
	for {
		if err := f.Publish(ctx, Presence{State: StateWanting}); err != nil {
			return interval{}, err
		}
		l, err := f.Acquire(ctx)
		var pe *PeersError
		switch {
		case err == nil:
		case errors.Is(err, ErrNoSlot) || errors.As(err, &pe):
			select {
			case <-freed:
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return interval{}, fmt.Errorf("starved: %w", ctx.Err())
			}
			continue
		default:
			return interval{}, err
		}
		iv := interval{dyno: dyno, token: l.Token, start: time.Now()}
		if err := f.Publish(ctx, Presence{State: StateDraining}); err != nil {
			return interval{}, err
		}
		hold := time.Duration(1+rand.IntN(5)) * time.Millisecond
		for end := time.Now().Add(hold); time.Now().Before(end); {
			if err := f.Renew(ctx, l); err != nil {
				return interval{}, fmt.Errorf("renew: %w", err)
			}
			time.Sleep(time.Millisecond)
		}
		iv.end = time.Now()
		if err := f.Publish(ctx, Presence{State: StateWatching}); err != nil {
			return interval{}, err
		}
		if err := f.Release(ctx, l); err != nil {
			return interval{}, fmt.Errorf("release: %w", err)
		}
		return iv, nil
	}
}

func TestPGSnapshot(t *testing.T) {
	srv := testpg.Start(t)
	ctx := context.Background()
	clock := testutil.NewClock()
	opts := func(dyno string) PostgresOptions {
		return PostgresOptions{Dyno: dyno, Slots: 2, Settle: time.Minute, LeaseTTL: 5 * time.Minute, Now: clock.Now}
	}
	w10, w2 := newPG(t, srv, opts("worker.10")), newPG(t, srv, opts("worker.2"))
	if err := w10.Publish(ctx, Presence{State: StateWatching, RSS: 100 << 20, Limit: 512 << 20}); err != nil {
		t.Fatal(err)
	}
	s, err := w2.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.SettlesAt.Equal(clock.Now().Add(time.Minute)) {
		t.Fatalf("settles at %s, want a minute from the app's first sight", s.SettlesAt)
	}
	var settling strings.Builder
	if err := WriteTable(&settling, s, clock.Now()); err != nil || !strings.Contains(settling.String(), "postgres holds no fleet history") {
		t.Fatalf("table while settling (%v):\n%s", err, settling.String())
	}
	clock.Add(61 * time.Second)
	if err := w10.Publish(ctx, Presence{State: StateWatching, RSS: 100 << 20, Limit: 512 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := w2.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatal(err)
	}
	l, err := w2.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err = w10.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Dynos) != 2 || s.Dynos[0].Dyno != "worker.2" || s.Dynos[1].Dyno != "worker.10" || s.Dynos[1].RSS != 100<<20 {
		t.Fatalf("dynos %+v", s.Dynos)
	}
	if len(s.Slots) != 2 || s.Slots[0].Holder != "worker.2" || s.Slots[0].Token != l.Token ||
		!s.Slots[0].ExpiresAt.Equal(clock.Now().Add(5*time.Minute)) || s.Slots[1].Holder != "" {
		t.Fatalf("slots %+v", s.Slots)
	}
	if !s.SettlesAt.IsZero() || s.App != "testapp" || !s.TakenAt.Equal(clock.Now()) {
		t.Fatalf("snapshot %+v", s)
	}
	var out strings.Builder
	if err := WriteTable(&out, s, clock.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "slot 0: worker.2 since") || !strings.Contains(out.String(), "slot 1: free") {
		t.Fatalf("table:\n%s", out.String())
	}
	// A presence that expired is not shown.
	clock.Add(16 * time.Second)
	if s, err = w10.Snapshot(ctx); err != nil || len(s.Dynos) != 0 {
		t.Fatalf("dynos after expiry %+v, %v", s.Dynos, err)
	}
}
