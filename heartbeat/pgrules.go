package heartbeat

import "time"

// The lease rules of the Postgres fleet as pure functions: the store reads
// the app's leases, queue and presences under the app's row lock, decides
// here, and writes what was decided in the same transaction. They are the
// rules of the Redis fleet's scripts (see Redis), which Local mirrors too.

// leaseRow is one live lease as stored, with the last renewals of its
// holder and successor.
type leaseRow struct {
	Lease
	HolderSeen    time.Time
	SuccessorSeen time.Time
	// ServerStarted names the server process that wrote the row last (its
	// start time); zero for rows of schema version 1.
	ServerStarted time.Time
}

// serverLife is the database server process now running, as the rules
// see it: when it started, which names it, and how long it has been up on
// its own clock.
type serverLife struct {
	Started time.Time
	Up      time.Duration
}

// waiter is a dyno queued before the caller.
type waiter struct {
	Dyno  string
	Alive bool // its presence has not expired
}

// leaseTimes are the durations the rules compare against.
type leaseTimes struct {
	// BootAllowance: how long a handed-over lease waits for its successor.
	BootAllowance time.Duration
	// Seen: how long a holder or successor may go without renewing before
	// it counts as gone (the presence TTL).
	Seen time.Duration
}

// stale reports a handed-over lease whose holder and successor are both
// gone: handed over BootAllowance ago, and neither renewed it for Seen.
func (l leaseRow) stale(now time.Time, srv serverLife, t leaseTimes) bool {
	if l.RestartAt.IsZero() || now.Before(l.RestartAt.Add(t.BootAllowance)) {
		return false
	}
	if !l.silent(orTime(l.HolderSeen, l.AcquiredAt), now, srv, t) {
		return false
	}
	return l.Successor == "" || l.silent(orTime(l.SuccessorSeen, l.ClaimedAt), now, srv, t)
}

// silent reports a holder or successor last seen at last that has not
// renewed for Seen while the server was up to hear it: the row was last
// written by the server process now running, or that process has been up
// for Seen. A silence that spans a restart of the database is no sign of
// death: nobody could renew meanwhile.
func (l leaseRow) silent(last, now time.Time, srv serverLife, t leaseTimes) bool {
	if now.Sub(last) <= t.Seen {
		return false
	}
	return (!l.ServerStarted.IsZero() && l.ServerStarted.Equal(srv.Started)) || srv.Up > t.Seen
}

func orTime(t, otherwise time.Time) time.Time {
	if t.IsZero() {
		return otherwise
	}
	return t
}

// acquireFacts is what Acquire reads, under the app's row lock, to decide.
type acquireFacts struct {
	Now    time.Time
	Server serverLife
	Epoch  time.Time // the app's created_at
	Token  int64     // the app's fencing token counter
	// Live are the unexpired leases of slots 0..slots-1.
	Live []leaseRow
	// Ahead are the dynos queued before the caller, in asking order.
	Ahead []waiter
	// Peers are the live presences of the other dynos of the caller's type.
	Peers []Presence
}

// Outcomes of decideAcquire.
const (
	acquireHeld     = "held"     // the caller holds Slot already: extend it
	acquireGrant    = "grant"    // grant Slot
	acquireSettling = "settling" // the app is new to the store: wait Left
	acquireNoSlot   = "noslot"   // every slot taken, or Ahead waiters first
	acquirePeers    = "peers"    // Have healthy peers, Want required
)

type acquireOutcome struct {
	Kind string
	Slot int
	Held Lease
	// Stale are handed-over leases whose holder and successor are gone:
	// freed whatever the outcome.
	Stale []leaseRow
	// Dead are waiters ahead whose presence lapsed: they leave the queue.
	Dead       []string
	Ahead      int
	Left       time.Duration
	Have, Want int
	Waived     bool // MinHealthyPeers waived: no other dyno of the type is up
}

// acquireRules are the caller's side of an Acquire.
type acquireRules struct {
	Dyno, Boot, ProcessType string
	Slots, MinPeers         int
	Settle                  time.Duration // <= 0: no settle gate
	leaseTimes
}

