package platform

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"
	heroku "github.com/heroku/heroku-go/v5"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/config"
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

// Bounds on what an answer can make the restarter read and log. The API's
// error bodies are a few hundred bytes of JSON; anything longer is a proxy's
// page or a fault, and is cut rather than read whole and logged per attempt.
const (
	maxErrorBody   = 16 << 10 // bytes of a non-2xx body read
	maxSuccessBody = 64 << 10 // bytes of a 2xx body read (the restart's is {})
	maxAPIMessage  = 300      // bytes of the API's message kept
	maxAPIField    = 80       // bytes of its id and url kept
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
	// badName is why App or Dyno cannot go into a request path; Restart then
	// refuses without a request. The configuration checks the same forms at
	// start-up, but this package must not trust its callers with a path.
	badName error
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
	return &Heroku{opts: opts, svc: svc, log: opts.Logger, badName: checkNames(opts.App, opts.Dyno)}
}

// checkNames refuses names outside Heroku's forms: HEROKU_APP_NAME
// "app/dynos?x=" would make DELETE /apps/app/dynos (every dyno), DYNO
// "worker" the restart of every worker dyno, "../../x" another endpoint.
func checkNames(app, dyno string) error {
	if err := config.CheckHerokuApp(app); err != nil {
		return fmt.Errorf("heroku api: restart not sent: app %q: %w; accepted: %s", app, err, config.AppForm)
	}
	if err := config.CheckHerokuDyno(dyno); err != nil {
		return fmt.Errorf("heroku api: restart not sent: dyno %q: %w; accepted: %s", dyno, err, config.DynoForm)
	}
	return nil
}

