// Package heartbeat coordinates restarts across the dynos of an app: each
// agent's presence, its healthy peers, and the restart lease that lets only a
// few dynos restart at a time. Standalone runs use the in-process Local fleet;
// runs with a Redis URL use the Redis fleet.
package heartbeat

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// States an agent moves through, in order, on its way to a restart.
const (
	StateWatching   = "watching"
	StateWanting    = "wanting"
	StateLeased     = "leased"
	StateQuieting   = "quieting"
	StateDraining   = "draining"
	StateRestarting = "restarting"
)

// Presence is what one agent tells the fleet about itself on every check.
type Presence struct {
	Dyno        string    `json:"dyno"`
	ProcessType string    `json:"process_type"`
	State       string    `json:"state"`
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
	return p.State == StateWatching || p.State == StateWanting
}

// JobGrowth is the memory growth attributed to one job class.
type JobGrowth struct {
	Class string `json:"class"`
	Bytes int64  `json:"bytes"`
	Runs  int    `json:"runs"`
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
