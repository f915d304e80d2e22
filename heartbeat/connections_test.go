package heartbeat_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
	"github.com/dynocycle/dynocycle/sidekiq"
)

// conns counts the connections named name in the server's CLIENT LIST.
func conns(t *testing.T, probe *redis.Client, name string) int {
	t.Helper()
	list, err := probe.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatalf("client list: %v", err)
	}
	n := 0
	for line := range strings.SplitSeq(list, "\n") {
		for field := range strings.FieldsSeq(line) {
			if field == "name="+name {
				n++
			}
		}
	}
	return n
}

// agentOnRedis is what the command wires for one dyno: one client shared by
// the fleet, its freed-slot subscriber and the Sidekiq reader.
type agentOnRedis struct {
	fleet  *heartbeat.Redis
	reader *sidekiq.Reader
	name   string
}

func startAgentOnRedis(t *testing.T, srv *testredis.Server, dyno string) *agentOnRedis {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	c, err := heartbeat.Connect(context.Background(), heartbeat.ConnectOptions{URL: srv.URL(), Dyno: dyno, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	f := heartbeat.NewRedis(c, heartbeat.RedisOptions{App: "connapp", Dyno: dyno, Settle: -1, Logger: log})
	testutil.Loop(t, f.Run)
	return &agentOnRedis{fleet: f, reader: &sidekiq.Reader{Client: c, Logger: log}, name: "dynocycle:" + dyno}
}

// busy makes the calls an agent makes, from as many goroutines as the agent
// runs (check loop, lease keeper, Sidekiq reader, drain), all at once.
func (a *agentOnRedis) busy(t *testing.T, state heartbeat.State) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 25 {
				if err := a.fleet.Publish(ctx, heartbeat.Presence{State: state}); err != nil {
					t.Error(err)
					return
				}
				if _, _, err := a.fleet.Held(ctx); err != nil {
					t.Error(err)
					return
				}
				if _, err := a.reader.Processes(ctx); err != nil {
					t.Error(err)
					return
				}
				if _, err := a.reader.Stats(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// An agent that only watches holds one connection, however its goroutines
// overlap; one that waits for a slot holds two (the subscription), and goes
// back to one once served or no longer wanting.
func TestConnectionsPerAgent(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	probe := redis.NewClient(&redis.Options{Addr: srv.Addr(), ClientName: "probe", PoolSize: 1})
	t.Cleanup(func() { _ = probe.Close() })

	watcher := startAgentOnRedis(t, srv, "worker.1")
	waiter := startAgentOnRedis(t, srv, "worker.2")
	holder := startAgentOnRedis(t, srv, "worker.3")

	watcher.busy(t, heartbeat.StateWatching)
	holder.busy(t, heartbeat.StateWatching)
	for _, a := range []*agentOnRedis{watcher, holder} {
		if n := conns(t, probe, a.name); n != 1 {
			l, _ := probe.ClientList(ctx).Result()
			t.Fatalf("%s watching holds %d connections, want 1\n%s", a.name, n, l)
		}
	}

	lease, err := holder.fleet.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := waiter.fleet.Publish(ctx, heartbeat.Presence{State: heartbeat.StateWanting}); err != nil {
		t.Fatal(err)
	}
	if _, err := waiter.fleet.Acquire(ctx); !errors.Is(err, heartbeat.ErrNoSlot) {
		t.Fatalf("waiter acquire: %v, want ErrNoSlot", err)
	}
	// The subscription is what tells it of the release: wait until it is up.
	select {
	case <-waiter.fleet.SlotFreed():
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not subscribe")
	}
	waiter.busy(t, heartbeat.StateWanting)
	if n := conns(t, probe, waiter.name); n != 2 {
		t.Fatalf("waiter holds %d connections, want 2 (pool and subscription)", n)
	}
	if n := conns(t, probe, holder.name); n != 1 {
		t.Fatalf("holder holds %d connections, want 1", n)
	}

	if err := holder.fleet.Release(ctx, lease); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waiter.fleet.SlotFreed():
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not told of the release")
	}
	got, err := waiter.fleet.Acquire(ctx)
	if err != nil {
		t.Fatalf("waiter acquire after release: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, "the served waiter back to one connection", func() bool {
		return conns(t, probe, waiter.name) == 1
	})
	if err := waiter.fleet.Release(ctx, got); err != nil {
		t.Fatal(err)
	}

	// A dyno that stops wanting before it is served leaves the queue and
	// drops its subscription.
	lease, err = holder.fleet.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watcher.fleet.Acquire(ctx); !errors.Is(err, heartbeat.ErrNoSlot) {
		t.Fatalf("watcher acquire: %v, want ErrNoSlot", err)
	}
	testutil.Eventually(t, 10*time.Second, "the waiting dyno subscribed", func() bool {
		return conns(t, probe, watcher.name) == 2
	})
	if err := watcher.fleet.Publish(ctx, heartbeat.Presence{State: heartbeat.StateWatching}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the dyno that stopped wanting back to one connection", func() bool {
		return conns(t, probe, watcher.name) == 1
	})
	if err := holder.fleet.Release(ctx, lease); err != nil {
		t.Fatal(err)
	}
}
