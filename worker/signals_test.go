package worker

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"
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
