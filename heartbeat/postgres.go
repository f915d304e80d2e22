package heartbeat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Postgres is the fleet of an app whose agents share a PostgreSQL database
// (DATABASE_URL) and no Redis: presences, peers, the queue of dynos waiting
// for a restart and the restart lease live in the tables of the schema
// dynocycle (see pgSchema), so at most Slots dynos of the app restart at
// once, in the order they asked. It keeps the Redis fleet's rules (holder
// and boot, hand-over and successor, boot allowance, fair queue, restore
// after data loss: see Redis), in SQL:
//
//   - Every change that depends on more than one row (a grant, a claim, a
//     restore) runs in one transaction that first locks the app's row in
//     dynocycle.apps (SELECT ... FOR UPDATE): two dynos can never both see a
//     slot free, both claim one hand-over, or count each other as a healthy
//     peer. The decisions are pure functions (pgrules.go). Renewals and
//     releases of a lease as it stands are single guarded statements.
//   - Expiry runs on the database server's clock (now()), never a dyno's;
//     the one dyno time used, when the agent started (for claims), is moved
//     onto the server's clock by the offset measured at connect.
//   - The fencing token is a counter in the app's row, raised by every grant
//     and never lowered: a restored lease raises it past its own token.
//   - A release notifies the app's channel (pg_notify, delivered at commit);
//     waiting agents LISTEN on their one connection and try again.
//
// When the fleet's data is lost (the schema dropped, the database reset or
// restored from an old backup, a failover that lost the last commits), every
// agent that holds a lease restores it at its next renewal, and an app with
// no row in dynocycle.apps grants no lease for Settle (BootAllowance by
// default), as an empty Redis does. A failover that keeps the app's row but
// loses a lease granted in its last moments is not covered by the settle
// gate, only by the holder's next renewal (Heroku Postgres's HA failover can
// lose the last commits).
//
// While the database is away every call fails within seconds (pgCallTimeout)
// and the agent keeps its worker running.
type Postgres struct {
	link          *pgLink
	app           string
	dyno          string
	boot          string
	ptype         string
	started       time.Time
	slots         int
	minPeers      int
	leaseTTL      time.Duration
	presenceTTL   time.Duration
	settle        time.Duration
	bootAllowance time.Duration
	log           *slog.Logger
	now           func() time.Time // nil: the server's clock
	// offset is the server's clock minus this machine's, in ns, measured
	// at every connect; it moves started onto the server's clock.
	offset atomic.Int64

	freed chan struct{}
}

// PostgresOptions configures a Postgres fleet. The fields mean what they
// mean in RedisOptions.
type PostgresOptions struct {
	App             string
	Dyno            string
	Boot            string
	StartedAt       time.Time
	ProcessType     string
	Slots           int
	MinHealthyPeers int
	LeaseTTL        time.Duration
	PresenceTTL     time.Duration
	BootAllowance   time.Duration
	// Settle is how long an app new to the database (no row in
	// dynocycle.apps: new, or its data lost) grants no lease. Zero means
	// BootAllowance; negative turns the gate off (tests).
	Settle time.Duration
	Logger *slog.Logger
	// Now replaces the database server's clock for every timestamp and
	// expiry, so tests can move time; production leaves it nil.
	Now func() time.Time
}

