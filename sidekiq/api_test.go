package sidekiq_test

import (
	"context"
	"log/slog"
	"os"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/sidekiq"
	"github.com/redis/go-redis/v9"
)

// How the agent wires a Worker: the Redis the app uses, the child's process
// tree, and the signals worker as the fallback for a child that is not
// Sidekiq.
func ExampleWorker() {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "sidekiq")
	opts, _ := redis.ParseURL(os.Getenv("REDIS_URL"))
	childTree := func() []int { return []int{os.Getpid()} } // e.g. meter.Tree(child.Pid())
	var signals agent.Quieter                               // e.g. &worker.Signals{...}

	w := &sidekiq.Worker{
		Reader:   &sidekiq.Reader{Client: redis.NewClient(opts), Logger: log},
		Hostname: sidekiq.DefaultHostname(),
		PIDs:     childTree,
		Fallback: signals,
		Logger:   log,
	}
	go w.Run(ctx) // feeds JobEnded and Attribute

	// Later, on a restart: quiet, then drain within GRACE_TIME.
	_ = w.Quiet(ctx)
	_ = w.Drain(ctx)
}
