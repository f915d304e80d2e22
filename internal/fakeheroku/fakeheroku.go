// Package fakeheroku is an httptest stand-in for the part of the Heroku
// Platform API that dynocycle uses: DELETE /apps/{app}/dynos/{dyno}.
//
// It also knows the call dynocycle must never make, DELETE /apps/{app}/dynos
// (restart every dyno of the app): it answers it as the real API would, 202,
// and records it as a violation, as it does any path that is not clean
// (with "." or ".." segments, or empty ones).
//
// It checks every request the way the real API would (method, path, Accept,
// bearer token) plus dynocycle's own User-Agent, records every call, and
// answers from a script: 202 {} by default, or a queue of answers (429 then
// 202, 500 forever, a slow answer, an empty body). Requests that break the
// contract are answered 400/401/404/406 with a JSON error body, as the real
// API does, and recorded as violations so tests can assert there were none.
package fakeheroku

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Accept is the media type the Platform API requires.
const Accept = "application/vnd.heroku+json; version=3"

// UserAgentPrefix is what dynocycle's User-Agent starts with.
const UserAgentPrefix = "dynocycle/"

// Config sets the fake up. Only Token is required.
type Config struct {
	Token string // the bearer token a request must carry
	App   string // if set, other apps are answered 404
	// OnRestart, if set, runs in its own goroutine after each 2xx answer, so
	// a test can play Heroku: SIGTERM the dyno's processes, SIGKILL them 30 s
	// later, and start the same command again with the same DYNO.
	OnRestart func(app, dyno string)
}

// Answer is one scripted reply to a valid restart call.
type Answer struct {
	Status    int           // 0 means 202
	Delay     time.Duration // answer late; ends early if the client hangs up
	EmptyBody bool          // send no body at all (heroku-go then sees io.EOF)
}

// Call is one request the fake received.
type Call struct {
	App, Dyno string
	Path      string    // the path as sent, escaped
	All       bool      // the restart of every dyno of App
	Time      time.Time // arrival
	Status    int       // the status answered (or meant, when Aborted)
	Aborted   bool      // the client hung up during Delay
	Violation string
}

// Server is the fake API. Use URL as HEROKU_API_URL.
type Server struct {
	*httptest.Server
	cfg Config

	mu         sync.Mutex
	queue      []Answer
	always     Answer
	remaining  int
	calls      []Call
	violations []string
}

// New starts a fake API on loopback; Close it when done.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, always: Answer{Status: http.StatusAccepted}, remaining: 4500}
	mux := http.NewServeMux()
	mux.HandleFunc("/apps/{app}/dynos/{dyno}", s.restart)
	mux.HandleFunc("DELETE /apps/{app}/dynos", s.restartAll)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.refuse(w, r, "", "", http.StatusNotFound, "not_found", fmt.Sprintf("%s %s: not an endpoint dynocycle uses", r.Method, r.URL.Path))
	})
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// ServeMux would redirect an unclean path to its clean form without
		// anyone noticing; such a path is a name that escaped its segment.
		if p := r.URL.EscapedPath(); p != path.Clean(p) || strings.Contains(p, "//") {
			s.refuse(w, r, "", "", http.StatusNotFound, "not_found", fmt.Sprintf("%s %s: path is not clean", r.Method, p))
			return
		}
		mux.ServeHTTP(w, r)
	}))
	return s
}

// Queue appends answers given, in order, to the next valid calls.
func (s *Server) Queue(answers ...Answer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue = append(s.queue, answers...)
}

// QueueStatus is Queue with plain statuses.
func (s *Server) QueueStatus(statuses ...int) {
	for _, st := range statuses {
		s.Queue(Answer{Status: st})
	}
}

// Always sets the answer once the queue is empty (default 202 {}).
func (s *Server) Always(a Answer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.always = a
}

// SetRemaining sets the account's rate-limit pool, reported in
// RateLimit-Remaining. Each valid call spends one token (down to 0); a 429
// reports 0. It starts at 4500, the real pool's size.
func (s *Server) SetRemaining(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remaining = n
}

// Calls returns every request received so far, valid or not.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// Restarts returns the valid calls answered (or, while slow, about to be
// answered) with a 2xx.
func (s *Server) Restarts() []Call {
	var out []Call
	for _, c := range s.Calls() {
		if c.Violation == "" && !c.Aborted && c.Status/100 == 2 {
			out = append(out, c)
		}
	}
	return out
}

