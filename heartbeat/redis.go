package heartbeat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the fleet of an app whose agents share a Redis: presences, peers
// and the restart lease live there, so at most Slots dynos of the app restart
// at once.
//
// Keys, all under the hash tag {app} so a script touches one cluster slot:
//
//	dynocycle:{app}:dynos      ZSET  dyno -> presence expiry (unix ms); trimmed as it is read
//	dynocycle:{app}:presences  HASH  dyno -> Presence JSON
//	dynocycle:{app}:lease:N    STRING "token|acquired_ms|process_type|dyno", PX lease TTL
//	dynocycle:{app}:token      STRING fencing token counter (INCR)
//	dynocycle:{app}:epoch      STRING unix ms when this Redis first saw the app (see Settle)
//	dynocycle:{app}:freed      pub/sub channel: a slot number, published on release
//
// The presence expiry is kept in the ZSET rather than with PX on one key per
// dyno so that the acquire script can count healthy peers atomically without
// SCAN or KEYS and without touching keys it was not given.
//
// What holds when Redis loses its data (restart without persistence,
// failover to an empty replica, FLUSHALL): the lease keys are gone, so Redis
// alone no longer knows who is restarting. Two things cover the gap:
//
//   - Settle: on an empty Redis (no epoch key) nobody is granted a lease for
//     Settle, which defaults to the lease TTL. Any lease granted before the
//     loss would have run out by then anyway, so the "at most Slots" rule
//     holds across the loss even for a holder that is already being replaced
//     and cannot speak up.
//   - Renew restores a missing lease key with the holder's own token, so a
//     dyno still quieting or draining keeps its slot visibly and its reborn
//     self can find and release it.
//
// What cannot be guaranteed: if the epoch key alone is lost while lease
// keys survive (someone deletes it by hand), or dyno clocks disagree by more
// than the settle time, the settle gate can open early. And while Redis is
// down nobody can acquire at all: the agent keeps its worker running.
type Redis struct {
	client      *redis.Client
	app         string
	dyno        string
	ptype       string
	slots       int
	minPeers    int
	leaseTTL    time.Duration
	presenceTTL time.Duration
	settle      time.Duration
	log         *slog.Logger
	now         func() time.Time
	keys        redisKeys

	freed chan struct{}
}

// RedisOptions configures a Redis fleet.
type RedisOptions struct {
	// App scopes every key: HEROKU_APP_NAME.
	App string
	// Dyno is this dyno's name: DYNO.
	Dyno string
	// ProcessType defaults to ProcessType(Dyno).
	ProcessType string
	// Slots is MAX_CONCURRENT_RESTARTS (at least 1). Every agent of an app
	// should use the same value: Held and Acquire look at slots 0..Slots-1.
	Slots int
	// MinHealthyPeers is MIN_HEALTHY_PEERS.
	MinHealthyPeers int
	// LeaseTTL frees a slot whose holder never comes back: GRACE_TIME +
	// SHUTDOWN_WAIT + a restart budget. Default 10m.
	LeaseTTL time.Duration
	// PresenceTTL is how long a presence lasts unrefreshed: about three
	// check intervals. At least 15s.
	PresenceTTL time.Duration
	// Settle is how long an empty Redis grants no lease (see Redis). Zero
	// means LeaseTTL; negative turns the gate off (tests).
	Settle time.Duration
	Logger *slog.Logger
	// Now is the clock for presence expiry and lease timestamps; it
	// defaults to time.Now. Key expiry (PX) runs on the Redis clock.
	Now func() time.Time
}

var (
	_ Fleet = (*Redis)(nil)
	_ Fleet = (*Local)(nil)
)

const (
	defaultLeaseTTL    = 10 * time.Minute
	minPresenceTTL     = 15 * time.Second
	appKeysTTL         = 24 * time.Hour
	maxPresenceTrimmed = 100
)

type redisKeys struct {
	dynos, presences, token, epoch, freed string
	leases                                []string
}

func newRedisKeys(app string, slots int) redisKeys {
	p := "dynocycle:{" + app + "}:"
	k := redisKeys{
		dynos:     p + "dynos",
		presences: p + "presences",
		token:     p + "token",
		epoch:     p + "epoch",
		freed:     p + "freed",
	}
	for i := range slots {
		k.leases = append(k.leases, p+"lease:"+strconv.Itoa(i))
	}
	return k
}

