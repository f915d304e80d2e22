package sidekiq

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/dynocycle/dynocycle/internal/bytesize"
)

// Status is the Sidekiq side of `dynocycle status --json`.
type Status struct {
	Processes []Process `json:"processes"`
	Stats     Stats     `json:"stats"`
}

// WriteStatus writes the Sidekiq side of `dynocycle status` as a table:
// processes, queue sizes, the scheduled/retry/dead sets and Redis memory.
func WriteStatus(w io.Writer, procs []Process, stats Stats) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SIDEKIQ PROCESS\tBUSY\tSTATE\tRSS\tQUEUES\tRUNNING")
	if len(procs) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t\t")
	}
	for _, p := range procs {
		state := "running"
		if p.Quiet {
			state = "quiet"
		}
		var running []string
		for _, wk := range p.Work {
			running = append(running, wk.Class)
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\t%s\n", p.ID, p.Busy, p.Concurrency, state,
			bytesize.Human(uint64(max(p.RSSKiB, 0))*1024), strings.Join(p.Queues, ","), strings.Join(running, ","))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "QUEUE\tSIZE")
	for _, q := range stats.Queues {
		fmt.Fprintf(tw, "%s\t%d\n", q.Name, q.Size)
	}
	fmt.Fprintf(tw, "(enqueued)\t%d\n", stats.Enqueued)
	fmt.Fprintf(tw, "(scheduled)\t%d\n", stats.Scheduled)
	fmt.Fprintf(tw, "(retry)\t%d\n", stats.Retry)
	fmt.Fprintf(tw, "(dead)\t%d\n", stats.Dead)
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write sidekiq status: %w", err)
	}
	m := stats.Redis
	limit := "no maxmemory"
	if m.MaxBytes > 0 {
		limit = fmt.Sprintf("of %s (%.0f%%)", bytesize.Human(uint64(max(m.MaxBytes, 0))), 100*float64(m.UsedBytes)/float64(m.MaxBytes))
	}
	if _, err := fmt.Fprintf(w, "\nredis memory: %s used %s, policy %s\n", bytesize.Human(uint64(max(m.UsedBytes, 0))), limit, m.Policy); err != nil {
		return fmt.Errorf("write sidekiq status: %w", err)
	}
	if m.Warning != "" {
		if _, err := fmt.Fprintf(w, "WARNING: %s\n", m.Warning); err != nil {
			return fmt.Errorf("write sidekiq status: %w", err)
		}
	}
	return nil
}