// Violations returns what requests got wrong; empty when all were valid.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	app, dyno := r.PathValue("app"), r.PathValue("dyno")
	switch {
	case r.Method != http.MethodDelete:
		s.refuse(w, r, app, dyno, http.StatusNotFound, "not_found", "method "+r.Method+" is not a dyno restart; want DELETE")
		return
	case r.Header.Get("Accept") != Accept:
		s.refuse(w, r, app, dyno, http.StatusNotAcceptable, "not_acceptable", "set Accept: "+Accept+" header and try again")
		return
	case s.cfg.Token == "" || r.Header.Get("Authorization") != "Bearer "+s.cfg.Token:
		// Never echo the header: the fake must not be the one leaking tokens.
		s.refuse(w, r, app, dyno, http.StatusUnauthorized, "unauthorized", "Invalid credentials provided.")
		return
	case !strings.HasPrefix(r.Header.Get("User-Agent"), UserAgentPrefix):
		s.refuse(w, r, app, dyno, http.StatusBadRequest, "bad_request", fmt.Sprintf("User-Agent %q does not start with %q", r.Header.Get("User-Agent"), UserAgentPrefix))
		return
	case s.cfg.App != "" && app != s.cfg.App:
		// Not a violation: the real API answers 404 for an unknown app.
		s.record(Call{App: app, Dyno: dyno, Path: r.URL.EscapedPath(), Status: http.StatusNotFound})
		s.spend(w, http.StatusNotFound)
		writeError(w, http.StatusNotFound, "not_found", "Couldn't find that app.")
		return
	}

	s.mu.Lock()
	a := s.always
	if len(s.queue) > 0 {
		a, s.queue = s.queue[0], s.queue[1:]
	}
	s.mu.Unlock()
	if a.Status == 0 {
		a.Status = http.StatusAccepted
	}
	// Recorded on arrival, so a test can see a slow call in flight.
	i := s.record(Call{App: app, Dyno: dyno, Path: r.URL.EscapedPath(), Status: a.Status})
	if a.Delay > 0 {
		t := time.NewTimer(a.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			s.mu.Lock()
			s.calls[i].Aborted = true
			s.mu.Unlock()
			return
		}
	}
	s.spend(w, a.Status)
	if a.Status/100 != 2 {
		id, msg := errorFor(a.Status)
		writeError(w, a.Status, id, msg)
		return
	}
	if a.EmptyBody {
		w.WriteHeader(a.Status)
	} else {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.Status)
		_, _ = w.Write([]byte("{}"))
	}
	if s.cfg.OnRestart != nil {
		go s.cfg.OnRestart(app, dyno)
	}
}

// restartAll is Heroku's restart of every dyno of an app. The real API
// accepts it; dynocycle must never send it.
func (s *Server) restartAll(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	msg := "DELETE /apps/" + app + "/dynos restarts every dyno of the app; dynocycle restarts one"
	s.mu.Lock()
	s.violations = append(s.violations, msg)
	s.mu.Unlock()
	s.record(Call{App: app, All: true, Path: r.URL.EscapedPath(), Status: http.StatusAccepted, Violation: msg})
	s.spend(w, http.StatusAccepted)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write([]byte("{}"))
}

// spend takes a token from the rate-limit pool and reports what is left.
func (s *Server) spend(w http.ResponseWriter, status int) {
	s.mu.Lock()
	if s.remaining > 0 {
		s.remaining--
	}
	left := s.remaining
	s.mu.Unlock()
	if status == http.StatusTooManyRequests {
		left = 0
	}
	w.Header().Set("RateLimit-Remaining", strconv.Itoa(left))
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, app, dyno string, status int, id, msg string) {
	s.mu.Lock()
	s.violations = append(s.violations, fmt.Sprintf("%s %s: %d %s: %s", r.Method, r.URL.Path, status, id, msg))
	s.mu.Unlock()
	s.record(Call{App: app, Dyno: dyno, Path: r.URL.EscapedPath(), Status: status, Violation: msg})
	writeError(w, status, id, msg)
}

// record appends c and returns its index.
func (s *Server) record(c Call) int {
	c.Time = time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c)
	return len(s.calls) - 1
}

func writeError(w http.ResponseWriter, status int, id, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "message": msg})
}

// errorFor returns the error id and message the real API uses for status.
func errorFor(status int) (id, msg string) {
	switch status {
	case http.StatusUnauthorized:
		return "unauthorized", "Invalid credentials provided."
	case http.StatusForbidden:
		return "forbidden", "You do not have access to the app."
	case http.StatusNotFound:
		return "not_found", "Couldn't find that dyno."
	case http.StatusUnprocessableEntity:
		return "invalid_params", "Invalid params."
	case http.StatusTooManyRequests:
		return "rate_limit", "Your account reached the API rate limit. Please wait a few minutes before making new requests."
	case http.StatusServiceUnavailable:
		return "unavailable", "API is unavailable."
	default:
		if status >= 500 {
			return "internal_server_error", "Internal server error."
		}
		return "bad_request", http.StatusText(status)
	}
}
