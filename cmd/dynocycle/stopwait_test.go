package main

import (
	"strings"
	"testing"
	"time"
)

func TestStopWarnings(t *testing.T) {
	sk := func(args ...string) []string { return append([]string{"bundle", "exec", "sidekiq"}, args...) }
	for _, tc := range []struct {
		name    string
		heroku  bool
		wait    time.Duration
		command []string
		want    []string // a substring of each warning, in order
	}{
		{"heroku, sidekiq -t 20, default wait", true, 25 * time.Second, sk("-t", "20"), nil},
		{"heroku, sidekiq's default, 30s", true, 30 * time.Second, sk(), nil},
		{"heroku, sidekiq's default, default wait", true, 25 * time.Second, sk(), []string{"shorter than Sidekiq's timeout (25s, its default) plus 5s"}},
		{"heroku, wait past Heroku's kill", true, 31 * time.Second, []string{"./worker"}, []string{"SHUTDOWN_WAIT=31s is longer than Heroku gives"}},
		{"heroku, sidekiq -t 28", true, 40 * time.Second, sk("-t", "28"), []string{"longer than Heroku gives", "plus 5s is more than Heroku's 30s"}},
		{"heroku, sidekiq --timeout=8, short wait", true, 10 * time.Second, sk("--timeout=8"), []string{"SHUTDOWN_WAIT=10s is shorter than Sidekiq's timeout (8s, -t 8) plus 5s: a restart in place may KILL Sidekiq before it pushes its unfinished jobs back; set SHUTDOWN_WAIT=13s"}},
		{"off heroku, long wait, -t 28", false, 40 * time.Second, sk("-t", "28"), nil},
		{"off heroku, short wait", false, 10 * time.Second, sk("-t", "25"), []string{"shorter than Sidekiq's timeout (25s, -t 25)"}},
		{"sidekiq with a config file: timeout not seen", true, 10 * time.Second, sk("-C", "config/sidekiq.yml"), nil},
		{"not sidekiq", true, 10 * time.Second, []string{"rake", "jobs:work"}, nil},
		{"no command", true, 25 * time.Second, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := stopWarnings(tc.heroku, tc.wait, tc.command)
			if len(got) != len(tc.want) {
				t.Fatalf("warnings %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %q lacks %q", got[i], w)
				}
			}
		})
	}
}

func TestPlatformStopWaitOutlastsHerokusKill(t *testing.T) {
	if got := platformStopWait(false, 25*time.Second); got != 0 {
		t.Errorf("off Heroku: %v, want 0 (SHUTDOWN_WAIT)", got)
	}
	for _, sw := range []time.Duration{5 * time.Second, 25 * time.Second, 30 * time.Second, time.Minute} {
		if got := platformStopWait(true, sw); got <= herokuKillAfter || got < sw {
			t.Errorf("SHUTDOWN_WAIT %v on Heroku: %v, want past Heroku's %v and at least SHUTDOWN_WAIT", sw, got, herokuKillAfter)
		}
	}
}

// check warns, as run logs, when the configuration cannot stop cleanly.
func TestCheckWarnsWhenTheWorkerCannotStopCleanly(t *testing.T) {
	cleanEnv(t)
	t.Setenv("MAX_RSS", "450MB")
	t.Setenv("DYNO", "worker.1")
	t.Setenv("SHUTDOWN_WAIT", "45s")
	code, out, errOut := runCLI(t, "check", "--", "sh", "-c", "true")
	if code != 0 {
		t.Fatalf("check: %d %s", code, errOut)
	}
	if !strings.Contains(out, "# warning: SHUTDOWN_WAIT=45s is longer than Heroku gives") {
		t.Errorf("no warning about Heroku's 30s:\n%s", out)
	}
	t.Setenv("SHUTDOWN_WAIT", "30s")
	if _, out, _ := runCLI(t, "check", "--", "sh", "-c", "true"); strings.Contains(out, "# warning") {
		t.Errorf("warned about a configuration that stops cleanly:\n%s", out)
	}
}
