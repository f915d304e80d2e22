package heartbeat

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Local is the fleet of a standalone agent: no Redis, the restart lease kept
// in process so the agent runs the same lease-first flow with or without
// Redis. It follows the Redis fleet's lease rules (holder and boot, hand-over
// and successor, first come first served) so the two can be tested alike;
// there are no peers to wait for, nothing expires on its own, and nothing is
// lost but with the process. Join adds more members to the same store.
type Local struct {
	Dyno string
	Now  func() time.Time

	boot    string
	started time.Time
	store   *localStore
	freed   chan struct{}
}

type localStore struct {
	mu            sync.Mutex
	slots         int
	bootAllowance time.Duration
	presenceTTL   time.Duration
	next          int64
	held          map[int]*localLease
	queue         map[string]time.Time // dyno -> first asked
	presences     map[string]Presence
	members       []*Local
}

// localLease is a lease with the renewal stamps of its holder and successor.
type localLease struct {
	Lease
	holderSeen, successorSeen time.Time
}

// NewLocal returns an in-process fleet with the given number of slots and
// its first member, dyno.
func NewLocal(dyno string, slots int) *Local {
	if slots < 1 {
		slots = 1
	}
	s := &localStore{slots: slots, bootAllowance: DefaultBootAllowance, presenceTTL: minPresenceTTL,
		held: map[int]*localLease{}, queue: map[string]time.Time{}, presences: map[string]Presence{}}
	return s.join(dyno, time.Now)
}

// Join adds an agent of dyno (a new boot, started now) to l's fleet.
func (l *Local) Join(dyno string) *Local { return l.store.join(dyno, l.Now) }

// SetClock makes now this member's clock and the time it started.
func (l *Local) SetClock(now func() time.Time) {
	l.Now, l.started = now, now()
}

// SetTimes sets how long a handed-over lease waits for its successor and how
// long a holder may go without renewing before it counts as gone (see
// RedisOptions); for tests of the lease rules.
func (l *Local) SetTimes(bootAllowance, presenceTTL time.Duration) {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	l.store.bootAllowance, l.store.presenceTTL = bootAllowance, presenceTTL
}

func (s *localStore) join(dyno string, now func() time.Time) *Local {
	if now == nil {
		now = time.Now
	}
	m := &Local{Dyno: dyno, Now: now, boot: NewBootID(), started: now(), store: s, freed: make(chan struct{}, 1)}
	s.mu.Lock()
	s.members = append(s.members, m)
	s.mu.Unlock()
	return m
}

// Boot is this member's boot id.
func (l *Local) Boot() string { return l.boot }

// Publish keeps the latest presence; a dyno no longer wanting leaves the queue.
func (l *Local) Publish(_ context.Context, p Presence) error {
	s := l.store
	s.mu.Lock()
	defer s.mu.Unlock()
	p.Dyno, p.Boot = l.Dyno, l.boot
	if p.UpdatedAt.IsZero() {
		p.UpdatedAt = l.Now()
	}
	s.presences[l.Dyno] = p
	if p.State != StateWanting {
		delete(s.queue, l.Dyno)
	}
	return nil
}

// Presence returns what this member last published.
func (l *Local) Presence() Presence {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	return l.store.presences[l.Dyno]
}

// Acquire takes a free slot if no live waiter asked before this dyno.
func (l *Local) Acquire(context.Context) (Lease, error) {
	s := l.store
	s.mu.Lock()
	defer s.mu.Unlock()
	now := l.Now()
	var free []int
	for slot := 0; slot < s.slots; slot++ {
		cur, taken := s.held[slot]
		switch {
		case taken && cur.HeldBy(l.Dyno, l.boot):
			delete(s.queue, l.Dyno)
			return cur.Lease, nil
		case taken && s.stale(cur, now):
			delete(s.held, slot)
			free = append(free, slot)
		case !taken:
			free = append(free, slot)
		}
	}
	if _, ok := s.queue[l.Dyno]; !ok {
		s.queue[l.Dyno] = now
	}
	if len(free) == 0 {
		return Lease{}, ErrNoSlot
	}
	if ahead := s.ahead(l.Dyno, now); ahead >= len(free) {
		return Lease{}, fmt.Errorf("%w: %d dynos asked first", ErrNoSlot, ahead)
	}
	s.next++
	lease := Lease{Slot: free[0], Holder: l.Dyno, HolderBoot: l.boot, ProcessType: ProcessType(l.Dyno),
		Token: s.next, AcquiredAt: now}
	s.held[free[0]] = &localLease{Lease: lease, holderSeen: now}
	delete(s.queue, l.Dyno)
	return lease, nil
}

