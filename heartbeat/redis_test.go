package heartbeat

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

func TestPublishIsOneRoundTrip(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	f := newFleet(t, srv, RedisOptions{Dyno: "worker.1", Settle: -1})
	hook := &countHook{}
	f.client.AddHook(hook)

	p := Presence{State: StateWatching, RSS: 100 << 20, Limit: 512 << 20}
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"publish", func() error { return f.Publish(ctx, p) }},
		{"held", func() error { _, _, err := f.Held(ctx); return err }},
	} {
		// The first call may dial (HELLO, CLIENT SETINFO) and load the
		// script (NOSCRIPT, EVAL); count the steady state.
		if err := tc.call(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		hook.n.Store(0)
		if err := tc.call(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n := hook.n.Load(); n != 1 {
			t.Errorf("%s: %d round trips, want 1", tc.name, n)
		}
	}
}

func TestLeaseBasics(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	a := newFleet(t, srv, RedisOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: time.Minute})
	b := newFleet(t, srv, RedisOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})

	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatalf("a acquire: %v", err)
	}
	if la.Slot != 0 || la.Holder != "worker.1" || la.Token != 1 {
		t.Fatalf("a lease = %+v", la)
	}
	// A retried Acquire returns the slot already held, never a second one.
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
	// b cannot renew or release a's lease, even if it forges the lease value.
	if err := b.Release(ctx, la); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("b releases a's lease: %v, want ErrNotHolder", err)
	}
	forged := la
	forged.Holder = "worker.2"
	if err := b.Release(ctx, forged); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("b releases forged lease: %v, want ErrNotHolder", err)
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
}

// A holder whose lease ran out must not touch the lease its slot now carries
// for another dyno; that dyno, reborn, finds its lease and releases it.
func TestExpiredHolderAndRebornDyno(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	short := newFleet(t, srv, RedisOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: 200 * time.Millisecond})
	b := newFleet(t, srv, RedisOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})
	waiter := newFleet(t, srv, RedisOptions{Dyno: "worker.3", Settle: -1})

	stale, err := short.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "lease of worker.1 expires", func() bool {
		n, err := short.client.Exists(ctx, short.keys.leases[0]).Result()
		return err == nil && n == 0
	})
	lb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("b acquire after expiry: %v", err)
	}
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

	// The waiter asks and waits: only a waiter subscribes.
	if _, err := waiter.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("waiter acquire while worker.2 holds: %v, want ErrNoSlot", err)
	}
	subscribe(t, waiter)
	freed := waiter.SlotFreed()
	waitSignal(t, freed, 10*time.Second, "subscription established")

	// worker.2 restarts: a new process, a new client, the same dyno name.
	// Its name alone does not make it the holder; the hand-over its
	// previous life recorded before the restart does.
	early := newFleet(t, srv, RedisOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})
	if _, held, err := early.Held(ctx); err != nil || held {
		t.Fatalf("a namesake without a hand-over Held = %v, %v; want nothing", held, err)
	}
	handed, err := b.HandOver(ctx, lb)
	if err != nil {
		t.Fatalf("hand over: %v", err)
	}
	reborn := newFleet(t, srv, RedisOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute,
		StartedAt: handed.RestartAt.Add(time.Millisecond)})
	got, held, err := reborn.Held(ctx)
	if err != nil || !held {
		t.Fatalf("reborn Held = %v, %v; want its lease", held, err)
	}
	if got.Token != lb.Token || got.Slot != lb.Slot || !got.AcquiredAt.Equal(lb.AcquiredAt) || got.Successor != "worker.2" {
		t.Fatalf("reborn found %+v, want %+v claimed", got, lb)
	}
	if got.ExpiresAt.IsZero() {
		t.Fatalf("reborn lease has no expiry: %+v", got)
	}
	if err := reborn.Release(ctx, got); err != nil {
		t.Fatalf("reborn release: %v", err)
	}
	waitSignal(t, freed, 10*time.Second, "freed slot published to waiter")
	if _, err := waiter.Acquire(ctx); err != nil {
		t.Fatalf("waiter acquire: %v", err)
	}
}

// Another app's agent of the same dyno name, sharing the Redis, sees none
// of this app's leases and cannot release one even with its token.
func TestAnotherAppsNamesakeCannotRelease(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	y := newFleet(t, srv, RedisOptions{App: "app-y", Dyno: "worker.1", Settle: -1})
	y2 := newFleet(t, srv, RedisOptions{App: "app-y", Dyno: "worker.2", Settle: -1})
	x := newFleet(t, srv, RedisOptions{App: "app-x", Dyno: "worker.1", Settle: -1})
	ly, err := y.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, held, err := x.Held(ctx); err != nil || held {
		t.Fatalf("app-x's worker.1 Held = %v, %v", held, err)
	}
	if err := x.Release(ctx, ly); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("app-x releases app-y's lease: %v", err)
	}
	// Even in one key scope (two apps without a scope of their own), a
	// namesake is another boot.
	xSameScope := newFleet(t, srv, RedisOptions{App: "app-y", Dyno: "worker.1", Settle: -1})
	if err := xSameScope.Release(ctx, ly); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("a namesake in the same scope releases the lease: %v", err)
	}
	if _, err := y2.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("worker.2 acquires while worker.1 drains: %v", err)
	}
}

