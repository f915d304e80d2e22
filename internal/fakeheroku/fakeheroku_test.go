package fakeheroku

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testutil"
)

const token = "HRKU-fake-0123456789"

func request(t *testing.T, method, url string, mod func(*http.Request)) (*http.Response, map[string]string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", Accept)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "dynocycle/test")
	if mod != nil {
		mod(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := map[string]string{}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp, body
}

func TestValidRestart(t *testing.T) {
	restarted := make(chan string, 1)
	s := New(Config{Token: token, App: "demo", OnRestart: func(app, dyno string) { restarted <- app + "/" + dyno }})
	defer s.Close()

	resp, body := request(t, http.MethodDelete, s.URL+"/apps/demo/dynos/worker.1", nil)
	if resp.StatusCode != http.StatusAccepted || len(body) != 0 {
		t.Fatalf("got %d %v, want 202 {}", resp.StatusCode, body)
	}
	if got := resp.Header.Get("RateLimit-Remaining"); got != "4499" {
		t.Errorf("RateLimit-Remaining = %q, want 4499", got)
	}
	select {
	case got := <-restarted:
		if got != "demo/worker.1" {
			t.Errorf("OnRestart got %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnRestart not called")
	}
	if v := s.Violations(); len(v) != 0 {
		t.Errorf("violations: %v", v)
	}
	if c := s.Restarts(); len(c) != 1 || c[0].Dyno != "worker.1" || c[0].Time.IsZero() {
		t.Errorf("restarts = %+v", c)
	}
}

func TestViolations(t *testing.T) {
	s := New(Config{Token: token})
	defer s.Close()
	for _, tc := range []struct {
		name   string
		method string
		path   string
		mod    func(*http.Request)
		want   int
		id     string
	}{
		{"method", http.MethodPost, "/apps/demo/dynos/worker.1", nil, 404, "not_found"},
		{"path", http.MethodDelete, "/apps/demo/dyno/worker.1", nil, 404, "not_found"},
		{"dot segments", http.MethodDelete, "/apps/demo/dynos/../../../account/x", nil, 404, "not_found"},
		{"escaped dot segments", http.MethodDelete, "/apps/demo/dynos/%2E%2E/x", nil, 404, "not_found"},
		{"empty segment", http.MethodDelete, "/apps//dynos/worker.1", nil, 404, "not_found"},
		{"accept", http.MethodDelete, "/apps/demo/dynos/worker.1", func(r *http.Request) { r.Header.Set("Accept", "application/json") }, 406, "not_acceptable"},
		{"no auth", http.MethodDelete, "/apps/demo/dynos/worker.1", func(r *http.Request) { r.Header.Del("Authorization") }, 401, "unauthorized"},
		{"wrong token", http.MethodDelete, "/apps/demo/dynos/worker.1", func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, 401, "unauthorized"},
		{"user agent", http.MethodDelete, "/apps/demo/dynos/worker.1", func(r *http.Request) { r.Header.Set("User-Agent", "curl/8") }, 400, "bad_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.Violations())
			resp, body := request(t, tc.method, s.URL+tc.path, tc.mod)
			if resp.StatusCode != tc.want || body["id"] != tc.id || body["message"] == "" {
				t.Errorf("got %d %v, want %d id=%s with a message", resp.StatusCode, body, tc.want, tc.id)
			}
			if got := len(s.Violations()); got != before+1 {
				t.Errorf("violations %d -> %d, want one more", before, got)
			}
		})
	}
	if len(s.Restarts()) != 0 {
		t.Errorf("a violating call counted as a restart")
	}
}

func TestRestartOfEveryDynoIsAcceptedAndAViolation(t *testing.T) {
	s := New(Config{Token: token, App: "app"})
	defer s.Close()
	// What HEROKU_APP_NAME="app/dynos?x=" made of one dyno's restart.
	resp, _ := request(t, http.MethodDelete, s.URL+"/apps/app/dynos?x=/dynos/worker.1", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("got %d, want 202 as the real API answers", resp.StatusCode)
	}
	calls := s.Calls()
	if len(calls) != 1 || !calls[0].All || calls[0].App != "app" || calls[0].Violation == "" {
		t.Errorf("calls = %+v, want one restart of every dyno, a violation", calls)
	}
	if len(s.Violations()) != 1 || len(s.Restarts()) != 0 {
		t.Errorf("violations %v, restarts %v", s.Violations(), s.Restarts())
	}
}

func TestScript(t *testing.T) {
	s := New(Config{Token: token})
	defer s.Close()
	s.QueueStatus(429, 500)
	s.Always(Answer{Status: 503})
	url := s.URL + "/apps/demo/dynos/worker.2"
	for i, want := range []int{429, 500, 503, 503} {
		resp, body := request(t, http.MethodDelete, url, nil)
		if resp.StatusCode != want || body["id"] == "" {
			t.Errorf("call %d: got %d %v, want %d with an error id", i+1, resp.StatusCode, body, want)
		}
		if want == 429 && resp.Header.Get("RateLimit-Remaining") != "0" {
			t.Errorf("429 with RateLimit-Remaining %q, want 0", resp.Header.Get("RateLimit-Remaining"))
		}
	}
	s.SetRemaining(1)
	s.Always(Answer{})
	resp, _ := request(t, http.MethodDelete, url, nil)
	if resp.StatusCode != 202 || resp.Header.Get("RateLimit-Remaining") != "0" {
		t.Errorf("got %d remaining %q, want 202 remaining 0", resp.StatusCode, resp.Header.Get("RateLimit-Remaining"))
	}
	if n := len(s.Calls()); n != 5 {
		t.Errorf("recorded %d calls, want 5", n)
	}
}

func TestEmptyBody(t *testing.T) {
	s := New(Config{Token: token})
	defer s.Close()
	s.Queue(Answer{EmptyBody: true})
	req, _ := http.NewRequest(http.MethodDelete, s.URL+"/apps/demo/dynos/worker.1", nil)
	req.Header.Set("Accept", Accept)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "dynocycle/test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 202 || resp.ContentLength != 0 {
		t.Errorf("got %d with %d bytes, want 202 with no body", resp.StatusCode, resp.ContentLength)
	}
}

func TestSlowAnswerAbortedByClient(t *testing.T) {
	s := New(Config{Token: token})
	defer s.Close()
	s.Always(Answer{Delay: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, s.URL+"/apps/demo/dynos/worker.1", nil)
	req.Header.Set("Accept", Accept)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "dynocycle/test")
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	testutil.Eventually(t, 10*time.Second, "the call to arrive", func() bool { return len(s.Calls()) == 1 })
	cancel() // the client hangs up mid-answer
	if err := <-done; err == nil {
		t.Fatal("slow answer arrived although the client hung up")
	}
	// The handler notices and marks the call; Close would otherwise wait an hour.
	testutil.Eventually(t, 10*time.Second, "the call to be marked aborted", func() bool { return s.Calls()[0].Aborted })
	if len(s.Restarts()) != 0 {
		t.Error("an aborted call counted as a restart")
	}
}
