package metrics

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/heartbeat"
)

func TestServesWhatTheAgentRecorded(t *testing.T) {
	m := New("worker.1", "v1.2.3")
	m.Sample(300<<20, 512<<20)
	m.State(heartbeat.StateDraining)
	m.Restart("max_rss")
	m.Drain(4 * time.Second)
	m.LeaseWait(1500 * time.Millisecond)
	m.APIError(429)
	m.APIError(429)
	m.FleetError("acquire")
	m.JobGrowth([]heartbeat.JobGrowth{{Class: "ExportCsvJob", Bytes: 410 << 20, Runs: 37}})

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- (&Server{Addr: "127.0.0.1:0", Metrics: m, Ready: ready}).Run(ctx) }()
	addr := <-ready
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := string(body)
	for _, want := range []string{
		`dynocycle_memory_bytes{dyno="worker.1"} 3.145728e+08`,
		`dynocycle_memory_limit_bytes{dyno="worker.1"} 5.36870912e+08`,
		`dynocycle_state{dyno="worker.1",state="draining"} 1`,
		`dynocycle_state{dyno="worker.1",state="watching"} 0`,
		`dynocycle_restarts_total{dyno="worker.1",reason="max_rss"} 1`,
		`dynocycle_restarts_total{dyno="worker.1",reason="critical_rss"} 0`,
		`dynocycle_drain_seconds_sum{dyno="worker.1"} 4`,
		`dynocycle_lease_wait_seconds_count{dyno="worker.1"} 1`,
		`dynocycle_api_errors_total{dyno="worker.1",status="429"} 2`,
		`dynocycle_redis_errors_total{dyno="worker.1",op="acquire"} 1`,
		`dynocycle_job_memory_growth_bytes{class="ExportCsvJob",dyno="worker.1"} 4.2991616e+08`,
		`dynocycle_job_runs{class="ExportCsvJob",dyno="worker.1"} 37`,
		`dynocycle_build_info{dyno="worker.1",version="v1.2.3"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("server: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
}

func TestListenErrorIsReported(t *testing.T) {
	err := (&Server{Addr: "256.0.0.1:1", Metrics: New("w", "v")}).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "metrics listen on 256.0.0.1:1") {
		t.Errorf("err = %v", err)
	}
}

func TestListenFailsBeforeServingOnABusyAddress(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	s := &Server{Addr: busy.Addr().String(), Metrics: New("w", "v")}
	err = s.Listen()
	if err == nil || !strings.Contains(err.Error(), "metrics listen on "+busy.Addr().String()) {
		t.Fatalf("Listen = %v, want the address named", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close of an unbound server: %v", err)
	}
}

func TestServingErrorDoesNotEndTheAgent(t *testing.T) {
	var logs bytes.Buffer
	s := &Server{Addr: "127.0.0.1:0", Metrics: New("w", "v"), Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	_ = s.Close() // the listener fails under the server
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil: an error would stop the agent and its worker", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if !strings.Contains(logs.String(), "event=metrics_failed") {
		t.Errorf("logs = %q, want the failure logged", logs.String())
	}
}
