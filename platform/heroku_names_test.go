package platform

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/internal/fakeheroku"
)

// sentRequests records every request that leaves the restarter.
type sentRequests struct {
	mu    sync.Mutex
	paths []string
	next  http.RoundTripper
}

func (s *sentRequests) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.paths = append(s.paths, req.Method+" "+req.URL.RequestURI())
	s.mu.Unlock()
	return s.next.RoundTrip(req)
}

func (s *sentRequests) sent() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...)
}

func TestNamesOutsideHerokusFormsAreNeverSent(t *testing.T) {
	for _, tc := range []struct{ app, dyno, want string }{
		// Would be DELETE /apps/app/dynos?x=/dynos/worker.1: every dyno.
		{"app/dynos?x=", "worker.1", `app "app/dynos?x="`},
		{"demo", "../../../account/x", `dyno "../../../account/x"`},
		{"demo", "worker", `dyno "worker"`}, // every worker dyno
		{"demo", "worker.1/../../x", `dyno "worker.1/../../x"`},
		{"demo", "worker.1?x=", `dyno "worker.1?x="`},
		{"demo", "%2e%2e", `dyno "%2e%2e"`},
		{"demo", "", `dyno ""`},
		{"", "worker.1", `app ""`},
		{"Demo", "worker.1", `app "Demo"`},
		{"demo\r\nX-Injected: 1", "worker.1", `app "demo\r\nX-Injected: 1"`},
	} {
		t.Run(tc.app+" "+tc.dyno, func(t *testing.T) {
			sent := &sentRequests{next: http.DefaultTransport}
			hs := newHarness(t, func(o *HerokuOptions) {
				o.App, o.Dyno, o.Transport = tc.app, tc.dyno, sent
			})
			next, err := hs.restart(t, context.Background())
			if next != agent.Exit || err == nil {
				t.Fatalf("Restart = %v, %v; want Exit and an error", next, err)
			}
			if !errors.Is(err, agent.ErrRestartRefused) {
				t.Errorf("error %q does not match agent.ErrRestartRefused", err)
			}
			for _, w := range []string{tc.want, "not sent", "accepted: a Heroku"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if p := sent.sent(); len(p) != 0 {
				t.Errorf("requests sent: %q", p)
			}
			if c := hs.fake.Calls(); len(c) != 0 {
				t.Errorf("the fake API saw %+v", c)
			}
		})
	}
}

func TestHerokusNameFormsAreSentAsIs(t *testing.T) {
	for _, tc := range []struct{ app, dyno string }{
		{"demo", "worker.1"},
		{"demo", "scheduler.5678"},
		{"demo", "worker-5d8f7c9b4-k2x7p"},
		{"9daa2797-e49b-4624-932f-ec3f9688e3da", "01234567-89ab-cdef-0123-456789abcdef"},
	} {
		fake := fakeheroku.New(fakeheroku.Config{Token: testToken})
		sent := &sentRequests{next: http.DefaultTransport}
		hs := newHarnessURL(t, fake.URL, func(o *HerokuOptions) { o.App, o.Dyno, o.Transport = tc.app, tc.dyno, sent })
		next, err := hs.restart(t, context.Background())
		if err != nil || next != agent.AwaitTermination {
			t.Errorf("%s/%s: Restart = %v, %v", tc.app, tc.dyno, next, err)
		}
		want := "DELETE /apps/" + tc.app + "/dynos/" + tc.dyno
		if p := sent.sent(); len(p) != 1 || p[0] != want {
			t.Errorf("sent %q, want %q", p, want)
		}
		if r := fake.Restarts(); len(r) != 1 || r[0].App != tc.app || r[0].Dyno != tc.dyno {
			t.Errorf("restarts %+v", r)
		}
		if v := fake.Violations(); len(v) != 0 {
			t.Errorf("violations %v", v)
		}
		fake.Close()
	}
}
