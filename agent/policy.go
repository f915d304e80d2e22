package agent

import "time"

// Reasons for a restart, as logged and published.
const (
	ReasonCritical = "critical_rss"
	ReasonMaxRSS   = "max_rss"
	ReasonSchedule = "schedule"
)

// Policy holds the limits a restart decision is made against.
type Policy struct {
	MaxRSS        uint64 // soft limit; 0 means none
	CriticalRSS   uint64 // hard limit; 0 means none
	SustainChecks int
	MinUptime     time.Duration
}

// Observation is what one check saw.
type Observation struct {
	RSS        uint64
	OverChecks int // consecutive checks over MaxRSS, this one included
	Uptime     time.Duration
	RollingDue bool // RESTART_SCHEDULE came due since the worker started
}

// Decision is the policy's answer for one check.
type Decision struct {
	Restart bool
	Reason  string // set when Restart
	Urgent  bool   // over CRITICAL_RSS: no waiting for peers' comfort beyond the lease
	Hold    string // why not, when the limit is crossed but the policy holds back
}

// OverChecks counts consecutive checks over the soft limit: it grows while
// memory stays over and drops to zero the first time it is not.
func OverChecks(prev int, rss, max uint64) int {
	if max == 0 || rss <= max {
		return 0
	}
	return prev + 1
}

// Decide says whether the worker should be restarted now. CRITICAL_RSS acts
// at once; MAX_RSS needs SUSTAIN_CHECKS in a row and MIN_UPTIME, so a single
// spike or a worker that boots big does not cause a restart loop; a due
// rolling restart also waits for MIN_UPTIME.
func Decide(p Policy, o Observation) Decision {
	if p.CriticalRSS > 0 && o.RSS > p.CriticalRSS {
		return Decision{Restart: true, Reason: ReasonCritical, Urgent: true}
	}
	young := o.Uptime < p.MinUptime
	if p.MaxRSS > 0 && o.RSS > p.MaxRSS {
		switch {
		case o.OverChecks < p.SustainChecks:
			return Decision{Hold: "sustain"}
		case young:
			return Decision{Hold: "min_uptime"}
		default:
			return Decision{Restart: true, Reason: ReasonMaxRSS}
		}
	}
	if o.RollingDue {
		if young {
			return Decision{Hold: "min_uptime"}
		}
		return Decision{Restart: true, Reason: ReasonSchedule}
	}
	return Decision{}
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
