// Package sidekiq reads the records Sidekiq keeps about itself in Redis (the
// same ones its Web UI reads) to find the Sidekiq processes of the supervised
// child, quiet and drain them without losing a job, notice when a job ends,
// and attribute memory growth to the job classes that were running.
//
// It understands Sidekiq 6.4 to 8.1: the `<identity>:workers` key of 6.4.0 and
// 6.4.1, the `<identity>:work` key of later versions, the `concurrency` hash
// field of 8.1.2+, and the key prefix of 6.x's redis-namespace.
//
// Worker fills four of the agent's ports (quiet and drain, job ends, growth
// attribution, health); its Run loop, which reads the work hashes, is
// started and stopped by the command beside the agent.
package sidekiq

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ErrStale marks a process whose hash is gone (expired, or never written)
// while its identity is still a member of the `processes` set.
var ErrStale = errors.New("stale process: no info")

// Identity is a Sidekiq process identity, `hostname:pid:nonce`.
type Identity struct {
	Hostname string
	PID      int
	Nonce    string
}

// ParseIdentity parses an identity from the right: the hostname may contain
// colons, the pid and nonce never do.
func ParseIdentity(s string) (Identity, error) {
	j := strings.LastIndexByte(s, ':')
	if j < 0 {
		return Identity{}, fmt.Errorf("parse identity %q: no nonce", s)
	}
	i := strings.LastIndexByte(s[:j], ':')
	if i <= 0 {
		return Identity{}, fmt.Errorf("parse identity %q: no hostname", s)
	}
	nonce := s[j+1:]
	if nonce == "" {
		return Identity{}, fmt.Errorf("parse identity %q: empty nonce", s)
	}
	pid, err := strconv.Atoi(s[i+1 : j])
	if err != nil || pid <= 0 {
		return Identity{}, fmt.Errorf("parse identity %q: bad pid", s)
	}
	return Identity{Hostname: s[:i], PID: pid, Nonce: nonce}, nil
}

// ProcessHash holds the raw fields of a process hash `<identity>`, as read
// with HMGET. An empty string is a missing field.
type ProcessHash struct {
	Info        string
	Busy        string
	Beat        string
	Quiet       string
	RSS         string
	Concurrency string // a hash field only from 8.1.2
}

