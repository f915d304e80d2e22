package worker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/jobevents"
)

type fakeProcess struct {
	sent []syscall.Signal
	done chan struct{}
}

func (p *fakeProcess) Signal(sig syscall.Signal) error { p.sent = append(p.sent, sig); return nil }
func (p *fakeProcess) Done() <-chan struct{}           { return p.done }

func TestQuietSendsTheQuietSignalOnly(t *testing.T) {
	p := &fakeProcess{done: make(chan struct{})}
	w := &Signals{Process: p, QuietSignal: syscall.SIGTSTP}
	if err := w.Quiet(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(p.sent) != 1 || p.sent[0] != syscall.SIGTSTP {
		t.Errorf("sent %v, want [TSTP]", p.sent)
	}
	none := &fakeProcess{done: make(chan struct{})}
	if err := (&Signals{Process: none}).Quiet(context.Background()); err != nil || len(none.sent) != 0 {
		t.Errorf("without QUIET_SIGNAL: sent %v, err %v", none.sent, err)
	}
}

func TestDrainWaitsForExitOrGraceTime(t *testing.T) {
	p := &fakeProcess{done: make(chan struct{})}
	w := &Signals{Process: p, QuietSignal: syscall.SIGTSTP}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := w.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a running worker after GRACE_TIME: %v, want the deadline", err)
	}
	close(p.done)
	if err := w.Drain(context.Background()); err != nil {
		t.Errorf("an exited worker: %v, want drained", err)
	}
	// Without a quiet signal there is nothing to drain: the stop signal and
	// SHUTDOWN_WAIT give the worker its time.
	if err := (&Signals{Process: &fakeProcess{done: make(chan struct{})}}).Drain(context.Background()); err != nil {
		t.Errorf("no quiet signal: %v", err)
	}
}

func TestEventsDrained(t *testing.T) {
	quietAt := time.Unix(1000, 0)
	settled := quietAt.Add(jobevents.QuietSettle)
	quiet := func(at time.Time, inFlight int) jobevents.Proc {
		return jobevents.Proc{PID: 7, Live: true, QuietAt: at, InFlight: inFlight}
	}
	running := jobevents.Proc{PID: 8, Live: true, InFlight: 1}
	idle := jobevents.Proc{PID: 9, Live: true}
	for _, tc := range []struct {
		name      string
		live      []jobevents.Proc
		lostAlive bool
		quietAt   time.Time
		now       time.Time
		want      bool
	}{
		{"quiet, settled, nothing in flight", []jobevents.Proc{quiet(quietAt, 0)}, false, quietAt, settled, true},
		{"quiet, with an idle job process", []jobevents.Proc{quiet(quietAt, 0), idle}, false, quietAt, settled, true},
		{"not settled yet", []jobevents.Proc{quiet(quietAt, 0)}, false, quietAt, settled.Add(-time.Millisecond), false},
		{"a job in flight in the quiet process", []jobevents.Proc{quiet(quietAt, 1)}, false, quietAt, settled, false},
		{"a job in flight in another process", []jobevents.Proc{quiet(quietAt, 0), running}, false, quietAt, settled, false},
		{"a process whose events were lost is alive", []jobevents.Proc{quiet(quietAt, 0)}, true, quietAt, settled, false},
		{"its quiet line is older than the quiet signal", []jobevents.Proc{quiet(quietAt.Add(-time.Second), 0)}, false, quietAt, settled, false},
		{"no quiet line at all", []jobevents.Proc{idle}, false, quietAt, settled, false},
		{"no process reports", nil, false, quietAt, settled, false},
		{"no quiet signal sent", []jobevents.Proc{quiet(quietAt, 0)}, false, time.Time{}, settled, false},
	} {
		if got := EventsDrained(tc.live, tc.lostAlive, tc.quietAt, tc.now); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

type fakeEvents struct {
	mu      sync.Mutex
	live    []jobevents.Proc
	lost    []int
	changed chan struct{}
}

func (e *fakeEvents) Procs() ([]jobevents.Proc, []int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.live), slices.Clone(e.lost)
}
func (e *fakeEvents) Changed() <-chan struct{} { return e.changed }

func (e *fakeEvents) set(live ...jobevents.Proc) {
	e.mu.Lock()
	e.live = live
	e.mu.Unlock()
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

func TestDrainEndsWhenTheEventsSayDrained(t *testing.T) {
	p := &fakeProcess{done: make(chan struct{})} // never exits
	ev := &fakeEvents{changed: make(chan struct{}, 1)}
	clock := time.Unix(1000, 0)
	w := &Signals{Process: p, QuietSignal: syscall.SIGUSR2, Events: ev, Now: func() time.Time { return clock }}
	if err := w.Quiet(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev.set(jobevents.Proc{PID: 7, Live: true, InFlight: 1, QuietAt: clock})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	if err := w.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a job in flight: %v, want the deadline", err)
	}
	cancel()
	clock = clock.Add(jobevents.QuietSettle)
	ev.set(jobevents.Proc{PID: 7, Live: true, QuietAt: time.Unix(1000, 0)})
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Drain(ctx); err != nil {
		t.Errorf("the last job ended: %v, want drained", err)
	}
}
