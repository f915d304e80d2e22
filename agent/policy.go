package agent

import "time"

// Reasons for a restart, as logged and published.
const (
	ReasonCritical = "critical_rss"
	ReasonMaxRSS   = "max_rss"
	ReasonSchedule = "schedule"
)

// Policy holds the limits a restart decision is made against. Decide is
// where a restart is decided; the agent carries the decision out.
type Policy struct {
	MaxRSS        uint64 // soft limit; 0 means none
	CriticalRSS   uint64 // hard limit; 0 means none
	SustainChecks int
	MinUptime     time.Duration
}

// Observation is what one check saw.
type Observation struct {
	RSS        uint64
	Uptime     time.Duration
	RollingDue bool // RESTART_SCHEDULE came due since the worker started
}

// Decision is the policy's answer for one check. It also carries the one
// thing the policy remembers between checks, so pass the last Decision to
// the next Decide, and the zero Decision after a restart.
type Decision struct {
	Restart bool
	Reason  string // set when Restart
	Hold    string // why not, when the limit is crossed but the policy holds back
	// OverChecks counts consecutive checks over MaxRSS, this one included.
	OverChecks int
}

// overChecks counts consecutive checks over the soft limit: it grows while
// memory stays over and drops to zero the first time it is not.
func overChecks(prev int, rss, max uint64) int {
	if max == 0 || rss <= max {
		return 0
	}
	return prev + 1
}

// Decide says whether the worker should be restarted now, given the last
// decision. CRITICAL_RSS acts at once; MAX_RSS needs SUSTAIN_CHECKS in a row
// and MIN_UPTIME, so a single spike or a worker that boots big does not cause
// a restart loop; a due rolling restart also waits for MIN_UPTIME.
func Decide(p Policy, last Decision, o Observation) Decision {
	d := Decision{OverChecks: overChecks(last.OverChecks, o.RSS, p.MaxRSS)}
	if p.CriticalRSS > 0 && o.RSS > p.CriticalRSS {
		d.Restart, d.Reason = true, ReasonCritical
		return d
	}
	young := o.Uptime < p.MinUptime
	if p.MaxRSS > 0 && o.RSS > p.MaxRSS {
		switch {
		case d.OverChecks < p.SustainChecks:
			d.Hold = "sustain"
		case young:
			d.Hold = "min_uptime"
		default:
			d.Restart, d.Reason = true, ReasonMaxRSS
		}
		return d
	}
	if o.RollingDue {
		if young {
			d.Hold = "min_uptime"
		} else {
			d.Restart, d.Reason = true, ReasonSchedule
		}
	}
	return d
}

// Schedule yields the next activation after a time; robfig/cron's schedules
// satisfy it.
type Schedule interface {
	Next(time.Time) time.Time
}

// fallbackCheckEvery is the check interval used when a schedule yields no
// time after now (it never fires, or misbehaves): the default CHECK_SCHEDULE.
const fallbackCheckEvery = 5 * time.Second

// NextCheck is when the check loop next wakes. Config rejects schedules that
// never fire, but the loop must not spin even if one slips through: a zero or
// past time would fire the timer at once, forever.
func NextCheck(s Schedule, now time.Time) time.Time {
	if next := s.Next(now); next.After(now) {
		return next
	}
	return now.Add(fallbackCheckEvery)
}

// RollingDue reports whether a rolling-restart schedule has fired since the
// worker started.
func RollingDue(s Schedule, startedAt, now time.Time) bool {
	if s == nil {
		return false
	}
	next := s.Next(startedAt)
	return !next.IsZero() && !next.After(now)
}
