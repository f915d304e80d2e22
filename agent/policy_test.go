package agent

import (
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

func TestDecide(t *testing.T) {
	const mb = 1 << 20
	base := Policy{MaxRSS: 500 * mb, CriticalRSS: 900 * mb, SustainChecks: 3, MinUptime: 5 * time.Minute}
	old := time.Hour
	for _, tc := range []struct {
		name     string
		p        Policy
		lastOver int // OverChecks of the last decision
		o        Observation
		want     Decision
	}{
		{"under the limit", base, 0, Observation{RSS: 400 * mb, Uptime: old}, Decision{}},
		{"at the limit is not over", base, 0, Observation{RSS: 500 * mb, Uptime: old}, Decision{}},
		{"over once", base, 0, Observation{RSS: 600 * mb, Uptime: old}, Decision{Hold: "sustain", OverChecks: 1}},
		{"over, not yet sustained", base, 1, Observation{RSS: 600 * mb, Uptime: old}, Decision{Hold: "sustain", OverChecks: 2}},
		{"over and sustained", base, 2, Observation{RSS: 600 * mb, Uptime: old}, Decision{Restart: true, Reason: ReasonMaxRSS, OverChecks: 3}},
		{"sustained but too young", base, 8, Observation{RSS: 600 * mb, Uptime: time.Minute}, Decision{Hold: "min_uptime", OverChecks: 9}},
		{"critical acts at once, even young", base, 0, Observation{RSS: 901 * mb, Uptime: time.Second}, Decision{Restart: true, Reason: ReasonCritical, OverChecks: 1}},
		{"no critical limit", Policy{MaxRSS: 500 * mb, SustainChecks: 3}, 0, Observation{RSS: 5000 * mb, Uptime: old}, Decision{Hold: "sustain", OverChecks: 1}},
		{"sustain of one", Policy{MaxRSS: 500 * mb, SustainChecks: 1}, 0, Observation{RSS: 501 * mb}, Decision{Restart: true, Reason: ReasonMaxRSS, OverChecks: 1}},
		{"rolling restart due", base, 0, Observation{RSS: 100 * mb, Uptime: old, RollingDue: true}, Decision{Restart: true, Reason: ReasonSchedule}},
		{"rolling restart waits for min uptime", base, 0, Observation{RSS: 100 * mb, Uptime: time.Minute, RollingDue: true}, Decision{Hold: "min_uptime"}},
		{"memory reason wins over schedule", base, 2, Observation{RSS: 600 * mb, Uptime: old, RollingDue: true}, Decision{Restart: true, Reason: ReasonMaxRSS, OverChecks: 3}},
		{"critical only policy", Policy{CriticalRSS: 900 * mb, SustainChecks: 3}, 0, Observation{RSS: 800 * mb, Uptime: old}, Decision{}},
		{"back under the limit resets the count", base, 5, Observation{RSS: 400 * mb, Uptime: old}, Decision{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Decide(tc.p, Decision{OverChecks: tc.lastOver}, tc.o); got != tc.want {
				t.Errorf("Decide = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestOverChecks(t *testing.T) {
	for _, tc := range []struct {
		prev     int
		rss, max uint64
		want     int
	}{
		{0, 10, 5, 1}, {2, 10, 5, 3}, {2, 5, 5, 0}, {4, 1, 5, 0}, {3, 10, 0, 0},
	} {
		if got := overChecks(tc.prev, tc.rss, tc.max); got != tc.want {
			t.Errorf("overChecks(%d, %d, %d) = %d, want %d", tc.prev, tc.rss, tc.max, got, tc.want)
		}
	}
}

func TestRollingDue(t *testing.T) {
	daily, err := cron.ParseStandard("0 4 * * *")
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		started, now time.Time
		want         bool
	}{
		{day.Add(3 * time.Hour), day.Add(3*time.Hour + 59*time.Minute), false},
		{day.Add(3 * time.Hour), day.Add(4 * time.Hour), true},
		{day.Add(3 * time.Hour), day.Add(20 * time.Hour), true},
		{day.Add(4*time.Hour + time.Second), day.Add(20 * time.Hour), false}, // restarted just after 04:00
		{day.Add(4*time.Hour + time.Second), day.Add(28 * time.Hour), true},
	} {
		if got := RollingDue(daily, tc.started, tc.now); got != tc.want {
			t.Errorf("started %v now %v: due %v, want %v", tc.started, tc.now, got, tc.want)
		}
	}
	if RollingDue(nil, day, day.Add(48*time.Hour)) {
		t.Error("no schedule is never due")
	}
}
