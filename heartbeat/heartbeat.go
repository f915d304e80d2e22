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
	"crypto/rand"
	"encoding/base64"
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
	// HandOver records on a held lease that the platform is about to
	// replace this agent's dyno, so the agent that replaces it can claim the
	// lease; it returns the lease as recorded.
	HandOver(ctx context.Context, l Lease) (Lease, error)
	// TakeBack undoes a hand-over the platform refused: the lease is its
	// holder's alone again, with no hand-over and no successor, so no new
	// dyno claims it while the holder restarts its worker in place. It
	// returns the lease as recorded; ErrNotHolder when the caller is not its
	// holder.
	TakeBack(ctx context.Context, l Lease) (Lease, error)
	// Held returns the lease this agent holds, or claims the lease handed
	// over by the dyno this one replaces.
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
	// Boot is the agent process's boot id (see Lease).
	Boot string `json:"boot,omitempty"`
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
//
// A lease names its holder precisely: the dyno and the boot (one agent
// process, see NewBootID). Only that holder, or the successor that claimed it
// (see Fleet.Held), may renew or release it; a later agent under the same
// dyno name is a different holder.
type Lease struct {
	Slot        int       `json:"slot"`
	Holder      string    `json:"holder"`
	HolderBoot  string    `json:"holder_boot,omitempty"`
	ProcessType string    `json:"process_type,omitempty"`
	Token       int64     `json:"token"`
	AcquiredAt  time.Time `json:"acquired_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	// RestartAt is when the holder recorded that it was about to ask the
	// platform to replace its dyno (HandOver); zero before.
	RestartAt time.Time `json:"restart_at,omitzero"`
	// Successor and SuccessorBoot name the new dyno of the same process
	// type that claimed the lease after RestartAt; it releases the lease
	// once its worker is healthy.
	Successor     string    `json:"successor,omitempty"`
	SuccessorBoot string    `json:"successor_boot,omitempty"`
	ClaimedAt     time.Time `json:"claimed_at,omitzero"`
}

// HeldBy reports whether the agent (dyno, boot) may renew or release l: it
// is the holder or the successor.
func (l Lease) HeldBy(dyno, boot string) bool {
	return (l.Holder == dyno && l.HolderBoot == boot) || (l.Successor == dyno && l.SuccessorBoot == boot && dyno != "")
}

// HandedOver reports whether the holder recorded a restart by the platform.
func (l Lease) HandedOver() bool { return !l.RestartAt.IsZero() }

// NewBootID returns a random id for one agent process, so that a lease
// names the process that took it, not just the dyno's name, which the next
// process of the dyno (or of another app) shares.
func NewBootID() string {
	var b [9]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// DefaultBootAllowance is how long a handed-over lease waits for a
// successor once its holder is gone (see RedisOptions.BootAllowance).
const DefaultBootAllowance = 2 * time.Minute

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

// ProcessType returns the process type of a dyno name, in both of Heroku's
// forms: "worker" for "worker.1" (Cedar) and for "worker-5d8f7c9b4-x2x9z"
// (Fir: <type>-<replicaset hash>-<pod id>, and the type may itself hold
// dashes); "run" for the one-off "run.1234" and for Fir's one-off
// "run-7k2xp" (<type>-<id>); "scheduler" for "scheduler.5678"; "release" for
// "release.42".
func ProcessType(dyno string) string {
	if i := strings.IndexByte(dyno, '.'); i >= 0 {
		return dyno[:i]
	}
	parts := strings.Split(dyno, "-")
	switch {
	case len(parts) >= 3:
		return strings.Join(parts[:len(parts)-2], "-")
	case len(parts) == 2 && oneOffTypes[parts[0]]:
		return parts[0]
	}
	return dyno
}

// oneOffTypes are the process types of dynos that are never replaced by the
// platform: `heroku run`, Heroku Scheduler and the release phase.
var oneOffTypes = map[string]bool{"run": true, "scheduler": true, "release": true}

// OneOff reports whether dyno is a one-off dyno (run, scheduler, release):
// the platform never brings one back, so it never succeeds another dyno.
func OneOff(dyno string) bool { return oneOffTypes[ProcessType(dyno)] }

// cedarName reports whether dyno has Cedar's form <type>.<n>: the platform
// brings a replaced Cedar dyno back under the same name, so only that name
// may succeed it. Any other form (Fir, a pod name) is replaced under a new
// name, so any new dyno of the type may.
func cedarName(dyno string) bool {
	i := strings.IndexByte(dyno, '.')
	if i <= 0 || i == len(dyno)-1 {
		return false
	}
	for _, c := range dyno[i+1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
