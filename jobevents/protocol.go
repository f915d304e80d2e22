// Package jobevents receives the job events a worker reports itself: each
// job's start and end, the moment the worker quiets. The agent listens on a
// unix stream socket whose path it puts in the worker's environment
// (DYNOCYCLE_EVENTS); the gem's Sidekiq middleware, or any worker speaking
// the protocol below, connects and writes one line per event.
//
// The protocol, one ASCII line per event, fields separated by one space:
//
//	hello <pid> <in_flight>   the process connected; in_flight jobs run in it now
//	start <pid> <jid> <class> a job began
//	end <pid> <jid> <class>   it ended (done, failed or handed back)
//	quiet <pid>               the process takes no new job from now on
//
// A line is at most MaxLine bytes. hello is optional: a process first heard
// of without one had no job in flight. A writer that cannot write a whole
// line (the socket is full) closes its connection instead: the agent then
// knows that it lost events of that process and stops trusting them until
// the process says hello again. The stream keeps each process's lines in
// order, which a datagram socket would too but drops silently when its
// queue (10 datagrams by default on Linux) is full.
package jobevents

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Env is the variable that names the socket in the worker's environment.
const Env = "DYNOCYCLE_EVENTS"

// QuietSettle is how long after a process's quiet line its zero jobs in
// flight are believed. A worker stops fetching at its quiet, but a thread
// that had just fetched a job has yet to report its start: a few
// instructions, which in Ruby may wait for the GVL (a timeslice is 100 ms).
// Two timeslices.
const QuietSettle = 200 * time.Millisecond

// DrainTick is how often a drain by events looks at them between their
// changes: the settle period ends without an event.
const DrainTick = 50 * time.Millisecond

// MaxLine bounds a line, newline included: a longer one breaks the
// connection (the writer is not speaking the protocol).
const MaxLine = 1024

// Kind is what happened.
type Kind string

const (
	Hello Kind = "hello"
	Start Kind = "start"
	End   Kind = "end"
	Quiet Kind = "quiet"
)

// Event is one parsed line.
type Event struct {
	Kind     Kind
	PID      int
	JID      string // start and end
	Class    string // start and end
	InFlight int    // hello
}

var errMalformed = errors.New("malformed event")

// Parse reads one line, without its newline.
func Parse(line string) (Event, error) {
	var fields [5]string
	f := splitFields(line, fields[:0])
	if len(f) < 2 {
		return Event{}, fmt.Errorf("%w %q: want KIND PID ...", errMalformed, line)
	}
	pid, err := strconv.Atoi(f[1])
	if err != nil || pid <= 0 {
		return Event{}, fmt.Errorf("%w %q: pid %q is not a positive integer", errMalformed, line, f[1])
	}
	ev := Event{Kind: Kind(f[0]), PID: pid}
	switch ev.Kind {
	case Hello:
		if len(f) != 3 {
			return Event{}, fmt.Errorf("%w %q: want hello PID IN_FLIGHT", errMalformed, line)
		}
		n, err := strconv.Atoi(f[2])
		if err != nil || n < 0 {
			return Event{}, fmt.Errorf("%w %q: in_flight %q is not a count", errMalformed, line, f[2])
		}
		ev.InFlight = n
	case Start, End:
		if len(f) != 4 {
			return Event{}, fmt.Errorf("%w %q: want %s PID JID CLASS", errMalformed, line, ev.Kind)
		}
		ev.JID, ev.Class = f[2], f[3]
	case Quiet:
		if len(f) != 2 {
			return Event{}, fmt.Errorf("%w %q: want quiet PID", errMalformed, line)
		}
	default:
		return Event{}, fmt.Errorf("%w %q: unknown kind %q (hello, start, end, quiet)", errMalformed, line, f[0])
	}
	return ev, nil
}

// splitFields appends line's space-separated fields to f, as strings.Fields
// does but into the caller's array: Parse runs for every line a busy
// worker writes. It stops at cap(f) fields, more than any kind takes.
func splitFields(line string, f []string) []string {
	for {
		line = strings.TrimLeft(line, " \t\r")
		if line == "" {
			return f
		}
		if len(f) == cap(f) {
			return f
		}
		i := strings.IndexAny(line, " \t\r")
		if i < 0 {
			return append(f, line)
		}
		f = append(f, line[:i])
		line = line[i:]
	}
}