// decideAcquire: the caller's own lease (as holder or successor) comes back;
// handed-over leases whose holder and successor are gone are freed; an app
// new to the store grants nothing until it has settled; a free slot goes to
// the caller only if fewer live dynos asked before it than there are free
// slots, and only if enough other dynos of its process type are healthy, not
// counting those that hold a lease. A holder whose presence lapsed is being
// replaced: it still counts as part of the formation, so a two-dyno app is
// never taken for a single one and the peer rule waived.
func decideAcquire(f acquireFacts, r acquireRules) acquireOutcome {
	var out acquireOutcome
	holders := map[string]string{} // dyno -> process type, holders and successors
	taken := map[int]bool{}
	for _, l := range f.Live {
		if l.HeldBy(r.Dyno, r.Boot) {
			return acquireOutcome{Kind: acquireHeld, Slot: l.Slot, Held: l.Lease}
		}
	}
	for _, l := range f.Live {
		if l.stale(f.Now, f.Server, r.leaseTimes) {
			out.Stale = append(out.Stale, l)
			continue
		}
		taken[l.Slot] = true
		holders[l.Holder] = l.ProcessType
		if l.Successor != "" {
			holders[l.Successor] = l.ProcessType
		}
	}
	if r.Settle > 0 {
		if left := f.Epoch.Add(r.Settle).Sub(f.Now); left > 0 {
			out.Kind, out.Left = acquireSettling, left
			return out
		}
	}
	var free []int
	for s := range r.Slots {
		if !taken[s] {
			free = append(free, s)
		}
	}
	if len(free) == 0 {
		out.Kind = acquireNoSlot
		return out
	}
	for _, w := range f.Ahead {
		if w.Alive {
			out.Ahead++
		} else {
			out.Dead = append(out.Dead, w.Dyno)
		}
	}
	if out.Ahead >= len(free) {
		out.Kind = acquireNoSlot
		return out
	}
	out.Kind, out.Slot = acquireGrant, free[0]
	if r.MinPeers <= 0 {
		return out
	}
	seen, have := 0, 0
	counted := map[string]bool{}
	for _, pr := range f.Peers {
		if pr.Dyno == r.Dyno || pr.ProcessType != r.ProcessType || counted[pr.Dyno] {
			continue
		}
		counted[pr.Dyno] = true
		seen++
		if _, holds := holders[pr.Dyno]; pr.Healthy() && !holds {
			have++
		}
	}
	for d, t := range holders {
		if t == r.ProcessType && d != r.Dyno && !counted[d] {
			seen++
		}
	}
	switch {
	case seen == 0:
		out.Waived = true
	case have < r.MinPeers:
		out.Kind, out.Have, out.Want = acquirePeers, have, r.MinPeers
	}
	return out
}

// claimer is the agent looking up its lease in Held.
type claimer struct {
	Dyno, Boot, ProcessType string
	Started                 time.Time // when the agent process started
	MayClaim                bool      // false for one-off dynos
}

// pickHeld returns the lease c holds (mine), or the one it may claim as
// successor: handed over before c started by a dyno of c's process type
// whose successor, if any, stopped renewing it for Seen. On Cedar names only
// the holder's own name may claim (the platform brings a Cedar dyno back
// under its name); otherwise any name may, the caller's own name first, then
// the oldest hand-over. ok is false when there is neither.
func pickHeld(live []leaseRow, c claimer, now time.Time, srv serverLife, t leaseTimes) (l leaseRow, mine, ok bool) {
	var best *leaseRow
	bestSame := false
	for i := range live {
		cur := &live[i]
		if cur.HeldBy(c.Dyno, c.Boot) {
			return *cur, true, true
		}
		if !c.MayClaim || cur.RestartAt.IsZero() || cur.ProcessType != c.ProcessType || c.Started.Before(cur.RestartAt) {
			continue
		}
		if cur.Successor != "" && !cur.silent(orTime(cur.SuccessorSeen, cur.ClaimedAt), now, srv, t) {
			continue
		}
		same := cur.Holder == c.Dyno
		if !same && cedarName(cur.Holder) {
			continue
		}
		if best == nil || (same && !bestSame) || (same == bestSame && cur.RestartAt.Before(best.RestartAt)) {
			best, bestSame = cur, same
		}
	}
	if best == nil {
		return leaseRow{}, false, false
	}
	return *best, false, true
}

// Outcomes of decideRenew.
const (
	renewExtend   = "extend"    // the row is the caller's: stamp its renewal
	renewRecord   = "record"    // the caller is the successor the row forgot: record it
	renewRestore  = "restore"   // no live row: write the caller's copy back
	renewNotHeld  = "notheld"   // another lease or holder has the slot
	renewByHolder = "holder"    // (with extend/restore) the caller is the holder
	renewBySucc   = "successor" // (with extend/restore) the caller is the successor
)

// decideRenew is Renew's slow path, for a renewal that did not find its
// row as it left it. cur is the slot's live row, nil when there is none (it
// expired, or the fleet's data was lost); mine is the caller's copy. A row
// restored by the old holder without its successor (the holder did not know
// of it yet) gets the successor recorded again when the successor renews,
// unless the holder took its hand-over back meanwhile.
func decideRenew(cur *leaseRow, mine Lease, dyno, boot string) (action, as string) {
	as = renewBySucc
	if mine.Holder == dyno && mine.HolderBoot == boot {
		as = renewByHolder
	}
	if cur == nil {
		return renewRestore, as
	}
	switch {
	case cur.Token != mine.Token:
		return renewNotHeld, ""
	case cur.Holder == dyno && cur.HolderBoot == boot:
		return renewExtend, renewByHolder
	case cur.Successor != "" && cur.Successor == dyno && cur.SuccessorBoot == boot:
		return renewExtend, renewBySucc
	case cur.Successor == "" && !cur.RestartAt.IsZero() && mine.Successor == dyno && mine.SuccessorBoot == boot &&
		cur.Holder == mine.Holder && cur.HolderBoot == mine.HolderBoot:
		return renewRecord, renewBySucc
	}
	return renewNotHeld, ""
}
