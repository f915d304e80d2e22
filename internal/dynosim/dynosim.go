// Package dynosim plays Heroku's dyno manager for a few worker dynos of one
// app on this machine, so tests can watch a fleet of real dynocycle agents
// restart each other's dynos through a fake Platform API.
//
// Each dyno is `dynocycle run -- COMMAND` started with DYNO=<name>,
// HEROKU_APP_NAME, HEROKU_API_TOKEN, HEROKU_API_URL and REDIS_URL, in its own
// session: the session is the dyno, so every process of it (the agent, the
// worker in its own process group, whatever the worker forks) is found
// through /proc by its session id, even after the agent is gone.
//
// What the simulator does, like the dyno manager:
//
//   - Restart (wired to fakeheroku's OnRestart by WithFake): SIGTERM to every
//     process of the dyno, SIGKILL to what is left after Grace (Heroku: 30 s),
//     then the same command again with the same DYNO (Cedar), or under a new
//     name of the same process type (Fir, see Config.Fir).
//   - Crash: when the agent exits by itself (an exit non-zero after the API
//     budget is spent, or a SIGKILL), the rest of the dyno is stopped the
//     same way and, after CrashDelay, started again. Heroku does not document
//     how the leftovers of a crashed dyno are stopped; this model sends them
//     SIGTERM first, as on every other stop.
//
// It records every process start and exit, every restart call, every line
// the dyno printed (with the time it was read), and from the agent's log the
// intervals during which a dyno was out of service (see Interval).
package dynosim

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dynocycle/dynocycle/internal/fakeheroku"
)

// Config sets a simulator up.
type Config struct {
	Agent    string   // path of the dynocycle binary
	App      string   // HEROKU_APP_NAME
	Token    string   // HEROKU_API_TOKEN
	APIURL   string   // HEROKU_API_URL (WithFake fills it in)
	RedisURL string   // REDIS_URL; empty: none
	Env      []string // more environment for every dyno (PATH, MAX_RSS, ...)

	Grace      time.Duration // SIGTERM to SIGKILL; default 30 s, as on Heroku
	CrashDelay time.Duration // crash to restart; default 1 s
	// Fir names dynos as Heroku's Fir generation does: a dyno started as
	// "worker-5d8f7c9b4-k2x7p" comes back from every restart and crash
	// under a new name of its process type, "worker-5d8f7c9b4-<new id>".
	// The simulator keeps calling it by the name it was started with
	// (Proc.Dyno, Line.Dyno); Proc.Name and Line.Name carry its DYNO.
	Fir bool
	// Log, if set, receives every line of every dyno as "worker.1[2] | line"
	// (the dyno and its generation).
	Log io.Writer
}

// Line is one line a dyno printed.
type Line struct {
	Time time.Time // when the simulator read it
	Dyno string    // the name the dyno was started with
	Name string    // its DYNO in this generation (differs on Fir)
	Gen  int       // 1 for the first start of the dyno, then one more per start
	Text string
}

// Proc is one start of a dyno's agent.
type Proc struct {
	Dyno     string // the name the dyno was started with
	Name     string // its DYNO in this generation (differs on Fir)
	Gen      int
	PID      int // the agent's pid, also the dyno's session id
	Start    time.Time
	Exit     time.Time // zero while running
	Code     int       // exit code, -1 when killed by a signal
	Signal   syscall.Signal
	Expected bool // stopped by a restart or Close, not a crash
}

// Stop is one stop of a dyno by the simulator.
type Stop struct {
	Dyno   string
	Gen    int
	Why    string    // "restart", "crash" or "close"
	Term   time.Time // SIGTERM sent to every process of the dyno
	Gone   time.Time // the last process of the dyno exited
	Killed bool      // processes were left after Grace and got SIGKILL (Heroku's R12)
}

// Took is how long the dyno took to go away after SIGTERM.
func (s Stop) Took() time.Duration { return s.Gone.Sub(s.Term) }

// Interval kinds.
const (
	KindRestart = "restart" // started by dynocycle: lease taken, quiet, drain, restart
	KindCrash   = "crash"   // the agent died outside a restart (SIGKILL, a crash)
)

// Interval is a time a dyno was out of service, from its agent's log.
//
// A restart interval starts when the agent logs event=lease_acquired: from
// that moment on it may quiet the worker, so it covers the whole time the
// worker takes no new jobs (the quiet itself is logged just after, with
// event=drain, and kept in Quiet). It ends when the next generation of the
// dyno logs event=worker_start. A lease lost before quieting
// (event=lease_lost) ends it at once, with Aborted set. A crash interval runs
// from an unexpected agent exit to the next worker_start.
type Interval struct {
	Dyno    string
	Kind    string
	Start   time.Time
	Quiet   time.Time // event=drain: quiet signal sent (zero if never)
	Drained bool      // event=drained, rather than drain_timeout
	End     time.Time // zero while still open
	Aborted bool
}

