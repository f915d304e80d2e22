// Package heartbeat is the fleet: the words the dynos of an app share (State,
// Presence, Lease, the lease errors) and the Fleet interface the agent
// coordinates through, together with its two implementations. Local is the
// in-process fleet of a standalone agent; Redis is the fleet of agents that
// share a Redis, where each agent's presence, its healthy peers and the
// restart lease live so that only a few dynos restart at a time.
//
// The fleet only answers questions (may I restart? who holds a slot?); the
// agent package decides when a restart is wanted and carries it out. Redis.Run
// is the one long-running loop here (the freed-slot subscriber); the command
// starts and stops it with the agent's other loops.
package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dynocycle/dynocycle/internal/bytesize"
)

// State is where an agent is on its way to a restart, as published in its
// Presence and exported as a metric.
type State string

// The states an agent moves through, in order, on its way to a restart.
const (
	StateWatching   State = "watching"
	StateWanting    State = "wanting"
	StateLeased     State = "leased"
	StateQuieting   State = "quieting"
	StateDraining   State = "draining"
	StateRestarting State = "restarting"
)

// States lists every State in order; metrics and status derive from it.
var States = []State{StateWatching, StateWanting, StateLeased, StateQuieting, StateDraining, StateRestarting}

// HealthyStates are the states of an agent whose worker takes jobs: it counts
// as a healthy peer. The acquire script of the Redis fleet is built from this
// list.
var HealthyStates = []State{StateWatching, StateWanting}

// Fleet coordinates restarts among the dynos of an app. Local and Redis
// implement it; the agent is its one consumer.
type Fleet interface {
	// Publish records this agent's presence; it expires unless refreshed.
	Publish(ctx context.Context, p Presence) error
	// Acquire takes a restart slot. It fails with ErrNoSlot (possibly
	// wrapped) when all slots are taken and with *PeersError when too few
	// healthy peers are up: both mean "keep working, try again later".
	Acquire(ctx context.Context) (Lease, error)
	// Renew extends a held lease; ErrNotHolder when it was lost.
	Renew(ctx context.Context, l Lease) error
	// Release frees a held lease; ErrNotHolder when it was lost.
	Release(ctx context.Context, l Lease) error
	// Held returns a lease this dyno holds from before its restart.
	Held(ctx context.Context) (Lease, bool, error)
	// SlotFreed is signalled when a slot may have been freed.
	SlotFreed() <-chan struct{}
}

// Presence is what one agent tells the fleet about itself on every check.
type Presence struct {
	Dyno        string    `json:"dyno"`
	ProcessType string    `json:"process_type"`
	State       State     `json:"state"`
	RSS         uint64    `json:"rss_bytes"`
	Limit       uint64    `json:"limit_bytes"`
	StartedAt   time.Time `json:"started_at"`
	Restarts    int       `json:"restarts"`
	LastReason  string    `json:"last_reason,omitempty"`
	Version     string    `json:"version"`
	UpdatedAt   time.Time `json:"updated_at"`
	// TopJobs names the job classes that grew memory the most, largest first.
	TopJobs []JobGrowth `json:"top_jobs,omitempty"`
}

// Healthy reports whether the agent is up and not on its way to a restart.
func (p Presence) Healthy() bool {
	return slices.Contains(HealthyStates, p.State)
}

// JobGrowth is the memory growth attributed to one job class.
type JobGrowth struct {
	Class string `json:"class"`
	Bytes int64  `json:"bytes"`
	Runs  int    `json:"runs"`
}

// String is how logs and `dynocycle status` name the growth of a class:
// "ExportCsvJob +12.0MB over 40 runs".
func (j JobGrowth) String() string {
	return fmt.Sprintf("%s +%s over %d runs", j.Class, bytesize.MB(uint64(max(j.Bytes, 0))), j.Runs)
}

// Lease is one held restart slot. Token is a fencing token: it grows with
// every acquisition in the app, so a stale holder can be told apart from the
// current one even when both carry the same dyno name.
type Lease struct {
	Slot       int       `json:"slot"`
	Holder     string    `json:"holder"`
	Token      int64     `json:"token"`
	AcquiredAt time.Time `json:"acquired_at"`
	ExpiresAt  time.Time `json:"expires_at"`
}

// ErrNoSlot means every restart slot of the app is taken.
var ErrNoSlot = errors.New("no restart slot free")

// ErrNotHolder means the lease is no longer held by the caller (it expired,
// or another dyno holds the slot now).
var ErrNotHolder = errors.New("lease not held by this dyno")

// PeersError means too few other healthy dynos of the same process type are
// up to allow a restart now.
type PeersError struct {
	ProcessType string
	Have, Want  int
}

func (e *PeersError) Error() string {
	return fmt.Sprintf("%d healthy %s peers, %d required", e.Have, e.ProcessType, e.Want)
}

// ProcessType returns the process type of a dyno name: "worker" for
// "worker.1" (Cedar) and for "worker-5d8f7c9b4-x2x9z" (Fir).
func ProcessType(dyno string) string {
	if i := strings.IndexByte(dyno, '.'); i >= 0 {
		return dyno[:i]
	}
	// Fir names are <type>-<replicaset hash>-<pod id>; the type may itself hold dashes.
	parts := strings.Split(dyno, "-")
	if len(parts) >= 3 {
		return strings.Join(parts[:len(parts)-2], "-")
	}
	return dyno
}
