package harness

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dynocycle/dynocycle/internal/dynosim"
)

// Summary is a Markdown account of the run: the invariants with their
// numbers, the restarts, the faults and the cycle times.
func (r *Result) Summary() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...); b.WriteByte('\n') }
	cfg := r.Config
	restarts, crashes := map[string]int{}, map[string]int{}
	drained, timedOut := 0, 0
	for _, iv := range r.Intervals {
		switch {
		case iv.Kind == dynosim.KindCrash:
			crashes[iv.Dyno]++
		case iv.Closed() && !iv.Aborted:
			restarts[iv.Dyno]++
			if iv.Drained {
				drained++
			} else {
				timedOut++
			}
		}
	}
	nRestarts, nCrashes := sum(restarts), sum(crashes)
	status := map[int]int{}
	for _, c := range r.APICalls {
		status[c.Status]++
	}
	var maxFinal time.Duration
	for _, st := range r.FinalStops {
		maxFinal = max(maxFinal, st.Took())
	}
	killed := 0
	for _, st := range r.Stops {
		if st.Killed {
			killed++
		}
	}
	verdict := "all invariants held"
	if !r.OK() {
		verdict = fmt.Sprintf("%d invariant(s) broken", len(r.Broken))
	}
	p("%s: %d dynos, %v of load (%s to the end of the run), seed %d, MAX_CONCURRENT_RESTARTS=%d, MAX_RSS=%dMB, %.2f jobs/s of %dMB, fleet store %s.",
		verdict, cfg.Dynos, cfg.Duration, r.End.Sub(r.Start).Round(time.Second), cfg.Seed, cfg.Slots, cfg.MaxRSSMB, cfg.JobsPerSec, cfg.JobMB, cfg.Store)
	p("")
	p("| invariant | result |")
	p("|---|---|")
	p("| never more than MAX_CONCURRENT_RESTARTS restarting | at most %d at once (limit %d) over %d restarts |", r.MaxConcurrent, cfg.Slots, nRestarts)
	p("| no job lost (enqueued = completed) | %d enqueued, %d completed, %d lost; %d runs handed back and run again |", r.Enqueued, r.Done, len(r.Lost), r.Reruns)
	p("| every bloated dyno cycled | %s |", bloated(r))
	if r.SecondApp {
		p("| a second app on the same Redis restarts at most MAX_CONCURRENT_RESTARTS of its own dynos | at most %d at once (limit %d) over %d restarts of its %d dynos |",
			r.SecondMaxConcurrent, cfg.Slots, r.SecondRestarts, secondAppDynos)
	}
	p("| no agent left hung | %d stops needed SIGKILL; final SIGTERM: every dyno gone within %v (bound %v) |", killed, maxFinal.Round(time.Millisecond), shutdownWait+5*time.Second)
	p("| the TSTP-ignoring worker (%s) | never quieted; its %d restarts drained by GRACE_TIME |", r.TSTPDyno, restarts[r.TSTPDyno])
	p("| Platform API | %d calls %s, %d header violations; token in no log line |", len(r.APICalls), fmtStatus(status), len(r.Violations))
	p("")
	p("Restart cycle (lease taken -> new worker started): p50 %v, p90 %v, max %v over %d restarts; drained %d, drain by GRACE_TIME %d.",
		Percentile(r.Cycles, 50).Round(100*time.Millisecond), Percentile(r.Cycles, 90).Round(100*time.Millisecond),
		Percentile(r.Cycles, 100).Round(100*time.Millisecond), len(r.Cycles), drained, timedOut)
	p("Lease held (taken -> released by the reborn agent): p50 %v, max %v.",
		Percentile(r.LeaseHolds, 50).Round(100*time.Millisecond), Percentile(r.LeaseHolds, 100).Round(100*time.Millisecond))
	gaveUp := 0
	for _, pr := range r.Procs {
		if !pr.Expected && pr.Code != 0 && pr.Signal == 0 {
			gaveUp++
		}
	}
	p("Crash restarts after an agent was killed outside a restart: %d. Agents that exited non-zero (the API budget spent, or the worker crashed) and were crash-restarted: %d.", nCrashes, gaveUp)
	p("")
	p("Per dyno (restarts by dynocycle / crash restarts): %s", perDyno(cfg.Dynos, restarts, crashes))
	p("")
	p("Faults:")
	for _, f := range r.Faults {
		what := f.Kind
		if f.Dyno != "" {
			what += " " + f.Dyno
		}
		p("- %s at %s for %v", what, fmtClock(f.Start.Sub(r.Start).Seconds()), f.End.Sub(f.Start).Round(100*time.Millisecond))
	}
	if len(r.Broken) > 0 {
		p("")
		p("Broken:")
		for _, s := range r.Broken {
			p("- %s", s)
		}
	}
	if len(r.Notes) > 0 {
		p("")
		p("Notes:")
		for _, s := range r.Notes {
			p("- %s", s)
		}
	}
	return b.String()
}

func bloated(r *Result) string {
	limit := uint64(r.Config.MaxRSSMB) << 20
	n := 0
	for _, ss := range r.Samples {
		for _, s := range ss {
			if s.RSS > limit {
				n++
				break
			}
		}
	}
	var peak uint64
	for _, ss := range r.Samples {
		for _, s := range ss {
			peak = max(peak, s.RSS)
		}
	}
	missed := 0
	for _, b := range r.Broken {
		if strings.Contains(b, "over MAX_RSS") {
			missed++
		}
	}
	return fmt.Sprintf("%d of %d dynos went over MAX_RSS; %d of them not cycled after (peak worker RSS %dMB)", n, r.Config.Dynos, missed, peak>>20)
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func fmtStatus(m map[int]int) string {
	var keys []int
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d×%d", m[k], k))
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func perDyno(n int, restarts, crashes map[string]int) string {
	var parts []string
	for i := 1; i <= n; i++ {
		d := fmt.Sprintf("worker.%d", i)
		parts = append(parts, fmt.Sprintf("%s %d/%d", d, restarts[d], crashes[d]))
	}
	return strings.Join(parts, ", ")
}