// Closed reports whether the dyno came back.
func (iv Interval) Closed() bool { return !iv.End.IsZero() }

// Sim is the simulated dyno manager.
type Sim struct {
	cfg Config

	mu        sync.Mutex
	dynos     map[string]*dyno
	order     []string
	lines     []Line
	procs     []Proc
	stops     []Stop
	calls     []string         // restart calls, "worker.1" each
	current   map[string]*dyno // by current DYNO
	rng       *rand.Rand
	intervals []Interval
	closed    bool
	wg        sync.WaitGroup // restarts and crash restarts in flight
}

type dyno struct {
	name    string // as started; the DYNO of the first generation
	current string // DYNO of the current generation
	command []string
	env     []string
	gen     int
	proc    int // index in Sim.procs of the current generation
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the current agent was reaped
	busy    bool          // being stopped or restarted
	open    int           // index in Sim.intervals of the open interval, -1 if none
}

// New returns a simulator; start dynos with Start.
func New(cfg Config) *Sim {
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.CrashDelay <= 0 {
		cfg.CrashDelay = time.Second
	}
	return &Sim{cfg: cfg, dynos: map[string]*dyno{}, current: map[string]*dyno{},
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
}

// WithFake starts a fake Platform API whose accepted restarts restart the
// simulator's dynos, and a simulator pointed at it. Close both when done.
func WithFake(cfg Config) (*Sim, *fakeheroku.Server) {
	var sim *Sim
	fake := fakeheroku.New(fakeheroku.Config{Token: cfg.Token, App: cfg.App,
		OnRestart: func(app, dyno string) { sim.Restart(dyno) }})
	cfg.APIURL = fake.URL
	sim = New(cfg)
	return sim, fake
}

// Start starts dyno name (e.g. "worker.1") running command under the agent,
// with env added to the configured environment. The command and env are
// kept for every later start of the dyno.
func (s *Sim) Start(name string, command []string, env ...string) error {
	s.mu.Lock()
	if _, ok := s.dynos[name]; ok {
		s.mu.Unlock()
		return fmt.Errorf("dynosim: dyno %s already exists", name)
	}
	if _, ok := s.current[name]; ok {
		s.mu.Unlock()
		return fmt.Errorf("dynosim: a dyno named %s is running", name)
	}
	d := &dyno{name: name, current: name, command: command, env: env, open: -1}
	s.dynos[name] = d
	s.current[name] = d
	s.order = append(s.order, name)
	s.mu.Unlock()
	return s.spawn(d)
}

// spawn starts the next generation of d.
func (s *Sim) spawn(d *dyno) error {
	s.mu.Lock()
	if d.gen > 0 && s.cfg.Fir {
		delete(s.current, d.current)
		d.current = s.firName(d.name)
		s.current[d.current] = d
	}
	name := d.current
	s.mu.Unlock()
	env := []string{"HOME=" + os.Getenv("HOME"), "PATH=" + os.Getenv("PATH")}
	env = append(env, "DYNO="+name, "HEROKU_APP_NAME="+s.cfg.App, "HEROKU_API_TOKEN="+s.cfg.Token,
		"HEROKU_API_URL="+s.cfg.APIURL)
	if s.cfg.RedisURL != "" {
		env = append(env, "REDIS_URL="+s.cfg.RedisURL)
	}
	env = append(append(env, s.cfg.Env...), d.env...)
	cmd := exec.Command(s.cfg.Agent, append([]string{"run", "--"}, d.command...)...)
	cmd.Env = env
	// The session is the dyno: the worker's own process group stays in it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		pr.Close()
		pw.Close()
		return errors.New("dynosim: closed")
	}
	err = cmd.Start()
	pw.Close() // the dyno's processes hold the write end
	if err != nil {
		s.mu.Unlock()
		pr.Close()
		return fmt.Errorf("dynosim: start %s: %w", d.name, err)
	}
	d.gen++
	d.cmd, d.exited, d.busy = cmd, make(chan struct{}), false
	d.proc = len(s.procs)
	s.procs = append(s.procs, Proc{Dyno: d.name, Name: name, Gen: d.gen, PID: cmd.Process.Pid, Start: time.Now()})
	gen, exited, idx := d.gen, d.exited, d.proc
	s.mu.Unlock()

	go s.read(d, gen, name, pr)
	go s.wait(d, cmd, idx, exited)
	return nil
}

