package config

import (
	"errors"
	"strings"
	"testing"
)

func TestHerokuNameForms(t *testing.T) {
	for _, tc := range []struct {
		check func(string) error
		name  string
		ok    bool
	}{
		{CheckHerokuApp, "example-app", true},
		{CheckHerokuApp, "app", true},
		{CheckHerokuApp, "a1b2-c3", true},
		{CheckHerokuApp, strings.Repeat("a", 30), true},
		{CheckHerokuApp, "9daa2797-e49b-4624-932f-ec3f9688e3da", true},
		{CheckHerokuApp, "ab", false},
		{CheckHerokuApp, strings.Repeat("a", 31), false},
		{CheckHerokuApp, "1app", false},
		{CheckHerokuApp, "app-", false},
		{CheckHerokuApp, "App", false},
		{CheckHerokuApp, "my_app", false},
		{CheckHerokuApp, "app/dynos?x=", false},
		{CheckHerokuApp, "app%2Fdynos", false},
		{CheckHerokuApp, "..", false},
		{CheckHerokuApp, "app\n", false},
		{CheckHerokuApp, "", false},
		{CheckHerokuAppID, "9daa2797-e49b-4624-932f-ec3f9688e3da", true},
		{CheckHerokuAppID, "example-app", false},
		{CheckHerokuAppID, "9daa2797-e49b-4624-932f-ec3f9688e3da/x", false},

		{CheckHerokuDyno, "worker.1", true},
		{CheckHerokuDyno, "run.1234", true},
		{CheckHerokuDyno, "scheduler.5678", true},
		{CheckHerokuDyno, "release.1", true},
		{CheckHerokuDyno, "urgent_worker.12", true},
		{CheckHerokuDyno, "low-priority.3", true},
		{CheckHerokuDyno, "worker-5d8f7c9b4-k2x7p", true},
		{CheckHerokuDyno, "web-12a34b56d-e78f9", true},
		{CheckHerokuDyno, "low-priority-5d8f7c9b4-k2x7p", true},
		{CheckHerokuDyno, "01234567-89ab-cdef-0123-456789abcdef", true},
		{CheckHerokuDyno, "worker", false}, // the restart of every worker dyno
		{CheckHerokuDyno, "low-priority", false},
		{CheckHerokuDyno, "worker.", false},
		{CheckHerokuDyno, ".1", false},
		{CheckHerokuDyno, "worker.1.2", false},
		{CheckHerokuDyno, "worker.1/", false},
		{CheckHerokuDyno, "../../../account/x", false},
		{CheckHerokuDyno, "..", false},
		{CheckHerokuDyno, "worker.1?x=", false},
		{CheckHerokuDyno, "worker.1#", false},
		{CheckHerokuDyno, "worker%2E1", false},
		{CheckHerokuDyno, "worker 1", false},
		{CheckHerokuDyno, "", false},
	} {
		if err := tc.check(tc.name); (err == nil) != tc.ok {
			t.Errorf("%q: err = %v, want ok = %v", tc.name, err, tc.ok)
		}
	}
}

func TestNamesOutsideHerokusFormsAreConfigErrors(t *testing.T) {
	heroku := map[string]string{"MAX_RSS": "512MB", "HEROKU_API_TOKEN": "HRKU-tok", "HEROKU_APP_NAME": "demo", "DYNO": "worker.1"}
	with := func(kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range heroku {
			env[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	if _, err := load(t, heroku); err != nil {
		t.Fatalf("valid names refused: %v", err)
	}
	if _, err := load(t, with("DYNO", "worker-5d8f7c9b4-k2x7p", "HEROKU_APP_NAME", "", "HEROKU_APP_ID", "9daa2797-e49b-4624-932f-ec3f9688e3da")); err != nil {
		t.Fatalf("a Fir dyno and an app id refused: %v", err)
	}
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{with("HEROKU_APP_NAME", "app/dynos?x="), []string{"HEROKU_APP_NAME=app/dynos?x=", "not a Heroku app name", "accepted: a Heroku app name"}},
		{with("HEROKU_APP_ID", "../x"), []string{"HEROKU_APP_ID=../x", "not a Heroku app id", "UUID"}},
		{with("DYNO", "../../../account/x"), []string{"DYNO=../../../account/x", "not a Heroku dyno name", "worker.1"}},
		{with("DYNO", "worker"), []string{"DYNO=worker", "not a Heroku dyno name"}},
		{with("DYNO", "worker.1\n"), []string{`DYNO="worker.1\n"`}},
		// Off Heroku, DYNO only names the agent; the app still scopes keys.
		{map[string]string{"MAX_RSS": "512MB", "HEROKU_APP_NAME": "My App"}, []string{`HEROKU_APP_NAME=My App`}},
	} {
		_, err := load(t, tc.env)
		var es Errors
		if !errors.As(err, &es) {
			t.Errorf("%v: error %v is not Errors", tc.env, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %q does not contain %q", tc.env, err, w)
			}
		}
	}
	if _, err := load(t, map[string]string{"MAX_RSS": "512MB", "DYNO": "my laptop", "PLATFORM": "local"}); err != nil {
		t.Errorf("DYNO off Heroku refused: %v", err)
	}
}
