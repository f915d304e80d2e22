package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgLink is the one PostgreSQL connection of an agent. Statements and the
// LISTEN for freed slots share it: Heroku Postgres plans count connections,
// and each dyno already has its app's pool, so the agent adds exactly one.
//
// pgx serves one caller at a time on a connection and its wait for a
// notification blocks the connection, so the two take turns. While nothing
// else needs the connection the listener waits for a notification; a
// statement that wants it cancels that wait (pgx ends the wait with a
// timeout that leaves the connection usable), runs, and hands the connection
// back. Notifications that arrive while a statement runs are kept by pgx and
// returned by the next wait.
//
// The connection is dialed on first use and again after it breaks; the
// schema is checked on every new connection (onConnect), and LISTEN issued
// again when the listener runs.
type pgLink struct {
	cfg       *pgx.ConnConfig
	channel   string
	log       *slog.Logger
	onConnect func(ctx context.Context, c *pgx.Conn) error
	// onListen runs after LISTEN on a new connection: a release may have
	// been missed while there was none.
	onListen func()
	onNotify func(n *pgconn.Notification)

	mu        sync.Mutex // owns conn
	conn      *pgx.Conn
	listen    bool // LISTEN on every connection (the listener runs)
	listening bool // LISTEN issued on conn
	closed    bool
	down      bool // the last dial or the connection failed (logged once)

	turn struct {
		sync.Mutex
		want   int           // statements waiting for or holding the connection
		idle   chan struct{} // closed when want drops to 0
		cancel context.CancelFunc
	}
}

// errLinkClosed is returned after Close.
var errLinkClosed = errors.New("postgres fleet closed")

// Time limits of an agent's calls: it must notice an unreachable database
// within seconds and keep its worker running.
const (
	pgDialTimeout = 2 * time.Second
	pgCallTimeout = 6 * time.Second
	// pgPingEvery is how long the listener waits on a quiet channel before it
	// pings, to find a half-open connection.
	pgPingEvery = 30 * time.Second
)

// do runs fn on the connection, dialing it first if needed. A connection
// that fn leaves broken is dropped so the next call dials afresh.
//
// The caller's cancellation is honoured until the call starts, not during
// it: pgx ends a cancelled call by closing the connection, and the agent
// cancels its calls routinely (a renewal when its restart moves on, every
// call at shutdown). Each call is short and bounded by pgCallTimeout (and
// the server's statement_timeout), so finishing it keeps the one
// connection, its LISTEN and its prepared statements.
func (l *pgLink) do(ctx context.Context, fn func(ctx context.Context, c *pgx.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.claim()
	defer l.release()
	timeout := pgCallTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl)) // a deadline the caller set is kept
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.connLocked(ctx)
	if err != nil {
		return err
	}
	err = fn(ctx, c)
	if c.IsClosed() {
		l.dropLocked(err)
	}
	return err
}

// claim asks the listener for the connection and stops its wait.
func (l *pgLink) claim() {
	l.turn.Lock()
	defer l.turn.Unlock()
	if l.turn.want == 0 {
		l.turn.idle = make(chan struct{})
	}
	l.turn.want++
	if l.turn.cancel != nil {
		l.turn.cancel()
	}
}

func (l *pgLink) release() {
	l.turn.Lock()
	defer l.turn.Unlock()
	l.turn.want--
	if l.turn.want == 0 {
		close(l.turn.idle)
	}
}

