package e2e

import (
	"github.com/dynocycle/dynocycle/internal/testutil"

	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/internal/testredis"
)

// runBin runs the built dynocycle with exactly env (plus PATH and HOME) and
// returns its exit code and output.
func runBin(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "dynocycle"), args...)
	cmd.Env = append([]string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errOut.String()
	case err != nil:
		t.Fatalf("%v: %v", args, err)
	}
	return 0, out.String(), errOut.String()
}

func TestBinaryHelpAndMisuse(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"check", "-h"}, {"status", "--help"}, {"help", "status"}} {
		code, out, errOut := runBin(t, nil, args...)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "usage: dynocycle") && !strings.HasPrefix(out, "dynocycle restarts") {
			t.Errorf("%v: code %d, stderr %q, stdout %.80q", args, code, errOut, out)
		}
	}
	code, out, errOut := runBin(t, nil, "stauts")
	if code != 2 || out != "" || !strings.Contains(errOut, `did you mean "status"?`) {
		t.Errorf("stauts: code %d, stderr %q", code, errOut)
	}
}

func TestBinaryCheckAndRunRefuseTheSameConfiguration(t *testing.T) {
	noContainer := "CGROUP_ROOT=" + t.TempDir()
	for _, env := range [][]string{
		{noContainer},
		{noContainer, "MAX_RSS=80%"},
		{noContainer, "MAX_RSS=5B"},
		{noContainer, "MAX_RSS=100MB", "CHECK_SCHEDULE=0 0 30 2 *"},
		{noContainer, "MAX_RSS=100MB", "METRICS_ADDR=:99999"},
		{noContainer, "MAX_RSS=100MB", "HEROKU_API_URL=http://api.example.com"},
		{noContainer, "MAX_RSS=100MB", "REDIS_URL=redis://127.0.0.1:1"},
		{noContainer, "MAX_RSS=big", "GRACE_TIME=soon", "REDIS_URL=redis://127.0.0.1:1"},
	} {
		checkCode, _, checkErr := runBin(t, env, "check", "--", "bloater")
		runCode, runOut, runErr := runBin(t, env, "run", "--", "bloater")
		if checkCode != 2 || runCode != 2 || checkErr != runErr || !strings.HasPrefix(checkErr, "dynocycle: configuration error:\n") {
			t.Errorf("%v: check %d %q; run %d %q %q", env, checkCode, checkErr, runCode, runErr, runOut)
		}
	}
	// Every problem at once: three variables, three lines under the header.
	_, _, errOut := runBin(t, []string{noContainer, "MAX_RSS=big", "GRACE_TIME=soon", "REDIS_URL=redis://127.0.0.1:1"}, "check")
	if n := strings.Count(errOut, "\n"); n != 4 {
		t.Errorf("%d lines, want a header and 3:\n%s", n, errOut)
	}
}

func TestBinaryCheckHidesAPICredentials(t *testing.T) {
	env := []string{"CGROUP_ROOT=" + t.TempDir(), "MAX_RSS=100MB", "HEROKU_API_URL=https://user:hunter2@api.example.com",
		"HEROKU_API_TOKEN=HRKU-secret-token"}
	code, out, errOut := runBin(t, env, "check")
	if code != 0 || !strings.Contains(out, "HEROKU_API_URL=https://xxxxx@api.example.com") ||
		!strings.Contains(out, "# no container memory limit") {
		t.Fatalf("code %d:\n%s%s", code, out, errOut)
	}
	if strings.Contains(out+errOut, "hunter2") || strings.Contains(out+errOut, "HRKU-secret") {
		t.Fatalf("credentials printed:\n%s%s", out, errOut)
	}
}

