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
