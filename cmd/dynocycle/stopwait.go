package main

// How long the worker gets to stop, and whether that is enough: the
// platform's SIGTERM on Heroku, and SHUTDOWN_WAIT for dynocycle's own
// restarts. check prints the warnings, run logs them as it starts.

import (
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/sidekiq"
)

// herokuKillAfter is how long Heroku waits after its SIGTERM to every
// process of the dyno before SIGKILL (deploys, daily restarts, restarts
// through the API): /articles/dyno-shutdown-behavior.
const herokuKillAfter = 30 * time.Second

// sidekiqDefaultTimeout is Sidekiq's -t when none is given (6.x to 8.x).
const sidekiqDefaultTimeout = 25 * time.Second

// sidekiqMargin is what Sidekiq needs after its timeout to push unfinished
// jobs back and exit (its wiki: "give Sidekiq N+5 seconds").
const sidekiqMargin = 5 * time.Second

// onHeroku reports whether the agent runs in a Heroku dyno, where the
// platform's SIGTERM reaches every process and its SIGKILL follows.
func onHeroku(cfg *config.Config, platform string) bool {
	return platform == config.PlatformHeroku || cfg.Dyno != ""
}

// platformStopWait is how long the worker gets after the platform's SIGTERM
// before the agent kills it: on Heroku past Heroku's own SIGKILL, so that
// the only KILL is Heroku's and the worker has every second Heroku gives (a
// TERM that did not come from Heroku is still bounded); elsewhere 0, which
// leaves SHUTDOWN_WAIT.
func platformStopWait(heroku bool, shutdownWait time.Duration) time.Duration {
	if !heroku {
		return 0
	}
	return max(shutdownWait, herokuKillAfter+5*time.Second)
}

// sidekiqTimeout is the Sidekiq timeout the worker command shows: its -t,
// else Sidekiq's default when the command runs sidekiq without a config
// file (-C), which could set another. ok is false when it cannot be seen.
// Sidekiq keeps no record of it in Redis.
func sidekiqTimeout(command []string) (t time.Duration, from string, ok bool) {
	if t, ok := sidekiq.ShutdownTimeout(command); ok {
		return t, fmt.Sprintf("-t %d", int(t/time.Second)), true
	}
	runsSidekiq := slices.ContainsFunc(command, func(a string) bool {
		b := filepath.Base(a)
		return b == "sidekiq" || b == "sidekiqswarm"
	})
	hasConfig := slices.ContainsFunc(command, func(a string) bool {
		return a == "-C" || a == "--config" || (len(a) > 2 && a[:2] == "-C") || (len(a) > 9 && a[:9] == "--config=")
	})
	if runsSidekiq && !hasConfig {
		return sidekiqDefaultTimeout, "its default", true
	}
	return 0, "", false
}

// stopWarnings says, one sentence each, why the worker may not stop
// cleanly with this configuration; none when it can.
//
// SHUTDOWN_WAIT of exactly 30 s on Heroku is no warning: it is what
// Sidekiq's default timeout needs for restarts in place, and the platform's
// own stops give the worker Heroku's 30 s whatever SHUTDOWN_WAIT says.
func stopWarnings(heroku bool, shutdownWait time.Duration, command []string) []string {
	var out []string
	if heroku && shutdownWait > herokuKillAfter {
		out = append(out, fmt.Sprintf("SHUTDOWN_WAIT=%s is longer than Heroku gives: Heroku sends SIGKILL %s after its SIGTERM (deploys, daily restarts, restarts through the API), so a worker that needs that long loses its jobs there; make the worker stop within %s",
			shutdownWait, herokuKillAfter, herokuKillAfter-sidekiqMargin))
	}
	t, from, ok := sidekiqTimeout(command)
	if !ok {
		return out
	}
	if need := t + sidekiqMargin; shutdownWait < need {
		out = append(out, fmt.Sprintf("SHUTDOWN_WAIT=%s is shorter than Sidekiq's timeout (%s, %s) plus 5s: a restart in place may KILL Sidekiq before it pushes its unfinished jobs back; set SHUTDOWN_WAIT=%s or lower Sidekiq's -t",
			shutdownWait, t, from, need))
	}
	if heroku && t+sidekiqMargin > herokuKillAfter {
		out = append(out, fmt.Sprintf("Sidekiq's timeout (%s, %s) plus 5s is more than Heroku's %s from SIGTERM to SIGKILL: Heroku may kill Sidekiq before it pushes its unfinished jobs back; use -t %d or less",
			t, from, herokuKillAfter, int((herokuKillAfter-sidekiqMargin)/time.Second)))
	}
	return out
}
