// Package fleettest is the conformance suite of a restart fleet: the lease
// rules every store of the fleet (Redis, the in-process Local, a later SQL
// store) must keep. A store's test calls Run with a Setup that builds fleets
// of that store.
package fleettest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// Fleet is one agent's view of the fleet.
type Fleet = heartbeat.Fleet

// Options configure one fleet under test.
type Options struct {
	Slots         int
	BootAllowance time.Duration
	PresenceTTL   time.Duration
	// Settle is the pause of a store that lost its data (see
	// heartbeat.RedisOptions): negative for none; zero for the store's
	// default, BootAllowance.
	Settle time.Duration
	// Now is the clock every member shares.
	Now func() time.Time
}

// Store is the shared state of one app's fleet.
type Store interface {
	// Join starts a new agent process on dyno: a new boot, started Now.
	Join(t *testing.T, dyno string) Fleet
}

// Setup tells Run how to build fleets of one kind of store.
type Setup struct {
	New func(t *testing.T, opts Options) Store
	// Lose, if set, makes the store lose all its data at once, as a
	// FLUSHALL or a failover to an empty replica does.
	Lose func(t *testing.T, s Store)
	// Restart, if set, stops the store's server and starts it again on
	// the same data, as a crash or maintenance does. It returns a moment no
	// later than the new server's start.
	Restart func(t *testing.T, s Store) time.Time
}

// Run runs the conformance suite.
func Run(t *testing.T, setup Setup) {
	tests := []struct {
		name string
		run  func(t *testing.T, setup Setup)
	}{
		{"LeaseBasics", testLeaseBasics},
		{"AtMostKAtOnce", testAtMostK},
		{"OnlyTheHolderBootActs", testOnlyTheHolderBootActs},
		{"HandOverCedar", testHandOverCedar},
		{"HandOverFir", testHandOverFir},
		{"OneClaimAmongRacingDynos", testOneClaim},
		{"UnclaimedHandOverFreedAfterBootAllowance", testBootAllowance},
		{"TakenBackHandOverIsTheHoldersAlone", testTakeBack},
		{"GrantOrderIsWantOrder", testFairQueue},
		{"WaiterThatLeavesOrDiesLeavesTheQueue", testQueueLeavers},
	}
	type test = struct {
		name string
		run  func(t *testing.T, setup Setup)
	}
	if setup.Lose != nil {
		tests = append(tests, test{"DataLossAtEveryStep", testDataLoss})
	}
	if setup.Restart != nil {
		tests = append(tests, test{"SilenceAcrossARestartIsNotDeath", testSilenceAcrossARestart})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, setup) })
	}
}

const (
	bootAllowance = 2 * time.Minute
	presenceTTL   = 15 * time.Second
)

func newStore(t *testing.T, setup Setup, slots int, clock *testutil.Clock) Store {
	t.Helper()
	return setup.New(t, Options{Slots: slots, BootAllowance: bootAllowance, PresenceTTL: presenceTTL, Settle: -1, Now: clock.Now})
}

var ctx = context.Background()

func publish(t *testing.T, f Fleet, state heartbeat.State) {
	t.Helper()
	if err := f.Publish(ctx, heartbeat.Presence{State: state}); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func acquire(t *testing.T, f Fleet) heartbeat.Lease {
	t.Helper()
	publish(t, f, heartbeat.StateWanting)
	l, err := f.Acquire(ctx)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	return l
}

func noSlot(t *testing.T, f Fleet, why string) {
	t.Helper()
	publish(t, f, heartbeat.StateWanting)
	if l, err := f.Acquire(ctx); !errors.Is(err, heartbeat.ErrNoSlot) {
		t.Fatalf("%s: acquire = %+v, %v; want ErrNoSlot", why, l, err)
	}
}

func notHolder(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, heartbeat.ErrNotHolder) {
		t.Fatalf("%s: %v, want ErrNotHolder", what, err)
	}
}

func held(t *testing.T, f Fleet) (heartbeat.Lease, bool) {
	t.Helper()
	l, ok, err := f.Held(ctx)
	if err != nil {
		t.Fatalf("held: %v", err)
	}
	return l, ok
}

