package sidekiq

import (
	"fmt"
	"io"
	"strings"

	"github.com/dynocycle/dynocycle/internal/bytesize"
	"github.com/dynocycle/dynocycle/internal/termtext"
)

// Status is the Sidekiq side of `dynocycle status --json`.
type Status struct {
	Processes []Process `json:"processes"`
	Stats     Stats     `json:"stats"`
}

// WriteStatus writes the Sidekiq side of `dynocycle status` the way
// `heroku ps` writes dynos: processes, queue sizes, the scheduled/retry/dead
// sets and Redis memory. Every value read from Redis is cut and escaped
// (termtext.Cell): one record must not flood the terminal.
func WriteStatus(w io.Writer, procs []Process, stats Stats) error {
	var b strings.Builder
	busy, threads := 0, 0
	for _, p := range procs {
		busy += p.Busy
		threads += p.Concurrency
	}
	fmt.Fprintf(&b, "=== sidekiq: %d processes, %d of %d threads busy\n", len(procs), busy, threads)
	for _, p := range procs {
		state := "running"
		if p.Quiet {
			state = "quiet"
		}
		fmt.Fprintf(&b, "%s: %s, %d/%d busy, %s", cell(p.ID), state, p.Busy, p.Concurrency, bytesize.Human(uint64(max(p.RSSKiB*1024, 0))))
		if len(p.Queues) > 0 {
			fmt.Fprintf(&b, ", queues %s", cell(strings.Join(p.Queues, ",")))
		}
		if len(p.Work) > 0 {
			running := make([]string, len(p.Work))
			for i, wk := range p.Work {
				running[i] = wk.Class
			}
			fmt.Fprintf(&b, ", running %s", cell(strings.Join(running, ",")))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n=== queues: %d enqueued, %d scheduled, %d retry, %d dead\n", stats.Enqueued, stats.Scheduled, stats.Retry, stats.Dead)
	for _, q := range stats.Queues {
		fmt.Fprintf(&b, "%s: %d\n", cell(q.Name), q.Size)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write sidekiq status: %w", err)
	}
	m := stats.Redis
	limit := "no maxmemory"
	if m.MaxBytes > 0 {
		limit = fmt.Sprintf("of %s (%.0f%%)", bytesize.Human(uint64(max(m.MaxBytes, 0))), 100*float64(m.UsedBytes)/float64(m.MaxBytes))
	}
	if _, err := fmt.Fprintf(w, "\nredis memory: %s used %s, policy %s\n", bytesize.Human(uint64(max(m.UsedBytes, 0))), limit, cell(m.Policy)); err != nil {
		return fmt.Errorf("write sidekiq status: %w", err)
	}
	if m.Warning != "" {
		if _, err := fmt.Fprintf(w, "WARNING: %s\n", m.Warning); err != nil {
			return fmt.Errorf("write sidekiq status: %w", err)
		}
	}
	return nil
}

func cell(s string) string { return termtext.Cell(s, termtext.MaxCell) }