// NewPostgres returns the fleet of opts.App on the database of cfg (see
// PostgresConfig). It dials on first use; Close ends the connection.
func NewPostgres(cfg *pgx.ConnConfig, opts PostgresOptions) *Postgres {
	if opts.ProcessType == "" {
		opts.ProcessType = ProcessType(opts.Dyno)
	}
	if opts.Boot == "" {
		opts.Boot = NewBootID()
	}
	if opts.Slots < 1 {
		opts.Slots = 1
	}
	if opts.MinHealthyPeers < 0 {
		opts.MinHealthyPeers = 0
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = defaultLeaseTTL
	}
	if opts.PresenceTTL < minPresenceTTL {
		opts.PresenceTTL = minPresenceTTL
	}
	if opts.BootAllowance <= 0 {
		opts.BootAllowance = DefaultBootAllowance
	}
	if opts.Settle == 0 {
		opts.Settle = opts.BootAllowance
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.StartedAt.IsZero() {
		if opts.Now != nil {
			opts.StartedAt = opts.Now()
		} else {
			opts.StartedAt = time.Now()
		}
	}
	log := opts.Logger.With("dyno", opts.Dyno)
	p := &Postgres{
		app:           opts.App,
		dyno:          opts.Dyno,
		boot:          opts.Boot,
		ptype:         opts.ProcessType,
		started:       opts.StartedAt,
		slots:         opts.Slots,
		minPeers:      opts.MinHealthyPeers,
		leaseTTL:      opts.LeaseTTL,
		presenceTTL:   opts.PresenceTTL,
		settle:        opts.Settle,
		bootAllowance: opts.BootAllowance,
		log:           log,
		now:           opts.Now,
		freed:         make(chan struct{}, 1),
	}
	p.link = &pgLink{
		cfg:       cfg,
		channel:   pgChannel(opts.App),
		log:       log,
		onConnect: p.onConnect,
		onListen:  p.notify,
		onNotify: func(n *pgconn.Notification) {
			p.log.Debug("slot freed", "event", "slot_freed", "slot", n.Payload)
			p.notify()
		},
	}
	return p
}

// Boot is this agent's boot id.
func (p *Postgres) Boot() string { return p.boot }

// onConnect checks the schema and measures the clock offset on a new
// connection.
func (p *Postgres) onConnect(ctx context.Context, c *pgx.Conn) error {
	v, err := ensureSchema(ctx, c)
	if err != nil {
		return err
	}
	if v > pgSchemaVersion {
		p.log.Warn("the fleet's schema is newer than this agent; a newer dynocycle runs on this database",
			"event", "pg_schema_newer", "version", v, "known", pgSchemaVersion)
	}
	if p.now != nil {
		return nil
	}
	before := time.Now()
	var server time.Time
	if err := c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&server); err != nil {
		return fmt.Errorf("read server clock: %w", err)
	}
	after := time.Now()
	local := before.Add(after.Sub(before) / 2)
	p.offset.Store(int64(server.Sub(local)))
	return nil
}

// pgChannel is the NOTIFY channel of an app's freed slots. Channel names
// stop at 63 bytes; a longer app scope is hashed.
func pgChannel(app string) string {
	const prefix = "dynocycle.freed."
	if len(prefix)+len(app) <= 63 {
		return prefix + app
	}
	sum := sha256.Sum256([]byte(app))
	return prefix + hex.EncodeToString(sum[:16])
}

// clock is the time argument of every statement: NULL means the server's
// now(), which every statement uses through coalesce($n::timestamptz, now()).
func (p *Postgres) clock() any {
	if p.now == nil {
		return nil
	}
	return p.now()
}

// startedOnServer is when this agent started, on the server's clock.
func (p *Postgres) startedOnServer() time.Time {
	return p.started.Add(time.Duration(p.offset.Load()))
}

func (p *Postgres) times() leaseTimes {
	return leaseTimes{BootAllowance: p.bootAllowance, Seen: p.presenceTTL}
}

