package main

import (
	"strings"
	"testing"
)

func TestNamesOutsideHerokusFormsExitTwoBeforeTheWorkerStarts(t *testing.T) {
	for _, tc := range []struct{ app, dyno, want string }{
		{"app/dynos?x=", "worker.1", "HEROKU_APP_NAME=app/dynos?x=: not a Heroku app name or id; accepted:"},
		{"demo", "../../../account/x", "DYNO=../../../account/x: not a Heroku dyno name or id; accepted:"},
	} {
		cleanEnv(t)
		t.Setenv("MAX_RSS", "1GB")
		t.Setenv("HEROKU_API_TOKEN", "HRKU-secret-token")
		t.Setenv("HEROKU_APP_NAME", tc.app)
		t.Setenv("DYNO", tc.dyno)
		for _, args := range [][]string{{"check"}, {"run", "--", "sh", "-c", "echo worker started"}} {
			code, out, errOut := runCLI(t, args...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Errorf("%v with %s/%s: code %d, stderr %q; want 2 and %q", args, tc.app, tc.dyno, code, errOut, tc.want)
			}
			if strings.Contains(out, "worker started") || strings.Contains(errOut+out, "HRKU-secret-token") {
				t.Errorf("%v: the worker ran, or the token leaked: %q %q", args, out, errOut)
			}
		}
	}
}