func testLeaseBasics(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	a, b := s.Join(t, "worker.1"), s.Join(t, "worker.2")
	la := acquire(t, a)
	if la.Holder != "worker.1" || la.HolderBoot == "" || la.Token <= 0 || la.ProcessType != "worker" {
		t.Fatalf("lease = %+v", la)
	}
	// A retried Acquire returns the slot already held, never a second one.
	if again, err := a.Acquire(ctx); err != nil || again.Token != la.Token || again.Slot != la.Slot {
		t.Fatalf("acquire again = %+v, %v; want the same lease", again, err)
	}
	noSlot(t, b, "the only slot is taken")
	if err := a.Renew(ctx, la); err != nil {
		t.Fatalf("renew: %v", err)
	}
	notHolder(t, "b renews a's lease", b.Renew(ctx, la))
	notHolder(t, "b releases a's lease", b.Release(ctx, la))
	forged := la
	forged.Holder = "worker.2"
	notHolder(t, "b releases a lease forged with its name", b.Release(ctx, forged))
	if _, err := b.HandOver(ctx, la); !errors.Is(err, heartbeat.ErrNotHolder) {
		t.Fatalf("b hands over a's lease: %v", err)
	}
	if err := a.Release(ctx, la); err != nil {
		t.Fatalf("release: %v", err)
	}
	notHolder(t, "second release", a.Release(ctx, la))
	lb := acquire(t, b)
	if lb.Token <= la.Token {
		t.Fatalf("token %d after %d: fencing tokens must grow", lb.Token, la.Token)
	}
}

// testAtMostK runs 12 agents, all wanting at once, on real time: never more
// than K hold a slot, and every one is served.
func testAtMostK(t *testing.T, setup Setup) {
	for _, k := range []int{1, 3} {
		t.Run(fmt.Sprintf("K=%d", k), func(t *testing.T) {
			s := setup.New(t, Options{Slots: k, BootAllowance: bootAllowance, PresenceTTL: time.Minute, Settle: -1, Now: time.Now})
			var members []Fleet
			for i := range 12 {
				f := s.Join(t, fmt.Sprintf("worker.%d", i+1))
				publish(t, f, heartbeat.StateWanting)
				members = append(members, f)
			}
			var mu sync.Mutex
			holding, most, served := 0, 0, 0
			tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			for _, f := range members {
				wg.Go(func() {
					for tctx.Err() == nil {
						l, err := f.Acquire(tctx)
						if errors.Is(err, heartbeat.ErrNoSlot) {
							select {
							case <-f.SlotFreed():
							case <-time.After(5 * time.Millisecond):
							}
							continue
						}
						if err != nil {
							t.Errorf("acquire: %v", err)
							return
						}
						mu.Lock()
						holding++
						most = max(most, holding)
						mu.Unlock()
						time.Sleep(time.Millisecond)
						if err := f.Renew(tctx, l); err != nil {
							t.Errorf("renew: %v", err)
						}
						mu.Lock()
						holding--
						served++
						mu.Unlock()
						_ = f.Publish(tctx, heartbeat.Presence{State: heartbeat.StateWatching})
						if err := f.Release(tctx, l); err != nil {
							t.Errorf("release: %v", err)
						}
						return
					}
					t.Errorf("starved: %v", tctx.Err())
				})
			}
			wg.Wait()
			if most > k || served != len(members) {
				t.Fatalf("most holding at once %d (K=%d), served %d of %d", most, k, served, len(members))
			}
		})
	}
}

