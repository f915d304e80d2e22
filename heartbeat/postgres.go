package heartbeat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Postgres is the fleet of an app whose agents share a PostgreSQL database
// (DATABASE_URL) and no Redis: presences, peers and the restart lease live in
// the tables of the schema dynocycle (see pgSchema), so at most Slots dynos of
// the app restart at once. It keeps the Redis fleet's rules, in SQL:
//
//   - Every change to the leases of an app runs in one transaction that first
//     locks the app's row in dynocycle.apps (SELECT ... FOR UPDATE): two
//     dynos can never both see a slot free or count each other as a healthy
//     peer. The decision itself is decideAcquire, a pure function.
//   - Expiry runs on the database server's clock (now()), never a dyno's.
//   - The fencing token is a counter in the app's row, raised by every grant
//     and never lowered: a restored lease raises it past its own token.
//   - A release notifies the app's channel (pg_notify, delivered at commit)
//     and waiting agents, which LISTEN on their one connection, try again.
//
// What holds when the fleet's data is lost (the schema dropped, the database
// reset or restored from an old backup, a failover that lost the last
// commits): as with Redis, a missing app row starts the settle time, during
// which nobody is granted a lease, and a holder that renews restores its
// lease. A failover that keeps the app row but loses a lease granted in its
// last moments is not covered by the settle gate; Heroku Postgres's HA
// failover can lose recent commits this way.
//
// While the database is away every call fails within seconds (pgCallTimeout)
// and the agent keeps its worker running.
type Postgres struct {
	link        *pgLink
	app         string
	dyno        string
	ptype       string
	slots       int
	minPeers    int
	leaseTTL    time.Duration
	presenceTTL time.Duration
	settle      time.Duration
	log         *slog.Logger
	now         func() time.Time // nil: the server's clock

	freed chan struct{}

	mu      sync.Mutex
	started bool
	stop    context.CancelFunc
	done    chan struct{}
}

// PostgresOptions configures a Postgres fleet. The fields mean what they
// mean in RedisOptions.
type PostgresOptions struct {
	App             string
	Dyno            string
	ProcessType     string
	Slots           int
	MinHealthyPeers int
	LeaseTTL        time.Duration
	PresenceTTL     time.Duration
	// Settle is how long an app new to the database (no row in
	// dynocycle.apps) grants no lease. Zero means LeaseTTL; negative turns
	// the gate off (tests).
	Settle time.Duration
	Logger *slog.Logger
	// Now replaces the database server's clock for every timestamp and
	// expiry, so tests can move time; production leaves it nil.
	Now func() time.Time
}

var _ fleet = (*Postgres)(nil)

