// Command pgworker is a demo worker of a Postgres-backed job queue that stops
// the way Solid Queue's supervisor and GoodJob do: it has no quiet signal;
// on SIGTERM or SIGINT it takes no more jobs, gives the job in flight
// SHUTDOWN_TIMEOUT_MS to finish, hands it back to the queue if it has not,
// and exits 0. Like the bloater, every job keeps a few megabytes it never
// frees, so dynocycle has a reason to restart it.
//
// It is the Postgres-backed worker of the end-to-end tests: Debian packages
// neither Solid Queue nor GoodJob, so the tests cannot run them. The queue is
// the table jobs of the database at DATABASE_URL (see CreateTable in the
// e2e tests): a job is claimed with FOR UPDATE SKIP LOCKED, finished by
// setting done_at, and handed back by clearing claimed_by.
//
// Settings: DATABASE_URL; BLOAT_MB per job (default 2); SHUTDOWN_TIMEOUT_MS
// (default 1000); WORKER_NAME (default the DYNO and pid).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pgworker:", err)
		os.Exit(1)
	}
}

func run() error {
	mbPerJob := envInt("BLOAT_MB", 2)
	shutdownTimeout := time.Duration(envInt("SHUTDOWN_TIMEOUT_MS", 1000)) * time.Millisecond
	name := os.Getenv("WORKER_NAME")
	if name == "" {
		name = fmt.Sprintf("%s/%d", os.Getenv("DYNO"), os.Getpid())
	}
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	fmt.Printf("pgworker %s: started, %dMB per job\n", name, mbPerJob)

	var kept [][]byte
	for stop.Err() == nil {
		var id int64
		var ms int
		err := conn.QueryRow(ctx, `UPDATE jobs SET claimed_by = $1, attempts = attempts + 1
			WHERE id = (SELECT id FROM jobs WHERE claimed_by IS NULL AND done_at IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
			RETURNING id, ms`, name).Scan(&id, &ms)
		if errors.Is(err, pgx.ErrNoRows) {
			select {
			case <-stop.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("claim: %w", err)
		}
		chunk := make([]byte, mbPerJob<<20)
		for i := range chunk { // touch every page so it counts as resident
			chunk[i] = byte(i)
		}
		kept = append(kept, chunk)

		finished := time.After(time.Duration(ms) * time.Millisecond)
		select {
		case <-finished:
		case <-stop.Done():
			fmt.Printf("pgworker %s: stopping, job %d has %v to finish\n", name, id, shutdownTimeout)
			select {
			case <-finished:
			case <-time.After(shutdownTimeout):
				if _, err := conn.Exec(ctx, `UPDATE jobs SET claimed_by = NULL, handed_back = handed_back + 1
					WHERE id = $1 AND claimed_by = $2`, id, name); err != nil {
					return fmt.Errorf("hand back job %d: %w", id, err)
				}
				fmt.Printf("pgworker %s: job %d handed back to the queue\n", name, id)
				continue
			}
		}
		if _, err := conn.Exec(ctx, `UPDATE jobs SET done_at = clock_timestamp(), done_by = $2, runs = runs + 1
			WHERE id = $1 AND claimed_by = $2`, id, name); err != nil {
			return fmt.Errorf("finish job %d: %w", id, err)
		}
		fmt.Printf("pgworker %s: job %d done, holding %dMB\n", name, id, len(kept)*mbPerJob)
	}
	fmt.Printf("pgworker %s: exiting\n", name)
	return nil
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}
