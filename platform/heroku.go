package platform

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	heroku "github.com/heroku/heroku-go/v5"

	"github.com/dynocycle/dynocycle/agent"
)

// Defaults of HerokuOptions.
const (
	DefaultHerokuURL      = heroku.DefaultURL
	DefaultHerokuTimeout  = 10 * time.Second
	DefaultMaxAttempts    = 5
	DefaultBackoffInitial = time.Second
	DefaultBackoffMax     = 30 * time.Second
	// DefaultRateLimitWait is the least wait after a 429 or a response
	// saying RateLimit-Remaining: 0. The account's pool refills at about 75
	// tokens a minute and every dyno's agent (and every human using the same
	// user) draws from it, so hammering it only starves the others.
	DefaultRateLimitWait = 20 * time.Second
)

// HerokuOptions configures a Heroku restarter. Zero values take the defaults.
type HerokuOptions struct {
	Token     string // HEROKU_API_TOKEN; never logged
	App, Dyno string // HEROKU_APP_NAME (or id) and DYNO, e.g. worker.1
	BaseURL   string // HEROKU_API_URL; DefaultHerokuURL when empty
	Version   string // dynocycle's version, sent as User-Agent dynocycle/VERSION

	Timeout        time.Duration // per request, body included
	MaxAttempts    int           // calls per Restart, first one included
	BackoffInitial time.Duration // first wait between attempts, jittered
	BackoffMax     time.Duration // cap of the exponential wait
	RateLimitWait  time.Duration // least wait when the rate limit is spent

	Logger *slog.Logger
	// OnFailure is told the status of every failed call (0: no response),
	// for the API error metric. Optional.
	OnFailure func(status int)
	// Transport is the inner HTTP transport under heroku-go's; tests may
	// replace it. Defaults to a clone of http.DefaultTransport.
	Transport http.RoundTripper
	// Sleep waits between attempts; it returns early with ctx's error.
	// Tests replace it to record waits without spending them.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Heroku restarts the current dyno through the Platform API:
// DELETE /apps/{app}/dynos/{dyno}.
type Heroku struct {
	opts HerokuOptions
	svc  *heroku.Service
	log  *slog.Logger
}

var _ agent.Restarter = (*Heroku)(nil)

// ReplacesAgent is true: the platform replaces the dyno, agent and all,
// also when the call fails and the agent exits for a crash restart.
func (h *Heroku) ReplacesAgent() bool { return true }

// NewHeroku returns a restarter for opts.Dyno of opts.App.
func NewHeroku(opts HerokuOptions) *Heroku {
	if opts.BaseURL == "" {
		opts.BaseURL = DefaultHerokuURL
	}
	opts.BaseURL = strings.TrimRight(opts.BaseURL, "/")
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultHerokuTimeout
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.BackoffInitial <= 0 {
		opts.BackoffInitial = DefaultBackoffInitial
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = DefaultBackoffMax
	}
	opts.BackoffMax = max(opts.BackoffMax, opts.BackoffInitial)
	if opts.RateLimitWait <= 0 {
		opts.RateLimitWait = DefaultRateLimitWait
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Transport == nil {
		opts.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	client := &http.Client{
		Timeout: opts.Timeout,
		Transport: &heroku.Transport{
			BearerToken: opts.Token,
			UserAgent:   "dynocycle/" + opts.Version,
			// Set explicitly: heroku.Transport assigns a nil Transport on
			// first use, a data race when requests run concurrently.
			Transport: observer{next: opts.Transport},
		},
	}
	svc := heroku.NewService(client)
	svc.URL = opts.BaseURL
	return &Heroku{opts: opts, svc: svc, log: opts.Logger}
}

// Restart asks Heroku to restart this dyno, at most MaxAttempts calls with
// jittered exponential backoff between them.
//
// On success (any 2xx) it returns (agent.AwaitTermination, nil): Heroku now
// sends SIGTERM to every process of the dyno, SIGKILL 30 s later, and starts
// a fresh dyno with the same name. The agent stops the drained worker within
// SHUTDOWN_WAIT and exits.
//
// On failure it returns (agent.Exit, err): the agent stops the worker and
// exits non-zero, which Heroku treats as a crash and restarts the dyno anyway.
// That happens at once on a permanent refusal (401, 403, 404, 422 and other
// 4xx but 408 and 429), after MaxAttempts calls on 429, 5xx, network errors
// and timeouts, or when ctx ends. The error never contains the token.
//
// A call that timed out may still have been accepted; retrying it then at
// worst restarts the fresh dyno once more. Cancel ctx when SIGTERM arrives so
// no retry outlives the dyno. With the defaults the worst case is about five
// 10 s timeouts plus the waits between them, longer while rate limited.
func (h *Heroku) Restart(ctx context.Context, reason string) (agent.Next, error) {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     h.opts.BackoffInitial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         h.opts.BackoffMax,
	}
	b.Reset()
	log := h.log.With("event", "api_restart", "app", h.opts.App, "dyno", h.opts.Dyno, "reason", reason)
	for attempt := 1; ; attempt++ {
		res := h.call(ctx)
		attrs := []any{"attempt", attempt, "status", res.status}
		if res.remaining >= 0 {
			attrs = append(attrs, "ratelimit_remaining", res.remaining)
		}
		if res.err == nil {
			log.Info("dyno restart accepted", append(attrs, "wait", time.Duration(0))...)
			return agent.AwaitTermination, nil
		}
		errText := h.redact(res.err).Error()
		if h.opts.OnFailure != nil {
			h.opts.OnFailure(res.status)
		}
		if ctx.Err() != nil {
			log.Warn("dyno restart abandoned", append(attrs, "wait", time.Duration(0), "err", errText)...)
			return agent.Exit, h.redact(fmt.Errorf("heroku api: restart %s: %w", h.opts.Dyno, context.Cause(ctx)))
		}
		if res.permanent {
			log.Error("dyno restart refused", append(attrs, "wait", time.Duration(0), "err", errText)...)
			return agent.Exit, h.redact(res.err)
		}
		if attempt >= h.opts.MaxAttempts {
			log.Error("dyno restart failed, giving up", append(attrs, "wait", time.Duration(0), "err", errText)...)
			return agent.Exit, h.redact(fmt.Errorf("heroku api: restart %s: gave up after %d attempts: %w", h.opts.Dyno, attempt, res.err))
		}
		wait := b.NextBackOff()
		if res.rateLimited() {
			// Jitter the longer wait too, so the dynos that hit the limit
			// together do not all come back together.
			wait = max(wait, h.opts.RateLimitWait+rand.N(h.opts.RateLimitWait/2+1))
		}
		log.Warn("dyno restart failed, retrying", append(attrs, "wait", wait, "err", errText)...)
		if err := h.opts.Sleep(ctx, wait); err != nil {
			return agent.Exit, h.redact(fmt.Errorf("heroku api: restart %s: %w (last: %w)", h.opts.Dyno, err, res.err))
		}
	}
}

// result is the outcome of one API call.
type result struct {
	status    int // 0 when no response arrived
	remaining int // RateLimit-Remaining, -1 when absent
	permanent bool
	err       error
}

func (r result) rateLimited() bool {
	return r.status == http.StatusTooManyRequests || r.remaining == 0
}

func (h *Heroku) call(ctx context.Context) result {
	seen := response{remaining: -1}
	_, err := h.svc.DynoRestart(context.WithValue(ctx, responseKey{}, &seen), h.opts.App, h.opts.Dyno)
	res := result{status: seen.status, remaining: seen.remaining}
	var he heroku.Error
	if errors.As(err, &he) {
		res.status = he.StatusCode
	}
	// Any 2xx is success, whatever the body: heroku-go fails on an empty one
	// with io.EOF, and the restart has been accepted all the same.
	if err == nil || res.status/100 == 2 {
		res.err = nil
		return res
	}
	switch {
	case res.status == 0:
		res.err = fmt.Errorf("heroku api: restart %s: %w", h.opts.Dyno, err)
	case res.status == http.StatusTooManyRequests || res.status == http.StatusRequestTimeout || res.status >= 500:
		res.err = fmt.Errorf("heroku api: %d %s: %w", res.status, statusText(res.status, he.ID), err)
	default:
		res.permanent = true
		res.err = fmt.Errorf("heroku api: %d %s: %s: %w", res.status, statusText(res.status, he.ID), h.hint(res.status), err)
	}
	return res
}

// hint names the likely cause of a permanent refusal.
func (h *Heroku) hint(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "check HEROKU_API_TOKEN (missing, invalid, expired or revoked)"
	case http.StatusForbidden:
		return fmt.Sprintf("the token's user may not restart dynos of app %q; make it a collaborator on that app and use a write-scoped token", h.opts.App)
	case http.StatusNotFound:
		return fmt.Sprintf("no app %q or dyno %q; check HEROKU_APP_NAME and DYNO", h.opts.App, h.opts.Dyno)
	case http.StatusPaymentRequired:
		return "the account is delinquent"
	case http.StatusUnprocessableEntity:
		return fmt.Sprintf("heroku refused to restart dyno %q", h.opts.Dyno)
	default:
		return "not retried"
	}
}

func statusText(status int, id string) string {
	if id != "" {
		return id
	}
	return strings.ToLower(http.StatusText(status))
}

// redact removes the token from err's text, in case a server or proxy echoed
// it back; errors.As and errors.Is still see the wrapped error.
func (h *Heroku) redact(err error) error {
	if err == nil || h.opts.Token == "" || !strings.Contains(err.Error(), h.opts.Token) {
		return err
	}
	return redacted{err: err, token: h.opts.Token}
}

type redacted struct {
	err   error
	token string
}

func (r redacted) Error() string { return strings.ReplaceAll(r.err.Error(), r.token, "[REDACTED]") }
func (r redacted) Unwrap() error { return r.err }

// response is what observer saw of the raw HTTP response. heroku-go turns a
// non-2xx with a non-JSON body into a plain error without the status, and
// never exposes headers, so the status and RateLimit-Remaining are taken
// here, under heroku.Transport.
type response struct {
	status    int
	remaining int
}

type responseKey struct{}

type observer struct{ next http.RoundTripper }

func (o observer) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := o.next.RoundTrip(req)
	if seen, ok := req.Context().Value(responseKey{}).(*response); ok {
		seen.status, seen.remaining = 0, -1
		if resp != nil {
			seen.status = resp.StatusCode
			if n, perr := strconv.Atoi(strings.TrimSpace(resp.Header.Get("RateLimit-Remaining"))); perr == nil {
				seen.remaining = n
			}
		}
	}
	return resp, err
}

// CancelRequest exists because http.Client, on its own timeout, calls it on
// heroku.Transport, which forwards it here and logs a complaint through the
// global logger when the inner transport lacks it. The request's context is
// cancelled too, which is what actually stops it.
func (o observer) CancelRequest(*http.Request) {}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
