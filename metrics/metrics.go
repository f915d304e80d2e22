// Package metrics exposes what the agent sees as Prometheus metrics on
// METRICS_ADDR: memory and its limit, state, restarts, drain and lease-wait
// times, API and Redis errors, and memory growth by job class.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/heartbeat"
)

// Metrics is the agent's Prometheus registry. It has its own registry, not
// the global one, so tests and embedders get exactly these series.
type Metrics struct {
	Registry *prometheus.Registry

	memory     prometheus.Gauge
	limit      prometheus.Gauge
	state      *prometheus.GaugeVec
	restarts   *prometheus.CounterVec
	drain      prometheus.Histogram
	leaseWait  prometheus.Histogram
	apiErrors  *prometheus.CounterVec
	fallbacks  prometheus.Counter
	fleetErrs  *prometheus.CounterVec
	jobGrowth  *prometheus.GaugeVec
	jobRuns    *prometheus.GaugeVec
	lastSample prometheus.Gauge
}

var _ agent.Metrics = (*Metrics)(nil)

// New registers every series, labelled with the dyno.
func New(dyno, version string) *Metrics {
	reg := prometheus.NewRegistry()
	constLabels := prometheus.Labels{"dyno": dyno}
	f := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "dynocycle", Name: name, Help: help, ConstLabels: constLabels}
	}
	m := &Metrics{
		Registry: reg,
		memory:   prometheus.NewGauge(prometheus.GaugeOpts(f("memory_bytes", "Memory of the worker (or dyno) at the last check."))),
		limit:    prometheus.NewGauge(prometheus.GaugeOpts(f("memory_limit_bytes", "The soft limit (MAX_RSS) memory is judged against."))),
		state:    prometheus.NewGaugeVec(prometheus.GaugeOpts(f("state", "1 for the agent's current state.")), []string{"state"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts(f("restarts_total", "Restarts started, by reason.")), []string{"reason"}),
		drain: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "dynocycle", Name: "drain_seconds", ConstLabels: constLabels,
			Help: "Time from quiet to drained (or GRACE_TIME).", Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600}}),
		leaseWait: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "dynocycle", Name: "lease_wait_seconds", ConstLabels: constLabels,
			Help: "Time from wanting a restart to holding the fleet's lease.", Buckets: []float64{0.01, 0.1, 1, 5, 15, 30, 60, 120, 300, 900, 1800}}),
		apiErrors: prometheus.NewCounterVec(prometheus.CounterOpts(f("api_errors_total", "Failed Platform API calls, by HTTP status (0: no answer).")), []string{"status"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts(f("restart_fallbacks_total",
			"Restarts done in place because the Platform API refused them for good (401, 403, 404: the token or app name)."))),
		fleetErrs:  prometheus.NewCounterVec(prometheus.CounterOpts(f("redis_errors_total", "Failed fleet operations in Redis, by operation.")), []string{"op"}),
		jobGrowth:  prometheus.NewGaugeVec(prometheus.GaugeOpts(f("job_memory_growth_bytes", "Memory growth attributed to a job class since the agent started.")), []string{"class"}),
		jobRuns:    prometheus.NewGaugeVec(prometheus.GaugeOpts(f("job_runs", "Runs of a job class seen while attributing memory growth.")), []string{"class"}),
		lastSample: prometheus.NewGauge(prometheus.GaugeOpts(f("last_sample_timestamp_seconds", "When memory was last sampled."))),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts(f("build_info", "dynocycle's version.")), []string{"version"})
	build.WithLabelValues(version).Set(1)
	reg.MustRegister(m.memory, m.limit, m.state, m.restarts, m.drain, m.leaseWait, m.apiErrors, m.fallbacks, m.fleetErrs,
		m.jobGrowth, m.jobRuns, m.lastSample, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, s := range heartbeat.States {
		m.state.WithLabelValues(string(s)).Set(0)
	}
	for _, r := range []string{agent.ReasonMaxRSS, agent.ReasonCritical, agent.ReasonSchedule} {
		m.restarts.WithLabelValues(r) // present at zero, so rate() works from the start
	}
	return m
}

// Sample records a memory sample.
func (m *Metrics) Sample(rss, limit uint64) {
	m.memory.Set(float64(rss))
	m.limit.Set(float64(limit))
	m.lastSample.SetToCurrentTime()
}

// State marks the current state.
func (m *Metrics) State(state heartbeat.State) {
	for _, s := range heartbeat.States {
		v := 0.0
		if s == state {
			v = 1
		}
		m.state.WithLabelValues(string(s)).Set(v)
	}
}

// Restart counts a restart.
func (m *Metrics) Restart(reason string) { m.restarts.WithLabelValues(reason).Inc() }

// Drain observes a drain's length.
func (m *Metrics) Drain(d time.Duration) { m.drain.Observe(d.Seconds()) }

// LeaseWait observes the wait for a lease.
func (m *Metrics) LeaseWait(d time.Duration) { m.leaseWait.Observe(d.Seconds()) }

// FleetError counts a failed fleet operation (publish, acquire, renew,
// release, handover, take_back).
func (m *Metrics) FleetError(op string) { m.fleetErrs.WithLabelValues(op).Inc() }

// JobGrowth replaces the per-class growth series with the latest totals.
func (m *Metrics) JobGrowth(jobs []heartbeat.JobGrowth) {
	for _, j := range jobs {
		m.jobGrowth.WithLabelValues(j.Class).Set(float64(j.Bytes))
		m.jobRuns.WithLabelValues(j.Class).Set(float64(j.Runs))
	}
}

// RestartFallback counts a restart done in place because the platform
// refused it.
func (m *Metrics) RestartFallback() { m.fallbacks.Inc() }

// APIError counts a failed Platform API call.
func (m *Metrics) APIError(status int) { m.apiErrors.WithLabelValues(strconv.Itoa(status)).Inc() }

// Server serves /metrics on addr until ctx ends.
//
// The address is bound by Listen, before the worker starts, so that one
// that cannot be bound (in use, not a local address, a privileged port) is a
// configuration error seen at once: exit 2 before any job runs and with
// nothing to drain. The alternatives are worse for the user of a supervisor:
// running for weeks with nobody scraping it, or taking a busy worker down
// with it. Once bound, the server never ends the agent: a serving error is
// logged and the worker stays supervised, without metrics.
type Server struct {
	Addr    string
	Metrics *Metrics
	Logger  *slog.Logger // nil: errors go unlogged
	// Ready, when set, receives the bound address once listening (tests use ":0").
	Ready chan<- string

	mu sync.Mutex
	ln net.Listener
}

// Listen binds Addr. Run calls it when it was not called before.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("metrics listen on %s: %w", s.Addr, err)
	}
	s.ln = ln
	return nil
}

// Close releases the address of a server that will not Run.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Close()
}

// Run serves until ctx ends and returns nil then. It returns an error only
// when it cannot bind Addr (Listen was not called first).
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if s.Ready != nil {
		s.Ready <- ln.Addr().String()
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		// A serving error never ends the agent: the worker stays supervised.
		if s.Logger != nil {
			s.Logger.Error("metrics server failed; the worker stays supervised, without metrics",
				"event", "metrics_failed", "addr", ln.Addr().String(), "err", err)
		}
		return nil
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	<-served
	return nil
}
