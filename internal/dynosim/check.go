package dynosim

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Report sums up what the simulator saw.
type Report struct {
	// MaxConcurrent is the most restart intervals open at once (an interval
	// still open counts until the report), and MaxAt when that was first seen.
	MaxConcurrent int
	MaxAt         time.Time
	Restarts      map[string]int // closed restart intervals per dyno
	Crashes       map[string]int // crash intervals per dyno
	Open          []Interval     // intervals not closed yet
	Killed        []Stop         // stops that needed SIGKILL after Grace
}

// Report sums up the intervals and stops so far.
func (s *Sim) Report() Report {
	ivs := s.Intervals()
	r := Report{Restarts: map[string]int{}, Crashes: map[string]int{}}
	for _, name := range s.Dynos() {
		r.Restarts[name], r.Crashes[name] = 0, 0
	}
	for _, iv := range ivs {
		switch {
		case !iv.Closed():
			r.Open = append(r.Open, iv)
		case iv.Kind == KindCrash:
			r.Crashes[iv.Dyno]++
		case !iv.Aborted:
			r.Restarts[iv.Dyno]++
		}
	}
	r.MaxConcurrent, r.MaxAt = MaxConcurrent(ivs, KindRestart, time.Now())
	for _, st := range s.Stops() {
		if st.Killed {
			r.Killed = append(r.Killed, st)
		}
	}
	return r
}

// Check returns an error naming each broken invariant: more than slots
// restart intervals at once, a dyno never cycled by a restart, a stop that
// needed SIGKILL.
func (r Report) Check(slots int) error {
	var errs []error
	if r.MaxConcurrent > slots {
		errs = append(errs, fmt.Errorf("%d dynos restarting at once at %s, want at most %d", r.MaxConcurrent, r.MaxAt.Format(time.TimeOnly), slots))
	}
	var names []string
	for name := range r.Restarts {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if r.Restarts[name] == 0 {
			errs = append(errs, fmt.Errorf("%s was never cycled", name))
		}
	}
	for _, st := range r.Killed {
		errs = append(errs, fmt.Errorf("%s (generation %d, %s) was still running %v after SIGTERM and got SIGKILL",
			st.Dyno, st.Gen, st.Why, st.Took().Round(time.Millisecond)))
	}
	return errors.Join(errs...)
}

// MaxConcurrent returns the most intervals of kind open at the same time,
// counting an open interval as lasting until until, and the first moment
// that many were open. Touching ends do not overlap.
func MaxConcurrent(ivs []Interval, kind string, until time.Time) (int, time.Time) {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, iv := range ivs {
		if iv.Kind != kind {
			continue
		}
		end := iv.End
		if end.IsZero() {
			end = until
		}
		edges = append(edges, edge{iv.Start, +1}, edge{end, -1})
	}
	// Ends before starts at the same instant.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta
	})
	n, most := 0, 0
	var at time.Time
	for _, e := range edges {
		n += e.delta
		if n > most {
			most, at = n, e.at
		}
	}
	return most, at
}
