package platform

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	heroku "github.com/heroku/heroku-go/v5"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/internal/fakeheroku"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

const testToken = "HRKU-0123456789abcdef-secret"

// harness is a Heroku restarter wired to a fake API, with its log lines and
// waits captured.
type harness struct {
	h     *Heroku
	fake  *fakeheroku.Server
	logs  *testutil.Buffer
	mu    sync.Mutex
	waits []time.Duration
}

func newHarness(t *testing.T, mod func(*HerokuOptions)) *harness {
	t.Helper()
	fake := fakeheroku.New(fakeheroku.Config{Token: testToken, App: "demo"})
	t.Cleanup(fake.Close)
	hs := newHarnessURL(t, fake.URL, mod)
	hs.fake = fake
	t.Cleanup(func() {
		if v := fake.Violations(); len(v) != 0 {
			t.Errorf("fake API saw bad requests: %v", v)
		}
	})
	return hs
}

func newHarnessURL(t *testing.T, url string, mod func(*HerokuOptions)) *harness {
	t.Helper()
	hs := &harness{logs: &testutil.Buffer{}}
	opts := HerokuOptions{
		Token:          testToken,
		App:            "demo",
		Dyno:           "worker.1",
		BaseURL:        url,
		Version:        "1.2.3",
		Timeout:        5 * time.Second,
		MaxAttempts:    3,
		BackoffInitial: time.Millisecond,
		BackoffMax:     4 * time.Millisecond,
		RateLimitWait:  time.Second,
		Logger:         slog.New(slog.NewJSONHandler(hs.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Sleep: func(ctx context.Context, d time.Duration) error {
			hs.mu.Lock()
			hs.waits = append(hs.waits, d)
			hs.mu.Unlock()
			return ctx.Err()
		},
	}
	if mod != nil {
		mod(&opts)
	}
	hs.h = NewHeroku(opts)
	t.Cleanup(func() {
		if strings.Contains(hs.logs.String(), testToken) {
			t.Errorf("the token appears in the logs:\n%s", hs.logs)
		}
	})
	return hs
}

// restart calls Restart and checks the error never carries the token.
func (hs *harness) restart(t *testing.T, ctx context.Context) (agent.Next, error) {
	t.Helper()
	next, err := hs.h.Restart(ctx, "memory")
	if err != nil && strings.Contains(err.Error(), testToken) {
		t.Errorf("the token appears in the error: %v", err)
	}
	return next, err
}

// attempts returns the api_restart log records, in order.
func (hs *harness) attempts(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(hs.logs.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["event"] == "api_restart" {
			for _, k := range []string{"dyno", "attempt", "status", "wait"} {
				if _, ok := rec[k]; !ok {
					t.Errorf("log line lacks %s: %s", k, line)
				}
			}
			out = append(out, rec)
		}
	}
	return out
}

func (hs *harness) recordedWaits() []time.Duration {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]time.Duration(nil), hs.waits...)
}

func TestRestartAccepted(t *testing.T) {
	hs := newHarness(t, nil)
	next, err := hs.restart(t, context.Background())
	if err != nil || next != agent.AwaitTermination {
		t.Fatalf("Restart = %v, %v; want AwaitTermination, nil", next, err)
	}
	calls := hs.fake.Restarts()
	if len(calls) != 1 || calls[0].App != "demo" || calls[0].Dyno != "worker.1" {
		t.Errorf("restarts = %+v, want one of demo/worker.1", calls)
	}
	recs := hs.attempts(t)
	if len(recs) != 1 || recs[0]["status"] != 202.0 || recs[0]["attempt"] != 1.0 || recs[0]["dyno"] != "worker.1" {
		t.Errorf("log = %v", recs)
	}
}

func TestRestartEmptyBodyIsSuccess(t *testing.T) {
	hs := newHarness(t, nil)
	hs.fake.Queue(fakeheroku.Answer{EmptyBody: true})
	next, err := hs.restart(t, context.Background())
	if err != nil || next != agent.AwaitTermination {
		t.Fatalf("Restart = %v, %v; want AwaitTermination, nil", next, err)
	}
	if n := len(hs.fake.Calls()); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}

func TestRestartRetriesAfterRateLimit(t *testing.T) {
	hs := newHarness(t, nil)
	hs.fake.QueueStatus(http.StatusTooManyRequests)
	next, err := hs.restart(t, context.Background())
	if err != nil || next != agent.AwaitTermination {
		t.Fatalf("Restart = %v, %v; want AwaitTermination, nil", next, err)
	}
	if n := len(hs.fake.Calls()); n != 2 {
		t.Errorf("%d calls, want exactly 2", n)
	}
	waits := hs.recordedWaits()
	if len(waits) != 1 || waits[0] < time.Second {
		t.Errorf("waits = %v, want one of at least RateLimitWait (1s) after a 429", waits)
	}
	recs := hs.attempts(t)
	if len(recs) != 2 || recs[0]["status"] != 429.0 || recs[1]["status"] != 202.0 {
		t.Errorf("log = %v", recs)
	}
}

