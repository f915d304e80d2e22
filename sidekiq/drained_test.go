package sidekiq

import (
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/jobevents"
)

// drained must never say drained while either source shows a job.
func TestDrainedCombinesEventsAndHeartbeats(t *testing.T) {
	t0 := time.Unix(1000, 0)
	quietAt := t0
	quietLine := t0.Add(10 * time.Millisecond)
	settled := quietLine.Add(jobevents.QuietSettle)
	idle := jobevents.Proc{QuietAt: quietLine, LastEvent: quietLine}
	beat := func(at time.Time, busy int) *drainState {
		return &drainState{read: true, last: Process{Beat: at, Busy: busy, Quiet: true}}
	}
	beatsDone := &drainState{done: true, read: true, last: Process{Beat: t0, Quiet: true}}
	for _, tc := range []struct {
		name string
		s    *drainState
		ev   jobevents.Proc
		live bool
		now  time.Time
		want bool
	}{
		{"events idle after the settle", &drainState{}, idle, true, settled, true},
		{"events idle, settle not over", &drainState{}, idle, true, settled.Add(-time.Millisecond), false},
		{"no quiet line yet", &drainState{}, jobevents.Proc{LastEvent: t0}, true, settled, false},
		{"quiet line from before this quiet", &drainState{}, jobevents.Proc{QuietAt: t0.Add(-time.Second), LastEvent: t0}, true, settled, false},
		{"job in flight", &drainState{}, jobevents.Proc{InFlight: 1, QuietAt: quietLine, LastEvent: quietLine}, true, settled, false},
		{"events not live", &drainState{}, idle, false, settled, false},
		{"a newer beat shows a job", beat(settled.Add(time.Second), 1), jobevents.Proc{QuietAt: quietLine, LastEvent: settled}, true, settled.Add(2 * time.Second), false},
		{"an older beat showing a job is stale", beat(t0, 1), idle, true, settled, true},
		{"a newer idle beat", beat(settled.Add(time.Second), 0), idle, true, settled.Add(2 * time.Second), true},
		{"beats drained, events not live", beatsDone, jobevents.Proc{}, false, settled, true},
		{"beats drained, live events show a job", beatsDone, jobevents.Proc{InFlight: 1, QuietAt: quietLine, LastEvent: quietLine}, true, settled, false},
	} {
		if got := drained(tc.s, tc.ev, tc.live, quietAt, tc.now); got != tc.want {
			t.Errorf("%s: drained = %v, want %v", tc.name, got, tc.want)
		}
	}
}
