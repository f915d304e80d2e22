package platform

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	heroku "github.com/heroku/heroku-go/v5"

	"github.com/dynocycle/dynocycle/agent"
)

// bodyReads counts the response body bytes the restarter reads.
type bodyReads struct {
	n    atomic.Int64
	next http.RoundTripper
}

func (b *bodyReads) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := b.next.RoundTrip(req)
	if resp != nil {
		resp.Body = countingBody{ReadCloser: resp.Body, n: &b.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// hugeBody answers status with a JSON body whose message is size bytes of
// filler, streamed until the client hangs up.
func hugeBody(t *testing.T, status int, size int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		if _, err := io.WriteString(w, `{"id":"internal_server_error","message":"start-of-message `); err != nil {
			return
		}
		chunk := strings.Repeat("bloat ", 10922) // 64 KiB
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := io.WriteString(w, chunk); err != nil {
				return // the client hung up, as it should
			}
		}
		_, _ = io.WriteString(w, `"}`)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestHugeErrorBodyIsNeitherReadNorLoggedWhole(t *testing.T) {
	const size = 50 << 20
	srv := hugeBody(t, http.StatusInternalServerError, size)
	reads := &bodyReads{next: http.DefaultTransport}
	hs := newHarnessURL(t, srv.URL, func(o *HerokuOptions) { o.Transport = reads; o.MaxAttempts = 2 })
	next, err := hs.restart(t, context.Background())
	if next != agent.Exit || err == nil {
		t.Fatalf("Restart = %v, %v; want Exit and an error", next, err)
	}
	if n := reads.n.Load(); n > 2*maxErrorBody {
		t.Errorf("read %d bytes of two error bodies, want at most %d each", n, maxErrorBody)
	}
	if len(err.Error()) > 500 {
		t.Errorf("error is %d bytes long", len(err.Error()))
	}
	var he heroku.Error
	if !errors.As(err, &he) || he.StatusCode != 500 || he.ID != "internal_server_error" {
		t.Errorf("error %v does not wrap heroku.Error 500 internal_server_error", err)
	}
	logs := hs.logs.String()
	if len(logs) > 4<<10 {
		t.Errorf("logs are %d bytes long:\n%.2000s", len(logs), logs)
	}
	if got := strings.Count(logs, "start-of-message"); got != 1 {
		t.Errorf("the body's message appears %d times in the logs, want once (cut):\n%s", got, logs)
	}
	if recs := hs.attempts(t); len(recs) != 2 || recs[0]["status"] != 500.0 {
		t.Errorf("log = %v, want two attempts answered 500", recs)
	}
}

func TestHugeSuccessBodyIsNotReadWhole(t *testing.T) {
	srv := hugeBody(t, http.StatusAccepted, 50<<20)
	reads := &bodyReads{next: http.DefaultTransport}
	hs := newHarnessURL(t, srv.URL, func(o *HerokuOptions) { o.Transport = reads })
	next, err := hs.restart(t, context.Background())
	if err != nil || next != agent.AwaitTermination {
		t.Fatalf("Restart = %v, %v; want AwaitTermination, nil", next, err)
	}
	if n := reads.n.Load(); n > maxSuccessBody {
		t.Errorf("read %d bytes of a 2xx body, want at most %d", n, maxSuccessBody)
	}
}

func TestAPIMessageIsLoggedOnceAcrossRetries(t *testing.T) {
	// A 503 on every attempt: the message is news once. The returned error,
	// which the agent logs again, carries the status and id, not the text.
	const message = "API is unavailable: maintenance of shard 7"
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"id":"unavailable","message":"`+message+`"}`)
	}))
	defer srv.Close()
	hs := newHarnessURL(t, srv.URL, func(o *HerokuOptions) { o.MaxAttempts = 5 })
	_, err := hs.restart(t, context.Background())
	if err == nil || calls.Load() != 5 {
		t.Fatalf("err = %v after %d calls; want an error after 5", err, calls.Load())
	}
	if got := strings.Count(hs.logs.String()+err.Error(), message); got != 1 {
		t.Errorf("message appears %d times in logs and error, want once:\nlogs:\n%s\nerror: %v", got, hs.logs, err)
	}
	if !strings.Contains(err.Error(), "503 unavailable") || !strings.Contains(err.Error(), "gave up after 5 attempts") {
		t.Errorf("error %q lacks the status, id or the attempts", err)
	}
	recs := hs.attempts(t)
	if len(recs) != 5 || recs[0]["api_message"] != message {
		t.Errorf("log = %v, want 5 attempts, the first with api_message", recs)
	}
	for _, r := range recs {
		if r["err"] == nil || r["status"] != 503.0 {
			t.Errorf("attempt %v lacks its status or error", r)
		}
	}
}

func TestLongAPIMessageIsCut(t *testing.T) {
	long := strings.Repeat("é", 2000) // 4000 bytes, cut on a rune boundary
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"id":"forbidden","message":"`+long+`\u001b[2J"}`)
	}))
	defer srv.Close()
	hs := newHarnessURL(t, srv.URL, nil)
	_, err := hs.restart(t, context.Background())
	var he heroku.Error
	if !errors.As(err, &he) || he.StatusCode != 403 {
		t.Fatalf("err = %v, want a heroku.Error 403", err)
	}
	if msg := he.Error(); len(msg) > maxAPIMessage+len("…") || !strings.HasSuffix(msg, "é…") {
		t.Errorf("message is %d bytes, ends %q; want at most %d and cut on a rune", len(msg), msg[max(0, len(msg)-8):], maxAPIMessage)
	}
	recs := hs.attempts(t)
	if msg, _ := recs[0]["api_message"].(string); len(recs) != 1 || msg == "" || len(msg) > maxAPIMessage+len("…") {
		t.Errorf("log = %v", recs)
	}
}

func TestErrorIDIsPlain(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"id":"bad\nrequest\u001b[2J","message":"m"}`)
	}))
	defer srv.Close()
	hs := newHarnessURL(t, srv.URL, nil)
	_, err := hs.restart(t, context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "heroku api: 400 badrequest2J: ") {
		t.Errorf("err = %q, want the id without control characters", err)
	}
}

func TestParseError(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want apiErrorBody
	}{
		{`{"id":"rate_limit","message":"slow down","url":"https://x"}`, apiErrorBody{"rate_limit", "slow down", "https://x"}},
		{`{"message":"m","id":"forbidden"}`, apiErrorBody{"forbidden", "m", ""}},
		{`{"id":"unavailable","extra":{"a":[1,2]},"message":"m"}`, apiErrorBody{"unavailable", "m", ""}},
		{`{"id":"internal_server_error","message":"cut in the mid`, apiErrorBody{"internal_server_error", `{"id":"internal_server_error","message":"cut in the mid`, ""}},
		{`<html>bad gateway</html>`, apiErrorBody{"", "<html>bad gateway</html>", ""}},
		{`{"id":7,"message":null}`, apiErrorBody{"", `{"id":7,"message":null}`, ""}},
		{``, apiErrorBody{}},
	} {
		if got := parseError([]byte(tc.raw)); got != tc.want {
			t.Errorf("parseError(%q) = %+v, want %+v", tc.raw, got, tc.want)
		}
	}
}
