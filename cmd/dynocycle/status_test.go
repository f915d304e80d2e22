package main

import (
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/config"
	"github.com/dynocycle/dynocycle/internal/testredis"
)

func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func TestStatusUnreachableRedisIsOneLineAndExitOne(t *testing.T) {
	cleanEnv(t)
	port := closedPort(t)
	t.Setenv("REDIS_URL", "redis://:s3cret-pw@127.0.0.1:"+strconv.Itoa(port)+"/0")
	code, out, errOut := runCLI(t, "status", "-a", "shop")
	want := "dynocycle status: cannot read the fleet from Redis at 127.0.0.1:" + strconv.Itoa(port) + ": "
	if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, want) {
		t.Fatalf("code %d, stdout %q, stderr %q; want 1 and one line starting %q", code, out, errOut, want)
	}
	if strings.Contains(errOut, "retry") || strings.Contains(errOut, "level=") || strings.Contains(errOut, "s3cret") {
		t.Fatalf("stderr has a log line or the password: %q", errOut)
	}
}

func TestStatusNamesTheAppAndLogsNothing(t *testing.T) {
	srv := testredis.Start(t)
	cleanEnv(t)
	t.Setenv("REDIS_URL", srv.URL())
	t.Setenv("HEROKU_APP_NAME", "shop")

	code, out, errOut := runCLI(t, "status")
	if code != 0 || errOut != "" || !strings.HasPrefix(out, "=== shop: ") {
		t.Fatalf("code %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	code, out, _ = runCLI(t, "status", "--app", "other")
	if code != 0 || !strings.HasPrefix(out, "=== other: ") {
		t.Fatalf("--app: %d\n%s", code, out)
	}
	code, out, errOut = runCLI(t, "status", "-a", "shop", "--json")
	if code != 0 || errOut != "" || !strings.HasPrefix(out, "{") || !strings.Contains(out, `"app": "shop"`) {
		t.Fatalf("--json: %d %q\n%s", code, errOut, out)
	}
	code, _, errOut = runCLI(t, "status", "--verbose")
	if code != 0 || !strings.Contains(errOut, "level=INFO") {
		t.Fatalf("--verbose logs nothing: %d %q", code, errOut)
	}

	t.Setenv("HEROKU_APP_NAME", "")
	code, out, errOut = runCLI(t, "status")
	if code != 2 || out != "" || !strings.Contains(errOut, "which app? pass -a APP") {
		t.Fatalf("no app: %d %q %q", code, out, errOut)
	}
}

// status used to report the lease TTL (about ten minutes) as the pause of
// an empty Redis, where the agents pause a few seconds.
func TestStatusShowsTheSettlePeriodTheAgentsUse(t *testing.T) {
	srv := testredis.Start(t)
	cleanEnv(t)
	t.Setenv("REDIS_URL", srv.URL())
	t.Setenv("HEROKU_APP_NAME", "shop")
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	opts := fleetOptions(cfg, "", nil)
	settle := opts.Settle
	if settle == 0 {
		settle = opts.LeaseTTL
	}
	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer client.Close()
	// The epoch is when this Redis first saw the app: just now.
	if err := client.Set(context.Background(), "dynocycle:{shop}:epoch", time.Now().UnixMilli(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(t, "status")
	m := regexp.MustCompile(`leases paused for (\S+):`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("code %d, no pause shown:\n%s", code, out)
	}
	shown, err := time.ParseDuration(strings.Replace(m[1], "m0", "m", 1))
	if err != nil {
		t.Fatalf("pause %q: %v", m[1], err)
	}
	if shown > settle || shown < settle-5*time.Second {
		t.Fatalf("status shows a pause of %s, the agents use %s", shown, settle)
	}
}

func TestStatusShowsAMalformedSlotAsTaken(t *testing.T) {
	srv := testredis.Start(t)
	cleanEnv(t)
	t.Setenv("REDIS_URL", srv.URL())
	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer client.Close()
	if err := client.Set(context.Background(), "dynocycle:{shop}:lease:0", "not-a-lease", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(t, "status", "-a", "shop")
	if code != 0 || !strings.Contains(out, `slot 0: taken, by a malformed value "not-a-lease"`) || strings.Contains(out, "slot 0: free") {
		t.Fatalf("code %d:\n%s", code, out)
	}
}