// call runs fn on the connection. It tries once more on a fresh connection
// when the first one broke (a restarted server, pg_terminate_backend) and
// after recreating the schema when it was dropped; every call of the fleet
// is safe to repeat (a repeated Acquire returns the lease it granted).
func (p *Postgres) call(ctx context.Context, what string, fn func(ctx context.Context, c *pgx.Conn) error) error {
	var broke bool
	err := p.link.do(ctx, func(ctx context.Context, c *pgx.Conn) error {
		err := fn(ctx, c)
		broke = c.IsClosed()
		if isSchemaMissing(err) {
			p.log.Warn("the fleet's schema is gone; creating it again", "event", "pg_schema_missing")
			if _, serr := ensureSchema(ctx, c); serr != nil {
				return serr
			}
			return fn(ctx, c)
		}
		return err
	})
	if err != nil && broke && ctx.Err() == nil && !errors.Is(err, errLinkClosed) {
		err = p.link.do(ctx, fn)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// pgPublish stores the presence, notes the app's epoch, takes the dyno out
// of the queue unless it is wanting, and trims a bounded number of expired
// presences (and their places in the queue): one statement.
const pgPublish = `
WITH clock AS (SELECT coalesce($3::timestamptz, now()) AS now),
app AS (
  INSERT INTO dynocycle.apps (app, created_at) SELECT $1, now FROM clock
  ON CONFLICT (app) DO NOTHING
),
up AS (
  INSERT INTO dynocycle.presences (app, dyno, process_type, state, body, expires_at)
  SELECT $1, $2, $4, $5, $6, now + $7::float8 * interval '1 millisecond' FROM clock
  ON CONFLICT (app, dyno) DO UPDATE SET process_type = excluded.process_type, state = excluded.state,
    body = excluded.body, expires_at = excluded.expires_at
),
dead AS (
  SELECT dyno FROM dynocycle.presences, clock
  WHERE app = $1 AND dyno <> $2 AND expires_at <= clock.now
  LIMIT 100 FOR UPDATE SKIP LOCKED
),
unqueued AS (
  DELETE FROM dynocycle.queue q
  WHERE q.app = $1 AND (q.dyno IN (SELECT dyno FROM dead) OR (q.dyno = $2 AND $5 <> 'wanting'))
)
DELETE FROM dynocycle.presences p USING dead WHERE p.app = $1 AND p.dyno = dead.dyno`

// Publish records pr as this dyno's presence until PresenceTTL passes.
func (p *Postgres) Publish(ctx context.Context, pr Presence) error {
	pr.Dyno, pr.Boot = p.dyno, p.boot
	if pr.ProcessType == "" {
		pr.ProcessType = p.ptype
	}
	if pr.UpdatedAt.IsZero() {
		if p.now != nil {
			pr.UpdatedAt = p.now()
		} else {
			pr.UpdatedAt = time.Now()
		}
	}
	body, err := json.Marshal(pr)
	if err != nil {
		return fmt.Errorf("encode presence: %w", err)
	}
	return p.call(ctx, "publish presence", func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, pgPublish, p.app, p.dyno, p.clock(), pr.ProcessType, string(pr.State), string(body),
			p.presenceTTL.Milliseconds())
		return err
	})
}

// leaseColumns is the column list scanLease reads.
const leaseColumns = `slot, token, process_type, holder, holder_boot, acquired_at, holder_seen, restart_at,
  successor, successor_boot, claimed_at, successor_seen, expires_at, server_started`