// NewRedis returns the fleet of opts.App on client; the client is the
// caller's to close. Run the subscriber (Run) for SlotFreed to fire.
func NewRedis(client *redis.Client, opts RedisOptions) *Redis {
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
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Redis{
		client:      client,
		app:         opts.App,
		dyno:        opts.Dyno,
		ptype:       opts.ProcessType,
		slots:       opts.Slots,
		minPeers:    opts.MinHealthyPeers,
		leaseTTL:    opts.LeaseTTL,
		presenceTTL: opts.PresenceTTL,
		settle:      opts.Settle,
		log:         opts.Logger.With("dyno", opts.Dyno),
		now:         opts.Now,
		keys:        newRedisKeys(opts.App, opts.Slots),
		freed:       make(chan struct{}, 1),
	}
}

// publishScript stores a presence, moves its expiry in the ZSET, trims a
// bounded number of expired dynos, and notes the epoch: one round trip.
//
// KEYS: dynos, presences, epoch. ARGV: dyno, json, now ms, presence ttl ms,
// app keys ttl ms, trim limit.
var publishScript = redis.NewScript(`
local now = tonumber(ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[6]))
if #dead > 0 then
  redis.call('HDEL', KEYS[2], unpack(dead))
  redis.call('ZREM', KEYS[1], unpack(dead))
end
redis.call('SET', KEYS[3], ARGV[3], 'NX')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return #dead
`)

// Publish records p as this dyno's presence until PresenceTTL passes.
func (r *Redis) Publish(ctx context.Context, p Presence) error {
	p.Dyno = r.dyno
	if p.ProcessType == "" {
		p.ProcessType = r.ptype
	}
	now := r.now()
	if p.UpdatedAt.IsZero() {
		p.UpdatedAt = now
	}
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode presence: %w", err)
	}
	err = publishScript.Run(ctx, r.client,
		[]string{r.keys.dynos, r.keys.presences, r.keys.epoch},
		r.dyno, body, now.UnixMilli(), r.presenceTTL.Milliseconds(), appKeysTTL.Milliseconds(), maxPresenceTrimmed,
	).Err()
	if err != nil {
		return fmt.Errorf("publish presence: %w", err)
	}
	return nil
}

// acquireScript grants a free slot if the app has settled and enough
// healthy peers of the caller's process type are up, in one atomic step so
// that two dynos can never both count the other as a healthy peer and both
// restart. A dyno that already holds a slot gets that one back, extended:
// a retried call must not take a second slot.
//
// KEYS: dynos, presences, token, epoch, lease slots...
// ARGV: dyno, process type, min peers, lease ttl ms, now ms, settle ms, app keys ttl ms.
// Returns {"held", slot, value} | {"ok", slot, value, waived} |
// {"noslot"} | {"settling", ms left} | {"peers", have, want}.
var acquireScript = redis.NewScript(`
local healthy = ` + luaSet(HealthyStates) + `
local dyno, ptype = ARGV[1], ARGV[2]
local want, now, settle = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
local free = nil
local holders = {}
for i = 5, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    local tok, at, t, d = string.match(v, '^(%d+)|(%d+)|([^|]*)|(.*)$')
    if d == dyno then
      redis.call('PEXPIRE', KEYS[i], ARGV[4])
      return {'held', i - 5, v}
    end
    if d then holders[d] = t end
  elseif not free then
    free = i
  end
end
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[7])
  epoch = ARGV[5]
end
if settle > 0 then
  local left = tonumber(epoch) + settle - now
  if left > 0 then return {'settling', left} end
end
if not free then return {'noslot'} end
local waived = 0
if want > 0 then
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[5], '+inf')
  local seen, have, counted = 0, 0, {}
  if #live > 0 then
    local vals = redis.call('HMGET', KEYS[2], unpack(live))
    for i, name in ipairs(live) do
      if name ~= dyno and vals[i] then
        local ok, p = pcall(cjson.decode, vals[i])
        if ok and type(p) == 'table' and p.process_type == ptype then
          seen = seen + 1
          counted[name] = true
          -- Presence.Healthy, and not holding a lease.
          if healthy[p.state] and not holders[name] then
            have = have + 1
          end
        end
      end
    end
  end
  -- A holder whose presence lapsed is being replaced: it is still part of
  -- the formation, so it keeps a two-dyno app from looking like a single one.
  for d, t in pairs(holders) do
    if t == ptype and d ~= dyno and not counted[d] then seen = seen + 1 end
  end
  if seen == 0 then
    waived = 1
  elseif have < want then
    return {'peers', have, want}
  end
end
local tok = redis.call('INCR', KEYS[3])
local v = tok .. '|' .. ARGV[5] .. '|' .. ptype .. '|' .. dyno
redis.call('SET', KEYS[free], v, 'PX', ARGV[4])
return {'ok', free - 5, v, waived}
`)