// testOnlyTheHolderBootActs: a later agent under the same dyno name (another
// boot, or another app's dyno of that name sharing the store) is not the
// holder and cannot act on the lease by name alone.
func testOnlyTheHolderBootActs(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	old := s.Join(t, "worker.1")
	l := acquire(t, old)
	clock.Add(time.Second)
	again := s.Join(t, "worker.1")
	if got, ok := held(t, again); ok {
		t.Fatalf("a new boot of worker.1 holds %+v without a hand-over", got)
	}
	notHolder(t, "release by name", again.Release(ctx, l))
	notHolder(t, "renew by name", again.Renew(ctx, l))
	noSlot(t, again, "the old boot still holds the slot")
	if err := old.Renew(ctx, l); err != nil {
		t.Fatalf("the holder lost its lease to a namesake: %v", err)
	}
	if got, ok := held(t, old); !ok || got.Token != l.Token {
		t.Fatalf("holder's Held = %+v, %v", got, ok)
	}
}

// handOver is the holder's side of a platform restart.
func handOver(t *testing.T, f Fleet, l heartbeat.Lease) heartbeat.Lease {
	t.Helper()
	h, err := f.HandOver(ctx, l)
	if err != nil {
		t.Fatalf("hand over: %v", err)
	}
	if h.RestartAt.IsZero() || h.Token != l.Token || h.Slot != l.Slot {
		t.Fatalf("handed over %+v from %+v", h, l)
	}
	return h
}

// confirm is the successor's side: it holds the claimed lease, renews it
// while it boots, and releases it once healthy; then the waiter gets it.
func confirm(t *testing.T, successor, waiter Fleet, want heartbeat.Lease, dyno string) {
	t.Helper()
	got, ok := held(t, successor)
	if !ok || got.Token != want.Token || got.Successor != dyno || got.SuccessorBoot == "" {
		t.Fatalf("successor %s: Held = %+v, %v; want lease %d claimed", dyno, got, ok, want.Token)
	}
	if again, ok := held(t, successor); !ok || again.Token != want.Token {
		t.Fatalf("second lookup = %+v, %v", again, ok)
	}
	if err := successor.Renew(ctx, got); err != nil {
		t.Fatalf("successor renew: %v", err)
	}
	noSlot(t, waiter, "the successor is booting")
	if err := successor.Release(ctx, got); err != nil {
		t.Fatalf("successor release: %v", err)
	}
	acquire(t, waiter)
}

func testHandOverCedar(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	w1, w2 := s.Join(t, "worker.1"), s.Join(t, "worker.2")
	l := handOver(t, w1, acquire(t, w1))
	clock.Add(2 * time.Second)
	// Another Cedar dyno starting now is not worker.1 reborn.
	if got, ok := held(t, s.Join(t, "worker.3")); ok {
		t.Fatalf("worker.3 claimed worker.1's lease: %+v", got)
	}
	if got, ok := held(t, s.Join(t, "web.1")); ok {
		t.Fatalf("web.1 claimed worker.1's lease: %+v", got)
	}
	// The old agent still renews while it waits for the platform's TERM, as
	// the reborn worker.1 starts beside it (Heroku starts it at once).
	reborn := s.Join(t, "worker.1")
	if err := w1.Renew(ctx, l); err != nil {
		t.Fatalf("holder renews after the hand-over: %v", err)
	}
	confirm(t, reborn, w2, l, "worker.1")
}

func testHandOverFir(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	holder := s.Join(t, "worker-5d8f7c9b4-k2x7p")
	waiter := s.Join(t, "worker-5d8f7c9b4-m9q2z")
	early := s.Join(t, "worker-5d8f7c9b4-a1b2c") // started before the hand-over
	clock.Add(time.Second)
	l := handOver(t, holder, acquire(t, holder))
	clock.Add(2 * time.Second)
	if got, ok := held(t, early); ok {
		t.Fatalf("a dyno started before the hand-over claimed it: %+v", got)
	}
	for _, other := range []string{"web-5d8f7c9b4-zz9zz", "run-7k2xp"} {
		if got, ok := held(t, s.Join(t, other)); ok {
			t.Fatalf("%s claimed a worker's lease: %+v", other, got)
		}
	}
	reborn := s.Join(t, "worker-7c6b5a4d3-x2x9z")
	confirm(t, reborn, waiter, l, "worker-7c6b5a4d3-x2x9z")
}

