package heartbeat

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// connect returns a client of srv built by Connect, closed when the test ends.
func connect(t testing.TB, srv *testredis.Server) *redis.Client {
	t.Helper()
	c, err := Connect(context.Background(), ConnectOptions{URL: srv.URL(), Logger: discardLogger()})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newFleet returns a fleet member on its own client; opts.Dyno must be set.
func newFleet(t testing.TB, srv *testredis.Server, opts RedisOptions) *Redis {
	t.Helper()
	if opts.App == "" {
		opts.App = "testapp"
	}
	if opts.Logger == nil {
		opts.Logger = discardLogger()
	}
	return NewRedis(connect(t, srv), opts)
}

// subscribe runs f's freed-slot subscriber until the test ends, as the
// command runs it beside the agent.
func subscribe(t testing.TB, f *Redis) {
	t.Helper()
	testutil.Loop(t, f.Run)
}

// waitSignal waits for one signal on ch.
func waitSignal(t testing.TB, ch <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(within):
		t.Fatalf("no signal after %s: %s", within, what)
	}
}

// countHook counts round trips: one per command or pipeline sent.
type countHook struct{ n atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}
