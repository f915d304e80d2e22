package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dynocycle/dynocycle/config"
)

func TestHelpForEveryCommand(t *testing.T) {
	cleanEnv(t)
	for _, cmd := range []string{"run", "check", "status", "version", "help"} {
		for _, args := range [][]string{{cmd, "--help"}, {cmd, "-h"}, {"help", cmd}} {
			code, out, errOut := runCLI(t, args...)
			if code != 0 || errOut != "" || !strings.HasPrefix(out, "usage: dynocycle "+cmd) {
				t.Errorf("%v: code %d, stderr %q, stdout %.60q; want 0 and the usage of %s", args, code, errOut, out, cmd)
			}
		}
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		if code, out, _ := runCLI(t, args...); code != 0 || !strings.Contains(out, "dynocycle status [-a APP] [--json]") {
			t.Errorf("%v: code %d, stdout %q", args, code, out)
		}
	}
	// run and check name every variable the configuration reads.
	_, runHelp, _ := runCLI(t, "run", "--help")
	_, checkHelp, _ := runCLI(t, "help", "check")
	typ := reflect.TypeOf(config.Config{})
	for i := range typ.NumField() {
		name := typ.Field(i).Tag.Get("envconfig")
		if !strings.Contains(runHelp, "\n  "+name+" ") || !strings.Contains(checkHelp, "\n  "+name+" ") {
			t.Errorf("help of run or check lacks %s", name)
		}
	}
	_, statusHelp, _ := runCLI(t, "status", "--help")
	for _, want := range []string{"-a, --app APP", "--json", "--verbose", "REDIS_URL", "HEROKU_APP_NAME", "FLEET_SCOPE"} {
		if !strings.Contains(statusHelp, want) {
			t.Errorf("status help lacks %q:\n%s", want, statusHelp)
		}
	}
}

// `run --help` used to try to run a program called --help (exit 127).
func TestRunHelpRunsNothing(t *testing.T) {
	cleanEnv(t)
	t.Setenv("MAX_RSS", "100MB")
	code, out, errOut := runCLI(t, "run", "--help")
	if code != 0 || !strings.Contains(out, "usage: dynocycle run") || strings.Contains(errOut, "not found") {
		t.Fatalf("code %d, stdout %.80q, stderr %q", code, out, errOut)
	}
}

func TestMisuseSuggestsTheNearestName(t *testing.T) {
	cleanEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stauts"}, `unknown command "stauts"; did you mean "status"?`},
		{[]string{"chek"}, `did you mean "check"?`},
		{[]string{"rn", "--", "true"}, `did you mean "run"?`},
		{[]string{"verison"}, `did you mean "version"?`},
		{[]string{"stat"}, `did you mean "status"?`},
		{[]string{"help", "stauts"}, `did you mean "status"?`},
		{[]string{"--hlep"}, "unknown flag --hlep; did you mean --help?"},
		{[]string{"status", "--jsn"}, "dynocycle status: unknown flag --jsn; did you mean --json?"},
		{[]string{"status", "--ap", "shop"}, "did you mean --app?"},
		{[]string{"status", "--verbos"}, "did you mean --verbose?"},
		{[]string{"status", "extra"}, `unexpected argument "extra"`},
		{[]string{"run", "--hepl"}, "did you mean --help?"},
		{[]string{"check", "-hlp"}, "did you mean --help?"},
		{[]string{"version", "now"}, `unexpected argument "now"`},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
	} {
		code, out, errOut := runCLI(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("%v: code %d, stderr %q, stdout %q; want 2 and %q", tc.args, code, errOut, out, tc.want)
		}
		if !strings.Contains(errOut, "--help' for usage") {
			t.Errorf("%v: no pointer to the help: %q", tc.args, errOut)
		}
	}
	if _, _, errOut := runCLI(t, "frobnicate"); strings.Contains(errOut, "did you mean") {
		t.Errorf("a far miss got a suggestion: %q", errOut)
	}
}