func scanLease(r pgx.Row) (leaseRow, error) {
	var l leaseRow
	var hseen, rat, sat, sseen, srv *time.Time
	err := r.Scan(&l.Slot, &l.Token, &l.ProcessType, &l.Holder, &l.HolderBoot, &l.AcquiredAt, &hseen, &rat,
		&l.Successor, &l.SuccessorBoot, &sat, &sseen, &l.ExpiresAt, &srv)
	l.HolderSeen, l.RestartAt, l.ClaimedAt, l.SuccessorSeen = deref(hseen), deref(rat), deref(sat), deref(sseen)
	l.ServerStarted = deref(srv)
	return l, err
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// orNull is a timestamp argument: NULL for the zero time.
func orNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

const (
	pgEnsureApp = `INSERT INTO dynocycle.apps (app, created_at) VALUES ($1, coalesce($2::timestamptz, now()))
  ON CONFLICT (app) DO NOTHING`
	pgLockApp = `SELECT created_at, token, coalesce($2::timestamptz, now()),
    pg_postmaster_start_time(), extract(epoch FROM now() - pg_postmaster_start_time())::float8
  FROM dynocycle.apps WHERE app = $1 FOR UPDATE`
	pgLive = `SELECT ` + leaseColumns + ` FROM dynocycle.leases
  WHERE app = $1 AND slot < $2 AND expires_at > coalesce($3::timestamptz, now()) ORDER BY slot`
	pgEnqueue = `INSERT INTO dynocycle.queue (app, dyno, asked_at) VALUES ($1, $2, coalesce($3::timestamptz, now()))
  ON CONFLICT (app, dyno) DO NOTHING`
	// The waiters before the caller, in asking order (ties by name, as in
	// a Redis sorted set), each alive while its presence lasts.
	pgAhead = `SELECT q.dyno, coalesce(p.expires_at > coalesce($3::timestamptz, now()), false)
  FROM dynocycle.queue q
  JOIN dynocycle.queue me ON me.app = q.app AND me.dyno = $2
  LEFT JOIN dynocycle.presences p ON p.app = q.app AND p.dyno = q.dyno
  WHERE q.app = $1 AND (q.asked_at, q.dyno) < (me.asked_at, me.dyno)
  ORDER BY q.asked_at, q.dyno`
	pgPeers = `SELECT body FROM dynocycle.presences
  WHERE app = $1 AND process_type = $2 AND dyno <> $3 AND expires_at > coalesce($4::timestamptz, now())`
	pgUnqueue   = `DELETE FROM dynocycle.queue WHERE app = $1 AND dyno = ANY($2)`
	pgDropLease = `DELETE FROM dynocycle.leases WHERE app = $1 AND slot = $2 AND token = $3`
	pgNotify    = `SELECT pg_notify($1, $2)`
	pgSetToken  = `UPDATE dynocycle.apps SET token = $2 WHERE app = $1`
	// A grant overwrites only an expired row: a renewal that slipped in
	// after the read keeps its slot.
	pgGrant = `INSERT INTO dynocycle.leases (app, slot, token, process_type, holder, holder_boot, acquired_at, holder_seen, expires_at,
    server_started)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7::timestamptz + $8::float8 * interval '1 millisecond', pg_postmaster_start_time())
  ON CONFLICT (app, slot) DO UPDATE SET token = excluded.token, process_type = excluded.process_type,
    holder = excluded.holder, holder_boot = excluded.holder_boot, acquired_at = excluded.acquired_at,
    holder_seen = excluded.holder_seen, restart_at = NULL, successor = '', successor_boot = '',
    claimed_at = NULL, successor_seen = NULL, expires_at = excluded.expires_at, server_started = excluded.server_started
  WHERE dynocycle.leases.expires_at <= excluded.acquired_at
  RETURNING expires_at`
	pgExtend = `UPDATE dynocycle.leases SET expires_at = $4::timestamptz + $5::float8 * interval '1 millisecond'
  WHERE app = $1 AND slot = $2 AND token = $3 RETURNING expires_at`
)

// errSlotRaced ends a grant whose slot was renewed after it was read.
var errSlotRaced = errors.New("slot renewed by its holder meanwhile")

// lockApp takes the app's row lock (making the row, and so the epoch, if it
// is missing) and reads the live leases; with queue it also enqueues the
// caller and reads who is ahead, with peers the presences of its type. One
// round trip.
func (p *Postgres) lockApp(ctx context.Context, tx pgx.Tx, queue, peers bool) (acquireFacts, error) {
	var f acquireFacts
	b := &pgx.Batch{}
	b.Queue(pgEnsureApp, p.app, p.clock())
	b.Queue(pgLockApp, p.app, p.clock()).QueryRow(func(r pgx.Row) error {
		var up float64
		err := r.Scan(&f.Epoch, &f.Token, &f.Now, &f.Server.Started, &up)
		f.Server.Up = time.Duration(up * float64(time.Second))
		return err
	})
	b.Queue(pgLive, p.app, p.slots, p.clock()).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			l, err := scanLease(rows)
			if err != nil {
				return err
			}
			f.Live = append(f.Live, l)
		}
		return rows.Err()
	})
	if queue {
		b.Queue(pgEnqueue, p.app, p.dyno, p.clock())
		b.Queue(pgAhead, p.app, p.dyno, p.clock()).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var w waiter
				if err := rows.Scan(&w.Dyno, &w.Alive); err != nil {
					return err
				}
				f.Ahead = append(f.Ahead, w)
			}
			return rows.Err()
		})
	}
	if peers {
		b.Queue(pgPeers, p.app, p.ptype, p.dyno, p.clock()).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var body []byte
				if err := rows.Scan(&body); err != nil {
					return err
				}
				var pr Presence
				if json.Unmarshal(body, &pr) == nil { // one bad row must not block the fleet
					f.Peers = append(f.Peers, pr)
				}
			}
			return rows.Err()
		})
	}
	return f, tx.SendBatch(ctx, b).Close()
}

