package agent

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

func TestPhase(t *testing.T) {
	for _, tc := range []struct {
		name      string
		scope     string
		dyno      string
		interval  time.Duration
		wantSpan  time.Duration // the phase lies in [0, wantSpan)
		wantEqual string        // a dyno (same scope, interval) with the same phase, or ""
		wantOther string        // a dyno (same scope, interval) with another phase, or ""
	}{
		{name: "no interval", scope: "app", dyno: "worker.1", interval: 0, wantSpan: 0},
		{name: "negative interval", scope: "app", dyno: "worker.1", interval: -time.Second, wantSpan: 0},
		{name: "within a 5s interval", scope: "app", dyno: "worker.1", interval: 5 * time.Second, wantSpan: 5 * time.Second,
			wantEqual: "worker.1", wantOther: "worker.2"},
		{name: "another process type starts elsewhere", scope: "app", dyno: "web.1", interval: 5 * time.Second,
			wantSpan: 5 * time.Second, wantOther: "worker.1"},
		{name: "hourly cron is capped at a minute", scope: "app", dyno: "worker.7", interval: time.Hour, wantSpan: MaxPhase},
		{name: "a Fir name hashes", scope: "app", dyno: "worker-6f9c4d7b8-x2kqp", interval: 10 * time.Second,
			wantSpan: 10 * time.Second, wantOther: "worker-6f9c4d7b8-z7mmw"},
		{name: "a hostname", scope: "", dyno: "build-host", interval: time.Second, wantSpan: time.Second},
		{name: "a one-off dyno's big number", scope: "app", dyno: "run.18446744073709551615", interval: time.Second,
			wantSpan: time.Second},
		{name: "a trailing dot", scope: "app", dyno: "worker.", interval: time.Second, wantSpan: time.Second},
		{name: "a sub-millisecond interval", scope: "app", dyno: "worker.3", interval: time.Microsecond, wantSpan: time.Microsecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Phase(tc.scope, tc.dyno, tc.interval)
			if again := Phase(tc.scope, tc.dyno, tc.interval); again != got {
				t.Fatalf("not stable: %s then %s", got, again)
			}
			if got < 0 || (tc.wantSpan == 0 && got != 0) || (tc.wantSpan > 0 && got >= tc.wantSpan) {
				t.Fatalf("phase %s outside [0, %s)", got, tc.wantSpan)
			}
			if got%time.Millisecond != 0 {
				t.Fatalf("phase %s is not whole milliseconds", got)
			}
			if tc.wantEqual != "" && Phase(tc.scope, tc.wantEqual, tc.interval) != got {
				t.Fatalf("%s has another phase", tc.wantEqual)
			}
			if tc.wantOther != "" && Phase(tc.scope, tc.wantOther, tc.interval) == got {
				t.Fatalf("%s has the same phase %s", tc.wantOther, got)
			}
		})
	}
	// Another app on the same Redis does not march in step with this one.
	if Phase("app-x", "worker.1", 5*time.Second) == Phase("app-y", "worker.1", 5*time.Second) {
		t.Fatal("two apps' worker.1 share a phase")
	}
}

// N dynos of an app make N evenly spread calls: no gap between neighbours
// is more than twice the even gap, and no 50 ms of the second gets more
// than twice its share (the thundering second of issue 15).
func TestPhaseSpreadsAFleet(t *testing.T) {
	for _, n := range []int{10, 50, 200} {
		for _, interval := range []time.Duration{time.Second, 5 * time.Second, 30 * time.Second} {
			t.Run(fmt.Sprintf("N=%d every %s", n, interval), func(t *testing.T) {
				var at []time.Duration
				bins := make([]int, 20)
				for i := 1; i <= n; i++ {
					p := Phase("myapp", fmt.Sprintf("worker.%d", i), interval)
					at = append(at, p)
					bins[p%time.Second/(50*time.Millisecond)]++
				}
				slices.Sort(at)
				widest := at[0] + interval - at[len(at)-1]
				for i := 1; i < len(at); i++ {
					widest = max(widest, at[i]-at[i-1])
				}
				if even := interval / time.Duration(n); widest > 2*even {
					t.Errorf("widest gap %s, even gap %s", widest, even)
				}
				share := float64(n) / float64(len(bins))
				if most := slices.Max(bins); float64(most) > 2*share+1 {
					t.Errorf("%d calls in one 50 ms of the second, share %.1f", most, share)
				}
			})
		}
	}
}

func TestInterval(t *testing.T) {
	parser := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	now := time.Date(2026, 3, 14, 12, 0, 0, 300_000_000, time.UTC)
	for _, tc := range []struct {
		spec string
		want time.Duration
	}{
		{"@every 5s", 5 * time.Second},
		{"@every 1m30s", 90 * time.Second},
		{"*/5 * * * *", 5 * time.Minute},
		{"@hourly", time.Hour},
		{"0 0 30 2 *", 0}, // never fires
	} {
		s, err := parser.Parse(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := Interval(s, now); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.spec, got, tc.want)
		}
	}
	if got := Interval(fixedSchedule{}, now); got != 0 {
		t.Errorf("a schedule yielding no time: %s", got)
	}
}

// A phased schedule fires at the same gaps as the schedule, offset later;
// it does not drift, and one that never fires still never fires.
func TestPhased(t *testing.T) {
	parser := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	must := func(spec string) cron.Schedule {
		s, err := parser.Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	for _, tc := range []struct {
		name   string
		sched  Schedule
		offset time.Duration
		from   time.Time
		// want are the next firings, each asked from the one before plus a
		// check's few milliseconds (as the agent's loop asks).
		want []time.Time
	}{
		{"@every 5s from a whole second", must("@every 5s"), 1300 * ms, base,
			[]time.Time{base.Add(4300 * ms), base.Add(9300 * ms), base.Add(14300 * ms)}},
		{"@every 5s from mid-second", must("@every 5s"), 1300 * ms, base.Add(2700 * ms),
			[]time.Time{base.Add(7300 * ms), base.Add(12300 * ms), base.Add(17300 * ms)}},
		{"*/5 cron keeps its minutes", must("*/5 * * * *"), 37 * time.Second, base.Add(38 * time.Second),
			[]time.Time{base.Add(5*time.Minute + 37*time.Second), base.Add(10*time.Minute + 37*time.Second)}},
		{"*/5 cron just before its phased time", must("*/5 * * * *"), 37 * time.Second, base.Add(30 * time.Second),
			[]time.Time{base.Add(37 * time.Second), base.Add(5*time.Minute + 37*time.Second)}},
		{"no offset is the schedule", must("@every 5s"), 0, base,
			[]time.Time{base.Add(5 * time.Second), base.Add(10 * time.Second)}},
		{"never fires", fixedSchedule{}, 1300 * ms, base, []time.Time{{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Phased(tc.sched, tc.offset)
			at := tc.from
			for i, want := range tc.want {
				got := s.Next(at)
				if !got.Equal(want) {
					t.Fatalf("firing %d: %s, want %s", i+1, got.Format("15:04:05.000"), want.Format("15:04:05.000"))
				}
				at = got.Add(3 * ms)
			}
		})
	}
}
