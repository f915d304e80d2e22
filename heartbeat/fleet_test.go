package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
)

// interval is one recorded restart: from just after Acquire returned to
// just before Release was called, so it lies inside the real lease.
type interval struct {
	dyno       string
	token      int64
	start, end time.Time
}

// TestFleetRestartsAtMostK runs 20 agents, all over their limit at once,
// against one real redis-server, and checks from the recorded intervals that
// no more than K ever restart together, that everyone restarts, and that
// nobody starves.
func TestFleetRestartsAtMostK(t *testing.T) {
	for _, tc := range []struct {
		name  string
		slots int
		peers int
		// limit is the most restarts at once the rules allow.
		limit int
	}{
		{name: "K=1", slots: 1, limit: 1},
		{name: "K=3", slots: 3, limit: 3},
		// Each of 20 needs 18 other healthy workers: one holder leaves the
		// next exactly 18, a second holder would leave 17, so at most two
		// restart together though three slots are free.
		{name: "K=3 min healthy peers 18", slots: 3, peers: 18, limit: 2},
		{name: "K=3 min healthy peers 1", slots: 3, peers: 1, limit: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testredis.Start(t)
			got := runFleet(t, srv, 20, tc.slots, tc.peers)
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

func runFleet(t *testing.T, srv *testredis.Server, n, slots, peers int) []interval {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fleets := make([]*Redis, n)
	for i := range fleets {
		fleets[i] = newFleet(t, srv, RedisOptions{
			Dyno: fmt.Sprintf("worker.%d", i+1), Slots: slots, MinHealthyPeers: peers,
			Settle: -1, LeaseTTL: 30 * time.Second,
		})
		subscribe(t, fleets[i])
		// Everyone is up before anyone decides, as in a running formation.
		if err := fleets[i].Publish(ctx, Presence{State: StateWanting}); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	var got []interval
	var wg sync.WaitGroup
	for _, f := range fleets {
		wg.Go(func() {
			iv, err := restartOnce(ctx, f)
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

// restartOnce is an agent over its limit: it waits for a slot, holds it for
// a short random time while renewing, and releases it.
func restartOnce(ctx context.Context, f *Redis) (interval, error) {
	freed := f.SlotFreed()
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
		iv := interval{dyno: f.dyno, token: l.Token, start: time.Now()}
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
		// Back from the restart: healthy again, then confirm.
		if err := f.Publish(ctx, Presence{State: StateWatching}); err != nil {
			return interval{}, err
		}
		if err := f.Release(ctx, l); err != nil {
			return interval{}, fmt.Errorf("release: %w", err)
		}
		return iv, nil
	}
}

// maxOverlap is the largest number of intervals open at one instant.
func maxOverlap(ivs []interval) int {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, iv := range ivs {
		edges = append(edges, edge{iv.start, +1}, edge{iv.end, -1})
	}
	// Ends sort before starts at the same instant: touching is not overlapping.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta
	})
	open, most := 0, 0
	for _, e := range edges {
		open += e.delta
		most = max(most, open)
	}
	return most
}

func TestMaxOverlap(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ivs := []interval{
		{start: at(0), end: at(10)},
		{start: at(10), end: at(20)}, // touches the first
		{start: at(5), end: at(15)},
		{start: at(12), end: at(13)},
	}
	if got := maxOverlap(ivs); got != 3 {
		t.Fatalf("maxOverlap = %d, want 3", got)
	}
}