// check says exactly what run refuses, and exits the same way.
func TestCheckAndRunAgree(t *testing.T) {
	noContainer := t.TempDir()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string // in both outputs; "" when valid
	}{
		{"no MAX_RSS off a container", nil, "MAX_RSS: required: no container memory limit was detected"},
		{"percentage off a container", map[string]string{"MAX_RSS": "80%"}, "MAX_RSS=80%: a percentage of the container memory limit, and no container memory limit was detected"},
		{"fleet without a scope", map[string]string{"MAX_RSS": "100MB", "REDIS_URL": "redis://127.0.0.1:1"}, "FLEET_SCOPE: missing: REDIS_URL is set (fleet mode)"},
		{"unix socket Redis", map[string]string{"MAX_RSS": "100MB", "REDIS_URL": "unix:///tmp/r.sock", "FLEET_SCOPE": "x"}, "REDIS_URL: not a Redis URL"},
		{"Redis db not a number", map[string]string{"MAX_RSS": "100MB", "REDIS_URL": "redis://:pw@127.0.0.1:1/abc", "FLEET_SCOPE": "x"}, "REDIS_URL: redis: invalid database number"},
		{"sidekiq without redis", map[string]string{"MAX_RSS": "100MB", "WORKER": "sidekiq"}, "WORKER=sidekiq: needs REDIS_URL"},
		{"size that rounds to 0", map[string]string{"MAX_RSS": "5B"}, "MAX_RSS=5B: size below 1MB"},
		{"metrics port", map[string]string{"MAX_RSS": "100MB", "METRICS_ADDR": ":99999"}, "METRICS_ADDR=:99999: port must be a number from 1 to 65535"},
		{"plain http API", map[string]string{"MAX_RSS": "100MB", "HEROKU_API_URL": "http://api.example.com"}, "HEROKU_API_URL=http://api.example.com: plain http would send the API token in clear text"},
		{"schedule that never fires", map[string]string{"MAX_RSS": "100MB", "CHECK_SCHEDULE": "0 0 30 2 *"}, "CHECK_SCHEDULE=0 0 30 2 *: never fires"},
		{"valid", map[string]string{"MAX_RSS": "100MB"}, ""},
		{"valid loopback API", map[string]string{"MAX_RSS": "100MB", "HEROKU_API_URL": "http://127.0.0.1:4567"}, ""},
	} {
		cleanEnv(t)
		t.Setenv("CGROUP_ROOT", noContainer)
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		checkCode, _, checkErr := runCLI(t, "check", "--", "true")
		runCode, _, runErr := runCLI(t, "run", "--", "true")
		if checkCode != runCode {
			t.Errorf("%s: check exits %d, run %d\ncheck: %s\nrun: %s", tc.name, checkCode, runCode, checkErr, runErr)
		}
		if tc.want == "" {
			if checkCode != 0 {
				t.Errorf("%s: check %d: %s", tc.name, checkCode, checkErr)
			}
			continue
		}
		if checkCode != 2 || checkErr != runErr || !strings.Contains(checkErr, tc.want) {
			t.Errorf("%s: want both to exit 2 with %q\ncheck %d: %s\nrun %d: %s", tc.name, tc.want, checkCode, checkErr, runCode, runErr)
		}
		if strings.Contains(checkErr, ":pw@") {
			t.Errorf("%s: password leaked: %s", tc.name, checkErr)
		}
	}
	// Without a command both validate the whole-machine form.
	cleanEnv(t)
	t.Setenv("MAX_RSS", "100MB")
	t.Setenv("PLATFORM", "local")
	checkCode, _, checkErr := runCLI(t, "check")
	runCode, _, runErr := runCLI(t, "run")
	if checkCode != 2 || runCode != 2 || checkErr != runErr || !strings.Contains(checkErr, "PLATFORM=local: restarting in place needs a worker command") {
		t.Errorf("no command: check %d %q, run %d %q", checkCode, checkErr, runCode, runErr)
	}
}

func TestCheckReportsEveryBadVariableAtOnce(t *testing.T) {
	cleanEnv(t)
	t.Setenv("CGROUP_ROOT", t.TempDir())
	t.Setenv("MAX_RSS", "lots")
	t.Setenv("GRACE_TIME", "soon")
	t.Setenv("METRICS_ADDR", ":99999")
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
	code, _, errOut := runCLI(t, "check")
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if code != 2 || len(lines) != 5 || lines[0] != "dynocycle: configuration error:" {
		t.Fatalf("code %d, want 2 and a header plus one line for each of 4 variables:\n%s", code, errOut)
	}
	for i, v := range []string{"MAX_RSS=lots: ", "GRACE_TIME=soon: ", "METRICS_ADDR=:99999: ", "FLEET_SCOPE: "} {
		if !strings.HasPrefix(strings.TrimSpace(lines[i+1]), v) || !strings.Contains(lines[i+1], "; accepted: ") {
			t.Errorf("line %d = %q, want %s... with the accepted form", i+1, lines[i+1], v)
		}
	}
}

// A percentage is of the container's limit, and check and run say which.
func TestPercentageIsOfTheContainerLimit(t *testing.T) {
	cleanEnv(t)
	cg := t.TempDir()
	if err := os.WriteFile(filepath.Join(cg, "memory.max"), []byte("536870912\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CGROUP_ROOT", cg)
	t.Setenv("MAX_RSS", "80%")
	code, out, errOut := runCLI(t, "check", "--", "true")
	if code != 0 || !strings.Contains(out, "# container memory limit 512.0MB; MAX_RSS=80% of the container limit = 409.6MB") {
		t.Fatalf("check %d:\n%s%s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "run", "--", "true")
	if code != 0 || !strings.Contains(errOut, "container memory limit 512.0MB; MAX_RSS=80% of the container limit = 409.6MB") {
		t.Fatalf("run %d:\n%s", code, errOut)
	}
	t.Setenv("CGROUP_ROOT", t.TempDir())
	t.Setenv("MAX_RSS", "300MB")
	for _, args := range [][]string{{"check", "--", "true"}, {"run", "--", "true"}} {
		code, out, errOut := runCLI(t, args...)
		if code != 0 || !strings.Contains(out+errOut, "no container memory limit") {
			t.Errorf("%v off a container: %d, output lacks \"no container memory limit\":\n%s%s", args, code, out, errOut)
		}
	}
}
