package gem

import (
	"os/exec"
	"regexp"
	"testing"
)

// The Sidekiq middleware's own tests (test/sidekiq_test.rb): what it writes
// to the agent, that it does nothing outside dynocycle, and that a dead or
// slow agent never blocks or fails a job. They need Sidekiq itself
// (ruby-sidekiq), which the middleware requires.
func TestRubySidekiqMiddleware(t *testing.T) {
	need(t, "ruby")
	need(t, "sidekiq")
	out, err := exec.Command("ruby", "-Ilib", "test/sidekiq_test.rb").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^[1-9]\d* runs, \d+ assertions, 0 failures, 0 errors, 0 skips$`).Match(out) {
		t.Fatalf("ruby -Ilib test/sidekiq_test.rb: %v\n%s", err, out)
	}
}
