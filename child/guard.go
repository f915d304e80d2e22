package child

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// guardScript ends a worker's process group once the agent is gone. Its
// stdin is a pipe whose only writer is the agent; the kernel closes that end
// however the agent ends, SIGKILL included, and read returns. The worker
// itself has had the stop signal by then (Pdeathsig); the guard gives the
// group up to SHUTDOWN_WAIT to end and kills what is left. It polls rather
// than sleeping the whole wait so that it never signals a process group id
// the kernel may have handed out again. Signals a terminal or a platform
// sends to everyone must not end it before its work is done.
//
// A shell rather than the agent's own binary run again: the child package
// cannot assume the binary that embeds it knows a guard mode, and /bin/sh is
// on every image dynocycle targets (Heroku's stacks, Debian).
const guardScript = `trap '' HUP INT QUIT TERM
read -r _
n=0
while kill -0 "-$1" 2>/dev/null; do
	if [ "$n" -ge "$2" ]; then
		kill -KILL "-$1" 2>/dev/null
		exit 0
	fi
	sleep 0.1
	n=$((n+1))
done
`

// guard is the process that outlives the agent to end one worker's group.
type guard struct {
	cmd *exec.Cmd
	// w is the pipe's write end. Kept reachable (an *os.File is closed when
	// collected) and never written; it is opened close-on-exec, so no worker
	// inherits it and keeps the guard waiting.
	w    *os.File
	once sync.Once // Terminate and a worker's own exit may both stop it
}

// startGuard starts a guard for the group pgid, which may take wait to end
// after the agent is gone.
func startGuard(pgid int, wait time.Duration) (*guard, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	tenths := int((wait + 99*time.Millisecond) / (100 * time.Millisecond))
	cmd := exec.Command("/bin/sh", "-c", guardScript, "dynocycle-guard", strconv.Itoa(pgid), strconv.Itoa(tenths))
	cmd.Stdin = r
	// Its own group: a terminal's Ctrl-C, sent to the agent's group, must
	// not end it, and a stop of the worker's group must not either.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = r.Close()
	if err != nil {
		_ = w.Close()
		return nil, err
	}
	return &guard{cmd: cmd, w: w}, nil
}

// stop ends a guard whose group is gone. It is killed before its pipe is
// closed: seeing the pipe close, it would signal a group id that may by now
// belong to someone else.
func (g *guard) stop() {
	if g == nil {
		return
	}
	g.once.Do(func() {
		pid := g.cmd.Process.Pid
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			_ = g.cmd.Process.Kill()
		}
		_ = g.cmd.Wait()
		_ = g.w.Close()
	})
}
