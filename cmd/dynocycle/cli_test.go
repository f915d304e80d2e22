package main

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

// cleanEnv unsets every variable dynocycle reads, for the test's duration.
func cleanEnv(t *testing.T) {
	t.Helper()
	typ := reflect.TypeOf(config.Config{})
	for i := 0; i < typ.NumField(); i++ {
		name := typ.Field(i).Tag.Get("envconfig")
		for _, k := range []string{name, config.Prefix + "_" + name} {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut testutil.Buffer
	code := (&CLI{}).Run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestVersionAndUsage(t *testing.T) {
	if code, out, _ := runCLI(t, "version"); code != 0 || !strings.HasPrefix(out, "dynocycle ") {
		t.Errorf("version: %d %q", code, out)
	}
	if code, _, errOut := runCLI(t); code != 2 || !strings.Contains(errOut, "usage:") {
		t.Errorf("no args: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown: %d %q", code, errOut)
	}
}

func TestCheckPrintsEffectiveConfigWithoutSecrets(t *testing.T) {
	cleanEnv(t)
	t.Setenv("MAX_RSS", "450MB")
	t.Setenv("HEROKU_API_TOKEN", "HRKU-topsecret-token")
	t.Setenv("REDIS_URL", "redis://:pw-secret@127.0.0.1:1/0")
	t.Setenv("HEROKU_APP_NAME", "shop")
	code, out, errOut := runCLI(t, "check")
	if code != 0 {
		t.Fatalf("check: %d %s", code, errOut)
	}
	for _, want := range []string{"MAX_RSS=450.0MB", "GRACE_TIME=2m0s", "HEROKU_API_TOKEN=[redacted]", "REDIS_URL=redis://:xxxxx@127.0.0.1:1/0"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out+errOut, "topsecret") || strings.Contains(out+errOut, "pw-secret") {
		t.Errorf("secret leaked:\n%s%s", out, errOut)
	}
}

func TestConfigErrorsExitTwoWithOneLinePerProblem(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"MAX_RSS": "big"}, []string{"check"}, "MAX_RSS=big: not a size; accepted: a size such as 512MB"},
		{map[string]string{"MAX_RSS": "big"}, []string{"run", "--", "true"}, "MAX_RSS=big: not a size"},
		{map[string]string{"MAX_RSS": "100MB", "GRACE_TIME": "forever"}, []string{"run", "true"}, "GRACE_TIME=forever: not a duration; accepted: a duration such as 120s"},
		{map[string]string{"MAX_RSS": "100MB", "PLATFORM": "local"}, []string{"run"}, "PLATFORM=local: restarting in place needs a worker command"},
		{map[string]string{"PLATFORM": "heroku", "HEROKU_API_TOKEN": "HRKU-abc"}, []string{"run", "true"}, "missing HEROKU_APP_NAME"},
	} {
		cleanEnv(t)
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		code, out, errOut := runCLI(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v %v: code %d, stderr %q, want 2 and %q", tc.env, tc.args, code, errOut, tc.want)
		}
		if strings.Contains(out+errOut, "HRKU-abc") {
			t.Errorf("token leaked")
		}
	}
}

func TestMissingMaxRSSWithoutContainerLimitIsAConfigError(t *testing.T) {
	cleanEnv(t)
	t.Setenv("CGROUP_ROOT", t.TempDir())
	code, _, errOut := runCLI(t, "run", "--", "true")
	if code != 2 || !strings.Contains(errOut, "MAX_RSS: required: no container memory limit was detected") {
		t.Errorf("code %d, stderr %q", code, errOut)
	}
}

func TestOneOffDynoOnlyRunsTheCommand(t *testing.T) {
	cleanEnv(t)
	t.Setenv("DYNO", "run.1234")
	t.Setenv("MAX_RSS", "1MB")
	code, out, _ := runCLI(t, "run", "--", "sh", "-c", "echo one-off; exit 4")
	if code != 4 || !strings.Contains(out, "one-off") {
		t.Errorf("code %d, out %q", code, out)
	}
}

func TestRunExitsWithTheWorkersCode(t *testing.T) {
	cleanEnv(t)
	t.Setenv("MAX_RSS", "1GB")
	code, out, _ := runCLI(t, "run", "--", "sh", "-c", "echo working; exit 7")
	if code != 7 || !strings.Contains(out, "working") {
		t.Errorf("code %d, out %q", code, out)
	}
	if code, _, _ := runCLI(t, "run", "--", "no-such-command-dynocycle"); code != 127 {
		t.Errorf("missing command: code %d, want 127", code)
	}
}

func TestWithoutCommandTheExitPlatformEndsTheAgentOnRestart(t *testing.T) {
	cleanEnv(t)
	// The whole machine is watched; any machine is over 1MB.
	t.Setenv("MAX_RSS", "1MB")
	t.Setenv("SUSTAIN_CHECKS", "1")
	t.Setenv("MIN_UPTIME", "0")
	t.Setenv("CHECK_SCHEDULE", "@every 1s")
	code, _, errOut := runCLI(t, "run")
	if code != 75 {
		t.Fatalf("code %d, want 75 (EX_TEMPFAIL, restart me); log:\n%s", code, errOut)
	}
	for _, want := range []string{"platform=exit", "memory_source=all", "event=restart "} {
		if !strings.Contains(errOut, want) {
			t.Errorf("log lacks %q:\n%s", want, errOut)
		}
	}
}
