package heartbeat

import (
	"context"
	"sync"
	"time"
)

// Local is the fleet of a standalone agent: one dyno, no Redis. It keeps the
// restart lease in process so the agent runs the same lease-first flow with or
// without Redis; there are no peers to wait for.
type Local struct {
	Dyno  string
	Slots int
	Now   func() time.Time

	mu       sync.Mutex
	next     int64
	held     map[int]Lease
	presence Presence
	freed    chan struct{}
}

// NewLocal returns an in-process fleet with the given number of slots.
func NewLocal(dyno string, slots int) *Local {
	if slots < 1 {
		slots = 1
	}
	return &Local{Dyno: dyno, Slots: slots, Now: time.Now, held: map[int]Lease{}, freed: make(chan struct{}, 1)}
}

// Publish keeps the latest presence for Presence.
func (l *Local) Publish(_ context.Context, p Presence) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.presence = p
	return nil
}

// Presence returns what was last published.
func (l *Local) Presence() Presence {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.presence
}

// Acquire takes the first free slot.
func (l *Local) Acquire(context.Context) (Lease, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for slot := 0; slot < l.Slots; slot++ {
		if _, taken := l.held[slot]; taken {
			continue
		}
		l.next++
		now := l.Now()
		lease := Lease{Slot: slot, Holder: l.Dyno, Token: l.next, AcquiredAt: now}
		l.held[slot] = lease
		return lease, nil
	}
	return Lease{}, ErrNoSlot
}

// Renew checks the lease is still held; an in-process lease never expires.
func (l *Local) Renew(_ context.Context, lease Lease) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, ok := l.held[lease.Slot]; !ok || cur.Token != lease.Token {
		return ErrNotHolder
	}
	return nil
}

// Release frees the slot if lease still holds it.
func (l *Local) Release(_ context.Context, lease Lease) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, ok := l.held[lease.Slot]; !ok || cur.Token != lease.Token {
		return ErrNotHolder
	}
	delete(l.held, lease.Slot)
	select {
	case l.freed <- struct{}{}:
	default:
	}
	return nil
}

// Held returns a lease held by this dyno, lowest slot first.
func (l *Local) Held(context.Context) (Lease, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for slot := 0; slot < l.Slots; slot++ {
		if lease, ok := l.held[slot]; ok && lease.Holder == l.Dyno {
			return lease, true, nil
		}
	}
	return Lease{}, false, nil
}

// SlotFreed is signalled after each Release.
func (l *Local) SlotFreed() <-chan struct{} { return l.freed }
