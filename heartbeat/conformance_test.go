package heartbeat_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/heartbeat"
	"github.com/dynocycle/dynocycle/internal/fleettest"
	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// redisStore is one app's fleet on a private redis-server; every member
// is an agent process with its own client.
type redisStore struct {
	srv  *testredis.Server
	app  string
	opts fleettest.Options
}

func (s *redisStore) Join(t *testing.T, dyno string) fleettest.Fleet {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.srv.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	f := heartbeat.NewRedis(c, heartbeat.RedisOptions{
		App: s.app, Dyno: dyno, Slots: s.opts.Slots, LeaseTTL: 10 * time.Minute,
		PresenceTTL: s.opts.PresenceTTL, BootAllowance: s.opts.BootAllowance, Settle: s.opts.Settle,
		Now: s.opts.Now, Logger: slog.New(slog.DiscardHandler),
	})
	// The freed-slot subscriber runs beside each member, as the command
	// runs it beside the agent.
	testutil.Loop(t, f.Run)
	return f
}

func TestRedisFleetConformance(t *testing.T) {
	fleettest.Run(t, fleettest.Setup{
		New: func(t *testing.T, opts fleettest.Options) fleettest.Store {
			return &redisStore{srv: testredis.Start(t), app: "shop", opts: opts}
		},
		Lose: func(t *testing.T, s fleettest.Store) {
			c := redis.NewClient(&redis.Options{Addr: s.(*redisStore).srv.Addr()})
			defer c.Close()
			if err := c.FlushAll(context.Background()).Err(); err != nil {
				t.Fatalf("flushall: %v", err)
			}
		},
		Restart: func(t *testing.T, s fleettest.Store) time.Time {
			srv := s.(*redisStore).srv
			c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			defer c.Close()
			// The test server keeps nothing on disk by itself.
			if err := c.Save(context.Background()).Err(); err != nil {
				t.Fatalf("save: %v", err)
			}
			up := time.Now()
			srv.Restart()
			return up
		},
	})
}

// localStore is an in-process fleet; members join its first one.
type localStore struct {
	first *heartbeat.Local
	opts  fleettest.Options
}

func (s *localStore) Join(t *testing.T, dyno string) fleettest.Fleet {
	if s.first == nil {
		s.first = heartbeat.NewLocal(dyno, s.opts.Slots)
		s.first.SetClock(s.opts.Now)
		s.first.SetTimes(s.opts.BootAllowance, s.opts.PresenceTTL)
		return s.first
	}
	return s.first.Join(dyno)
}

func TestLocalFleetConformance(t *testing.T) {
	fleettest.Run(t, fleettest.Setup{
		New: func(t *testing.T, opts fleettest.Options) fleettest.Store { return &localStore{opts: opts} },
	})
}