// Acquire queues the caller and takes a restart slot if it is its turn.
// ErrNoSlot (possibly wrapped: waiting in the queue, or while a new app
// settles) and *PeersError mean: keep working, try again later; the caller
// keeps its place in the queue.
func (p *Postgres) Acquire(ctx context.Context) (Lease, error) {
	var out acquireOutcome
	var lease Lease
	rules := acquireRules{Dyno: p.dyno, Boot: p.boot, ProcessType: p.ptype, Slots: p.slots, MinPeers: p.minPeers,
		Settle: p.settle, leaseTimes: p.times()}
	err := p.call(ctx, "acquire lease", func(ctx context.Context, c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			f, err := p.lockApp(ctx, tx, true, p.minPeers > 0)
			if err != nil {
				return err
			}
			out = decideAcquire(f, rules)
			b := &pgx.Batch{}
			for _, l := range out.Stale {
				b.Queue(pgDropLease, p.app, l.Slot, l.Token)
			}
			if len(out.Stale) > 0 {
				b.Queue(pgNotify, p.link.channel, "stale")
			}
			if len(out.Dead) > 0 {
				b.Queue(pgUnqueue, p.app, out.Dead)
			}
			switch out.Kind {
			case acquireHeld:
				lease = out.Held
				b.Queue(pgExtend, p.app, lease.Slot, lease.Token, f.Now, p.leaseTTL.Milliseconds()).
					QueryRow(func(r pgx.Row) error { return r.Scan(&lease.ExpiresAt) })
				b.Queue(pgUnqueue, p.app, []string{p.dyno})
			case acquireGrant:
				// The app's row is locked: its counter cannot move meanwhile.
				lease = Lease{Slot: out.Slot, Holder: p.dyno, HolderBoot: p.boot, ProcessType: p.ptype,
					Token: f.Token + 1, AcquiredAt: f.Now}
				b.Queue(pgSetToken, p.app, lease.Token)
				b.Queue(pgGrant, p.app, lease.Slot, lease.Token, p.ptype, p.dyno, p.boot, f.Now, p.leaseTTL.Milliseconds()).
					QueryRow(func(r pgx.Row) error {
						err := r.Scan(&lease.ExpiresAt)
						if errors.Is(err, pgx.ErrNoRows) {
							return errSlotRaced
						}
						return err
					})
				b.Queue(pgUnqueue, p.app, []string{p.dyno})
			}
			if b.Len() == 0 {
				return nil
			}
			return tx.SendBatch(ctx, b).Close()
		})
	})
	if errors.Is(err, errSlotRaced) {
		return Lease{}, ErrNoSlot
	}
	if err != nil {
		return Lease{}, err
	}
	if len(out.Stale) > 0 {
		gone := make([]string, len(out.Stale))
		for i, l := range out.Stale {
			gone[i] = l.Holder
		}
		p.log.Warn("freed a handed-over lease whose holder and successor are gone", "event", "lease_stale_freed",
			"holders", gone, "boot_allowance", p.bootAllowance)
	}
	switch out.Kind {
	case acquireNoSlot:
		if out.Ahead > 0 {
			return Lease{}, fmt.Errorf("%w: %d dynos asked first", ErrNoSlot, out.Ahead)
		}
		return Lease{}, ErrNoSlot
	case acquireSettling:
		return Lease{}, fmt.Errorf("%w: the database holds no fleet history for this app yet (new, or its data was lost), no lease for %s",
			ErrNoSlot, out.Left.Round(time.Second))
	case acquirePeers:
		return Lease{}, &PeersError{ProcessType: p.ptype, Have: out.Have, Want: out.Want}
	case acquireHeld:
		p.log.Info("lease already held, extended", "event", "lease_held", "slot", lease.Slot, "token", lease.Token)
		return lease, nil
	}
	if out.Waived {
		p.log.Warn("min healthy peers waived: no other dyno of this type is up",
			"event", "peers_waived", "process_type", p.ptype, "want", p.minPeers)
	}
	return lease, nil
}