func TestRestartWaitsLongerWhenRateLimitSpent(t *testing.T) {
	hs := newHarness(t, nil)
	hs.fake.QueueStatus(http.StatusInternalServerError, http.StatusInternalServerError)
	hs.fake.SetRemaining(2) // the first answer says 1 left, the second 0
	if _, err := hs.restart(t, context.Background()); err != nil {
		t.Fatal(err)
	}
	waits := hs.recordedWaits()
	if len(waits) != 2 {
		t.Fatalf("waits = %v, want 2", waits)
	}
	if waits[0] >= time.Second {
		t.Errorf("first wait %v: tokens were left, want the short backoff", waits[0])
	}
	if waits[1] < time.Second {
		t.Errorf("second wait %v: RateLimit-Remaining was 0, want at least RateLimitWait", waits[1])
	}
	if recs := hs.attempts(t); recs[1]["ratelimit_remaining"] != 0.0 {
		t.Errorf("log = %v, want ratelimit_remaining=0 on attempt 2", recs)
	}
}

func TestRestartGivesUpOnServerErrors(t *testing.T) {
	hs := newHarness(t, func(o *HerokuOptions) { o.MaxAttempts = 4 })
	hs.fake.Always(fakeheroku.Answer{Status: http.StatusInternalServerError})
	next, err := hs.restart(t, context.Background())
	if err == nil || next != agent.Exit {
		t.Fatalf("Restart = %v, %v; want Exit and an error", next, err)
	}
	if n := len(hs.fake.Calls()); n != 4 {
		t.Errorf("%d calls, want MaxAttempts = 4", n)
	}
	if w := hs.recordedWaits(); len(w) != 3 {
		t.Errorf("waits = %v, want 3 (none after the last attempt)", w)
	}
	var he heroku.Error
	if !errors.As(err, &he) || he.StatusCode != 500 {
		t.Errorf("error %v does not wrap heroku.Error 500", err)
	}
	if !strings.Contains(err.Error(), "gave up after 4 attempts") {
		t.Errorf("error %q does not say it gave up", err)
	}
	if errors.Is(err, agent.ErrRestartRefused) {
		t.Errorf("error %q after 5xx answers reads as a permanent refusal: the agent would not crash-restart the dyno", err)
	}
}

func TestRestartPermanentRefusals(t *testing.T) {
	for _, tc := range []struct {
		status int
		want   string
	}{
		{http.StatusUnauthorized, "heroku api: 401 unauthorized: check HEROKU_API_TOKEN"},
		{http.StatusForbidden, "heroku api: 403 forbidden: the token's user may not restart dynos"},
		{http.StatusNotFound, "check HEROKU_APP_NAME and DYNO"},
		{http.StatusUnprocessableEntity, "heroku api: 422 invalid_params"},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			hs := newHarness(t, nil)
			hs.fake.Always(fakeheroku.Answer{Status: tc.status})
			next, err := hs.restart(t, context.Background())
			if err == nil || next != agent.Exit {
				t.Fatalf("Restart = %v, %v; want Exit and an error", next, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
			// So the agent restarts in place rather than crash-loop the dyno.
			if !errors.Is(err, agent.ErrRestartRefused) {
				t.Errorf("error %q does not match agent.ErrRestartRefused", err)
			}
			if n := len(hs.fake.Calls()); n != 1 {
				t.Errorf("%d calls, want 1: a %d is not retried", n, tc.status)
			}
			if w := hs.recordedWaits(); len(w) != 0 {
				t.Errorf("waited %v", w)
			}
		})
	}
}

func TestRestartWrongTokenIsCaughtByTheFake(t *testing.T) {
	fake := fakeheroku.New(fakeheroku.Config{Token: "HRKU-the-right-one"})
	defer fake.Close()
	hs := newHarnessURL(t, fake.URL, nil)
	next, err := hs.restart(t, context.Background())
	if next != agent.Exit || err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("Restart = %v, %v; want Exit and a 401", next, err)
	}
	if len(fake.Violations()) != 1 {
		t.Errorf("violations = %v, want the bad token", fake.Violations())
	}
}