// Process is one Sidekiq process as its last heartbeat described it.
type Process struct {
	ID          string    `json:"identity"`
	Hostname    string    `json:"hostname"`
	PID         int       `json:"pid"`
	Tag         string    `json:"tag,omitempty"`
	Labels      []string  `json:"labels,omitempty"`
	Queues      []string  `json:"queues"`
	Version     string    `json:"version,omitempty"` // 7.0.2+
	Embedded    bool      `json:"embedded,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	Concurrency int       `json:"concurrency"`
	Busy        int       `json:"busy"`
	Beat        time.Time `json:"beat"`
	Quiet       bool      `json:"quiet"` // quiet or stopping
	RSSKiB      int64     `json:"rss_kib"`
	Work        []Work    `json:"work,omitempty"` // jobs running at the last beat

	// rawWork counts the fields of the work hash, parsed or not: an entry
	// that does not parse is still a job in flight, so it blocks a drain.
	rawWork int
}

type processInfo struct {
	Hostname    string   `json:"hostname"`
	StartedAt   *float64 `json:"started_at"`
	PID         *int     `json:"pid"`
	Tag         string   `json:"tag"`
	Concurrency *int     `json:"concurrency"`
	Queues      []string `json:"queues"`
	Labels      []string `json:"labels"`
	Version     string   `json:"version"`
	Embedded    bool     `json:"embedded"`
}

// ParseProcess parses the process hash of identity id. A missing info field
// is ErrStale; the pid in info must match the identity's.
func ParseProcess(id string, h ProcessHash) (Process, error) {
	ident, err := ParseIdentity(id)
	if err != nil {
		return Process{}, err
	}
	if h.Info == "" {
		return Process{}, fmt.Errorf("process %s: %w", id, ErrStale)
	}
	var info processInfo
	if err := json.Unmarshal([]byte(h.Info), &info); err != nil {
		return Process{}, fmt.Errorf("process %s: parse info: %w", id, err)
	}
	if info.PID == nil || *info.PID != ident.PID {
		return Process{}, fmt.Errorf("process %s: info pid does not match identity", id)
	}
	p := Process{
		ID:       id,
		Hostname: ident.Hostname,
		PID:      ident.PID,
		Tag:      info.Tag,
		Labels:   info.Labels,
		Queues:   info.Queues,
		Version:  info.Version,
		Embedded: info.Embedded,
	}
	if info.StartedAt != nil {
		p.StartedAt = floatTime(*info.StartedAt)
	}
	if p.Busy, err = parseCount(h.Busy); err != nil {
		return Process{}, fmt.Errorf("process %s: busy: %w", id, err)
	}
	beat, err := strconv.ParseFloat(h.Beat, 64)
	if err != nil || !validEpoch(beat) {
		return Process{}, fmt.Errorf("process %s: bad beat %q", id, h.Beat)
	}
	p.Beat = floatTime(beat)
	switch h.Quiet {
	case "true":
		p.Quiet = true
	case "false", "":
		// Before 6.0 there was no quiet field; absent means not quiet.
	default:
		return Process{}, fmt.Errorf("process %s: bad quiet %q", id, h.Quiet)
	}
	if h.RSS != "" { // rss appeared in 6.1.3
		if p.RSSKiB, err = strconv.ParseInt(h.RSS, 10, 64); err != nil || p.RSSKiB < 0 {
			return Process{}, fmt.Errorf("process %s: bad rss %q", id, h.RSS)
		}
	}
	switch {
	case h.Concurrency != "": // 8.1.2+ moved it out of info
		if p.Concurrency, err = parseCount(h.Concurrency); err != nil {
			return Process{}, fmt.Errorf("process %s: concurrency: %w", id, err)
		}
	case info.Concurrency != nil:
		if *info.Concurrency < 0 {
			return Process{}, fmt.Errorf("process %s: negative concurrency", id)
		}
		p.Concurrency = *info.Concurrency
	}
	return p, nil
}

func parseCount(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad count %q", s)
	}
	return n, nil
}

// validEpoch rejects NaN, negative and absurd epoch seconds (past the year
// 5000), which would overflow the conversion to time.Time.
func validEpoch(f float64) bool {
	return !math.IsNaN(f) && f >= 0 && f < 1e11
}

func floatTime(f float64) time.Time {
	if !validEpoch(f) {
		return time.Time{}
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// Work is one job running in a Sidekiq process at its last heartbeat.
type Work struct {
	TID   string    `json:"tid"` // thread id, the field in the work hash
	Queue string    `json:"queue"`
	Class string    `json:"class"` // ActiveJob wrappers resolved to the wrapped class
	JID   string    `json:"jid"`
	RunAt time.Time `json:"run_at"`
}

// activeJobWrappers are the classes ActiveJob enqueues in Sidekiq; the job's
// own class is in `wrapped`. The second is the 8.x name.
var activeJobWrappers = map[string]bool{
	"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper": true,
	"Sidekiq::ActiveJob::Wrapper":                          true,
}

type workValue struct {
	Queue   string          `json:"queue"`
	Payload json.RawMessage `json:"payload"`
	RunAt   *float64        `json:"run_at"`
}

type jobPayload struct {
	Class   string            `json:"class"`
	Wrapped json.RawMessage   `json:"wrapped"`
	JID     string            `json:"jid"`
	Queue   string            `json:"queue"`
	Args    []json.RawMessage `json:"args"`
}

// ParseWork parses one value of a work hash (field tid). The payload is the
// job's JSON as a string, so it is decoded a second time.
func ParseWork(tid, value string) (Work, error) {
	var v workValue
	if err := json.Unmarshal([]byte(value), &v); err != nil {
		return Work{}, fmt.Errorf("work %s: %w", tid, err)
	}
	if len(v.Payload) == 0 {
		return Work{}, fmt.Errorf("work %s: no payload", tid)
	}
	raw := []byte(v.Payload)
	// Every Sidekiq version stores the payload as a string; accept an object
	// too in case some tool wrote it decoded.
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return Work{}, fmt.Errorf("work %s: payload: %w", tid, err)
		}
		raw = []byte(s)
	}
	var p jobPayload
	if err := json.Unmarshal(raw, &p); err != nil {
		return Work{}, fmt.Errorf("work %s: payload: %w", tid, err)
	}
	if p.Class == "" {
		return Work{}, fmt.Errorf("work %s: payload has no class", tid)
	}
	if p.JID == "" {
		return Work{}, fmt.Errorf("work %s: payload has no jid", tid)
	}
	w := Work{TID: tid, Queue: v.Queue, Class: jobClass(p), JID: p.JID}
	if w.Queue == "" {
		w.Queue = p.Queue
	}
	if v.RunAt != nil {
		w.RunAt = floatTime(*v.RunAt)
	}
	return w, nil
}

// jobClass resolves ActiveJob wrappers the way Sidekiq's display_class does:
// `wrapped`, else the job_class in the first argument, else the wrapper.
func jobClass(p jobPayload) string {
	if !activeJobWrappers[p.Class] {
		return p.Class
	}
	var wrapped string
	if json.Unmarshal(p.Wrapped, &wrapped) == nil && wrapped != "" {
		return wrapped
	}
	if len(p.Args) > 0 {
		var a struct {
			JobClass string `json:"job_class"`
		}
		if json.Unmarshal(p.Args[0], &a) == nil && a.JobClass != "" {
			return a.JobClass
		}
	}
	return p.Class
}

// ShutdownTimeout returns Sidekiq's -t/--timeout from a sidekiq command line
// (e.g. `bundle exec sidekiq -t 25`), so the caller can check that
// SHUTDOWN_WAIT is at least the timeout plus 5 s. ok is false when the
// command line does not set it (Sidekiq's default is 25 s, or sidekiq.yml).
func ShutdownTimeout(args []string) (d time.Duration, ok bool) {
	for i, a := range args {
		var v string
		switch {
		case a == "-t" || a == "--timeout":
			if i+1 >= len(args) {
				return 0, false
			}
			v = args[i+1]
		case strings.HasPrefix(a, "--timeout="):
			v = strings.TrimPrefix(a, "--timeout=")
		case strings.HasPrefix(a, "-t") && len(a) > 2:
			v = strings.TrimPrefix(a[2:], "=")
		default:
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	return 0, false
}