// pgRenew extends the caller's lease as it stands, stamping the caller's
// renewal as holder or successor.
const pgRenew = `UPDATE dynocycle.leases
  SET expires_at = coalesce($6::timestamptz, now()) + $7::float8 * interval '1 millisecond',
    holder_seen = CASE WHEN holder = $4 AND holder_boot = $5 THEN coalesce($6::timestamptz, now()) ELSE holder_seen END,
    successor_seen = CASE WHEN successor = $4 AND successor_boot = $5 THEN coalesce($6::timestamptz, now()) ELSE successor_seen END,
    server_started = pg_postmaster_start_time()
  WHERE app = $1 AND slot = $2 AND token = $3 AND expires_at > coalesce($6::timestamptz, now())
    AND ((holder = $4 AND holder_boot = $5) OR (successor = $4 AND successor_boot = $5))
  RETURNING ` + leaseColumns

const (
	pgSeen = `UPDATE dynocycle.leases SET expires_at = $4::timestamptz + $5::float8 * interval '1 millisecond',
    holder_seen = CASE WHEN $6 THEN $4::timestamptz ELSE holder_seen END,
    successor_seen = CASE WHEN $6 THEN successor_seen ELSE $4::timestamptz END, server_started = pg_postmaster_start_time()
  WHERE app = $1 AND slot = $2 AND token = $3 RETURNING ` + leaseColumns
	pgRecordSuccessor = `UPDATE dynocycle.leases SET expires_at = $4::timestamptz + $5::float8 * interval '1 millisecond',
    successor = $6, successor_boot = $7, claimed_at = coalesce($8::timestamptz, $4::timestamptz), successor_seen = $4::timestamptz,
    server_started = pg_postmaster_start_time()
  WHERE app = $1 AND slot = $2 AND token = $3 RETURNING ` + leaseColumns
	pgRestore = `INSERT INTO dynocycle.leases (app, slot, token, process_type, holder, holder_boot, acquired_at, holder_seen,
    restart_at, successor, successor_boot, claimed_at, successor_seen, expires_at, server_started)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::timestamptz + $15::float8 * interval '1 millisecond',
    pg_postmaster_start_time())
  ON CONFLICT (app, slot) DO UPDATE SET token = excluded.token, process_type = excluded.process_type,
    holder = excluded.holder, holder_boot = excluded.holder_boot, acquired_at = excluded.acquired_at,
    holder_seen = excluded.holder_seen, restart_at = excluded.restart_at, successor = excluded.successor,
    successor_boot = excluded.successor_boot, claimed_at = excluded.claimed_at,
    successor_seen = excluded.successor_seen, expires_at = excluded.expires_at, server_started = excluded.server_started
  RETURNING ` + leaseColumns
	pgRaiseToken = `UPDATE dynocycle.apps SET token = greatest(token, $2) WHERE app = $1`
)

// Renew extends lease by LeaseTTL and restores it if it is gone (it expired
// unclaimed, or the fleet's data was lost) while its slot is free: the
// caller is still restarting, or booting as the successor, and holding the
// slot again keeps the count honest. ErrNotHolder when another holder has
// the slot now.
func (p *Postgres) Renew(ctx context.Context, lease Lease) error {
	_, err := p.renew(ctx, lease, stepRenew)
	return err
}

// What renew does besides renewing.
type renewStep int

const (
	stepRenew    renewStep = iota
	stepHandOver           // record the hand-over (HandOver)
	stepTakeBack           // undo it (TakeBack)
)