// luaSet renders states as a Lua table usable as a set: {["watching"]=true}.
func luaSet(states []State) string {
	parts := make([]string, len(states))
	for i, st := range states {
		parts[i] = fmt.Sprintf("[%q]=true", st)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// Acquire takes a restart slot. ErrNoSlot (possibly wrapped, while an empty
// Redis settles) and *PeersError mean: keep working, try again later.
func (r *Redis) Acquire(ctx context.Context) (Lease, error) {
	now := r.now()
	keys := append([]string{r.keys.dynos, r.keys.presences, r.keys.token, r.keys.epoch}, r.keys.leases...)
	res, err := acquireScript.Run(ctx, r.client, keys,
		r.dyno, r.ptype, r.minPeers, r.leaseTTL.Milliseconds(), now.UnixMilli(),
		r.settle.Milliseconds(), appKeysTTL.Milliseconds(),
	).Slice()
	if err != nil {
		return Lease{}, fmt.Errorf("acquire lease: %w", err)
	}
	if len(res) == 0 {
		return Lease{}, errors.New("acquire lease: empty reply")
	}
	switch res[0] {
	case "noslot":
		return Lease{}, ErrNoSlot
	case "settling":
		left := time.Duration(toInt(res, 1)) * time.Millisecond
		return Lease{}, fmt.Errorf("%w: redis holds no fleet history yet (restarted or new), no lease for %s",
			ErrNoSlot, left.Round(time.Second))
	case "peers":
		return Lease{}, &PeersError{ProcessType: r.ptype, Have: int(toInt(res, 1)), Want: int(toInt(res, 2))}
	case "held", "ok":
		slot := int(toInt(res, 1))
		v, _ := res[2].(string)
		l, ok := parseLeaseValue(slot, v)
		if !ok {
			return Lease{}, fmt.Errorf("acquire lease: bad lease value in slot %d", slot)
		}
		l.ExpiresAt = now.Add(r.leaseTTL)
		if res[0] == "held" {
			r.log.Info("lease already held, extended", "event", "lease_held", "slot", l.Slot, "token", l.Token)
			return l, nil
		}
		if toInt(res, 3) == 1 {
			r.log.Warn("min healthy peers waived: no other dyno of this type is up",
				"event", "peers_waived", "process_type", r.ptype, "want", r.minPeers)
		}
		return l, nil // the agent logs the lease it took, with why it wanted it
	}
	return Lease{}, fmt.Errorf("acquire lease: unexpected reply %v", res[0])
}

// renewScript extends the caller's lease, or takes the slot back when its
// key is gone (expired unclaimed, or Redis lost its data): the holder is
// still restarting and the slot is free, so holding it again keeps the count
// honest and lets the reborn dyno find it. The token counter is raised past
// the restored token so fencing tokens keep growing.
//
// KEYS: lease slot, token. ARGV: token, dyno, ttl ms, value to restore.
// Returns 1 extended, 2 restored, 0 held by another.
var renewScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  local tok, at, t, d = string.match(v, '^(%d+)|(%d+)|([^|]*)|(.*)$')
  if tok == ARGV[1] and d == ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 1
  end
  return 0
end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[2], ARGV[1]) end
return 2
`)

// Renew extends lease by LeaseTTL. ErrNotHolder when another dyno holds
// the slot now.
func (r *Redis) Renew(ctx context.Context, lease Lease) error {
	key, err := r.leaseKey(lease)
	if err != nil {
		return err
	}
	n, err := renewScript.Run(ctx, r.client, []string{key, r.keys.token},
		lease.Token, lease.Holder, r.leaseTTL.Milliseconds(), r.leaseValue(lease),
	).Int()
	if err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	switch n {
	case 0:
		return ErrNotHolder
	case 2:
		r.log.Warn("lease key was gone, restored", "event", "lease_restored", "slot", lease.Slot, "token", lease.Token)
	}
	return nil
}

// releaseScript deletes the lease only if the caller still holds it and
// tells waiting dynos at once.
//
// KEYS: lease slot. ARGV: token, dyno, channel, slot.
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local tok, at, t, d = string.match(v, '^(%d+)|(%d+)|([^|]*)|(.*)$')
if tok ~= ARGV[1] or d ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`)

