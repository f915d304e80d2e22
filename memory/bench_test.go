package memory

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkSample measures one memory sample of a live process tree, the
// work dynocycle does after every job and on every check. Each run checks,
// before and after its loop, that the tree is still n live processes and
// that the sample counts them: a benchmark of a process that has exited
// measures nothing.
func BenchmarkSample(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("procs=%d", n), func(b *testing.B) {
			cmd := startTree(b, n)
			m, err := New(Tree, "/proc", "/sys/fs/cgroup", fixedPID(cmd.Process.Pid))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			live := func() {
				b.Helper()
				if err := requireLiveTree(cmd.Process.Pid, n); err != nil {
					b.Fatal(err)
				}
				if pids, _ := m.Tree(cmd.Process.Pid); len(pids) != n {
					b.Fatalf("the meter knows %d processes, want %d", len(pids), n)
				}
				// Each live sleep has a few hundred KB resident.
				if got, err := m.Sample(ctx); err != nil || got < uint64(n)*64*1024 {
					b.Fatalf("sample of %d live processes: %d bytes, %v", n, got, err)
				}
			}
			b.Run("known-tree", func(b *testing.B) { // between tree walks: after each job
				live()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := m.Sample(ctx); err != nil {
						b.Fatal(err)
					}
				}
				live()
			})
			b.Run("walk-tree", func(b *testing.B) { // a scheduled check that re-walks the tree
				live()
				m.TreeRefresh = 0
				defer func() { m.TreeRefresh = DefaultTreeRefresh }()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := m.Sample(ctx); err != nil {
						b.Fatal(err)
					}
				}
				live()
			})
		})
	}
}

// BenchmarkPS is what in-process memory killers do: shell out to
// `ps -o rss= -p PID` for the worker's own pid (one live process, not a
// tree). Every call must report a resident size: ps of an exited process
// prints nothing, or a zombie's 0.
func BenchmarkPS(b *testing.B) {
	cmd := startTree(b, 1)
	pid := strconv.Itoa(cmd.Process.Pid)
	for b.Loop() {
		out, err := exec.Command("ps", "-o", "rss=", "-p", pid).Output()
		if err != nil {
			b.Fatal(err)
		}
		if kb, err := strconv.Atoi(strings.TrimSpace(string(out))); err != nil || kb <= 0 {
			b.Fatalf("ps of the live process printed %q", out)
		}
	}
	if err := requireLiveTree(cmd.Process.Pid, 1); err != nil {
		b.Fatal(err)
	}
}
