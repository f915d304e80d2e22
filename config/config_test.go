package config

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// clearEnv unsets every variable the config reads (both spellings) for the
// test, restoring them afterwards.
func clearEnv(t *testing.T) {
	t.Helper()
	typ := reflect.TypeOf(Config{})
	for i := 0; i < typ.NumField(); i++ {
		name := typ.Field(i).Tag.Get("envconfig")
		for _, k := range []string{name, Prefix + "_" + name} {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

func load(t *testing.T, env map[string]string) (*Config, error) {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
	return Load()
}

func TestDefaults(t *testing.T) {
	c, err := load(t, map[string]string{"MAX_RSS": "512MB"})
	if err != nil {
		t.Fatal(err)
	}
	if c.GraceTime.D() != 120*time.Second || c.ShutdownWait.D() != 25*time.Second || c.MinUptime.D() != 5*time.Minute {
		t.Errorf("durations: grace %v shutdown %v min uptime %v", c.GraceTime, c.ShutdownWait, c.MinUptime)
	}
	if c.SustainChecks != 3 || c.MaxConcurrentRestarts != 1 || c.MinHealthyPeers != 1 {
		t.Errorf("counts: %d %d %d", c.SustainChecks, c.MaxConcurrentRestarts, c.MinHealthyPeers)
	}
	if c.CheckSchedule.Spec != "@every 5s" || c.RestartSchedule.Set() {
		t.Errorf("schedules: %q %v", c.CheckSchedule.Spec, c.RestartSchedule.Set())
	}
	if c.Platform != "auto" || c.Worker != "auto" || c.MemorySource != "auto" || c.StopSignal.String() != "TERM" || c.QuietSignal.Set() {
		t.Errorf("enums: %+v", c)
	}
	if c.MaxRSS.Bytes != 512<<20 {
		t.Errorf("MAX_RSS = %d", c.MaxRSS.Bytes)
	}
}

func TestPrefixWins(t *testing.T) {
	c, err := load(t, map[string]string{"MAX_RSS": "100", "DYNOCYCLE_MAX_RSS": "200", "DYNOCYCLE_GRACE_TIME": "7"})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxRSS.Bytes != 200<<20 || c.GraceTime.D() != 7*time.Second {
		t.Errorf("MAX_RSS %d, GRACE_TIME %v", c.MaxRSS.Bytes, c.GraceTime)
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		in      string
		bytes   uint64
		percent float64
		err     bool
	}{
		{"512MB", 512 << 20, 0, false},
		{"1.5GB", 3 << 29, 0, false},
		{"900000KB", 900000 << 10, 0, false},
		{"300", 300 << 20, 0, false},
		{"2g", 2 << 30, 0, false},
		{" 64 MiB ", 64 << 20, 0, false},
		{"1048576B", 1 << 20, 0, false},
		{"90%", 0, 90, false},
		{"0%", 0, 0, true},
		{"101%", 0, 0, true},
		{"-5MB", 0, 0, true},
		{"0", 0, 0, true},
		{"lots", 0, 0, true},
		{"12XB", 0, 0, true},
		{"NaN", 0, 0, true},
		{"1e30GB", 0, 0, true},
	} {
		var s Size
		err := s.Decode(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("%q: err = %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if err == nil && (s.Bytes != tc.bytes || s.Percent != tc.percent) {
			t.Errorf("%q = %d bytes %v%%, want %d %v%%", tc.in, s.Bytes, s.Percent, tc.bytes, tc.percent)
		}
	}
	var p Size
	_ = p.Decode("90%")
	if got, ok := p.Resolve(1000); !ok || got != 900 {
		t.Errorf("90%% of 1000 = %d %v", got, ok)
	}
	if _, ok := p.Resolve(0); ok {
		t.Error("a percentage resolved without a limit")
	}
}

func TestDurationsSchedulesSignals(t *testing.T) {
	for in, want := range map[string]time.Duration{"2m": 2 * time.Minute, "120s": 120 * time.Second, "90": 90 * time.Second, "1.5": 1500 * time.Millisecond, "1h30m": 90 * time.Minute} {
		var d Duration
		if err := d.Decode(in); err != nil || d.D() != want {
			t.Errorf("%q = %v, %v; want %v", in, d, err, want)
		}
	}
	for _, bad := range []string{"soon", "-3s", "-1", "5 minutes"} {
		var d Duration
		if err := d.Decode(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, good := range []string{"@every 5s", "*/5 * * * *", "0 4 * * *", "@hourly"} {
		var s Schedule
		if err := s.Decode(good); err != nil || !s.Set() {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"@every 100ms", "every 5s", "* * *", "61 * * * *"} {
		var s Schedule
		if err := s.Decode(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for in, want := range map[string]string{"TERM": "TERM", "sigint": "INT", "SIGTSTP": "TSTP", "15": "TERM", "quit": "QUIT"} {
		var s Signal
		if err := s.Decode(in); err != nil || s.String() != want {
			t.Errorf("%q = %v, %v", in, s, err)
		}
	}
	for _, bad := range []string{"KILL", "SIGSTOP", "FOO", "99"} {
		var s Signal
		if err := s.Decode(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestErrorsNameVariableAndForm(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"MAX_RSS": "lots"}, []string{"MAX_RSS=lots", "not a size", "accepted: a size such as 512MB"}},
		{map[string]string{"GRACE_TIME": "soon"}, []string{"GRACE_TIME=soon", "not a duration", "accepted: a duration such as 120s"}},
		{map[string]string{"SUSTAIN_CHECKS": "many"}, []string{"SUSTAIN_CHECKS=many", "not a whole number"}},
		{map[string]string{"SUSTAIN_CHECKS": "0"}, []string{"SUSTAIN_CHECKS=0", "at least 1"}},
		{map[string]string{"CHECK_SCHEDULE": "every 5s"}, []string{"CHECK_SCHEDULE=every 5s", "cron spec"}},
		{map[string]string{"PLATFORM": "k8s"}, []string{"PLATFORM=k8s", "one of auto, heroku, local, exit"}},
		{map[string]string{"STOP_SIGNAL": "KILL"}, []string{"STOP_SIGNAL=KILL", "cannot be handled"}},
		{map[string]string{"STOP_SIGNAL": "TSTP"}, []string{"STOP_SIGNAL=TSTP", "never stops"}},
		{map[string]string{"MAX_RSS": "1GB", "CRITICAL_RSS": "512MB"}, []string{"CRITICAL_RSS=512.0MB", "below MAX_RSS"}},
		{map[string]string{"PLATFORM": "heroku", "DYNO": "worker.1"}, []string{"PLATFORM=heroku", "missing HEROKU_API_TOKEN", "HEROKU_APP_NAME"}},
		{map[string]string{"REDIS_URL": "http://u:hunter2@x"}, []string{"REDIS_URL", "not a Redis URL"}},
		{map[string]string{"DRY_RUN": "maybe"}, []string{"DRY_RUN=maybe", "not a boolean"}},
		{map[string]string{"WORKER": "sidekiq", "QUIET_SIGNAL": "USR1"}, []string{"QUIET_SIGNAL=USR1", "kills Sidekiq", "accepted: TSTP"}},
		{map[string]string{"WORKER": "sidekiq", "STOP_SIGNAL": "QUIT"}, []string{"STOP_SIGNAL=QUIT", "kills Sidekiq", "accepted: TERM or INT"}},
		{map[string]string{"METRICS_ADDR": "9394"}, []string{"METRICS_ADDR=9394", "not a host:port address"}},
	} {
		_, err := load(t, tc.env)
		var es Errors
		if !errors.As(err, &es) {
			t.Errorf("%v: error %v is not Errors", tc.env, err)
			continue
		}
		msg := err.Error()
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%v: %q does not contain %q", tc.env, msg, w)
			}
		}
		if strings.Contains(msg, "hunter2") {
			t.Errorf("secret leaked: %q", msg)
		}
	}
}

func TestPrintRedactsSecrets(t *testing.T) {
	c, err := load(t, map[string]string{
		"MAX_RSS": "1GB", "HEROKU_API_TOKEN": "HRKU-s3cr3t", "REDIS_URL": "rediss://user:p4ssw0rd@redis.example:6380/2",
		"DYNO": "worker.1", "HEROKU_APP_NAME": "app",
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c.Print(&buf)
	out := buf.String()
	for _, secret := range []string{"s3cr3t", "p4ssw0rd"} {
		if strings.Contains(out, secret) {
			t.Errorf("output leaks %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"HEROKU_API_TOKEN=[redacted]", "REDIS_URL=rediss://user:xxxxx@redis.example:6380/2", "MAX_RSS=1024.0MB", "DYNO=worker.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := c.ResolvePlatform(true); got != PlatformHeroku {
		t.Errorf("platform = %s", got)
	}
}

func TestResolvePlatformAndOneOff(t *testing.T) {
	c := &Config{Platform: PlatformAuto}
	if c.ResolvePlatform(true) != PlatformLocal || c.ResolvePlatform(false) != PlatformExit {
		t.Error("auto without Heroku identity should be local with a command, exit without")
	}
	for dyno, want := range map[string]bool{"run.1234": true, "scheduler.9": true, "release.42": true, "worker.1": false, "worker-5d8f7c9b4-x2x9z": false, "": false} {
		c.Dyno = dyno
		if c.OneOff() != want {
			t.Errorf("OneOff(%q) = %v", dyno, !want)
		}
	}
}

func TestEveryBadVariableIsReportedAtOnce(t *testing.T) {
	_, err := load(t, map[string]string{
		"MAX_RSS": "big", "GRACE_TIME": "forever", "DYNOCYCLE_SUSTAIN_CHECKS": "many",
		"PLATFORM": "k8s", "METRICS_ADDR": ":99999", "MAX_CONCURRENT_RESTARTS": "x",
	})
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v is not Errors", err)
	}
	want := []string{
		"MAX_RSS=big: not a size; accepted: a size such as 512MB",
		"GRACE_TIME=forever: not a duration; accepted: a duration",
		"DYNOCYCLE_SUSTAIN_CHECKS=many: not a whole number",
		"MAX_CONCURRENT_RESTARTS=x: not a whole number",
		"PLATFORM=k8s: unknown value; accepted: one of auto",
		"METRICS_ADDR=:99999: port must be a number from 1 to 65535",
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d (one per bad variable, a value that did not parse reported once):\n%s", len(lines), len(want), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("errors lack %q:\n%s", w, err)
		}
	}
}

func TestSchedulesThatNeverFireOrFireTooOftenAreErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"CHECK_SCHEDULE": "0 0 30 2 *"}, "CHECK_SCHEDULE=0 0 30 2 *: never fires"},
		{map[string]string{"CHECK_SCHEDULE": "0 0 31 4 *"}, "never fires"},
		{map[string]string{"RESTART_SCHEDULE": "0 0 30 2 *"}, "RESTART_SCHEDULE=0 0 30 2 *: never fires"},
		{map[string]string{"RESTART_SCHEDULE": "*/10 * * * *"}, "RESTART_SCHEDULE=*/10 * * * *: fires every 10m, more often than allowed; accepted: a cron spec"},
		{map[string]string{"RESTART_SCHEDULE": "@every 30s"}, "fires every 30s, more often than allowed"},
		{map[string]string{"CHECK_SCHEDULE": "@every 500ms"}, "interval must be at least 1s"},
	} {
		_, err := load(t, tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.env, err, tc.want)
		}
	}
	for _, good := range []map[string]string{
		{"CHECK_SCHEDULE": "@every 1s"}, {"CHECK_SCHEDULE": "* * * * *"}, {"CHECK_SCHEDULE": "0 0 29 2 *"},
		{"RESTART_SCHEDULE": "0 4 * * *"}, {"RESTART_SCHEDULE": "@every 1h"}, {"RESTART_SCHEDULE": "0 */6 * * *"},
	} {
		if _, err := load(t, good); err != nil {
			t.Errorf("%v: %v", good, err)
		}
	}
}

func TestSizesBelowOneMegabyteAreErrors(t *testing.T) {
	for _, bad := range []string{"5B", "1000KB", "0.0001MB", "0.5"} {
		_, err := load(t, map[string]string{"MAX_RSS": bad})
		if err == nil || !strings.Contains(err.Error(), "MAX_RSS="+bad+": size below 1MB") {
			t.Errorf("MAX_RSS=%s: error %v", bad, err)
		}
	}
	if _, err := load(t, map[string]string{"MAX_RSS": "1MB", "CRITICAL_RSS": "1024KB"}); err != nil {
		t.Errorf("1MB: %v", err)
	}
}

func TestHerokuAPIURL(t *testing.T) {
	for _, tc := range []struct {
		url, want string
	}{
		{"http://api.example.com", "plain http would send the API token in clear text"},
		{"http://10.0.0.5:8080", "plain http"},
		{"ftp://api.heroku.com", "not an http(s) URL"},
		{"https://user:hunter2@api.example.com", ""},
		{"https://HRKU-tokenlike@api.example.com", ""},
		{"http://127.0.0.1:4567", ""},
		{"http://[::1]:4567", ""},
		{"http://localhost:4567", ""},
	} {
		c, err := load(t, map[string]string{"HEROKU_API_URL": tc.url})
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.url, err)
				continue
			}
			var b bytes.Buffer
			c.Print(&b)
			if strings.Contains(b.String(), "hunter2") || strings.Contains(b.String(), "tokenlike") {
				t.Errorf("%s: check prints the credentials:\n%s", tc.url, b.String())
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "HEROKU_API_URL") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.url, err, tc.want)
		}
	}
	_, err := load(t, map[string]string{"HEROKU_API_URL": "http://u:hunter2@api.example.com"})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "http://xxxxx@api.example.com") {
		t.Errorf("error must name the URL without its credentials: %v", err)
	}
}