// ahead counts the live waiters queued before dyno, dropping dead ones; a
// waiter is live while its presence is younger than the presence TTL.
func (s *localStore) ahead(dyno string, now time.Time) int {
	mine := s.queue[dyno]
	n := 0
	for w, at := range s.queue {
		if w == dyno || at.After(mine) || (at.Equal(mine) && w > dyno) {
			continue
		}
		if p, ok := s.presences[w]; ok && now.Sub(p.UpdatedAt) < s.presenceTTL {
			n++
		} else {
			delete(s.queue, w)
		}
	}
	return n
}

// stale mirrors the Redis rule: handed over BootAllowance ago, and neither
// holder nor successor renewed it for the presence TTL.
func (s *localStore) stale(l *localLease, now time.Time) bool {
	if l.RestartAt.IsZero() || now.Before(l.RestartAt.Add(s.bootAllowance)) {
		return false
	}
	if now.Sub(l.holderSeen) <= s.presenceTTL {
		return false
	}
	return l.Successor == "" || now.Sub(l.successorSeen) > s.presenceTTL
}

// Renew checks the lease is still held by this member; an in-process lease
// never expires.
func (l *Local) Renew(_ context.Context, lease Lease) error {
	s := l.store
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.held[lease.Slot]
	if !ok || cur.Token != lease.Token || !cur.HeldBy(l.Dyno, l.boot) {
		return ErrNotHolder
	}
	s.seen(cur, l, l.Now())
	return nil
}

func (s *localStore) seen(cur *localLease, m *Local, now time.Time) {
	if cur.Holder == m.Dyno && cur.HolderBoot == m.boot {
		cur.holderSeen = now
	} else {
		cur.successorSeen = now
	}
}

// HandOver records that the holder is about to ask the platform to replace
// its dyno (see Redis.HandOver).
func (l *Local) HandOver(_ context.Context, lease Lease) (Lease, error) {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	cur, ok := l.asHolder(lease)
	if !ok {
		return Lease{}, ErrNotHolder
	}
	now := l.Now()
	if cur.RestartAt.IsZero() {
		cur.RestartAt = now
	}
	cur.holderSeen = now
	return cur.Lease, nil
}

// asHolder returns lease as stored if this member is its holder; the
// store's lock is held.
func (l *Local) asHolder(lease Lease) (*localLease, bool) {
	cur, ok := l.store.held[lease.Slot]
	if !ok || cur.Token != lease.Token || cur.Holder != l.Dyno || cur.HolderBoot != l.boot {
		return nil, false
	}
	return cur, true
}

// TakeBack undoes the holder's hand-over (see Fleet.TakeBack).
func (l *Local) TakeBack(_ context.Context, lease Lease) (Lease, error) {
	l.store.mu.Lock()
	defer l.store.mu.Unlock()
	cur, ok := l.asHolder(lease)
	if !ok {
		return Lease{}, ErrNotHolder
	}
	cur.RestartAt, cur.Successor, cur.SuccessorBoot, cur.ClaimedAt = time.Time{}, "", "", time.Time{}
	cur.successorSeen = time.Time{}
	cur.holderSeen = l.Now()
	return cur.Lease, nil
}

// Release frees the slot if this member holds lease (as holder or successor).
func (l *Local) Release(_ context.Context, lease Lease) error {
	s := l.store
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.held[lease.Slot]
	if !ok || cur.Token != lease.Token || !cur.HeldBy(l.Dyno, l.boot) {
		return ErrNotHolder
	}
	delete(s.held, lease.Slot)
	for _, m := range s.members {
		select {
		case m.freed <- struct{}{}:
		default:
		}
	}
	return nil
}

// Held returns the lease this member holds, or claims one handed over
// before it started, by the rules of Redis.Held.
func (l *Local) Held(context.Context) (Lease, bool, error) {
	s := l.store
	s.mu.Lock()
	defer s.mu.Unlock()
	now := l.Now()
	slots := make([]int, 0, len(s.held))
	for slot := range s.held {
		slots = append(slots, slot)
	}
	sort.Ints(slots)
	var best *localLease
	bestSame := false
	for _, slot := range slots {
		cur := s.held[slot]
		if cur.HeldBy(l.Dyno, l.boot) {
			return cur.Lease, true, nil
		}
		if OneOff(l.Dyno) || cur.RestartAt.IsZero() || cur.ProcessType != ProcessType(l.Dyno) || l.started.Before(cur.RestartAt) {
			continue
		}
		if cur.Successor != "" && now.Sub(cur.successorSeen) <= s.presenceTTL {
			continue
		}
		same := cur.Holder == l.Dyno
		if !same && cedarName(cur.Holder) {
			continue
		}
		if best == nil || (same && !bestSame) || (same == bestSame && cur.RestartAt.Before(best.RestartAt)) {
			best, bestSame = cur, same
		}
	}
	if best == nil {
		return Lease{}, false, nil
	}
	best.Successor, best.SuccessorBoot, best.ClaimedAt, best.successorSeen = l.Dyno, l.boot, now, now
	return best.Lease, true, nil
}

// SlotFreed is signalled after each Release.
func (l *Local) SlotFreed() <-chan struct{} { return l.freed }