func TestBinaryStatus(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	code, out, errOut := runBin(t, []string{"REDIS_URL=redis://:pw-secret@" + closed, "HEROKU_APP_NAME=shop"}, "status")
	if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 ||
		!strings.HasPrefix(errOut, "dynocycle status: cannot read the fleet from Redis at "+closed+": ") || strings.Contains(errOut, "pw-secret") {
		t.Errorf("unreachable: code %d, stdout %q, stderr %q", code, out, errOut)
	}

	srv := testredis.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer client.Close()
	ctx := context.Background()
	// A lease value no agent wrote, and a Sidekiq process with a huge queue name.
	if err := client.Set(ctx, "dynocycle:{shop}:lease:0", "junk", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("q", 20000)
	info := `{"hostname":"worker.1","pid":1,"queues":["` + huge + `"],"concurrency":5,"identity":"worker.1:1:ab","started_at":1}`
	if err := client.SAdd(ctx, "processes", "worker.1:1:ab").Err(); err != nil {
		t.Fatal(err)
	}
	if err := client.HSet(ctx, "worker.1:1:ab", "info", info, "busy", "0", "beat", strconv.FormatInt(time.Now().Unix(), 10), "quiet", "false").Err(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runBin(t, []string{"REDIS_URL=" + srv.URL()}, "status", "-a", "shop")
	if code != 0 || errOut != "" || !strings.HasPrefix(out, "=== shop: ") {
		t.Fatalf("status: code %d, stderr %q, stdout:\n%.2000s", code, errOut, out)
	}
	if !strings.Contains(out, `slot 0: taken, by a malformed value "junk"`) {
		t.Errorf("malformed slot not shown taken:\n%.2000s", out)
	}
	if len(out) > 5000 {
		t.Errorf("status printed %d bytes for one process", len(out))
	}
}

// The demo's settings, read from the Makefile: a normal restart logs no
// drain warning, and every line of the README's excerpt is one the binary prints.
func TestDemoRestartsWithoutWarningAndMatchesTheREADME(t *testing.T) {
	makefile, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	recipe := regexp.MustCompile(`(?s)\ndemo: build\n(.*?)\./bin/dynocycle run -- \./bin/bloater`).FindSubmatch(makefile)
	if recipe == nil {
		t.Fatal("no demo recipe in the Makefile")
	}
	env := regexp.MustCompile(`([A-Z_]+)=('[^']*'|\S+)`).FindAllStringSubmatch(string(recipe[1]), -1)
	var demoEnv []string
	for _, kv := range env {
		demoEnv = append(demoEnv, kv[1]+"="+strings.Trim(kv[2], "'"))
	}
	if len(demoEnv) < 5 {
		t.Fatalf("demo env %v", demoEnv)
	}
	_, out := startAgent(t, demoEnv, "bloater")
	testutil.Eventually(t, 90*time.Second, "two restarts", func() bool {
		return len(out.matches(regexp.MustCompile(`event=restarted`))) >= 2
	})
	if w := out.matches(regexp.MustCompile(`event=drain_timeout|grace time passed`)); len(w) > 0 {
		t.Errorf("a normal restart logged a drain warning: %v", w)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	excerpt := regexp.MustCompile("(?s)timestamps cut\\).*?```\n(.*?)```").FindSubmatch(readme)
	if excerpt == nil {
		t.Fatal("no demo excerpt in the README")
	}
	// Numbers, the host's name and timestamps vary from run to run.
	norm := func(s string) string {
		s = regexp.MustCompile(`^time=\S+ `).ReplaceAllString(s, "")
		s = regexp.MustCompile(`\b(dyno|source)=\S+`).ReplaceAllString(s, "$1=D")
		return regexp.MustCompile(`[0-9]+(\.[0-9]+)?`).ReplaceAllString(s, "N")
	}
	printed := map[string]bool{}
	for _, l := range strings.Split(out.String(), "\n") {
		printed[norm(l)] = true
	}
	for _, l := range strings.Split(strings.TrimSpace(string(excerpt[1])), "\n") {
		if !printed[norm(l)] {
			t.Errorf("README excerpt line the demo does not print:\n  %s", l)
		}
	}
}