// Release frees lease. ErrNotHolder when it expired or another dyno holds
// the slot now.
func (r *Redis) Release(ctx context.Context, lease Lease) error {
	key, err := r.leaseKey(lease)
	if err != nil {
		return err
	}
	n, err := releaseScript.Run(ctx, r.client, []string{key},
		lease.Token, lease.Holder, r.keys.freed, lease.Slot,
	).Int()
	if err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	if n == 0 {
		return ErrNotHolder
	}
	return nil
}

// Held returns the lease this dyno holds, typically from before its
// restart. It reads the slot keys in one round trip (MGET + PTTL).
func (r *Redis) Held(ctx context.Context) (Lease, bool, error) {
	leases, err := r.readLeases(ctx)
	if err != nil {
		return Lease{}, false, fmt.Errorf("read leases: %w", err)
	}
	for _, l := range leases {
		if l.Holder == r.dyno {
			return l, true, nil
		}
	}
	return Lease{}, false, nil
}

// readLeases returns the held slots, lowest first.
func (r *Redis) readLeases(ctx context.Context) ([]Lease, error) {
	now := r.now()
	pipe := r.client.Pipeline()
	mget := pipe.MGet(ctx, r.keys.leases...)
	pttls := make([]*redis.DurationCmd, len(r.keys.leases))
	for i, k := range r.keys.leases {
		pttls[i] = pipe.PTTL(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	var out []Lease
	for i, v := range mget.Val() {
		s, ok := v.(string)
		if !ok {
			continue
		}
		l, ok := parseLeaseValue(i, s)
		if !ok {
			continue
		}
		if d := pttls[i].Val(); d > 0 {
			l.ExpiresAt = now.Add(d)
		}
		out = append(out, l)
	}
	return out, nil
}

// SlotFreed is signalled when a slot may have been freed: another dyno
// released one, or the subscription was (re)established and a release may
// have been missed. Only while Run runs.
func (r *Redis) SlotFreed() <-chan struct{} { return r.freed }

// Run subscribes to the release channel and feeds SlotFreed until ctx ends;
// it returns nil then. Without it the fleet still works, and a waiting agent
// notices a freed slot at its next check instead of at once.
func (r *Redis) Run(ctx context.Context) error {
	r.subscribe(ctx)
	return nil
}

// subscribe feeds freed from the release channel until ctx ends. go-redis
// re-dials and re-subscribes after an error on the next receive; this loop
// only paces the attempts while Redis is away.
func (r *Redis) subscribe(ctx context.Context) {
	ps := r.client.Subscribe(ctx, r.keys.freed)
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() }) // unblocks Receive
	defer func() {
		stop()
		_ = ps.Close()
	}()
	const minWait, maxWait = 50 * time.Millisecond, 2 * time.Second
	wait := minWait
	down := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, time.Minute)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet channel: a ping finds a half-open connection.
				_ = ps.Ping(ctx)
				continue
			}
			if !down {
				r.log.Warn("freed-slot subscription lost, retrying", "event", "subscribe_error", "err", err.Error())
				down = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(wait*2, maxWait)
			continue
		}
		wait = minWait
		switch m := msg.(type) {
		case *redis.Subscription:
			if down {
				r.log.Info("freed-slot subscription back", "event", "subscribe_ok")
				down = false
			}
			r.notify()
		case *redis.Message:
			r.log.Debug("slot freed", "event", "slot_freed", "slot", m.Payload)
			r.notify()
		}
	}
}

func (r *Redis) notify() {
	select {
	case r.freed <- struct{}{}:
	default:
	}
}

func (r *Redis) leaseKey(l Lease) (string, error) {
	if l.Slot < 0 || l.Slot >= len(r.keys.leases) || l.Holder != r.dyno {
		return "", ErrNotHolder
	}
	return r.keys.leases[l.Slot], nil
}

func (r *Redis) leaseValue(l Lease) string {
	at := l.AcquiredAt
	if at.IsZero() {
		at = r.now()
	}
	return fmt.Sprintf("%d|%d|%s|%s", l.Token, at.UnixMilli(), r.ptype, l.Holder)
}

// parseLeaseValue reads "token|acquired_ms|process_type|dyno".
func parseLeaseValue(slot int, v string) (Lease, bool) {
	parts := strings.SplitN(v, "|", 4)
	if len(parts) != 4 {
		return Lease{}, false
	}
	tok, err1 := strconv.ParseInt(parts[0], 10, 64)
	at, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return Lease{}, false
	}
	return Lease{Slot: slot, Holder: parts[3], Token: tok, AcquiredAt: time.UnixMilli(at)}, true
}

func toInt(res []any, i int) int64 {
	if i >= len(res) {
		return 0
	}
	switch v := res[i].(type) {
	case int64:
		return v
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}
