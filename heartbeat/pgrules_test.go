package heartbeat

import (
	"reflect"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 14, 9, 0, 0, 0, time.UTC)

// The database server the rows were written on, up for a day; a restart
// of it a moment ago.
var (
	server    = serverLife{Started: t0.Add(-24 * time.Hour), Up: 24 * time.Hour}
	restarted = serverLife{Started: t0.Add(-5 * time.Second), Up: 5 * time.Second}
)

func row(slot int, dyno, boot string, tok int64) leaseRow {
	return leaseRow{Lease: Lease{Slot: slot, Holder: dyno, HolderBoot: boot, ProcessType: ProcessType(dyno), Token: tok,
		AcquiredAt: t0.Add(-time.Hour)}, HolderSeen: t0, ServerStarted: server.Started}
}

func presence(dyno string, p Presence) Presence {
	p.Dyno, p.ProcessType = dyno, ProcessType(dyno)
	return p
}

func TestDecideAcquire(t *testing.T) {
	times := leaseTimes{BootAllowance: 2 * time.Minute, Seen: 15 * time.Second}
	rules := acquireRules{Dyno: "worker.1", Boot: "b1", ProcessType: "worker", Slots: 2, MinPeers: 1, Settle: time.Minute, leaseTimes: times}
	old := t0.Add(-time.Hour)
	handedOver := func(l leaseRow, at time.Time, lastSeen time.Time) leaseRow {
		l.RestartAt, l.HolderSeen = at, lastSeen
		return l
	}
	successor := row(0, "worker.1", "b1", 7)
	successor.Holder, successor.HolderBoot, successor.Successor, successor.SuccessorBoot = "worker.1", "old", "worker.1", "b1"
	stale := handedOver(row(0, "worker.5", "x", 3), t0.Add(-3*time.Minute), t0.Add(-time.Minute))
	for _, tc := range []struct {
		name  string
		facts acquireFacts
		rules acquireRules
		want  acquireOutcome
	}{
		{name: "held slot comes back", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: t0, Live: []leaseRow{row(0, "worker.2", "b2", 1), row(1, "worker.1", "b1", 2)}},
			want:  acquireOutcome{Kind: acquireHeld, Slot: 1, Held: row(1, "worker.1", "b1", 2).Lease}},
		{name: "the successor's slot comes back", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{successor}},
			want:  acquireOutcome{Kind: acquireHeld, Slot: 0, Held: successor.Lease}},
		{name: "a namesake of another boot holds nothing", rules: acquireRules{Dyno: "worker.1", Boot: "new", ProcessType: "worker", Slots: 1, leaseTimes: times},
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{row(0, "worker.1", "b1", 2)}},
			want:  acquireOutcome{Kind: acquireNoSlot}},
		{name: "settling on a new app", rules: rules,
			facts: acquireFacts{Now: t0.Add(20 * time.Second), Epoch: t0},
			want:  acquireOutcome{Kind: acquireSettling, Left: 40 * time.Second}},
		{name: "settle off", rules: acquireRules{Dyno: "worker.1", ProcessType: "worker", Slots: 1, leaseTimes: times},
			facts: acquireFacts{Now: t0, Epoch: t0},
			want:  acquireOutcome{Kind: acquireGrant, Slot: 0}},
		{name: "all slots taken", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{row(0, "worker.2", "b", 1), row(1, "worker.3", "b", 2)}},
			want:  acquireOutcome{Kind: acquireNoSlot}},
		{name: "stale hand-over freed and granted", rules: acquireRules{Dyno: "worker.1", ProcessType: "worker", Slots: 1, leaseTimes: times},
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{stale}},
			want:  acquireOutcome{Kind: acquireGrant, Slot: 0, Stale: []leaseRow{stale}}},
		{name: "silent across a restart of the database: kept", rules: acquireRules{Dyno: "worker.1", ProcessType: "worker", Slots: 1, leaseTimes: times},
			facts: acquireFacts{Now: t0, Server: restarted, Epoch: old, Live: []leaseRow{stale}},
			want:  acquireOutcome{Kind: acquireNoSlot}},
		{name: "silent across a restart, the new server up for Seen: freed", rules: acquireRules{Dyno: "worker.1", ProcessType: "worker", Slots: 1, leaseTimes: times},
			facts: acquireFacts{Now: t0, Server: serverLife{Started: t0.Add(-20 * time.Second), Up: 20 * time.Second}, Epoch: old, Live: []leaseRow{stale}},
			want:  acquireOutcome{Kind: acquireGrant, Slot: 0, Stale: []leaseRow{stale}}},
		{name: "hand-over within the boot allowance kept", rules: acquireRules{Dyno: "worker.1", ProcessType: "worker", Slots: 1, leaseTimes: times},
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{handedOver(row(0, "worker.5", "x", 3), t0.Add(-time.Minute), t0.Add(-time.Minute))}},
			want:  acquireOutcome{Kind: acquireNoSlot}},
		{name: "hand-over whose holder still renews kept", rules: acquireRules{Dyno: "worker.1", ProcessType: "worker", Slots: 1, leaseTimes: times},
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{handedOver(row(0, "worker.5", "x", 3), t0.Add(-time.Hour), t0.Add(-time.Second))}},
			want:  acquireOutcome{Kind: acquireNoSlot}},
		{name: "waiters ahead, one dead", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Ahead: []waiter{{"worker.7", false}, {"worker.8", true}, {"worker.9", true}},
				Peers: []Presence{presence("worker.3", Presence{State: StateWatching})}},
			want: acquireOutcome{Kind: acquireNoSlot, Ahead: 2, Dead: []string{"worker.7"}}},
		{name: "fewer waiters ahead than free slots", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Ahead: []waiter{{"worker.8", true}},
				Peers: []Presence{presence("worker.3", Presence{State: StateWatching})}},
			want: acquireOutcome{Kind: acquireGrant, Slot: 0, Ahead: 1}},
		{name: "lowest free slot", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{row(0, "worker.2", "b", 1)},
				Peers: []Presence{presence("worker.3", Presence{State: StateWatching})}},
			want: acquireOutcome{Kind: acquireGrant, Slot: 1}},
		{name: "alone: peers waived", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Peers: []Presence{presence("web.1", Presence{State: StateWatching})}},
			want:  acquireOutcome{Kind: acquireGrant, Slot: 0, Waived: true}},
		{name: "draining peer is not healthy", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Peers: []Presence{presence("worker.2", Presence{State: StateDraining})}},
			want:  acquireOutcome{Kind: acquirePeers, Slot: 0, Have: 0, Want: 1}},
		{name: "holder is not a healthy peer", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{row(0, "worker.2", "b", 1)},
				Peers: []Presence{presence("worker.2", Presence{State: StateWatching})}},
			want: acquireOutcome{Kind: acquirePeers, Slot: 1, Have: 0, Want: 1}},
		{name: "holder whose presence lapsed is formation", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{row(0, "worker.2", "b", 1)}},
			want:  acquireOutcome{Kind: acquirePeers, Slot: 1, Have: 0, Want: 1}},
		{name: "holder of another type is not formation", rules: rules,
			facts: acquireFacts{Now: t0, Epoch: old, Live: []leaseRow{row(0, "web.1", "b", 1)}},
			want:  acquireOutcome{Kind: acquireGrant, Slot: 1, Waived: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.facts.Server == (serverLife{}) {
				tc.facts.Server = server
			}
			got := decideAcquire(tc.facts, tc.rules)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestPickHeld(t *testing.T) {
	times := leaseTimes{BootAllowance: 2 * time.Minute, Seen: 15 * time.Second}
	over := func(l leaseRow, at time.Time) leaseRow { l.RestartAt = at; return l }
	cedar := over(row(0, "worker.1", "old", 1), t0.Add(-10*time.Second))
	fir := over(row(1, "worker-abc123def-k2x7p", "old", 2), t0.Add(-20*time.Second))
	firNewer := over(row(2, "worker-abc123def-zzzzz", "old", 3), t0.Add(-5*time.Second))
	claimed := fir
	claimed.Successor, claimed.SuccessorBoot, claimed.ClaimedAt, claimed.SuccessorSeen = "worker-new000000-aaaaa", "s", t0.Add(-5*time.Second), t0.Add(-5*time.Second)
	abandoned := claimed
	abandoned.SuccessorSeen = t0.Add(-time.Minute)
	who := func(dyno string) claimer {
		return claimer{Dyno: dyno, Boot: "new", ProcessType: ProcessType(dyno), Started: t0.Add(-time.Second), MayClaim: true}
	}
	for _, tc := range []struct {
		name     string
		live     []leaseRow
		c        claimer
		want     int64 // token, 0 for none
		wantMine bool
	}{
		{"own lease", []leaseRow{row(0, "worker.1", "new", 9)}, who("worker.1"), 9, true},
		{"not handed over", []leaseRow{row(0, "worker.1", "old", 9)}, who("worker.1"), 0, false},
		{"cedar: same name claims", []leaseRow{cedar}, who("worker.1"), 1, false},
		{"cedar: another name does not", []leaseRow{cedar}, who("worker.3"), 0, false},
		{"another process type does not", []leaseRow{cedar}, who("web.1"), 0, false},
		{"started before the hand-over does not", []leaseRow{cedar},
			claimer{Dyno: "worker.1", Boot: "new", ProcessType: "worker", Started: t0.Add(-time.Minute), MayClaim: true}, 0, false},
		{"one-off never claims", []leaseRow{over(row(0, "run.1", "old", 1), t0.Add(-time.Minute))},
			claimer{Dyno: "run.1", Boot: "new", ProcessType: "run", Started: t0, MayClaim: false}, 0, false},
		{"fir: any new name, oldest hand-over first", []leaseRow{firNewer, fir}, who("worker-fffffffff-xxxxx"), 2, false},
		{"fir: own name first", []leaseRow{fir, firNewer}, who("worker-abc123def-zzzzz"), 3, false},
		{"claimed by a live successor", []leaseRow{claimed}, who("worker-fffffffff-xxxxx"), 0, false},
		{"successor gone: claimed again", []leaseRow{abandoned}, who("worker-fffffffff-xxxxx"), 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, mine, ok := pickHeld(tc.live, tc.c, t0, server, times)
			if tc.want == 0 {
				if ok {
					t.Fatalf("picked %+v", got)
				}
				return
			}
			if !ok || got.Token != tc.want || mine != tc.wantMine {
				t.Fatalf("picked %+v mine %v ok %v; want token %d mine %v", got, mine, ok, tc.want, tc.wantMine)
			}
		})
	}
}

// A successor silent across a restart of the database may still be
// booting: nobody claims its lease until the new server has been up Seen.
func TestPickHeldAfterARestartOfTheDatabase(t *testing.T) {
	times := leaseTimes{BootAllowance: 2 * time.Minute, Seen: 15 * time.Second}
	l := row(0, "worker-abc123def-k2x7p", "old", 2)
	l.RestartAt = t0.Add(-time.Minute)
	l.Successor, l.SuccessorBoot, l.ClaimedAt, l.SuccessorSeen = "worker-new000000-aaaaa", "s", t0.Add(-time.Minute), t0.Add(-time.Minute)
	c := claimer{Dyno: "worker-fffffffff-xxxxx", Boot: "new", ProcessType: "worker", Started: t0.Add(-time.Second), MayClaim: true}
	if got, _, ok := pickHeld([]leaseRow{l}, c, t0, restarted, times); ok {
		t.Fatalf("claimed %+v right after a restart", got)
	}
	up := serverLife{Started: restarted.Started, Up: times.Seen + time.Second}
	if _, _, ok := pickHeld([]leaseRow{l}, c, t0, up, times); !ok {
		t.Fatal("not claimed once the new server was up for Seen")
	}
}

func TestDecideRenew(t *testing.T) {
	holder := row(0, "worker.1", "h", 5).Lease
	withSucc := holder
	withSucc.Successor, withSucc.SuccessorBoot = "worker.1", "s"
	restoredByHolder := leaseRow{Lease: holder}
	restoredByHolder.RestartAt = t0.Add(-time.Second)
	takenBack := leaseRow{Lease: holder}
	for _, tc := range []struct {
		name       string
		cur        *leaseRow
		mine       Lease
		dyno, boot string
		action, as string
	}{
		{"gone: holder restores", nil, holder, "worker.1", "h", renewRestore, renewByHolder},
		{"gone: successor restores", nil, withSucc, "worker.1", "s", renewRestore, renewBySucc},
		{"holder extends", &leaseRow{Lease: holder}, holder, "worker.1", "h", renewExtend, renewByHolder},
		{"successor extends", &leaseRow{Lease: withSucc}, withSucc, "worker.1", "s", renewExtend, renewBySucc},
		{"successor recorded again on the holder's restore", &restoredByHolder, withSucc, "worker.1", "s", renewRecord, renewBySucc},
		{"successor not recorded again on a lease taken back", &takenBack, withSucc, "worker.1", "s", renewNotHeld, ""},
		{"another token", &leaseRow{Lease: row(0, "worker.2", "x", 6).Lease}, holder, "worker.1", "h", renewNotHeld, ""},
		{"another successor", &leaseRow{Lease: withSucc}, func() Lease { l := withSucc; l.SuccessorBoot = "t"; return l }(), "worker.1", "t", renewNotHeld, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			action, as := decideRenew(tc.cur, tc.mine, tc.dyno, tc.boot)
			if action != tc.action || as != tc.as {
				t.Fatalf("decideRenew = %s, %s; want %s, %s", action, as, tc.action, tc.as)
			}
		})
	}
}