// NewPostgres returns the fleet of opts.App on the database of cfg (see
// PostgresConfig). It dials on first use; Close ends the connection.
func NewPostgres(cfg *pgx.ConnConfig, opts PostgresOptions) *Postgres {
	if opts.ProcessType == "" {
		opts.ProcessType = ProcessType(opts.Dyno)
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
	if opts.Settle == 0 {
		opts.Settle = opts.LeaseTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger.With("dyno", opts.Dyno)
	p := &Postgres{
		app:         opts.App,
		dyno:        opts.Dyno,
		ptype:       opts.ProcessType,
		slots:       opts.Slots,
		minPeers:    opts.MinHealthyPeers,
		leaseTTL:    opts.LeaseTTL,
		presenceTTL: opts.PresenceTTL,
		settle:      opts.Settle,
		log:         log,
		now:         opts.Now,
		freed:       make(chan struct{}, 1),
	}
	p.link = &pgLink{
		cfg:     cfg,
		channel: pgChannel(opts.App),
		log:     log,
		onConnect: func(ctx context.Context, c *pgx.Conn) error {
			v, err := ensureSchema(ctx, c)
			if err == nil && v > pgSchemaVersion {
				log.Warn("the fleet's schema is newer than this agent; a newer dynocycle runs on this database",
					"event", "pg_schema_newer", "version", v, "known", pgSchemaVersion)
			}
			return err
		},
		onListen: p.notify,
		onNotify: func(n *pgconn.Notification) {
			p.log.Debug("slot freed", "event", "slot_freed", "slot", n.Payload)
			p.notify()
		},
	}
	return p
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
)
DELETE FROM dynocycle.presences p USING dead WHERE p.app = $1 AND p.dyno = dead.dyno`

// Publish records pr as this dyno's presence until PresenceTTL passes and
// trims a bounded number of expired ones, in one statement. It also notes
// the app's epoch (its row in dynocycle.apps).
func (p *Postgres) Publish(ctx context.Context, pr Presence) error {
	pr.Dyno = p.dyno
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

// leaseRow is one live lease as stored.
type leaseRow struct {
	Lease
	ProcessType string
}

// acquireFacts is what Acquire reads, under the app's row lock, to decide.
type acquireFacts struct {
	Now   time.Time
	Epoch time.Time  // the app's created_at
	Token int64      // the app's fencing token counter
	Live  []leaseRow // unexpired leases of slots 0..slots-1
	// Peers are the live presences of the other dynos of the caller's type.
	Peers []Presence
}

// Outcomes of decideAcquire.
const (
	acquireHeld     = "held"     // the caller holds Slot already: extend it
	acquireGrant    = "grant"    // grant Slot
	acquireSettling = "settling" // the app is new to the store: wait Left
	acquireNoSlot   = "noslot"
	acquirePeers    = "peers" // Have healthy peers, Want required
)

type acquireOutcome struct {
	Kind       string
	Slot       int
	Held       Lease
	Left       time.Duration
	Have, Want int
	Waived     bool // MinHealthyPeers waived: no other dyno of the type is up
}

// acquireRules are the caller's side of an Acquire.
type acquireRules struct {
	Dyno, ProcessType string
	Slots, MinPeers   int
	Settle            time.Duration // <= 0: no settle gate
}

// decideAcquire is the lease rule of both stores (the Redis fleet runs the
// same rule in its acquire script): a dyno that holds a slot gets it back; an
// app new to the store grants nothing until it has settled; otherwise the
// lowest free slot is granted if enough other dynos of the caller's process
// type are healthy, not counting those that hold a lease. A holder whose
// presence lapsed is being replaced: it still counts as part of the
// formation, so a two-dyno app is never taken for a single one and the peer
// rule waived.
func decideAcquire(f acquireFacts, r acquireRules) acquireOutcome {
	holders := map[string]string{} // dyno -> process type
	taken := map[int]bool{}
	for _, l := range f.Live {
		if l.Holder == r.Dyno {
			return acquireOutcome{Kind: acquireHeld, Slot: l.Slot, Held: l.Lease}
		}
		holders[l.Holder] = l.ProcessType
		taken[l.Slot] = true
	}
	if r.Settle > 0 {
		if left := f.Epoch.Add(r.Settle).Sub(f.Now); left > 0 {
			return acquireOutcome{Kind: acquireSettling, Left: left}
		}
	}
	free := -1
	for s := range r.Slots {
		if !taken[s] {
			free = s
			break
		}
	}
	if free < 0 {
		return acquireOutcome{Kind: acquireNoSlot}
	}
	out := acquireOutcome{Kind: acquireGrant, Slot: free}
	if r.MinPeers <= 0 {
		return out
	}
	seen, have := 0, 0
	counted := map[string]bool{}
	for _, pr := range f.Peers {
		if pr.Dyno == r.Dyno || pr.ProcessType != r.ProcessType || counted[pr.Dyno] {
			continue
		}
		counted[pr.Dyno] = true
		seen++
		if _, holds := holders[pr.Dyno]; pr.Healthy() && !holds {
			have++
		}
	}
	for d, t := range holders {
		if t == r.ProcessType && d != r.Dyno && !counted[d] {
			seen++
		}
	}
	switch {
	case seen == 0:
		out.Waived = true
	case have < r.MinPeers:
		return acquireOutcome{Kind: acquirePeers, Have: have, Want: r.MinPeers}
	}
	return out
}

const (
	pgEnsureApp = `INSERT INTO dynocycle.apps (app, created_at) VALUES ($1, coalesce($2::timestamptz, now()))
  ON CONFLICT (app) DO NOTHING`
	pgLockApp = `SELECT created_at, token, coalesce($2::timestamptz, now()) FROM dynocycle.apps WHERE app = $1 FOR UPDATE`
	pgLive    = `SELECT slot, holder, process_type, token, acquired_at, expires_at FROM dynocycle.leases
  WHERE app = $1 AND slot < $2 AND expires_at > coalesce($3::timestamptz, now()) ORDER BY slot`
	pgPeers = `SELECT body FROM dynocycle.presences
  WHERE app = $1 AND process_type = $2 AND dyno <> $3 AND expires_at > coalesce($4::timestamptz, now())`
	pgExtend = `UPDATE dynocycle.leases SET expires_at = $4::timestamptz + $5::float8 * interval '1 millisecond'
  WHERE app = $1 AND slot = $2 AND token = $3 RETURNING expires_at`
	pgSetToken = `UPDATE dynocycle.apps SET token = $2 WHERE app = $1`
	// A grant overwrites only an expired row: a renewal that slipped in
	// after the read keeps its slot.
	pgGrant = `INSERT INTO dynocycle.leases (app, slot, holder, process_type, token, acquired_at, expires_at)
  VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $6::timestamptz + $7::float8 * interval '1 millisecond')
  ON CONFLICT (app, slot) DO UPDATE SET holder = excluded.holder, process_type = excluded.process_type,
    token = excluded.token, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
  WHERE dynocycle.leases.expires_at <= excluded.acquired_at
  RETURNING expires_at`
)

// errSlotRaced ends a grant whose slot was renewed after it was read.
var errSlotRaced = errors.New("slot renewed by its holder meanwhile")

// lockApp takes the app's row lock (making the row, and so the epoch, if
// it is missing) and reads what a lease decision needs: one round trip.
func (p *Postgres) lockApp(ctx context.Context, tx pgx.Tx, peers bool) (acquireFacts, error) {
	var f acquireFacts
	b := &pgx.Batch{}
	b.Queue(pgEnsureApp, p.app, p.clock())
	b.Queue(pgLockApp, p.app, p.clock()).QueryRow(func(r pgx.Row) error {
		return r.Scan(&f.Epoch, &f.Token, &f.Now)
	})
	b.Queue(pgLive, p.app, p.slots, p.clock()).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var l leaseRow
			if err := rows.Scan(&l.Slot, &l.Holder, &l.ProcessType, &l.Token, &l.AcquiredAt, &l.ExpiresAt); err != nil {
				return err
			}
			f.Live = append(f.Live, l)
		}
		return rows.Err()
	})
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

// Acquire takes a restart slot. ErrNoSlot (possibly wrapped, while a new
// app settles) and *PeersError mean: keep working, try again later.
func (p *Postgres) Acquire(ctx context.Context) (Lease, error) {
	var out acquireOutcome
	var lease Lease
	err := p.call(ctx, "acquire lease", func(ctx context.Context, c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			f, err := p.lockApp(ctx, tx, p.minPeers > 0)
			if err != nil {
				return err
			}
			out = decideAcquire(f, acquireRules{Dyno: p.dyno, ProcessType: p.ptype, Slots: p.slots, MinPeers: p.minPeers, Settle: p.settle})
			switch out.Kind {
			case acquireHeld:
				lease = out.Held
				return tx.QueryRow(ctx, pgExtend, p.app, lease.Slot, lease.Token, f.Now, p.leaseTTL.Milliseconds()).Scan(&lease.ExpiresAt)
			case acquireGrant:
				// The app's row is locked: its counter cannot move meanwhile.
				lease = Lease{Slot: out.Slot, Holder: p.dyno, Token: f.Token + 1, AcquiredAt: f.Now}
				b := &pgx.Batch{}
				b.Queue(pgSetToken, p.app, lease.Token)
				b.Queue(pgGrant, p.app, out.Slot, p.dyno, p.ptype, lease.Token, f.Now, p.leaseTTL.Milliseconds()).
					QueryRow(func(r pgx.Row) error {
						err := r.Scan(&lease.ExpiresAt)
						if errors.Is(err, pgx.ErrNoRows) {
							return errSlotRaced
						}
						return err
					})
				return tx.SendBatch(ctx, b).Close()
			}
			return nil
		})
	})
	if errors.Is(err, errSlotRaced) {
		return Lease{}, ErrNoSlot
	}
	if err != nil {
		return Lease{}, err
	}
	switch out.Kind {
	case acquireNoSlot:
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
	p.log.Info("lease acquired", "event", "lease_acquired", "slot", lease.Slot, "token", lease.Token,
		"expires_at", lease.ExpiresAt)
	return lease, nil
}

const pgRenew = `UPDATE dynocycle.leases
  SET expires_at = coalesce($5::timestamptz, now()) + $6::float8 * interval '1 millisecond'
  WHERE app = $1 AND slot = $2 AND token = $3 AND holder = $4 AND expires_at > coalesce($5::timestamptz, now())`

const (
	pgSlot = `SELECT holder, token FROM dynocycle.leases
  WHERE app = $1 AND slot = $2 AND expires_at > coalesce($3::timestamptz, now())`
	pgRestore = `INSERT INTO dynocycle.leases (app, slot, holder, process_type, token, acquired_at, expires_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7::timestamptz + $8::float8 * interval '1 millisecond')
  ON CONFLICT (app, slot) DO UPDATE SET holder = excluded.holder, process_type = excluded.process_type,
    token = excluded.token, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at`
	pgRaiseToken = `UPDATE dynocycle.apps SET token = greatest(token, $2) WHERE app = $1`
)

// Renew extends lease by LeaseTTL; ErrNotHolder when another dyno holds
// the slot now. A lease that is gone (it expired unclaimed, or the fleet's
// data was lost) while its slot is free is taken back with its own token:
// the holder is still restarting, and holding the slot again keeps the count
// honest and lets the reborn dyno find and release it.
func (p *Postgres) Renew(ctx context.Context, lease Lease) error {
	if !p.own(lease) {
		return ErrNotHolder
	}
	var restored, other bool
	err := p.call(ctx, "renew lease", func(ctx context.Context, c *pgx.Conn) error {
		restored, other = false, false
		tag, err := c.Exec(ctx, pgRenew, p.app, lease.Slot, lease.Token, p.dyno, p.clock(), p.leaseTTL.Milliseconds())
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			f, err := p.lockApp(ctx, tx, false)
			if err != nil {
				return err
			}
			for _, l := range f.Live {
				if l.Slot != lease.Slot {
					continue
				}
				if l.Holder != p.dyno || l.Token != lease.Token {
					other = true
					return nil
				}
				// Extended by another call of ours meanwhile.
				_, err := tx.Exec(ctx, pgExtend, p.app, lease.Slot, lease.Token, f.Now, p.leaseTTL.Milliseconds())
				return err
			}
			at := lease.AcquiredAt
			if at.IsZero() {
				at = f.Now
			}
			b := &pgx.Batch{}
			b.Queue(pgRestore, p.app, lease.Slot, p.dyno, p.ptype, lease.Token, at, f.Now, p.leaseTTL.Milliseconds())
			b.Queue(pgRaiseToken, p.app, lease.Token)
			restored = true
			return tx.SendBatch(ctx, b).Close()
		})
	})
	switch {
	case err != nil:
		return err
	case other:
		return ErrNotHolder
	case restored:
		p.log.Warn("lease row was gone, restored", "event", "lease_restored", "slot", lease.Slot, "token", lease.Token)
	}
	return nil
}

const pgRelease = `WITH gone AS (
  DELETE FROM dynocycle.leases
  WHERE app = $1 AND slot = $2 AND token = $3 AND holder = $4 AND expires_at > coalesce($5::timestamptz, now())
  RETURNING slot
)
SELECT pg_notify($6, slot::text) FROM gone`

// Release frees lease and tells waiting dynos at once (the notification is
// delivered when the delete commits). ErrNotHolder when it expired or
// another dyno holds the slot now.
func (p *Postgres) Release(ctx context.Context, lease Lease) error {
	if !p.own(lease) {
		return ErrNotHolder
	}
	var n int64
	err := p.call(ctx, "release lease", func(ctx context.Context, c *pgx.Conn) error {
		tag, err := c.Exec(ctx, pgRelease, p.app, lease.Slot, lease.Token, p.dyno, p.clock(), p.link.channel)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotHolder
	}
	p.log.Info("lease released", "event", "lease_released", "slot", lease.Slot, "token", lease.Token)
	return nil
}

const pgHeld = `SELECT slot, holder, token, acquired_at, expires_at FROM dynocycle.leases
  WHERE app = $1 AND holder = $2 AND slot < $3 AND expires_at > coalesce($4::timestamptz, now())
  ORDER BY slot LIMIT 1`

// Held returns the lease this dyno holds, typically from before its
// restart: one query.
func (p *Postgres) Held(ctx context.Context) (Lease, bool, error) {
	var l Lease
	var found bool
	err := p.call(ctx, "read leases", func(ctx context.Context, c *pgx.Conn) error {
		err := c.QueryRow(ctx, pgHeld, p.app, p.dyno, p.slots, p.clock()).
			Scan(&l.Slot, &l.Holder, &l.Token, &l.AcquiredAt, &l.ExpiresAt)
		found = err == nil
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	return l, found, err
}

func (p *Postgres) own(l Lease) bool {
	return l.Slot >= 0 && l.Slot < p.slots && l.Holder == p.dyno
}

// SlotFreed is signalled when a slot may have been freed: another dyno
// released one, or the LISTEN was (re)established and a release may have
// been missed. The first call starts the listener (see Run).
func (p *Postgres) SlotFreed() <-chan struct{} {
	p.start()
	return p.freed
}

// Run starts the listener now rather than at the first SlotFreed call and
// stops it when ctx ends; it returns nil then, after closing the connection.
func (p *Postgres) Run(ctx context.Context) error {
	p.start()
	<-ctx.Done()
	return p.Close()
}

// Close stops the listener, waits for it, and closes the connection.
func (p *Postgres) Close() error {
	p.mu.Lock()
	p.started = true // no start after Close
	stop, done := p.stop, p.done
	p.stop = nil
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	p.link.close()
	return nil
}

func (p *Postgres) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return
	}
	p.started = true
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		p.link.listenLoop(ctx)
	}()
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
