package child

import (
	"github.com/dynocycle/dynocycle/internal/testutil"

	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary play an agent (see TestMain): it starts
// the worker script in this variable and waits to be killed.
const helperEnv = "DYNOCYCLE_CHILD_TEST_AGENT"

func TestMain(m *testing.M) {
	if script := os.Getenv(helperEnv); script != "" {
		helperAgent(script)
		return
	}
	os.Exit(m.Run())
}

func helperAgent(script string) {
	wait, _ := time.ParseDuration(os.Getenv(helperEnv + "_WAIT"))
	p := &Process{Path: "/bin/sh", Args: []string{"-c", script}, Stdout: os.Stdout, Stderr: os.Stderr, ShutdownWait: wait}
	if err := p.Start(); err != nil {
		fmt.Println("start:", err)
		os.Exit(1)
	}
	fmt.Printf("worker=%d\n", p.Pid())
	select {} // until SIGKILL
}

// gone reports whether pid has ended: no such process, or a zombie nobody
// reaps (PID 1 of a container may not).
func gone(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(stat)
	return strings.HasPrefix(s[strings.LastIndexByte(s, ')')+1:], " Z")
}

func fileSays(path, want string) bool {
	b, _ := os.ReadFile(path)
	return strings.Contains(string(b), want)
}

func TestWorkerDiesWithAKilledAgentAndLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		name, trap string
	}{
		// Stops on the stop signal; its grandchild ignores it and is
		// killed after SHUTDOWN_WAIT.
		{"graceful worker", `trap 'echo term > "$DIR/term"; exit 0' TERM`},
		// Ignores the stop signal too: killed after SHUTDOWN_WAIT.
		{"stubborn worker", `trap 'echo term > "$DIR/term"' TERM`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			script := tc.trap + `
(trap '' TERM; exec sleep 300) &
echo "grandchild=$!"
while :; do sleep 0.05; done`
			agent := exec.Command(os.Args[0])
			agent.Env = append(os.Environ(), helperEnv+"="+script, helperEnv+"_WAIT=1s", "DIR="+dir)
			out, err := agent.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := agent.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
			pids := map[string]int{}
			sc := bufio.NewScanner(out)
			for len(pids) < 2 && sc.Scan() {
				if k, v, ok := strings.Cut(sc.Text(), "="); ok {
					pids[k], _ = strconv.Atoi(v)
				}
			}
			worker, grandchild := pids["worker"], pids["grandchild"]
			if worker == 0 || grandchild == 0 {
				t.Fatalf("pids %v", pids)
			}
			t.Cleanup(func() { _ = syscall.Kill(-worker, syscall.SIGKILL) })
			go func() { _, _ = bufio.NewReader(out).WriteTo(devNull{}) }()

			if err := agent.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = agent.Wait()
			testutil.Eventually(t, 15*time.Second, "the worker to get the stop signal", func() bool { return fileSays(filepath.Join(dir, "term"), "term") })
			testutil.Eventually(t, 15*time.Second, "the worker and its grandchild to be gone", func() bool { return gone(worker) && gone(grandchild) })
		})
	}
}

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }

func TestWorkerIsNotSignalledWhenTheThreadThatStartedItEnds(t *testing.T) {
	// Pdeathsig fires when the thread that forked the worker ends. A caller
	// locked to a thread that returns without unlocking ends that thread;
	// the worker must live on all the same.
	dir := t.TempDir()
	p, out := sh(`trap 'echo term > "$DIR/term"; exit 0' TERM
trap 'echo winch >> "$DIR/winch"' WINCH
echo up; while :; do sleep 0.05; done`, 5*time.Second)
	p.Env = append(os.Environ(), "DIR="+dir)
	defer p.Stop(t.Context())

	// Pinned here, this goroutine's thread (perhaps the main one) cannot run
	// the one below, which then gets a thread of its own.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// The main thread is never ended: a goroutine that lands on it keeps it,
	// parked, until the test ends, so the next one runs on another thread.
	occupied := make(chan struct{})
	defer close(occupied)
	var tid int
	for range 100 {
		started := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // and never unlocked: the thread ends with the goroutine
			tid = syscall.Gettid()
			if tid == os.Getpid() {
				started <- nil
				<-occupied
				runtime.UnlockOSThread()
				return
			}
			started <- p.Start()
		}()
		if err := <-started; err != nil {
			t.Fatal(err)
		}
		if tid != os.Getpid() {
			break
		}
	}
	if tid == os.Getpid() {
		t.Fatal("could not start the worker off the main thread")
	}
	term := filepath.Join(dir, "term")
	testutil.Eventually(t, 15*time.Second, "the worker to start", func() bool { return strings.Contains(out.String(), "up") || fileSays(term, "term") })
	testutil.Eventually(t, 15*time.Second, "the starting thread to end", func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
		return os.IsNotExist(err)
	})
	// Any parent-death signal is pending by now. A WINCH sent after it is
	// handled after it (lower signal numbers go first), so once the WINCH
	// trap has run, a TERM would have run before.
	if err := p.Signal(syscall.SIGWINCH); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the worker to answer WINCH", func() bool {
		return fileSays(filepath.Join(dir, "winch"), "winch") || fileSays(term, "term")
	})
	if fileSays(term, "term") || !p.Running() {
		t.Fatal("the worker got the stop signal when the thread that started it ended")
	}
}

func TestWorkerExitingByItselfLeavesNothingInItsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "grandchild")
	p, _ := sh(`(trap '' TERM; exec sleep 300) & echo $! > `+pidFile+`; exit 3`, time.Second)
	p.LeftoverWait = 200 * time.Millisecond
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := p.Pid()
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	select {
	case e := <-p.Exited():
		if e.Code != 3 {
			t.Errorf("exit = %+v, want code 3", e)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit")
	}
	b, _ := os.ReadFile(pidFile)
	grandchild, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// Exited is delivered once the group is gone.
	if !groupGone(pgid) || grandchild == 0 || !gone(grandchild) {
		t.Errorf("grandchild %d outlived the worker's exit", grandchild)
	}
}

func TestLeftoversFinishingWithinTheWaitAreNotKilled(t *testing.T) {
	// The tail of a pipeline may still be writing when the worker exits.
	p, out := sh(`(sleep 0.2; echo tail finished) & exit 0`, time.Second)
	p.LeftoverWait = time.Minute
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-p.Exited():
		if e.Code != 0 {
			t.Errorf("exit = %+v", e)
		}
	case <-time.After(time.Minute):
		t.Fatal("no exit")
	}
	if !strings.Contains(out.String(), "tail finished") {
		t.Errorf("the leftover was cut short: %q", out.String())
	}
}