// wait reaps the agent and handles a crash.
func (s *Sim) wait(d *dyno, cmd *exec.Cmd, idx int, exited chan struct{}) {
	_ = cmd.Wait()
	st := cmd.ProcessState
	s.mu.Lock()
	p := &s.procs[idx]
	p.Exit, p.Code = time.Now(), st.ExitCode()
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		p.Signal = ws.Signal()
	}
	crash := !d.busy && !s.closed
	p.Expected = !crash
	pid, exit := p.PID, p.Exit
	if crash {
		d.busy = true
		if d.open < 0 {
			d.open = len(s.intervals)
			s.intervals = append(s.intervals, Interval{Dyno: d.name, Kind: KindCrash, Start: exit})
		}
		s.wg.Add(1)
	}
	s.mu.Unlock()
	close(exited)
	if !crash {
		return
	}
	defer s.wg.Done()
	s.stop(d, "crash", pid)
	time.Sleep(s.cfg.CrashDelay)
	_ = s.spawn(d)
}

// Restart restarts the dyno now running as name (its DYNO) the way the dyno
// manager does. A dyno already being stopped is left alone. It returns at
// once.
func (s *Sim) Restart(name string) {
	s.mu.Lock()
	s.calls = append(s.calls, name)
	d, ok := s.current[name]
	if !ok || d.busy || s.closed {
		s.mu.Unlock()
		return
	}
	d.busy = true
	sid := d.cmd.Process.Pid
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		s.stop(d, "restart", sid)
		_ = s.spawn(d)
	}()
}

// stop sends SIGTERM to every process of the dyno whose session is sid,
// SIGKILL to any left after Grace, and waits for the agent to be reaped.
func (s *Sim) stop(d *dyno, why string, sid int) Stop {
	s.mu.Lock()
	exited := d.exited
	gen := d.gen
	s.mu.Unlock()
	st := Stop{Dyno: d.name, Gen: gen, Why: why, Term: time.Now()}
	signalSession(sid, syscall.SIGTERM)
	deadline := time.Now().Add(s.cfg.Grace)
	for !sessionGone(sid, exited) {
		if time.Now().After(deadline) {
			st.Killed = true
			signalSession(sid, syscall.SIGKILL)
			deadline = time.Now().Add(time.Hour)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st.Gone = time.Now()
	s.mu.Lock()
	s.stops = append(s.stops, st)
	s.mu.Unlock()
	return st
}

func sessionGone(sid int, exited chan struct{}) bool {
	select {
	case <-exited:
		return len(Session(sid)) == 0
	default:
		return false
	}
}

func signalSession(sid int, sig syscall.Signal) {
	// Twice, to catch a process forked while the first round was sent.
	for range 2 {
		for _, pid := range Session(sid) {
			_ = syscall.Kill(pid, sig)
		}
	}
}

// Close stops every dyno (SIGTERM, SIGKILL after Grace) and waits for
// restarts in flight; no dyno is started again. It returns the stops it made.
func (s *Sim) Close() []Stop {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var out []Stop
	s.mu.Lock()
	for _, name := range s.order {
		d := s.dynos[name]
		if d.cmd == nil {
			continue // never started
		}
		select {
		case <-d.exited:
			continue
		default:
		}
		d.busy = true
		sid := d.cmd.Process.Pid
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := s.stop(d, "close", sid)
			mu.Lock()
			out = append(out, st)
			mu.Unlock()
		}()
	}
	s.mu.Unlock()
	wg.Wait()
	slices.SortFunc(out, func(a, b Stop) int { return strings.Compare(a.Dyno, b.Dyno) })
	return out
}

// event finds the dynocycle event of a log line; lines printed by the worker
// do not start like the agent's (level=... msg=...).
var (
	agentLine = regexp.MustCompile(`^(time=\S+ )?level=[A-Z]+ msg=`)
	eventKey  = regexp.MustCompile(` event=([a-z_]+)`)
)

func (s *Sim) read(d *dyno, gen int, name string, r io.ReadCloser) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := Line{Time: time.Now(), Dyno: d.name, Name: name, Gen: gen, Text: sc.Text()}
		if s.cfg.Log != nil {
			fmt.Fprintf(s.cfg.Log, "%s[%d] | %s\n", l.Name, l.Gen, l.Text)
		}
		s.mu.Lock()
		s.lines = append(s.lines, l)
		if agentLine.MatchString(l.Text) {
			if m := eventKey.FindStringSubmatch(l.Text); m != nil {
				s.observe(d, l.Time, m[1])
			}
		}
		s.mu.Unlock()
	}
}