// connLocked returns the connection, dialing it when there is none. l.mu
// is held.
func (l *pgLink) connLocked(ctx context.Context) (*pgx.Conn, error) {
	if l.closed {
		return nil, errLinkClosed
	}
	if l.conn != nil && l.conn.IsClosed() {
		l.dropLocked(errors.New("connection closed"))
	}
	// Statements wait on l.mu without a deadline of their own: whatever
	// runs here under it is bounded. A failure is logged unless the
	// caller's own context ended it.
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, pgCallTimeout)
	defer cancel()
	if l.conn == nil {
		dctx, cancel := context.WithTimeout(ctx, pgDialTimeout+time.Second)
		c, err := pgx.ConnectConfig(dctx, l.cfg)
		cancel()
		if err != nil {
			return nil, l.failLocked(caller, fmt.Errorf("connect: %w", err))
		}
		if l.onConnect != nil {
			if err := l.onConnect(ctx, c); err != nil {
				_ = c.Close(context.Background())
				return nil, l.failLocked(caller, err)
			}
		}
		l.conn, l.listening = c, false
		if l.down {
			l.log.Info("postgres connection back", "event", "pg_connect_ok")
			l.down = false
		}
	}
	if l.listen && !l.listening {
		if _, err := l.conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
			if l.conn.IsClosed() {
				l.dropLocked(err)
			}
			return nil, l.failLocked(caller, fmt.Errorf("listen: %w", err))
		}
		l.listening = true
		if l.onListen != nil {
			l.onListen()
		}
	}
	return l.conn, nil
}

func (l *pgLink) failLocked(ctx context.Context, err error) error {
	// A dial cut short by the caller (a statement's turn, the end of Run)
	// says nothing about the database.
	if !l.down && ctx.Err() == nil {
		l.log.Warn("postgres unreachable, will retry", "event", "pg_unreachable", "err", err.Error())
		l.down = true
	}
	return err
}

func (l *pgLink) dropLocked(why error) {
	if l.conn == nil {
		return
	}
	_ = l.conn.Close(context.Background())
	l.conn, l.listening = nil, false
	if !l.down && why != nil {
		l.log.Warn("postgres connection lost, will reconnect", "event", "pg_conn_lost", "err", why.Error())
		l.down = true
	}
}

// listenLoop keeps a LISTEN on the connection and passes notifications on
// until ctx ends or the link is closed, taking turns with statements (see
// pgLink). LISTEN stays on for the connection's life once asked for.
func (l *pgLink) listenLoop(ctx context.Context) {
	const minWait, maxWait = 50 * time.Millisecond, 2 * time.Second
	backoff := minWait
	for ctx.Err() == nil {
		l.mu.Lock()
		l.listen = true
		l.turn.Lock()
		if l.turn.want > 0 {
			idle := l.turn.idle
			l.turn.Unlock()
			l.mu.Unlock()
			select {
			case <-idle:
			case <-ctx.Done():
			}
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, pgPingEvery)
		l.turn.cancel = cancel
		l.turn.Unlock()

		err := l.waitLocked(ctx, wctx)
		timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded)
		if errors.Is(err, errLinkClosed) {
			cancel()
			l.turn.Lock()
			l.turn.cancel = nil
			l.turn.Unlock()
			l.mu.Unlock()
			return
		}

		l.turn.Lock()
		l.turn.cancel = nil
		l.turn.Unlock()
		cancel()

		if err == nil && timedOut && l.conn != nil {
			// A quiet channel: make sure the connection is still there.
			pctx, pcancel := context.WithTimeout(ctx, pgCallTimeout)
			if perr := l.conn.Ping(pctx); perr != nil && l.conn.IsClosed() {
				l.dropLocked(perr)
			}
			pcancel()
		}
		l.mu.Unlock()

		if err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxWait)
			continue
		}
		backoff = minWait
	}
}

// waitLocked waits on the connection for notifications until wait ends.
// It returns an error only when the connection cannot be had or broke; the
// end of wait (a statement's turn, or the ping interval) is not one. A dial
// runs to its end under run alone: a statement that wants the connection
// needs that dial too.
func (l *pgLink) waitLocked(run, wait context.Context) error {
	c, err := l.connLocked(run)
	if err != nil {
		if run.Err() != nil {
			return nil
		}
		return err
	}
	ctx := wait
	for {
		n, err := c.WaitForNotification(ctx)
		if n != nil && l.onNotify != nil {
			l.onNotify(n)
		}
		if err != nil {
			if c.IsClosed() {
				l.dropLocked(err)
				return err
			}
			return nil
		}
	}
}

// close ends the connection; the listener must have stopped.
func (l *pgLink) close() {
	l.claim()
	defer l.release()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = l.conn.Close(ctx)
		l.conn = nil
	}
}
