package platform

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/child"
)

func worker(t *testing.T) *child.Process {
	t.Helper()
	p := &child.Process{Path: "/bin/sh", Args: []string{"-c", `trap 'exit 0' TERM; while :; do sleep 0.05; done`}, ShutdownWait: 5 * time.Second}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = p.Stop(context.Background()) })
	return p
}

func gone(pid int) bool { return errors.Is(syscall.Kill(-pid, 0), syscall.ESRCH) }

func TestLocalRestartsInPlace(t *testing.T) {
	p := worker(t)
	old := p.Pid()
	next, err := (&Local{Process: p}).Restart(context.Background(), "max_rss")
	if err != nil || next != agent.Continue {
		t.Fatalf("Restart = %v, %v", next, err)
	}
	if p.Pid() == old || !p.Running() || !gone(old) {
		t.Errorf("old %d gone %v, new %d running %v", old, gone(old), p.Pid(), p.Running())
	}
}

func TestLocalStartsNothingWhenTheAgentIsStopping(t *testing.T) {
	p := worker(t)
	old := p.Pid()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	next, err := (&Local{Process: p}).Restart(ctx, "max_rss")
	if err == nil || next != agent.Exit {
		t.Fatalf("Restart = %v, %v; want Exit and an error", next, err)
	}
	if p.Pid() != old || p.Running() {
		t.Errorf("a new worker was started while stopping (pid %d -> %d)", old, p.Pid())
	}
}

func TestExitStopsTheWorker(t *testing.T) {
	p := worker(t)
	next, err := (&ExitRestarter{Process: p}).Restart(context.Background(), "schedule")
	if err != nil || next != agent.Exit {
		t.Fatalf("Restart = %v, %v", next, err)
	}
	if p.Running() || !gone(p.Pid()) {
		t.Error("worker still running")
	}
	if next, err := (&ExitRestarter{}).Restart(context.Background(), "max_rss"); err != nil || next != agent.Exit {
		t.Errorf("without a worker: %v, %v", next, err)
	}
}
