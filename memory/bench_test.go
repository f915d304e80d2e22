package memory

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
)

// BenchmarkSample measures one memory sample of a live process tree, the
// work dynocycle does after every job and on every check.
func BenchmarkSample(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("procs=%d", n), func(b *testing.B) {
			cmd := startTree(b, n)
			m, err := New(Tree, "/proc", "/sys/fs/cgroup", fixedPID(cmd.Process.Pid))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.Run("known-tree", func(b *testing.B) { // between tree walks: after each job
				b.ReportAllocs()
				for b.Loop() {
					if _, err := m.Sample(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("walk-tree", func(b *testing.B) { // a scheduled check that re-walks the tree
				m.TreeRefresh = 0
				defer func() { m.TreeRefresh = DefaultTreeRefresh }()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := m.Sample(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkPS is what in-process memory killers do: shell out to
// `ps -o rss= -p PID` for the worker's own pid (one process, not a tree).
func BenchmarkPS(b *testing.B) {
	cmd := startTree(b, 1)
	pid := strconv.Itoa(cmd.Process.Pid)
	for b.Loop() {
		if _, err := exec.Command("ps", "-o", "rss=", "-p", pid).Output(); err != nil {
			b.Fatal(err)
		}
	}
}
