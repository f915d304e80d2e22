package agent

import (
	"hash/fnv"
	"math"
	"strconv"
	"strings"
	"time"
)

// MaxPhase bounds a dyno's phase: a check schedule of minutes or hours runs
// at most a minute after its written time, while a fleet of agents still
// spreads its calls over a whole minute.
const MaxPhase = time.Minute

// goldenFraction is 1/φ. Successive multiples of it, taken modulo 1, fall in
// the largest gap left by the ones before (the three-gap theorem), so dynos
// numbered 1..N get N offsets close to evenly spaced, for every N at once.
const goldenFraction = 0.6180339887498949

// Phase is the offset of a dyno's checks within its check interval: stable
// for a dyno name (the same after every restart), in [0, min(interval,
// MaxPhase)), and spread evenly over that span across the dynos of an app.
// Without it, checks on "@every 5s" or a cron schedule fall on whole seconds,
// so every agent of the fleet hits Redis in the same few milliseconds.
//
// Cedar names dynos TYPE.N: the offset is N steps of the golden ratio from a
// start taken from the scope and process type, so worker.1..worker.N spread
// evenly, and web.N, or another app on the same Redis, start elsewhere.
// Other names (Fir's, a hostname) take a hash of scope and name: random
// spread, still stable.
func Phase(scope, dyno string, interval time.Duration) time.Duration {
	span := min(interval, MaxPhase)
	if span <= 0 {
		return 0
	}
	var frac float64
	if ptype, n, ok := numbered(dyno); ok {
		_, f := math.Modf(unitHash(scope+"\x00"+ptype) + float64(n%1_000_000)*goldenFraction)
		frac = f
	} else {
		frac = unitHash(scope + "\x00" + dyno)
	}
	// Whole milliseconds: logs and tests read a plain number.
	return (time.Duration(frac*float64(span)) / time.Millisecond) * time.Millisecond
}

// numbered splits a Cedar name TYPE.N.
func numbered(dyno string) (ptype string, n uint64, ok bool) {
	i := strings.LastIndexByte(dyno, '.')
	if i <= 0 || i == len(dyno)-1 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(dyno[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return dyno[:i], n, true
}

// unitHash maps s to [0, 1).
func unitHash(s string) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s)) // a hash never fails to write
	return float64(h.Sum64()>>11) / (1 << 53)
}

// Interval is the gap between a schedule's next two firings after now, or 0
// when it does not fire twice.
func Interval(s Schedule, now time.Time) time.Duration {
	first := s.Next(now)
	if !first.After(now) {
		return 0
	}
	second := s.Next(first)
	if !second.After(first) {
		return 0
	}
	return second.Sub(first)
}

// Phased is s shifted later by offset: the same firings, the same gaps,
// offset after each. A schedule that yields no time keeps yielding none.
func Phased(s Schedule, offset time.Duration) Schedule {
	if offset <= 0 {
		return s
	}
	return phased{s: s, offset: offset}
}

type phased struct {
	s      Schedule
	offset time.Duration
}

func (p phased) Next(t time.Time) time.Time {
	next := p.s.Next(t.Add(-p.offset))
	if next.IsZero() {
		return next
	}
	return next.Add(p.offset)
}
