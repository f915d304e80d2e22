package memory

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const kb = 1024

func fixedPID(pid int) func() int { return func() int { return pid } }

func TestTreeFromFixtures(t *testing.T) {
	for _, root := range []string{"testdata/proc", "testdata/proc-nochildren"} {
		t.Run(root, func(t *testing.T) {
			m, err := New(Tree, root, "testdata/none", fixedPID(100))
			if err != nil {
				t.Fatal(err)
			}
			pids, err := m.Tree(100)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(pids)
			if want := []int{100, 101, 102, 103}; !slices.Equal(pids, want) {
				t.Errorf("tree = %v, want %v (the child of the second thread and the grandchild included, pid 200 not)", pids, want)
			}
			got, err := m.Sample(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// RSS + swap of 100 (200MB+10MB), 101 (100MB), 102 (50MB), 103 (10MB).
			if want := uint64(204800+10240+102400+51200+10240) * kb; got != want {
				t.Errorf("tree sample = %d, want %d", got, want)
			}
		})
	}
}

func TestPSSFromFixtures(t *testing.T) {
	m, err := New(PSS, "testdata/proc", "testdata/none", fixedPID(100))
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Half of each RSS (the fixtures' Pss) plus half of the swap (SwapPss).
	if want := uint64(102400+5120+51200+25600+5120) * kb; got != want {
		t.Errorf("pss sample = %d, want %d", got, want)
	}
}

func TestAllFromFixtures(t *testing.T) {
	m, err := New(All, "testdata/proc", "testdata/none", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(1000+204800+10240+102400+51200+10240+999999) * kb; got != want {
		t.Errorf("all sample = %d, want %d", got, want)
	}
}

func TestCgroupFromFixtures(t *testing.T) {
	for _, tc := range []struct {
		root         string
		usage, limit uint64
		limitFrom    string
	}{
		{"testdata/cgroup-v1", 367001600, 536870912, "cgroup"},
		{"testdata/cgroup-v2", 419430400, 1073741824, "cgroup"},
		{"testdata/cgroup-nolimit", 104857600, 16384000 * kb, "meminfo"}, // "max": fall back to MemTotal
	} {
		m, err := New(Cgroup, "testdata/proc", tc.root, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.root, err)
		}
		got, err := m.Sample(context.Background())
		if err != nil || got != tc.usage {
			t.Errorf("%s: usage %d, %v; want %d", tc.root, got, err, tc.usage)
		}
		if limit, from := m.Limit(); limit != tc.limit || from != tc.limitFrom {
			t.Errorf("%s: limit %d from %s; want %d from %s", tc.root, limit, from, tc.limit, tc.limitFrom)
		}
	}
	if _, err := New(Cgroup, "testdata/proc", "testdata/none", nil); err == nil {
		t.Error("cgroup source without cgroup files accepted")
	}
}

func TestAutoPicksWhatThePlatformCounts(t *testing.T) {
	for _, tc := range []struct {
		heroku     bool
		cgroupRoot string
		pid        func() int
		want       string
	}{
		{true, "testdata/cgroup-v1", fixedPID(100), Cgroup},
		{true, "testdata/none", fixedPID(100), All},
		{false, "testdata/cgroup-v1", fixedPID(100), Tree},
		{false, "testdata/cgroup-v1", nil, All},
	} {
		m, err := Auto(tc.heroku, "testdata/proc", tc.cgroupRoot, tc.pid)
		if err != nil || m.Source != tc.want {
			t.Errorf("Auto(heroku=%v, %s) = %v, %v; want %s", tc.heroku, tc.cgroupRoot, m, err, tc.want)
		}
	}
}

func TestMissingWorkerIsAnError(t *testing.T) {
	m, _ := New(Tree, "testdata/proc", "testdata/none", fixedPID(4242))
	if _, err := m.Sample(context.Background()); err == nil {
		t.Error("sampling a missing process succeeded")
	}
	m, _ = New(Tree, "testdata/proc", "testdata/none", fixedPID(0))
	if _, err := m.Sample(context.Background()); err == nil {
		t.Error("sampling without a worker succeeded")
	}
}

// startTree starts a tree of n live processes, all sleeping: a shell forks
// n-1 sleeping children and then becomes a sleep itself (exec keeps its pid
// and its children), so even n = 1 is a live process, not a shell that has
// exited. It returns once every process of the tree is up and asleep.
func startTree(t testing.TB, n int) *exec.Cmd {
	t.Helper()
	script := fmt.Sprintf(`for i in $(seq 1 %d); do sleep 300 & done; echo ready; exec sleep 300`, n-1)
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	// Wait until every process has exec'd sleep, so the tree holds still.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := requireLiveTree(cmd.Process.Pid, n)
		if err == nil {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// requireLiveTree says what is wrong unless the tree of root has exactly n
// processes, each alive (not a zombie) and running sleep.
func requireLiveTree(root, n int) error {
	m, _ := New(Tree, "/proc", "/sys/fs/cgroup", nil)
	pids, err := m.Tree(root)
	if err != nil {
		return fmt.Errorf("tree of %d: %w", root, err)
	}
	if len(pids) != n {
		return fmt.Errorf("tree of %d has %d processes, want %d", root, len(pids), n)
	}
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return fmt.Errorf("process %d is gone: %w", pid, err)
		}
		// comm is in parentheses, the state follows it.
		s := string(stat)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open || closing+3 > len(s) {
			return fmt.Errorf("process %d: unreadable stat", pid)
		}
		if comm, state := s[open+1:closing], s[closing+2]; comm != "sleep" || state == 'Z' || state == 'X' {
			return fmt.Errorf("process %d is %q in state %c, want a live sleep", pid, comm, state)
		}
	}
	return nil
}

func TestLiveTreeMatchesPS(t *testing.T) {
	cmd := startTree(t, 10)
	m, err := New(Tree, "/proc", "/sys/fs/cgroup", fixedPID(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	pids, err := m.Tree(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 10 {
		t.Fatalf("tree has %d processes, want 10: %v", len(pids), pids)
	}
	got, err := m.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// ps reports RSS in KiB; the sleeping tree does not swap. The kernel's
	// per-CPU RSS counters make /proc/<pid>/stat (ps) and status (us) differ by
	// a few pages per process, so allow a quarter; a missed process of the ten
	// would still show.
	var psTotal uint64
	for _, pid := range pids {
		out, err := exec.Command("ps", "-o", "rss=", "-p", strconv.Itoa(pid)).Output()
		if err != nil {
			t.Fatalf("ps %d: %v", pid, err)
		}
		n, _ := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
		psTotal += n * kb
	}
	diff := int64(got) - int64(psTotal)
	if diff < -int64(psTotal/4) || diff > int64(psTotal/4) {
		t.Errorf("sample %d bytes, ps says %d", got, psTotal)
	}
}

func TestLiveTreeFollowsForksAndExits(t *testing.T) {
	cmd := exec.Command("sh", "-c", `read line; sleep 300 & echo forked; read line`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	m, _ := New(Tree, "/proc", "/sys/fs/cgroup", fixedPID(cmd.Process.Pid))
	if pids, _ := m.Tree(cmd.Process.Pid); len(pids) != 1 {
		t.Fatalf("before the fork: %v", pids)
	}
	fmt.Fprintln(in, "go")
	buf := make([]byte, 7)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, _ := m.Tree(cmd.Process.Pid)
		if len(pids) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the forked child never showed up: %v", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTreeIsRewalkedAfterRefresh(t *testing.T) {
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS("testdata/proc")); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	m, err := New(Tree, root, "testdata/none", fixedPID(100))
	if err != nil {
		t.Fatal(err)
	}
	m.Now = func() time.Time { return now }
	first, err := m.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Process 102 exits and 103 forks a child that holds 64MB.
	if err := os.RemoveAll(root + "/102"); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(root+"/104", os.DirFS(root+"/103")); err != nil {
		t.Fatal(err)
	}
	status := strings.Replace(readFile(t, root+"/104/status"), "VmRSS:	  10240 kB", "VmRSS:	  65536 kB", 1)
	writeFile(t, root+"/104/status", status)
	writeFile(t, root+"/103/task/103/children", "104 ")

	cached, _ := m.Sample(context.Background())
	if want := first - 51200*kb; cached != want {
		t.Errorf("before the refresh: %d, want %d (the exited process dropped, the new one not yet seen)", cached, want)
	}
	now = now.Add(DefaultTreeRefresh)
	walked, _ := m.Sample(context.Background())
	if want := first - 51200*kb + 65536*kb; walked != want {
		t.Errorf("after the refresh: %d, want %d (the new process counted)", walked, want)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
