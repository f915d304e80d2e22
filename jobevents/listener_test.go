package jobevents

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testutil"
)

func TestParse(t *testing.T) {
	ok := map[string]Event{
		"hello 12 3":             {Kind: Hello, PID: 12, InFlight: 3},
		"start 12 abc HardJob":   {Kind: Start, PID: 12, JID: "abc", Class: "HardJob"},
		"end 12 abc Mod::Job":    {Kind: End, PID: 12, JID: "abc", Class: "Mod::Job"},
		"quiet 7":                {Kind: Quiet, PID: 7},
		"hello 12 0":             {Kind: Hello, PID: 12},
		"end  12  abc  Spaced  ": {Kind: End, PID: 12, JID: "abc", Class: "Spaced"},
	}
	for in, want := range ok {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "hello", "hello x 1", "hello 0 1", "hello -3 1", "hello 12", "hello 12 -1",
		"start 12 abc", "start 12 abc Job extra", "end 12", "quiet 12 now", "stop 12", "START 12 a B"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q): no error", in)
		}
	}
}

func startListener(t *testing.T, gap time.Duration) *Listener {
	t.Helper()
	l, err := Listen(filepath.Join(t.TempDir(), "events.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.MinSampleGap = gap
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return l
}

func dial(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

func inFlight(l *Listener, pid int) (int, bool) {
	p, ok := l.Proc(pid)
	return p.InFlight, ok && p.Live
}

func TestListenerFollowsJobs(t *testing.T) {
	l := startListener(t, time.Millisecond)
	c := dial(t, l)
	write(t, c, "hello 100 2\nstart 100 j1 A\nstart 100 j2 B\n")
	testutil.Eventually(t, 5*time.Second, "4 in flight", func() bool { n, ok := inFlight(l, 100); return ok && n == 4 })
	if p, _ := l.Proc(100); !slices.Equal(p.Jobs, []string{"A", "B"}) || !p.QuietAt.IsZero() {
		t.Fatalf("proc = %+v", p)
	}
	// An end of a job started before the hello counts down the hello's.
	write(t, c, "end 100 j1 A\nend 100 old1 C\nquiet 100\n")
	testutil.Eventually(t, 5*time.Second, "quiet, 2 in flight", func() bool {
		p, _ := l.Proc(100)
		return p.InFlight == 2 && !p.QuietAt.IsZero()
	})
	select {
	case <-l.JobEnded():
	case <-time.After(5 * time.Second):
		t.Fatal("no JobEnded")
	}
	write(t, c, "end 100 j2 B\nend 100 old2 C\nend 100 never D\n")
	testutil.Eventually(t, 5*time.Second, "none in flight", func() bool { n, ok := inFlight(l, 100); return ok && n == 0 })

	classes, runs := l.TakeInterval()
	if !slices.Equal(classes, []string{"A", "B", "C", "D"}) || runs["A"] != 1 || runs["B"] != 1 || runs["C"] != 0 {
		t.Fatalf("interval = %v %v", classes, runs)
	}
	if classes, runs := l.TakeInterval(); len(classes) != 0 || len(runs) != 0 {
		t.Fatalf("second interval = %v %v", classes, runs)
	}
}

func TestListenerIntervalKeepsRunningClasses(t *testing.T) {
	l := startListener(t, time.Millisecond)
	c := dial(t, l)
	write(t, c, "start 5 a Long\nstart 5 b Short\nend 5 b Short\n")
	testutil.Eventually(t, 5*time.Second, "1 in flight", func() bool { n, ok := inFlight(l, 5); return ok && n == 1 })
	l.TakeInterval()
	classes, runs := l.TakeInterval()
	if !slices.Equal(classes, []string{"Long"}) || len(runs) != 0 {
		t.Fatalf("interval = %v %v; want the job still running, no new run", classes, runs)
	}
}

func TestListenerLostConnection(t *testing.T) {
	l := startListener(t, time.Millisecond)
	c := dial(t, l)
	write(t, c, "hello 7 0\nstart 7 a A\n")
	testutil.Eventually(t, 5*time.Second, "1 in flight", func() bool { n, ok := inFlight(l, 7); return ok && n == 1 })
	// A writer that could not write a line whole closes the connection: the
	// cut line must not count, and the pid is no longer trusted.
	write(t, c, "end 7 a")
	c.Close()
	testutil.Eventually(t, 5*time.Second, "pid 7 unknown", func() bool { _, ok := l.Proc(7); return !ok })

	// Lines without a hello from a lost pid are followed but not trusted.
	c2 := dial(t, l)
	write(t, c2, "end 7 a A\n")
	testutil.Eventually(t, 5*time.Second, "pid 7 heard again", func() bool { _, ok := l.Proc(7); return ok })
	if p, _ := l.Proc(7); p.Live {
		t.Fatalf("pid 7 live without a hello: %+v", p)
	}
	write(t, c2, "hello 7 1\n")
	testutil.Eventually(t, 5*time.Second, "pid 7 live with 1 in flight", func() bool { n, ok := inFlight(l, 7); return ok && n == 1 })

	// Garbage ends the connection.
	write(t, c2, "bogus\n")
	testutil.Eventually(t, 5*time.Second, "pid 7 dropped", func() bool { _, ok := l.Proc(7); return !ok })
}

func TestListenerCoalescesEnds(t *testing.T) {
	l := startListener(t, time.Hour)
	c := dial(t, l)
	write(t, c, "start 9 a A\nend 9 a A\n")
	waitEnded(t, l, "the first end was not signalled at once")
	// Ends within the gap are held: after a later line is applied (lines
	// are applied in order), none was signalled.
	write(t, c, "start 9 b A\nend 9 b A\nstart 9 c A\nend 9 c A\nquiet 9\n")
	testutil.Eventually(t, 5*time.Second, "quiet applied", func() bool { p, _ := l.Proc(9); return !p.QuietAt.IsZero() })
	select {
	case <-l.JobEnded():
		t.Fatal("an end within the gap was signalled at once")
	default:
	}
}

func TestListenerSignalsHeldEndAfterGap(t *testing.T) {
	l := startListener(t, 50*time.Millisecond)
	c := dial(t, l)
	write(t, c, "end 9 a A\n")
	waitEnded(t, l, "the first end was not signalled")
	// The second end comes within the 50 ms gap, or just after it: either
	// way it is signalled, held until the gap ends if need be.
	write(t, c, "end 9 b A\n")
	waitEnded(t, l, "a held end must be signalled when the gap ends")
}

func waitEnded(t *testing.T, l *Listener, failure string) {
	t.Helper()
	select {
	case <-l.JobEnded():
	case <-time.After(5 * time.Second):
		t.Fatal(failure)
	}
}

func TestListenerTakesABurstInOneBatch(t *testing.T) {
	l := startListener(t, time.Millisecond)
	c := dial(t, l)
	// Lines that wait in the socket together are applied together: one
	// JobEnded for the lot, and every line counted.
	var burst strings.Builder
	for i := range 500 {
		fmt.Fprintf(&burst, "start 9 j%d A\nend 9 j%d A\n", i, i)
	}
	burst.WriteString("start 9 last B\n")
	write(t, c, burst.String())
	testutil.Eventually(t, 5*time.Second, "the burst applied", func() bool { n, ok := inFlight(l, 9); return ok && n == 1 })
	classes, runs := l.TakeInterval()
	if !slices.Equal(classes, []string{"A", "B"}) || runs["A"] != 500 || runs["B"] != 1 {
		t.Fatalf("interval: %v %v, want [A B] with 500 runs of A and 1 of B", classes, runs)
	}
	// A line cut by the end of a read is kept for the next read.
	write(t, c, "end 9 la")
	write(t, c, "st B\n")
	testutil.Eventually(t, 5*time.Second, "the cut line joined", func() bool { n, ok := inFlight(l, 9); return ok && n == 0 })
}

func TestProcsForgetsLostProcessesThatAreGone(t *testing.T) {
	l := startListener(t, time.Millisecond)
	self := os.Getpid()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead := gone.Process.Pid // exited and reaped
	live, lost := l.Procs()
	if len(live) != 0 || len(lost) != 0 {
		t.Fatalf("before any event: %v %v", live, lost)
	}
	c1 := dial(t, l)
	write(t, c1, fmt.Sprintf("hello %d 0\nstart %d a A\n", self, self))
	c2 := dial(t, l)
	write(t, c2, fmt.Sprintf("start %d b B\n", dead))
	testutil.Eventually(t, 5*time.Second, "both processes heard", func() bool { live, _ := l.Procs(); return len(live) == 2 })
	c1.Close()
	c2.Close()
	// Both connections ended with a job in flight: their events are lost;
	// only the process that still exists is reported.
	testutil.Eventually(t, 5*time.Second, "the live process lost, the gone one forgotten", func() bool {
		live, lost := l.Procs()
		return len(live) == 0 && slices.Equal(lost, []int{self})
	})
}
