package agent

import (
	"github.com/dynocycle/dynocycle/internal/testutil"

	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/heartbeat"
)

// fixedSchedule always yields the same time, whatever it is asked.
type fixedSchedule time.Time

func (f fixedSchedule) Next(time.Time) time.Time { return time.Time(f) }

func TestNextCheckNeverSpins(t *testing.T) {
	now := time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		sched Schedule
		want  time.Time
	}{
		{"regular", every(5 * time.Second), now.Add(5 * time.Second)},
		{"never fires (zero time)", fixedSchedule{}, now.Add(fallbackCheckEvery)},
		{"in the past", fixedSchedule(now.Add(-time.Hour)), now.Add(fallbackCheckEvery)},
		{"now", fixedSchedule(now), now.Add(fallbackCheckEvery)},
		{"a minute ahead", fixedSchedule(now.Add(time.Minute)), now.Add(time.Minute)},
	} {
		if got := NextCheck(tc.sched, now); !got.Equal(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

type countingMeter struct{ n atomic.Int64 }

func (m *countingMeter) Sample(context.Context) (uint64, error) { m.n.Add(1); return 100 * mb, nil }

// A schedule that never fires (robfig/cron's zero time) must leave the loop
// idle, not checking (and writing to Redis) as fast as it can.
func TestScheduleThatNeverFiresDoesNotBusyLoop(t *testing.T) {
	meter := &countingMeter{}
	a := &Agent{
		Settings: Settings{
			Policy: Policy{MaxRSS: 500 * mb, SustainChecks: 1}, Limit: 500 * mb,
			CheckSchedule: fixedSchedule{}, GraceTime: time.Second, Dyno: "worker.1",
		},
		Meter: meter, Fleet: heartbeat.NewLocal("worker.1", 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	testutil.Eventually(t, within, "the start check", func() bool { return meter.n.Load() >= 1 })
	// A spinning loop checks thousands of times in this window on any machine.
	time.Sleep(200 * time.Millisecond)
	cancel()
	<-done
	if n := meter.n.Load(); n > 2 {
		t.Fatalf("%d checks in 200ms with a schedule that never fires: the loop spins", n)
	}
}