// observe updates d's intervals with one agent event; s.mu is held.
func (s *Sim) observe(d *dyno, at time.Time, event string) {
	var iv *Interval
	if d.open >= 0 {
		iv = &s.intervals[d.open]
	}
	switch event {
	case "lease_acquired":
		if iv == nil {
			d.open = len(s.intervals)
			s.intervals = append(s.intervals, Interval{Dyno: d.name, Kind: KindRestart, Start: at})
		}
	case "lease_lost":
		if iv != nil && iv.Kind == KindRestart && iv.Quiet.IsZero() {
			iv.End, iv.Aborted = at, true
			d.open = -1
		}
	case "drain":
		if iv != nil && iv.Quiet.IsZero() {
			iv.Quiet = at
		}
	case "drained":
		if iv != nil {
			iv.Drained = true
		}
	case "worker_start":
		if iv != nil {
			iv.End = at
			d.open = -1
		}
	}
}

// firName returns a new Fir name for the dyno started as first: its
// process type and replica set hash, and a new pod id; s.mu is held.
func (s *Sim) firName(first string) string {
	prefix := first
	if parts := strings.Split(first, "-"); len(parts) >= 3 {
		prefix = strings.Join(parts[:len(parts)-1], "-")
	}
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	for {
		id := make([]byte, 5)
		for i := range id {
			id[i] = alphabet[s.rng.IntN(len(alphabet))]
		}
		name := prefix + "-" + string(id)
		if _, taken := s.current[name]; !taken && name != first {
			return name
		}
	}
}

// Current returns the DYNO the dyno started as first runs under now.
func (s *Sim) Current(first string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.dynos[first]; ok {
		return d.current
	}
	return ""
}

// Dynos returns the dyno names in the order they were started.
func (s *Sim) Dynos() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.order)
}

// Lines returns every line read so far.
func (s *Sim) Lines() []Line {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lines)
}

// Grep returns the lines matching re.
func (s *Sim) Grep(re *regexp.Regexp) []Line {
	var out []Line
	for _, l := range s.Lines() {
		if re.MatchString(l.Text) {
			out = append(out, l)
		}
	}
	return out
}

// Procs returns every agent start, in order.
func (s *Sim) Procs() []Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.procs)
}

// Stops returns every stop made so far, in order of completion.
func (s *Sim) Stops() []Stop {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.stops)
}

// Calls returns the dyno of every restart call received, in order.
func (s *Sim) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// Intervals returns every out-of-service interval so far, open ones included.
func (s *Sim) Intervals() []Interval {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.intervals)
}

// Agent returns the pid of the running agent of dyno name, 0 if none.
func (s *Sim) Agent(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.dynos[name]
	if !ok || d.cmd == nil {
		return 0
	}
	select {
	case <-d.exited:
		return 0
	default:
		return d.cmd.Process.Pid
	}
}

// Session returns the live processes (zombies excluded) of session sid.
func Session(sid int) []int { return sessions()[sid] }

// sessions maps each session id to its live processes, from one scan of /proc.
func sessions() map[int][]int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, _, session, ok := stat(pid); ok && state != "Z" && state != "X" {
			out[session] = append(out[session], pid)
		}
	}
	return out
}

// stat reads the state, process group and session of pid.
func stat(pid int) (state string, pgrp, session int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, 0, false
	}
	f := strings.Fields(s[i+1:]) // state ppid pgrp session ...
	if len(f) < 4 {
		return "", 0, 0, false
	}
	pgrp, _ = strconv.Atoi(f[2])
	session, _ = strconv.Atoi(f[3])
	return f[0], pgrp, session, true
}

// RSS returns the resident memory of each dyno's worker: every live process
// of the dyno but the agent, which is what MEMORY_SOURCE=tree measures. A
// dyno without a running agent is left out.
func (s *Sim) RSS() map[string]uint64 {
	agents := map[string]int{}
	for _, name := range s.Dynos() {
		if pid := s.Agent(name); pid != 0 {
			agents[name] = pid
		}
	}
	all := sessions()
	out := map[string]uint64{}
	for name, agent := range agents {
		var total uint64
		for _, pid := range all[agent] {
			if pid != agent {
				total += vmRSS(pid)
			}
		}
		out[name] = total
	}
	return out
}

func vmRSS(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