func TestRestartSlowAnswerIsBoundedByTimeout(t *testing.T) {
	hs := newHarness(t, func(o *HerokuOptions) {
		o.Timeout = 200 * time.Millisecond
		o.MaxAttempts = 2
	})
	hs.fake.Always(fakeheroku.Answer{Delay: time.Hour})
	start := time.Now()
	next, err := hs.restart(t, context.Background())
	if err == nil || next != agent.Exit {
		t.Fatalf("Restart = %v, %v; want Exit and an error", next, err)
	}
	// Generous: two 200ms timeouts, nowhere near the hour the fake would take.
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Restart took %v; the per-request timeout did not hold", d)
	}
	recs := hs.attempts(t)
	if len(recs) != 2 || recs[0]["status"] != 0.0 || recs[1]["attempt"] != 2.0 {
		t.Errorf("log = %v, want 2 attempts without a status", recs)
	}
	// A request can in theory time out before the fake reads it, so the
	// fake may have seen fewer; it must never see more, nor answer one.
	// It notices each hang-up on its own time, hence the poll.
	deadline := time.Now().Add(10 * time.Second)
	for {
		calls := hs.fake.Calls()
		if len(calls) > 2 {
			t.Fatalf("fake saw %d calls, want at most 2", len(calls))
		}
		aborted := 0
		for _, c := range calls {
			if c.Aborted {
				aborted++
			}
		}
		if aborted == len(calls) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls %+v: not all ended by the client", calls)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRestartRetriesNetworkErrors(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	url := closed.URL
	closed.Close() // connection refused from now on
	hs := newHarnessURL(t, url, nil)
	next, err := hs.restart(t, context.Background())
	if err == nil || next != agent.Exit {
		t.Fatalf("Restart = %v, %v; want Exit and an error", next, err)
	}
	if n := len(hs.attempts(t)); n != 3 {
		t.Errorf("%d attempts, want MaxAttempts = 3", n)
	}
}

func TestRestartNonJSONErrorFromAProxy(t *testing.T) {
	// A router in front of the API can answer 502 with HTML, which heroku-go
	// reports without a status; it must still count as a retryable 5xx.
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if got := r.Header.Get("User-Agent"); got != "dynocycle/1.2.3" {
			t.Errorf("User-Agent = %q, want dynocycle/1.2.3", got)
		}
		if n == 1 {
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("<html>bad gateway</html>"))
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte("accepted")) // not JSON either
	}))
	defer srv.Close()
	hs := newHarnessURL(t, srv.URL, nil)
	next, err := hs.restart(t, context.Background())
	if err != nil || next != agent.AwaitTermination {
		t.Fatalf("Restart = %v, %v; want AwaitTermination, nil", next, err)
	}
	if recs := hs.attempts(t); len(recs) != 2 || recs[0]["status"] != 502.0 {
		t.Errorf("log = %v, want a 502 then success", recs)
	}
}

func TestRestartStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hs := newHarness(t, func(o *HerokuOptions) {
		o.Sleep = func(ctx context.Context, d time.Duration) error {
			cancel() // the agent is shutting down while we back off
			<-ctx.Done()
			return context.Cause(ctx)
		}
	})
	hs.fake.Always(fakeheroku.Answer{Status: http.StatusServiceUnavailable})
	next, err := hs.restart(t, ctx)
	if next != agent.Exit || !errors.Is(err, context.Canceled) {
		t.Fatalf("Restart = %v, %v; want Exit and context.Canceled", next, err)
	}
	if n := len(hs.fake.Calls()); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}

func TestTokenNeverLeaks(t *testing.T) {
	// A hostile server echoes the Authorization header in its error
	// messages; neither logs nor errors may repeat it.
	for _, status := range []int{http.StatusUnauthorized, http.StatusInternalServerError} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(map[string]string{
				"id": "echo", "message": "you sent " + r.Header.Get("Authorization"),
			})
		}))
		hs := newHarnessURL(t, srv.URL, nil)
		_, err := hs.restart(t, context.Background()) // asserts on the error
		if err == nil {
			t.Errorf("status %d: no error", status)
		}
		// The echoed message is logged once, redacted; the error leaves it out.
		if !strings.Contains(hs.logs.String(), "you sent Bearer [REDACTED]") {
			t.Errorf("status %d: logs lack the redacted message:\n%s", status, hs.logs)
		}
		var he heroku.Error
		if !errors.As(err, &he) || he.StatusCode != status {
			t.Errorf("status %d: redaction hid the heroku.Error: %v", status, err)
		}
		srv.Close()
		// newHarnessURL's cleanup asserts the logs.
	}
}

func TestNewHerokuDefaults(t *testing.T) {
	h := NewHeroku(HerokuOptions{Token: testToken, App: "demo", Dyno: "worker.1"})
	o := h.opts
	if o.BaseURL != "https://api.heroku.com" || o.Timeout != DefaultHerokuTimeout || o.MaxAttempts != DefaultMaxAttempts ||
		o.BackoffInitial != DefaultBackoffInitial || o.BackoffMax != DefaultBackoffMax || o.RateLimitWait != DefaultRateLimitWait ||
		o.Logger == nil || o.Sleep == nil || o.Transport == nil {
		t.Errorf("defaults not filled: %+v", o)
	}
	if h.svc.URL != "https://api.heroku.com" {
		t.Errorf("service URL = %q", h.svc.URL)
	}
}