func TestRenewRestoresLostLease(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	a := newFleet(t, srv, RedisOptions{Dyno: "worker.1", Settle: -1, LeaseTTL: time.Minute})
	b := newFleet(t, srv, RedisOptions{Dyno: "worker.2", Settle: -1, LeaseTTL: time.Minute})
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Redis loses everything, including the token counter.
	if err := a.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := a.Renew(ctx, la); err != nil {
		t.Fatalf("renew of a lost lease whose slot is free: %v", err)
	}
	got, held, err := a.Held(ctx)
	if err != nil || !held || got.Token != la.Token {
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

func TestSettleOnEmptyRedis(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	clock := testutil.NewClock()
	a := newFleet(t, srv, RedisOptions{Dyno: "worker.1", Settle: time.Minute, Now: clock.Now})
	if err := a.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatal(err)
	}
	_, err := a.Acquire(ctx)
	if !errors.Is(err, ErrNoSlot) || !strings.Contains(err.Error(), "no fleet history") {
		t.Fatalf("acquire on a new redis: %v, want ErrNoSlot while settling", err)
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

func TestPeers(t *testing.T) {
	ctx := context.Background()
	publish := func(t *testing.T, f *Redis, state State) {
		t.Helper()
		if err := f.Publish(ctx, Presence{State: state}); err != nil {
			t.Fatal(err)
		}
	}
	opts := func(dyno string, logs *testutil.Buffer) RedisOptions {
		o := RedisOptions{Dyno: dyno, Settle: -1, Slots: 2, MinHealthyPeers: 1}
		if logs != nil {
			o.Logger = newLogger(logs)
		}
		return o
	}

	t.Run("single dyno waived with a warning", func(t *testing.T) {
		srv := testredis.Start(t)
		var logs testutil.Buffer
		w1 := newFleet(t, srv, opts("worker.1", &logs))
		publish(t, w1, StateWanting)
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire alone: %v", err)
		}
		if n := strings.Count(logs.String(), "event=peers_waived"); n != 1 {
			t.Fatalf("%d waiver warnings, want 1:\n%s", n, logs.String())
		}
	})

	t.Run("draining peer is not healthy", func(t *testing.T) {
		srv := testredis.Start(t)
		w1 := newFleet(t, srv, opts("worker.1", nil))
		w2 := newFleet(t, srv, opts("worker.2", nil))
		publish(t, w1, StateWanting)
		publish(t, w2, StateDraining)
		_, err := w1.Acquire(ctx)
		var pe *PeersError
		if !errors.As(err, &pe) || pe.Have != 0 || pe.Want != 1 || pe.ProcessType != "worker" {
			t.Fatalf("acquire: %v, want PeersError 0/1 worker", err)
		}
		publish(t, w2, StateWatching)
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire with a watching peer: %v", err)
		}
	})

	t.Run("other process types do not count", func(t *testing.T) {
		srv := testredis.Start(t)
		var logs testutil.Buffer
		w1 := newFleet(t, srv, opts("worker.1", &logs))
		web := newFleet(t, srv, opts("web.1", nil))
		publish(t, web, StateWatching)
		publish(t, w1, StateWanting)
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire: %v", err)
		}
		if !strings.Contains(logs.String(), "event=peers_waived") {
			t.Fatalf("web.1 counted as a worker peer; logs:\n%s", logs.String())
		}

		w2 := newFleet(t, srv, opts("worker.2", nil))
		w3 := newFleet(t, srv, opts("worker.3", nil))
		publish(t, w2, StateWanting)
		publish(t, w3, StateDraining)
		_, err := w2.Acquire(ctx)
		var pe *PeersError
		if !errors.As(err, &pe) || pe.Have != 0 {
			t.Fatalf("worker.2 with web.1 watching, worker.1 leased, worker.3 draining: %v, want PeersError", err)
		}
	})

	t.Run("lease holder is not a healthy peer", func(t *testing.T) {
		srv := testredis.Start(t)
		w1 := newFleet(t, srv, opts("worker.1", nil))
		w2 := newFleet(t, srv, opts("worker.2", nil))
		publish(t, w2, StateWanting)
		publish(t, w1, StateWanting)
		if _, err := w2.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		// worker.2 is back and watching but has not confirmed its restart.
		publish(t, w2, StateWatching)
		var pe *PeersError
		if _, err := w1.Acquire(ctx); !errors.As(err, &pe) {
			t.Fatalf("acquire while the only peer holds a lease: %v, want PeersError", err)
		}
	})

	t.Run("holder whose presence lapsed still counts as formation", func(t *testing.T) {
		srv := testredis.Start(t)
		clock := testutil.NewClock()
		o1, o2 := opts("worker.1", nil), opts("worker.2", nil)
		o1.Now, o2.Now = clock.Now, clock.Now
		w1, w2 := newFleet(t, srv, o1), newFleet(t, srv, o2)
		publish(t, w2, StateWanting)
		publish(t, w1, StateWanting)
		if _, err := w2.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		// worker.2's dyno is being replaced: its presence runs out.
		clock.Add(time.Minute)
		publish(t, w1, StateWanting)
		var pe *PeersError
		if _, err := w1.Acquire(ctx); !errors.As(err, &pe) {
			t.Fatalf("acquire while the other worker is being replaced: %v, want PeersError", err)
		}
	})

	t.Run("expired presence does not count", func(t *testing.T) {
		srv := testredis.Start(t)
		clock := testutil.NewClock()
		o1, o2 := opts("worker.1", nil), opts("worker.2", nil)
		o1.Now, o2.Now = clock.Now, clock.Now
		w1, w2 := newFleet(t, srv, o1), newFleet(t, srv, o2)
		publish(t, w2, StateDraining)
		clock.Add(16 * time.Second)
		publish(t, w1, StateWanting)
		if _, err := w1.Acquire(ctx); err != nil {
			t.Fatalf("acquire after the draining peer vanished: %v", err)
		}
	})
}