func testOneClaim(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	holder := s.Join(t, "worker-aaaaaaaaa-00000")
	l := handOver(t, holder, acquire(t, holder))
	clock.Add(time.Second)
	var racers []Fleet
	for i := range 8 {
		racers = append(racers, s.Join(t, fmt.Sprintf("worker-bbbbbbbbb-%05d", i)))
	}
	var mu sync.Mutex
	var claims []heartbeat.Lease
	var wg sync.WaitGroup
	for _, f := range racers {
		wg.Go(func() {
			got, ok, err := f.Held(ctx)
			if err != nil {
				t.Errorf("held: %v", err)
				return
			}
			if ok {
				mu.Lock()
				claims = append(claims, got)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(claims) != 1 || claims[0].Token != l.Token {
		t.Fatalf("claims %+v; want exactly one of lease %d", claims, l.Token)
	}
	// The holder's own lookup still shows its lease, successor and all.
	if got, ok := held(t, holder); !ok || got.Successor != claims[0].Successor {
		t.Fatalf("holder sees %+v, %v", got, ok)
	}
}

func testBootAllowance(t *testing.T, setup Setup) {
	t.Run("nobody claims", func(t *testing.T) {
		clock := testutil.NewClock()
		s := newStore(t, setup, 1, clock)
		holder, waiter := s.Join(t, "worker-aaaaaaaaa-00000"), s.Join(t, "worker-aaaaaaaaa-11111")
		l := handOver(t, holder, acquire(t, holder))
		// The holder waits for its TERM, renewing, for longer than the allowance.
		for range 10 {
			clock.Add(bootAllowance / 8)
			if err := holder.Renew(ctx, l); err != nil {
				t.Fatal(err)
			}
			noSlot(t, waiter, "the holder is still there")
		}
		// The holder is gone; the successor never comes.
		clock.Add(presenceTTL / 2)
		noSlot(t, waiter, "the holder renewed recently")
		clock.Add(presenceTTL)
		got := acquire(t, waiter)
		if got.Token <= l.Token {
			t.Fatalf("token %d after %d", got.Token, l.Token)
		}
		notHolder(t, "the gone holder's renewal", holder.Renew(ctx, l))
	})
	t.Run("holder gone at once", func(t *testing.T) {
		clock := testutil.NewClock()
		s := newStore(t, setup, 1, clock)
		holder, waiter := s.Join(t, "worker.1"), s.Join(t, "worker.2")
		handOver(t, holder, acquire(t, holder))
		clock.Add(bootAllowance - time.Second)
		noSlot(t, waiter, "within the boot allowance")
		clock.Add(time.Second)
		acquire(t, waiter)
	})
	t.Run("successor booting slowly keeps it", func(t *testing.T) {
		clock := testutil.NewClock()
		s := newStore(t, setup, 1, clock)
		holder, waiter := s.Join(t, "worker.1"), s.Join(t, "worker.2")
		l := handOver(t, holder, acquire(t, holder))
		clock.Add(time.Second)
		reborn := s.Join(t, "worker.1")
		got, ok := held(t, reborn)
		if !ok || got.Token != l.Token {
			t.Fatalf("reborn: %+v, %v", got, ok)
		}
		// Booting for longer than the boot allowance.
		for range 2 * bootAllowance / presenceTTL {
			clock.Add(presenceTTL / 2)
			if err := reborn.Renew(ctx, got); err != nil {
				t.Fatal(err)
			}
			noSlot(t, waiter, "the successor is booting")
		}
		// The successor dies too: freed once it has been silent for a
		// presence TTL, past the boot allowance.
		clock.Add(presenceTTL / 2)
		noSlot(t, waiter, "the successor renewed recently")
		clock.Add(presenceTTL)
		acquire(t, waiter)
	})
	t.Run("never without a hand-over", func(t *testing.T) {
		clock := testutil.NewClock()
		s := newStore(t, setup, 1, clock)
		holder, waiter := s.Join(t, "worker.1"), s.Join(t, "worker.2")
		acquire(t, holder)
		clock.Add(2 * bootAllowance)
		noSlot(t, waiter, "a lease not handed over lasts its TTL")
	})
}

// testFairQueue: ten dynos ask one after another while the only slot is
// taken; each release goes to the one that asked first, whoever calls first.
func testFairQueue(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	first := s.Join(t, "worker.0")
	l := acquire(t, first)
	var want []string
	waiters := map[string]Fleet{}
	for i := range 10 {
		name := fmt.Sprintf("worker.%d", 10-i) // asking order differs from name order
		f := s.Join(t, name)
		clock.Add(10 * time.Millisecond)
		noSlot(t, f, name+" asks")
		want = append(want, name)
		waiters[name] = f
	}
	if err := first.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(waiters) > 0 {
		clock.Add(time.Second)
		// Everyone still waiting calls, the latest askers first.
		names := make([]string, 0, len(waiters))
		for n := range waiters {
			names = append(names, n)
		}
		slices.SortFunc(names, func(a, b string) int { return slices.Index(want, b) - slices.Index(want, a) })
		var won heartbeat.Lease
		winner := ""
		for _, n := range names {
			publish(t, waiters[n], heartbeat.StateWanting)
			lease, err := waiters[n].Acquire(ctx)
			switch {
			case err == nil && winner != "":
				t.Fatalf("%s and %s both granted", winner, n)
			case err == nil:
				winner, won = n, lease
			case !errors.Is(err, heartbeat.ErrNoSlot):
				t.Fatalf("%s: %v", n, err)
			}
		}
		if winner == "" {
			t.Fatalf("nobody granted; waiting %v", names)
		}
		got = append(got, winner)
		publish(t, waiters[winner], heartbeat.StateRestarting)
		if err := waiters[winner].Release(ctx, won); err != nil {
			t.Fatal(err)
		}
		delete(waiters, winner)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("grant order %v, want the asking order %v", got, want)
	}
}

func testQueueLeavers(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	holder := s.Join(t, "worker.1")
	l := acquire(t, holder)
	dies, changesMind, last := s.Join(t, "worker.2"), s.Join(t, "worker.3"), s.Join(t, "worker.4")
	for _, f := range []Fleet{dies, changesMind, last} {
		clock.Add(time.Millisecond)
		noSlot(t, f, "waiting")
	}
	publish(t, changesMind, heartbeat.StateWatching) // memory went down
	clock.Add(presenceTTL + time.Second)             // worker.2's agent died
	for _, f := range []Fleet{holder, changesMind, last} {
		publish(t, f, heartbeat.StateWatching)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	acquire(t, last)
}

// testDataLoss loses the store's data at each step of a restart. Whoever
// holds the lease at that step renews it as the agent does, restoring it;
// a waiter gets no slot until the restart is over, even once the settle
// pause has passed; then the waiter is served.
func testDataLoss(t *testing.T, setup Setup) {
	type step struct {
		name string
		// run brings the restart to its step and returns the renewer (nil
		// for the gap between the holder's exit and the successor's claim)
		// and what ends the restart.
		run func(t *testing.T, s Store, clock *testutil.Clock, holder Fleet, l heartbeat.Lease) (renew func() error, finish func())
	}
	holderRenews := func(holder Fleet, l heartbeat.Lease) func() error {
		return func() error { return holder.Renew(ctx, l) }
	}
	released := func(t *testing.T, f Fleet, l heartbeat.Lease) func() {
		return func() {
			if err := f.Release(ctx, l); err != nil {
				t.Fatalf("release: %v", err)
			}
		}
	}
	inPlace := func(state heartbeat.State) func(t *testing.T, s Store, clock *testutil.Clock, holder Fleet, l heartbeat.Lease) (func() error, func()) {
		return func(t *testing.T, s Store, clock *testutil.Clock, holder Fleet, l heartbeat.Lease) (func() error, func()) {
			publish(t, holder, state)
			return holderRenews(holder, l), released(t, holder, l)
		}
	}
	steps := []step{
		{"leased", inPlace(heartbeat.StateLeased)},
		{"quieting", inPlace(heartbeat.StateQuieting)},
		{"draining", inPlace(heartbeat.StateDraining)},
		{"restarting in place", inPlace(heartbeat.StateRestarting)},
		{"awaiting the platform's TERM", func(t *testing.T, s Store, clock *testutil.Clock, holder Fleet, l heartbeat.Lease) (func() error, func()) {
			h := handOver(t, holder, l)
			return holderRenews(holder, h), func() {
				clock.Add(time.Second)
				reborn := s.Join(t, "worker.1")
				got, ok := held(t, reborn)
				if !ok || got.Token != l.Token {
					t.Fatalf("reborn after the loss: %+v, %v; want the restored lease", got, ok)
				}
				released(t, reborn, got)()
			}
		}},
		{"successor booting", func(t *testing.T, s Store, clock *testutil.Clock, holder Fleet, l heartbeat.Lease) (func() error, func()) {
			handOver(t, holder, l)
			clock.Add(time.Second)
			reborn := s.Join(t, "worker.1")
			got, ok := held(t, reborn)
			if !ok {
				t.Fatal("no claim")
			}
			return func() error { return reborn.Renew(ctx, got) }, released(t, reborn, got)
		}},
		{"holder and successor both renewing", func(t *testing.T, s Store, clock *testutil.Clock, holder Fleet, l heartbeat.Lease) (func() error, func()) {
			h := handOver(t, holder, l)
			clock.Add(time.Second)
			reborn := s.Join(t, "worker.1")
			got, ok := held(t, reborn)
			if !ok {
				t.Fatal("no claim")
			}
			// The old agent, still stopping, restores first, not knowing
			// its successor; the successor's renewal records it again.
			return func() error {
					if err := holder.Renew(ctx, h); err != nil {
						return err
					}
					return reborn.Renew(ctx, got)
				}, func() {
					if err := holder.Renew(ctx, h); err != nil {
						t.Fatalf("holder renews after the successor: %v", err)
					}
					released(t, reborn, got)()
				}
		}},
		{"between the holder's exit and the successor's claim", func(t *testing.T, s Store, clock *testutil.Clock, holder Fleet, l heartbeat.Lease) (func() error, func()) {
			handOver(t, holder, l)
			return nil, nil
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			clock := testutil.NewClock()
			s := setup.New(t, Options{Slots: 1, BootAllowance: bootAllowance, PresenceTTL: presenceTTL, Now: clock.Now})
			holder, waiter := s.Join(t, "worker.1"), s.Join(t, "worker.2")
			publish(t, holder, heartbeat.StateWanting)
			clock.Add(bootAllowance + time.Second) // a fresh store settles first
			l := acquire(t, holder)
			renew, finish := st.run(t, s, clock, holder, l)
			setup.Lose(t, s)
			for range 2 {
				clock.Add(bootAllowance / 2)
				if renew != nil {
					if err := renew(); err != nil {
						t.Fatalf("renewal after the loss: %v", err)
					}
				}
				noSlot(t, waiter, "a restart is under way")
			}
			if finish == nil {
				// Nobody knew the lease: the settle pause covered it, and a
				// successor that never came would be given up by now.
				clock.Add(bootAllowance)
				acquire(t, waiter)
				return
			}
			// Past the settle pause the restored lease alone holds the slot.
			clock.Add(bootAllowance)
			if err := renew(); err != nil {
				t.Fatalf("renewal after the settle pause: %v", err)
			}
			noSlot(t, waiter, "the restored lease is still in use")
			finish()
			acquire(t, waiter)
		})
	}
}

// testSilenceAcrossARestart: a holder whose renewals could not reach the
// store while its server restarted is not taken for dead. Its hand-over is
// freed once it has been silent for the presence TTL on the server now
// running: at once if it renewed there since, else once that server has
// been up for the presence TTL.
func testSilenceAcrossARestart(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	holder, waiter := s.Join(t, "worker.1"), s.Join(t, "worker.2")
	restart := func() time.Time {
		t.Helper()
		up := setup.Restart(t, s)
		testutil.Eventually(t, 30*time.Second, "the store answers again", func() bool {
			_, _, err := holder.Held(ctx)
			return err == nil && waiter.Publish(ctx, heartbeat.Presence{State: heartbeat.StateWanting}) == nil
		})
		return up
	}

	// The holder renews on the new server: its later silence counts at once.
	l := handOver(t, holder, acquire(t, holder))
	restart()
	clock.Add(bootAllowance + presenceTTL + time.Second)
	noSlot(t, waiter, "the holder was silent across the restart")
	if err := holder.Renew(ctx, l); err != nil {
		t.Fatal(err)
	}
	clock.Add(presenceTTL + time.Second)
	if err := waiter.Release(ctx, acquire(t, waiter)); err != nil {
		t.Fatal(err)
	}

	// The holder never comes back: freed once the server has been up for
	// the presence TTL.
	handOver(t, holder, acquire(t, holder))
	upAt := restart()
	clock.Add(bootAllowance + presenceTTL + time.Second)
	noSlot(t, waiter, "the holder was silent across the restart")
	testutil.Eventually(t, presenceTTL+15*time.Second, "the hand-over is freed", func() bool {
		_, err := waiter.Acquire(ctx)
		return err == nil
	})
	if up := time.Since(upAt); up < presenceTTL {
		t.Fatalf("freed %v after the restart, want at least %v", up, presenceTTL)
	}
}

// testTakeBack: a hand-over the platform refused is taken back, and the
// holder restarts in place. On Fir any new dyno of the type may claim a
// handed-over lease: after the take-back none does, and a successor that
// claimed before it loses the lease instead of releasing it under the
// holder's restart.
func testTakeBack(t *testing.T, setup Setup) {
	clock := testutil.NewClock()
	s := newStore(t, setup, 1, clock)
	holder, waiter := s.Join(t, "worker-aaaaaaaaa-00000"), s.Join(t, "worker-aaaaaaaaa-11111")

	l := handOver(t, holder, acquire(t, holder))
	back, err := holder.TakeBack(ctx, l)
	if err != nil {
		t.Fatalf("take back: %v", err)
	}
	if !back.RestartAt.IsZero() || back.Successor != "" || back.Token != l.Token {
		t.Fatalf("taken back %+v from %+v", back, l)
	}
	notHolder(t, "another dyno takes it back", func() error { _, err := waiter.TakeBack(ctx, back); return err }())
	clock.Add(time.Second)
	if got, ok := held(t, s.Join(t, "worker-bbbbbbbbb-22222")); ok {
		t.Fatalf("a new dyno claimed a lease taken back: %+v", got)
	}
	// Not a hand-over any more: kept for as long as its holder renews.
	for range 2 * bootAllowance / presenceTTL {
		clock.Add(presenceTTL / 2)
		if err := holder.Renew(ctx, back); err != nil {
			t.Fatal(err)
		}
		noSlot(t, waiter, "the holder restarts in place")
	}
	if err := holder.Release(ctx, back); err != nil {
		t.Fatalf("release: %v", err)
	}

	// A successor claimed before the take-back loses the lease.
	publish(t, waiter, heartbeat.StateWatching) // out of the queue
	l = handOver(t, holder, acquire(t, holder))
	clock.Add(time.Second)
	successor := s.Join(t, "worker-ccccccccc-33333")
	claimed, ok := held(t, successor)
	if !ok || claimed.Token != l.Token {
		t.Fatalf("successor: %+v, %v", claimed, ok)
	}
	if back, err = holder.TakeBack(ctx, l); err != nil {
		t.Fatalf("take back: %v", err)
	}
	notHolder(t, "the dropped successor's renewal", successor.Renew(ctx, claimed))
	notHolder(t, "the dropped successor's release", successor.Release(ctx, claimed))
	if got, ok := held(t, holder); !ok || got.Successor != "" || !got.RestartAt.IsZero() {
		t.Fatalf("holder sees %+v, %v", got, ok)
	}
	noSlot(t, waiter, "the holder restarts in place")
	if err := holder.Release(ctx, back); err != nil {
		t.Fatalf("release: %v", err)
	}
}