// Restart asks Heroku to restart this dyno, at most MaxAttempts calls with
// jittered exponential backoff between them.
//
// On success (any 2xx) it returns (agent.AwaitTermination, nil): Heroku now
// sends SIGTERM to every process of the dyno, SIGKILL 30 s later, and starts
// a fresh dyno with the same name. The agent stops the drained worker within
// SHUTDOWN_WAIT and exits.
//
// On failure it returns (agent.Exit, err). A permanent refusal, without a
// request when App or Dyno is not in Heroku's forms (see checkNames), or at
// once on 401, 403, 404, 422 and other 4xx but 408 and 429, matches
// agent.ErrRestartRefused: the agent restarts the worker in place instead.
// Otherwise (after MaxAttempts calls on 429, 5xx, network errors and
// timeouts, or when ctx ends) the agent stops the worker and exits non-zero,
// which Heroku treats as a crash and restarts the dyno anyway. The error
// never contains the token.
//
// A call that timed out may still have been accepted; retrying it then at
// worst restarts the fresh dyno once more. Cancel ctx when SIGTERM arrives so
// no retry outlives the dyno. With the defaults the worst case is about five
// 10 s timeouts plus the waits between them, longer while rate limited.
func (h *Heroku) Restart(ctx context.Context, reason string) (agent.Next, error) {
	if h.badName != nil {
		return agent.Exit, h.redact(&apiError{text: h.badName.Error(), cause: h.badName, refused: true})
	}
	b := &backoff.ExponentialBackOff{
		InitialInterval:     h.opts.BackoffInitial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         h.opts.BackoffMax,
	}
	b.Reset()
	log := h.log.With("event", "api_restart", "app", h.opts.App, "dyno", h.opts.Dyno, "reason", reason)
	// The API's message is logged when it is news, not on every attempt; the
	// returned error, which the agent logs again, carries status and id only.
	lastMessage := ""
	for attempt := 1; ; attempt++ {
		res := h.call(ctx)
		attrs := []any{"attempt", attempt, "status", res.status}
		if res.remaining >= 0 {
			attrs = append(attrs, "ratelimit_remaining", res.remaining)
		}
		if res.message != "" && res.message != lastMessage {
			attrs = append(attrs, "api_message", h.redactText(res.message))
			lastMessage = res.message
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
	message   string // the API's error message, cut to maxAPIMessage
	err       error
}

func (r result) rateLimited() bool {
	return r.status == http.StatusTooManyRequests || r.remaining == 0
}

func (h *Heroku) call(ctx context.Context) result {
	seen := response{remaining: -1}
	// Escaped although checked: a name can never leave its path segment.
	_, err := h.svc.DynoRestart(context.WithValue(ctx, responseKey{}, &seen), url.PathEscape(h.opts.App), url.PathEscape(h.opts.Dyno))
	res := result{status: seen.status, remaining: seen.remaining}
	var he heroku.Error
	if errors.As(err, &he) {
		res.status = he.StatusCode
		res.message = he.Error() // heroku-go always sets it: the body's message
	}
	// Any 2xx is success, whatever the body: heroku-go fails on an empty one
	// with io.EOF, and the restart has been accepted all the same.
	if err == nil || res.status/100 == 2 {
		res.err = nil
		res.message = ""
		return res
	}
	switch {
	case res.status == 0:
		res.err = fmt.Errorf("heroku api: restart %s: %w", h.opts.Dyno, err)
	case res.status == http.StatusTooManyRequests || res.status == http.StatusRequestTimeout || res.status >= 500:
		res.err = &apiError{text: fmt.Sprintf("heroku api: %d %s", res.status, statusText(res.status, he.ID)), cause: err}
	default:
		res.permanent = true
		res.err = &apiError{text: fmt.Sprintf("heroku api: %d %s: %s", res.status, statusText(res.status, he.ID), h.hint(res.status)), cause: err, refused: true}
	}
	return res
}

// apiError is an answered call's error. Its text leaves out the API's
// message (logged once by Restart); errors.As still finds the heroku.Error.
type apiError struct {
	text    string
	cause   error
	refused bool // a permanent refusal: errors.Is(err, agent.ErrRestartRefused)
}

func (e *apiError) Error() string { return e.text }
func (e *apiError) Unwrap() error { return e.cause }

// Is makes a permanent refusal match agent.ErrRestartRefused, so the agent
// restarts in place instead of exiting into a crash loop.
func (e *apiError) Is(target error) bool { return e.refused && target == agent.ErrRestartRefused }

// hint names the likely cause of a permanent refusal.
func (h *Heroku) hint(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "check HEROKU_API_TOKEN (missing, invalid, expired or revoked)"
	case http.StatusForbidden:
		return fmt.Sprintf("the token's user may not restart dynos of app %q; make it a collaborator on that app (a review app is a new app: give the pipeline's review apps a token that reaches them) and use a write-scoped token", h.opts.App)
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

func (h *Heroku) redactText(s string) string {
	if h.opts.Token == "" {
		return s
	}
	return strings.ReplaceAll(s, h.opts.Token, "[REDACTED]")
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
	if resp != nil {
		if resp.StatusCode/100 == 2 {
			resp.Body = limitedBody{Reader: io.LimitReader(resp.Body, maxSuccessBody), Closer: resp.Body}
		} else {
			resp.Body = boundedError(resp.Body)
		}
	}
	return resp, err
}

type limitedBody struct {
	io.Reader
	io.Closer
}

// boundedError reads at most maxErrorBody bytes of an error answer, closes
// it, and returns a small JSON error in its place for heroku-go to decode,
// with the message, id and url cut. heroku-go would otherwise decode a body
// of any length whole into its error. A body that is not JSON (a proxy's
// page, or JSON cut at the limit) becomes the message, cut.
func boundedError(body io.ReadCloser) io.ReadCloser {
	raw, _ := io.ReadAll(io.LimitReader(body, maxErrorBody))
	_ = body.Close() // unread rest: the connection is dropped, not drained
	e := parseError(raw)
	e.ID, e.Message, e.URL = cut(idChars(e.ID), maxAPIField), cut(e.Message, maxAPIMessage), cut(e.URL, maxAPIField)
	small, _ := json.Marshal(e) // strings only: cannot fail
	return io.NopCloser(bytes.NewReader(small))
}

type apiErrorBody struct {
	ID      string `json:"id"`
	Message string `json:"message"`
	URL     string `json:"url"`
}

// parseError reads the fields of an error body, or of as much of it as was
// read: a body cut inside its message still yields the id before it. Without
// a message the raw text stands in, so a proxy's page is not lost.
func parseError(raw []byte) apiErrorBody {
	var e apiErrorBody
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err == nil && t == json.Delim('{') {
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				break
			}
			var v any
			if err := dec.Decode(&v); err != nil {
				break
			}
			s, _ := v.(string)
			switch k {
			case "id":
				e.ID = s
			case "message":
				e.Message = s
			case "url":
				e.URL = s
			}
		}
	}
	if e.Message == "" {
		e.Message = string(raw)
	}
	return e
}

// idChars keeps what an error id is made of (rate_limit, not_found): the id
// goes into error texts unquoted.
func idChars(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r == '-' || r == '.' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return -1
	}, s)
}

// cut returns s as valid UTF-8 of at most n bytes, marked with … when cut.
func cut(s string, n int) string {
	s = strings.ToValidUTF8(strings.TrimSpace(s), "\uFFFD")
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
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