// renew is Renew, HandOver and TakeBack: the last two are the holder's.
func (p *Postgres) renew(ctx context.Context, lease Lease, step renewStep) (Lease, error) {
	handOver := step != stepRenew // only the holder: it may restore, never record a successor
	if !p.own(lease) || (handOver && !p.isHolder(lease)) {
		return Lease{}, ErrNotHolder
	}
	what := map[renewStep]string{stepRenew: "renew lease", stepHandOver: "hand over lease", stepTakeBack: "take back lease"}[step]
	var got leaseRow
	var action string
	err := p.call(ctx, what, func(ctx context.Context, c *pgx.Conn) error {
		if !handOver {
			var err error
			got, err = scanLease(c.QueryRow(ctx, pgRenew, p.app, lease.Slot, lease.Token, p.dyno, p.boot, p.clock(), p.leaseTTL.Milliseconds()))
			if err == nil {
				action = renewExtend
				return nil
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			f, err := p.lockApp(ctx, tx, false, false)
			if err != nil {
				return err
			}
			var cur *leaseRow
			for i := range f.Live {
				if f.Live[i].Slot == lease.Slot {
					cur = &f.Live[i]
				}
			}
			var as string
			action, as = decideRenew(cur, lease, p.dyno, p.boot)
			if handOver && action != renewRestore && (action != renewExtend || as != renewByHolder) {
				action = renewNotHeld // only the holder hands over
			}
			ttl := p.leaseTTL.Milliseconds()
			var row pgx.Row
			switch action {
			case renewNotHeld:
				return nil
			case renewExtend:
				row = tx.QueryRow(ctx, pgSeen, p.app, lease.Slot, lease.Token, f.Now, ttl, as == renewByHolder)
			case renewRecord:
				row = tx.QueryRow(ctx, pgRecordSuccessor, p.app, lease.Slot, lease.Token, f.Now, ttl, p.dyno, p.boot, orNull(lease.ClaimedAt))
			case renewRestore:
				// Only the caller is known to be alive: the other's renewal
				// stamp stays empty.
				var hseen, sseen any
				if as == renewByHolder {
					hseen = f.Now
				} else {
					sseen = f.Now
				}
				ptype := lease.ProcessType
				if ptype == "" {
					ptype = p.ptype
				}
				if _, err := tx.Exec(ctx, pgRaiseToken, p.app, lease.Token); err != nil {
					return err
				}
				row = tx.QueryRow(ctx, pgRestore, p.app, lease.Slot, lease.Token, ptype, lease.Holder, lease.HolderBoot,
					orTime(lease.AcquiredAt, f.Now), hseen, orNull(lease.RestartAt), lease.Successor, lease.SuccessorBoot,
					orNull(lease.ClaimedAt), sseen, f.Now, ttl)
			}
			if got, err = scanLease(row); err != nil {
				return err
			}
			switch {
			case step == stepHandOver && got.RestartAt.IsZero():
				got, err = scanLease(tx.QueryRow(ctx, pgHandOver, p.app, lease.Slot, lease.Token, f.Now))
			case step == stepTakeBack:
				got, err = scanLease(tx.QueryRow(ctx, pgTakeBack, p.app, lease.Slot, lease.Token, f.Now))
			}
			return err
		})
	})
	if err != nil {
		return Lease{}, err
	}
	switch action {
	case renewNotHeld:
		return Lease{}, ErrNotHolder
	case renewRestore:
		p.log.Warn("lease row was gone, restored", "event", "lease_restored", "slot", lease.Slot, "token", lease.Token)
	case renewRecord:
		p.log.Info("successor recorded again on a restored lease", "event", "lease_successor_restored",
			"slot", lease.Slot, "token", lease.Token)
	}
	return got.Lease, nil
}

const pgHandOver = `UPDATE dynocycle.leases SET restart_at = coalesce(restart_at, $4::timestamptz)
  WHERE app = $1 AND slot = $2 AND token = $3 RETURNING ` + leaseColumns

// HandOver records on lease that its holder is about to ask the platform
// to replace its dyno: of which process type and when. From then on the
// first new dyno of that type started afterwards claims it (see Held). It
// returns the lease as recorded, restoring it first if it was lost;
// ErrNotHolder when the caller is not its holder.
func (p *Postgres) HandOver(ctx context.Context, lease Lease) (Lease, error) {
	return p.renew(ctx, lease, stepHandOver)
}

// pgTakeBack clears the hand-over and the successor, whose renewals then
// fail (see decideRenew).
const pgTakeBack = `UPDATE dynocycle.leases SET restart_at = NULL, successor = '', successor_boot = '',
    claimed_at = NULL, successor_seen = NULL, holder_seen = $4::timestamptz, server_started = pg_postmaster_start_time()
  WHERE app = $1 AND slot = $2 AND token = $3 RETURNING ` + leaseColumns

// TakeBack undoes this agent's hand-over of lease (see Fleet.TakeBack),
// restoring the lease first if it was lost.
func (p *Postgres) TakeBack(ctx context.Context, lease Lease) (Lease, error) {
	return p.renew(ctx, lease, stepTakeBack)
}