func TestMetricsAddr(t *testing.T) {
	for addr, want := range map[string]string{
		":99999": "port must be a number from 1 to 65535", ":0": "port must be", ":-1": "port must be",
		":http": "port must be", "9394": "not a host:port", "bad host:9394": "not an IP address or host name",
	} {
		_, err := load(t, map[string]string{"METRICS_ADDR": addr})
		if err == nil || !strings.Contains(err.Error(), "METRICS_ADDR="+addr+": "+want) {
			t.Errorf("%q: error %v, want %q", addr, err, want)
		}
	}
	for _, good := range []string{":9394", "127.0.0.1:9394", "[::1]:9394", "localhost:65535", "metrics.internal:80"} {
		if _, err := load(t, map[string]string{"METRICS_ADDR": good}); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
}

func TestFleetScope(t *testing.T) {
	for env, want := range map[[2]string]string{
		{"", ""}: "", {"HEROKU_APP_ID", "01234567-89ab-cdef-0123-456789abcdef"}: "01234567-89ab-cdef-0123-456789abcdef", {"HEROKU_APP_NAME", "shop"}: "shop",
		{"FLEET_SCOPE", "shop-eu"}: "shop-eu", {"DYNOCYCLE_FLEET_SCOPE", "x:y"}: "x:y",
	} {
		m := map[string]string{}
		if env[0] != "" {
			m[env[0]] = env[1]
		}
		c, err := load(t, m)
		if err != nil || c.Scope() != want {
			t.Errorf("%v: scope %q, %v; want %q", env, c.Scope(), err, want)
		}
	}
	c, _ := load(t, map[string]string{"FLEET_SCOPE": "mine", "HEROKU_APP_NAME": "shop"})
	if c.Scope() != "mine" || c.App() != "shop" {
		t.Errorf("FLEET_SCOPE must win for the keys and leave the app alone: %q %q", c.Scope(), c.App())
	}
	for _, bad := range []string{"a}b", "with space", strings.Repeat("x", 65), "tab\there"} {
		if _, err := load(t, map[string]string{"FLEET_SCOPE": bad}); err == nil || !strings.Contains(err.Error(), "not a fleet name") {
			t.Errorf("FLEET_SCOPE=%q: %v", bad, err)
		}
	}
}
