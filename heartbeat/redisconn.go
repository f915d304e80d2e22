package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ConnectOptions says how to reach the coordination Redis.
type ConnectOptions struct {
	// URL is redis://[user:password@]host[:port][/db] or rediss:// for TLS.
	// The caller picks REDIS_TLS_URL over REDIS_URL when both are set.
	URL string
	// TLSVerify is "auto" (the default), "true" or "false". auto verifies
	// certificates except on Heroku, whose Redis uses self-signed ones.
	TLSVerify string
	// OnHeroku is true when the agent runs in a Heroku dyno.
	OnHeroku bool
	// Dyno, when set, is added to the connections' name in CLIENT LIST
	// (dynocycle:worker.1), so an operator can tell whose they are.
	Dyno   string
	Logger *slog.Logger
}

// Client defaults for an agent: it must notice an unreachable Redis within a
// few seconds and keep its worker running, so nothing waits long, nothing
// retries much and few connections are kept open on a shared server.
//
// One pooled connection: the fleet's scripts, the lease keeper's renewals
// and the Sidekiq reader's pipelines are all short, non-blocking commands
// that take turns on it (a turn waits at most PoolTimeout). Redis plans cap
// connections and Sidekiq needs its own, so an agent that only watches holds
// this one connection; the freed-slot subscription (Redis.Run) adds a second
// only while the dyno waits for a slot. A blocking command (BLPOP, a
// subscription) must never be sent through this pool: it would stall every
// other caller.
const (
	defaultDialTimeout  = 2 * time.Second
	defaultReadTimeout  = 2 * time.Second
	defaultWriteTimeout = 2 * time.Second
	defaultPoolTimeout  = 3 * time.Second
	defaultPoolSize     = 1
	defaultMaxRetries   = 1
	defaultDialAttempts = 1 // go-redis would try 5 dials per command; the command retry is enough
	clientName          = "dynocycle"
)

// Connect builds a Redis client from opts. It fails only on a bad URL or
// option: an unreachable server is logged, not fatal, because the client
// reconnects by itself and the agent keeps its worker running either way.
// Errors and logs never carry the password.
func Connect(ctx context.Context, opts ConnectOptions) (*redis.Client, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	secret := urlPassword(opts.URL)
	o, err := parseRedisURL(opts.URL)
	if err != nil {
		return nil, redact(err, secret)
	}
	verify := strings.ToLower(strings.TrimSpace(opts.TLSVerify))
	switch verify {
	case "", "auto", "true", "false":
	default:
		return nil, fmt.Errorf("redis tls verify %q: want auto, true or false", opts.TLSVerify)
	}
	if o.TLSConfig != nil {
		switch verify {
		case "true":
			o.TLSConfig.InsecureSkipVerify = false
		case "false":
			o.TLSConfig.InsecureSkipVerify = true
		default: // auto; a skip_verify=true in the URL is kept as the user's ask
			if opts.OnHeroku {
				o.TLSConfig.InsecureSkipVerify = true
			}
		}
		if o.TLSConfig.InsecureSkipVerify {
			// Logged once per client, at connect time, never per dial.
			log.Warn("redis tls certificate verification off",
				"event", "redis_tls_noverify", "addr", o.Addr, "on_heroku", opts.OnHeroku,
				"reason", "heroku redis uses self-signed certificates; set REDIS_TLS_VERIFY=true to verify")
		}
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = defaultReadTimeout
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = defaultWriteTimeout
	}
	if o.PoolTimeout == 0 {
		o.PoolTimeout = defaultPoolTimeout
	}
	if o.PoolSize == 0 {
		o.PoolSize = defaultPoolSize
	}
	// No connection opened ahead of need (MinIdleConns stays as given, 0 by
	// default) and none kept beyond the pool's size.
	if o.MaxIdleConns == 0 || o.MaxIdleConns > o.PoolSize {
		o.MaxIdleConns = o.PoolSize
	}
	// go-redis gives pipelines a pool of their own (up to 10 connections
	// beside PoolSize); the Sidekiq reader's pipelines take their turn on the
	// one connection instead.
	if o.PipelinePoolSize == 0 {
		o.PipelinePoolSize = -1
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = defaultMaxRetries
	}
	if o.DialerRetries == 0 {
		o.DialerRetries = defaultDialAttempts
	}
	if o.ClientName == "" {
		o.ClientName = connName(opts.Dyno)
	}
	o.ContextTimeoutEnabled = true

	client := redis.NewClient(o)
	log.Info("redis client", "event", "redis_connect", "addr", o.Addr, "db", o.DB, "tls", o.TLSConfig != nil)
	if err := client.Ping(ctx).Err(); err != nil {
		log.Warn("redis unreachable, will retry", "event", "redis_unreachable", "addr", o.Addr,
			"err", redact(err, secret).Error())
	}
	return client, nil
}

// connName is the connections' name: dynocycle, or dynocycle:DYNO. Redis
// refuses a name with spaces or control characters, and a refused name
// fails every connection, so anything else is replaced.
func connName(dyno string) string {
	if dyno == "" {
		return clientName
	}
	const maxLen = 64
	b := []byte(clientName + ":")
	for _, c := range []byte(dyno) {
		if len(b) >= maxLen {
			break
		}
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
			b = append(b, c)
		default:
			b = append(b, '_')
		}
	}
	return string(b)
}

// parseRedisURL wraps redis.ParseURL without ever echoing the URL: net/url
// errors quote the whole string, password included.
func parseRedisURL(raw string) (*redis.Options, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, errors.New("redis url is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("parse redis url: malformed (check scheme, host, port, and that the password is percent-encoded)")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("parse redis url: scheme %q: want redis or rediss", u.Scheme)
	}
	o, err := redis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	return o, nil
}

func urlPassword(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return ""
	}
	p, _ := u.User.Password()
	return p
}

// redactedError hides a secret from an error's text and keeps the chain for
// errors.Is and errors.As.
type redactedError struct {
	err    error
	secret string
}

func (e *redactedError) Error() string {
	msg := e.err.Error()
	msg = strings.ReplaceAll(msg, e.secret, "xxxxx")
	if esc := url.QueryEscape(e.secret); esc != e.secret {
		msg = strings.ReplaceAll(msg, esc, "xxxxx")
	}
	return msg
}

func (e *redactedError) Unwrap() error { return e.err }

func redact(err error, secret string) error {
	if err == nil || secret == "" {
		return err
	}
	return &redactedError{err: err, secret: secret}
}