// redis-server dies while worker.1 drains under its lease and comes back
// empty. While it is down nobody acquires and every call fails fast; once it
// is back the clients reconnect by themselves, the drain keeps its slot and
// no second dyno gets one until it is released.
func TestRedisDownDuringDrain(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	clock := testutil.NewClock()
	opts := func(dyno string) RedisOptions {
		return RedisOptions{Dyno: dyno, Settle: time.Minute, LeaseTTL: 10 * time.Minute, Now: clock.Now}
	}
	a := newFleet(t, srv, opts("worker.1"))
	b := newFleet(t, srv, opts("worker.2"))
	if err := a.Publish(ctx, Presence{State: StateWanting}); err != nil {
		t.Fatal(err)
	}
	clock.Add(61 * time.Second) // past the settle time of this new redis
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire: %v", err)
	}
	subscribe(t, b)
	freed := b.SlotFreed()
	waitSignal(t, freed, 10*time.Second, "subscription established")

	srv.Stop()
	if err := srv.WaitDown(ctx); err != nil {
		t.Fatal(err)
	}
	// Every call fails, quickly, with an error that is neither a lease nor
	// a "try later" answer the agent could mistake for a free slot.
	for name, call := range map[string]func() error{
		"b acquire": func() error { _, err := b.Acquire(ctx); return err },
		"a renew":   func() error { return a.Renew(ctx, la) },
		"b publish": func() error { return b.Publish(ctx, Presence{State: StateWanting}) },
		"b held":    func() error { _, _, err := b.Held(ctx); return err },
		"snapshot":  func() error { _, err := b.Snapshot(ctx); return err },
	} {
		start := time.Now()
		err := call()
		if err == nil || errors.Is(err, ErrNotHolder) || errors.Is(err, ErrNoSlot) {
			t.Fatalf("%s with redis down: %v, want a connection error", name, err)
		}
		// The bound is the client timeouts (2s dial, 1 retry), with room.
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("%s took %s with redis down", name, d)
		}
	}

	srv.Restart() // same port, no data
	testutil.Eventually(t, 20*time.Second, "b reconnects", func() bool {
		return b.Publish(ctx, Presence{State: StateWanting}) == nil
	})
	// The new redis settles: no lease for anyone, though every slot key is gone.
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire right after redis came back empty: %v, want ErrNoSlot", err)
	}
	// The drain renews and gets its slot back, once its client has redialled
	// (a pool of one fails fast for up to a second after a failed dial).
	testutil.Eventually(t, 20*time.Second, "a renews after redis came back", func() bool {
		err := a.Renew(ctx, la)
		if errors.Is(err, ErrNotHolder) {
			t.Fatalf("a renew after redis came back: %v", err)
		}
		return err == nil
	})
	waitSignal(t, freed, 20*time.Second, "b re-subscribed")
	clock.Add(61 * time.Second)
	if _, err := b.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("b acquire after settling while a still drains: %v, want ErrNoSlot", err)
	}
	s, err := b.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Slots[0].Holder != "worker.1" || s.Slots[0].Token != la.Token {
		t.Fatalf("slot 0 after restore: %+v", s.Slots[0])
	}

	// worker.1 is reborn and confirms; worker.2 is woken and goes next.
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

func TestRunStartsAndStopsSubscriber(t *testing.T) {
	srv := testredis.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	waiter := newFleet(t, srv, RedisOptions{Dyno: "worker.1", Settle: -1})
	holder := newFleet(t, srv, RedisOptions{Dyno: "worker.2", Settle: -1})
	ran := make(chan error, 1)
	go func() { ran <- waiter.Run(ctx) }()
	l, err := holder.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waiter.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("waiter acquire: %v, want ErrNoSlot", err)
	}
	waitSignal(t, waiter.freed, 10*time.Second, "subscribed by Run once waiting")
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
}