const pgRelease = `WITH gone AS (
  DELETE FROM dynocycle.leases
  WHERE app = $1 AND slot = $2 AND token = $3 AND expires_at > coalesce($6::timestamptz, now())
    AND ((holder = $4 AND holder_boot = $5) OR (successor = $4 AND successor_boot = $5))
  RETURNING slot
)
SELECT pg_notify($7, slot::text) FROM gone`

// Release frees lease if the caller holds it (as holder or successor) and
// tells waiting dynos at once: the notification is delivered when the
// delete commits. ErrNotHolder when it expired or another holder has the
// slot now.
func (p *Postgres) Release(ctx context.Context, lease Lease) error {
	if !p.own(lease) {
		return ErrNotHolder
	}
	var n int64
	err := p.call(ctx, "release lease", func(ctx context.Context, c *pgx.Conn) error {
		tag, err := c.Exec(ctx, pgRelease, p.app, lease.Slot, lease.Token, p.dyno, p.boot, p.clock(), p.link.channel)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotHolder
	}
	return nil
}

const pgClaim = `UPDATE dynocycle.leases SET successor = $4, successor_boot = $5, claimed_at = $6,
    successor_seen = $6, expires_at = $6::timestamptz + $7::float8 * interval '1 millisecond',
    server_started = pg_postmaster_start_time()
  WHERE app = $1 AND slot = $2 AND token = $3 RETURNING ` + leaseColumns

// Held returns the lease this agent holds: one it took, or one handed over
// by the dyno this one replaces, which it claims here as successor (see
// pickHeld), under the app's lock so that a lease is claimed once.
func (p *Postgres) Held(ctx context.Context) (Lease, bool, error) {
	c := claimer{Dyno: p.dyno, Boot: p.boot, ProcessType: p.ptype, Started: p.startedOnServer(), MayClaim: !OneOff(p.dyno)}
	var got leaseRow
	var mine, ok bool
	err := p.call(ctx, "read leases", func(ctx context.Context, conn *pgx.Conn) error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			f, err := p.lockApp(ctx, tx, false, false)
			if err != nil {
				return err
			}
			c.Started = p.startedOnServer() // the offset is measured at connect
			got, mine, ok = pickHeld(f.Live, c, f.Now, f.Server, p.times())
			if !ok || mine {
				return nil
			}
			got, err = scanLease(tx.QueryRow(ctx, pgClaim, p.app, got.Slot, got.Token, p.dyno, p.boot, f.Now, p.leaseTTL.Milliseconds()))
			return err
		})
	})
	if err != nil || !ok {
		return Lease{}, false, err
	}
	return got.Lease, true, nil
}

// own reports whether the caller may act on l as holder or successor.
func (p *Postgres) own(l Lease) bool {
	return l.Slot >= 0 && l.Slot < p.slots && l.HeldBy(p.dyno, p.boot)
}

func (p *Postgres) isHolder(l Lease) bool { return l.Holder == p.dyno && l.HolderBoot == p.boot }

// SlotFreed is signalled when a slot may have been freed: another dyno
// released one, or the LISTEN was (re)established and a release may have
// been missed. Only while Run runs.
func (p *Postgres) SlotFreed() <-chan struct{} { return p.freed }

// Run keeps a LISTEN for freed slots on the fleet's connection until ctx
// ends, taking turns with the fleet's statements, and returns nil then. Run
// it once, beside the agent; without it the fleet works but nobody is woken.
func (p *Postgres) Run(ctx context.Context) error {
	p.link.listenLoop(ctx)
	return nil
}

// Close ends the fleet's connection, once Run and every call have ended.
func (p *Postgres) Close() error {
	p.link.close()
	return nil
}

func (p *Postgres) notify() {
	select {
	case p.freed <- struct{}{}:
	default:
	}
}

// Ping checks the database can be reached (and the schema is in place).
func (p *Postgres) Ping(ctx context.Context) error {
	return p.call(ctx, "ping", func(ctx context.Context, c *pgx.Conn) error { return c.Ping(ctx) })
}
