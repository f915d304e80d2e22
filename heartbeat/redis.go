package heartbeat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the fleet of an app whose agents share a Redis: presences, peers,
// the queue of dynos waiting for a restart, and the restart lease live there,
// so at most Slots dynos of the app restart at once, in the order they asked.
//
// Keys, all under the hash tag {app} so a script touches one cluster slot:
//
//	dynocycle:{app}:dynos      ZSET  dyno -> presence expiry (unix ms); trimmed as it is read
//	dynocycle:{app}:presences  HASH  dyno -> Presence JSON
//	dynocycle:{app}:queue      ZSET  dyno -> when it first asked for a slot (unix ms)
//	dynocycle:{app}:lease:N    STRING lease JSON (see leaseRecord), PX lease TTL
//	dynocycle:{app}:token      STRING fencing token counter (INCR)
//	dynocycle:{app}:epoch      STRING unix ms when this Redis first saw the app (see Settle)
//	dynocycle:{app}:freed      pub/sub channel: a slot number, published on release
//
// The presence expiry is kept in the ZSET rather than with PX on one key per
// dyno so that the acquire script can count healthy peers and skip dead
// waiters atomically without SCAN or KEYS and without touching keys it was
// not given.
//
// # Holder, hand-over, successor
//
// A lease names its holder by dyno and boot id (one agent process). Before
// the holder asks the platform to replace its dyno it records the hand-over
// (HandOver: when, and its process type). The reborn dyno, the first agent of
// that process type started after that moment, claims the lease as its
// successor in Held (atomically: one successor per lease), renews it while
// its worker boots and releases it once healthy. On Cedar the reborn dyno
// has the holder's name and only that name may claim; on Fir (and for any
// name not of the form type.N) the replacement has a new name, so any new
// dyno of the type may. A handed-over lease whose holder and successor have
// both stopped renewing it for PresenceTTL is freed BootAllowance after the
// hand-over, not at the end of its TTL. Silence is only counted while Redis
// was up to hear a renewal: each lease write records the run id of the
// Redis process (INFO server), and a silence since a write by another
// process is believed only once the one now running has been up for
// PresenceTTL. Otherwise a holder still alive, whose renewals failed while
// Redis restarted, would lose its slot to the first dyno to ask after it.
//
// # Fair queue
//
// Acquire enters the caller into the queue, scored by when it first asked,
// and grants a free slot only to a dyno with fewer live waiters ahead of it
// than there are free slots. A waiter leaves the queue when it is granted,
// when it publishes a state other than wanting, or when its presence lapses
// (it died): dead waiters ahead are dropped as they are met.
//
// # When Redis loses its data
//
// A restart in flight must never lose its slot to a restart that starts
// after a FLUSHALL, a restart of Redis without persistence, or a failover to
// an empty replica. The design that keeps restarts flowing soon after a loss
// while never granting more than Slots:
//
//   - Every agent that holds a lease renews it every few seconds at every
//     step until it lets go: leased, quieting, draining, restarting, awaiting
//     the platform's SIGTERM, stopping; and the successor while its worker
//     boots. A renewal of a missing key restores it from the agent's own copy
//     (holder, successor, hand-over), raises the token counter past it, and
//     starts the epoch, so every lease still in use is back within one
//     renewal interval.
//   - The one lease nobody renews is a handed-over lease between its
//     holder's exit and its successor's claim: the new dyno is booting and
//     does not know the lease yet. Such a lease is in use for at most
//     BootAllowance. So an empty Redis (no epoch key) grants no new lease for
//     Settle, which defaults to BootAllowance: by then every lease still in
//     use has been restored and every unclaimed hand-over would have been
//     freed anyway. Restarts already under way go on meanwhile (they renew,
//     claim and release as usual); only new grants wait, for minutes rather
//     than the lease TTL.
//
// What cannot be guaranteed: if the epoch key alone is lost while lease
// keys survive (someone deletes it by hand), or dyno clocks disagree by more
// than the settle time, the settle gate can open early. A failover to a
// replica that has long been up, or an outage of the network alone, is not
// told from a holder's death: a silence over PresenceTTL that spans one frees
// a hand-over early (where INFO is not allowed in scripts, silence is never
// believed and such a lease runs out by its TTL). A successor whose
// restored lease is claimed by another new dyno first (two new dynos and a
// data loss within one renewal interval) loses it. While Redis is down
// nobody can acquire at all: the agent keeps its worker running.
type Redis struct {
	client        *redis.Client
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
	now           func() time.Time
	keys          redisKeys

	freed chan struct{}

	// waiting is true while this dyno is in the queue for a slot: only then
	// does Run hold a subscription (a second connection) to hear of
	// releases. waitChanged wakes Run when it flips.
	mu          sync.Mutex
	waiting     bool
	waitChanged chan struct{}
}

// RedisOptions configures a Redis fleet.
type RedisOptions struct {
	// App scopes every key: HEROKU_APP_NAME.
	App string
	// Dyno is this dyno's name: DYNO.
	Dyno string
	// Boot names this agent process; default a new NewBootID. Two fleets
	// with the same Dyno and Boot are the same holder.
	Boot string
	// StartedAt is when this agent process started; only a lease handed
	// over before it may be claimed. Default: now.
	StartedAt time.Time
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
	// check intervals. At least 15s. A lease holder or successor that has
	// not renewed its lease for this long is gone.
	PresenceTTL time.Duration
	// BootAllowance is how long after a hand-over a lease waits for its
	// successor once the holder is gone. Default DefaultBootAllowance.
	BootAllowance time.Duration
	// Settle is how long an empty Redis grants no lease (see Redis). Zero
	// means BootAllowance; negative turns the gate off (tests).
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
	dynos, presences, queue, token, epoch, freed string
	leases                                       []string
}

func newRedisKeys(app string, slots int) redisKeys {
	p := "dynocycle:{" + app + "}:"
	k := redisKeys{
		dynos:     p + "dynos",
		presences: p + "presences",
		queue:     p + "queue",
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
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.StartedAt.IsZero() {
		opts.StartedAt = opts.Now()
	}
	return &Redis{
		client:        client,
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
		log:           opts.Logger.With("dyno", opts.Dyno),
		now:           opts.Now,
		keys:          newRedisKeys(opts.App, opts.Slots),
		freed:         make(chan struct{}, 1),
		waitChanged:   make(chan struct{}, 1),
	}
}

// Boot is this agent's boot id.
func (r *Redis) Boot() string { return r.boot }

// publishScript stores a presence, moves its expiry in the ZSET, trims a
// bounded number of expired dynos (from the queue too), takes the dyno out
// of the queue unless it is wanting, and notes the epoch: one round trip.
//
// KEYS: dynos, presences, epoch, queue. ARGV: dyno, json, now ms, presence
// ttl ms, app keys ttl ms, trim limit, state.
var publishScript = redis.NewScript(`
local now = tonumber(ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[6]))
if #dead > 0 then
  redis.call('HDEL', KEYS[2], unpack(dead))
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[4], unpack(dead))
end
if ARGV[7] ~= '` + string(StateWanting) + `' then redis.call('ZREM', KEYS[4], ARGV[1]) end
redis.call('SET', KEYS[3], ARGV[3], 'NX')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return #dead
`)

// Publish records p as this dyno's presence until PresenceTTL passes.
func (r *Redis) Publish(ctx context.Context, p Presence) error {
	p.Dyno = r.dyno
	p.Boot = r.boot
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
		[]string{r.keys.dynos, r.keys.presences, r.keys.epoch, r.keys.queue},
		r.dyno, body, now.UnixMilli(), r.presenceTTL.Milliseconds(), appKeysTTL.Milliseconds(), maxPresenceTrimmed,
		string(p.State),
	).Err()
	if err != nil {
		return fmt.Errorf("publish presence: %w", err)
	}
	if p.State != StateWanting {
		r.setWaiting(false) // the script took it out of the queue
	}
	return nil
}

// leaseLua is shared by the lease scripts: reading a lease record, who may
// act on it, and keeping the token counter ahead of restored tokens.
const leaseLua = `
local function decode(v)
  if not v then return nil end
  local ok, l = pcall(cjson.decode, v)
  if ok and type(l) == 'table' and type(l.tok) == 'number' and type(l.dyno) == 'string' then
    if type(l.sdyno) ~= 'string' then l.sdyno = nil end
    if type(l.rat) ~= 'number' then l.rat = nil end
    return l
  end
  return false
end
local function holds(l, dyno, boot)
  return (l.dyno == dyno and l.boot == boot) or (l.sdyno ~= nil and l.sdyno == dyno and l.sboot == boot)
end
local function raise(key, tok)
  local cur = tonumber(redis.call('GET', key) or '0') or 0
  if cur < tok then redis.call('SET', key, tok) end
end
-- server: this Redis process's run id and uptime in ms, read once per
-- script; nil and 0 where INFO is not allowed.
local srvid, srvup
local function server()
  if srvup == nil then
    local info = redis.pcall('INFO', 'server')
    srvup = 0
    if type(info) == 'string' then
      srvid = string.match(info, 'run_id:(%x+)')
      srvup = (tonumber(string.match(info, 'uptime_in_seconds:(%d+)')) or 0) * 1000
    end
  end
  return srvid, srvup
end
-- stamp: a lease is written with the run id of the Redis process that saw
-- its holder or successor last.
local function stamp(l)
  l.srv = server()
  return l
end
-- silent: last seen at last, the holder or successor has not renewed l for
-- PresenceTTL while this Redis was up to hear it: l was last written by
-- this very process, or it has been up for PresenceTTL. A silence that
-- spans a restart of Redis is no sign of death: nobody could renew.
local function silent(l, last, now, seen)
  if now - (tonumber(last) or 0) <= seen then return false end
  local id, up = server()
  return (id ~= nil and l.srv == id) or up > seen
end
-- stale: handed over BootAllowance ago, and neither holder nor successor
-- has renewed it for PresenceTTL.
local function stale(l, now, allowance, seen)
  if not l.rat or now < l.rat + allowance then return false end
  if not silent(l, tonumber(l.hseen) or tonumber(l.at), now, seen) then return false end
  return not l.sdyno or silent(l, tonumber(l.sseen) or tonumber(l.sat), now, seen)
end
`

// acquireScript queues the caller and grants it a free slot if it is at
// the head of the queue, the app has settled, and enough healthy peers of
// its process type are up, in one atomic step so that two dynos can never
// both count the other as a healthy peer and both restart. A dyno that
// already holds a slot gets that one back, extended: a retried call must not
// take a second slot. Handed-over leases left by a holder and successor that
// are both gone are freed on the way (see Redis).
//
// KEYS: dynos, presences, token, epoch, queue, lease slots...
// ARGV: dyno, boot, process type, min peers, lease ttl ms, now ms, settle ms,
// app keys ttl ms, boot allowance ms, presence ttl ms, freed channel.
// Returns {"held", slot, value} | {"ok", slot, value, waived, freed} |
// {"noslot", waiters ahead, freed} | {"settling", ms left, freed} |
// {"peers", have, want, freed}; freed names the stale holders dropped.
var acquireScript = redis.NewScript(leaseLua + `
local healthy = ` + luaSet(HealthyStates) + `
local dyno, boot, ptype = ARGV[1], ARGV[2], ARGV[3]
local want, ttl, now, settle = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local allowance, seen = tonumber(ARGV[9]), tonumber(ARGV[10])
local first = 6
local free, holders, gone = {}, {}, {}
for i = first, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    free[#free + 1] = i
  else
    local l = decode(v)
    if l then
      if holds(l, dyno, boot) then
        redis.call('PEXPIRE', KEYS[i], ttl)
        redis.call('ZREM', KEYS[5], dyno)
        return {'held', i - first, v}
      end
      if stale(l, now, allowance, seen) then
        redis.call('DEL', KEYS[i])
        gone[#gone + 1] = l.dyno
        free[#free + 1] = i
      else
        holders[l.dyno] = l.type
        if l.sdyno then holders[l.sdyno] = l.type end
      end
    end
    -- An unreadable value is taken: it runs out by its own TTL.
  end
end
local freed = table.concat(gone, ',')
if #gone > 0 then redis.call('PUBLISH', ARGV[11], 'stale') end
redis.call('ZADD', KEYS[5], 'NX', now, dyno)
redis.call('PEXPIRE', KEYS[5], ARGV[8])
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[8])
  epoch = ARGV[6]
end
if settle > 0 then
  local left = tonumber(epoch) + settle - now
  if left > 0 then return {'settling', left, freed} end
end
if #free == 0 then return {'noslot', 0, freed} end
local rank = redis.call('ZRANK', KEYS[5], dyno)
local ahead = 0
if rank and rank > 0 then
  local before = redis.call('ZRANGE', KEYS[5], 0, rank - 1)
  for _, w in ipairs(before) do
    local exp = tonumber(redis.call('ZSCORE', KEYS[1], w) or '0') or 0
    if exp > now then
      ahead = ahead + 1
    else
      redis.call('ZREM', KEYS[5], w) -- died while waiting
    end
  end
end
if ahead >= #free then return {'noslot', ahead, freed} end
local waived = 0
if want > 0 then
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[6], '+inf')
  local seenpeers, have, counted = 0, 0, {}
  if #live > 0 then
    local vals = redis.call('HMGET', KEYS[2], unpack(live))
    for i, name in ipairs(live) do
      if name ~= dyno and vals[i] then
        local ok, p = pcall(cjson.decode, vals[i])
        if ok and type(p) == 'table' and p.process_type == ptype then
          seenpeers = seenpeers + 1
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
    if t == ptype and d ~= dyno and not counted[d] then seenpeers = seenpeers + 1 end
  end
  if seenpeers == 0 then
    waived = 1
  elseif have < want then
    return {'peers', have, want, freed}
  end
end
local tok = redis.call('INCR', KEYS[3])
local v = cjson.encode(stamp({tok = tok, at = now, type = ptype, dyno = dyno, boot = boot, hseen = now}))
redis.call('SET', KEYS[free[1]], v, 'PX', ttl)
redis.call('ZREM', KEYS[5], dyno)
return {'ok', free[1] - first, v, waived, freed}
`)

// luaSet renders states as a Lua table usable as a set: {["watching"]=true}.
func luaSet(states []State) string {
	parts := make([]string, len(states))
	for i, st := range states {
		parts[i] = fmt.Sprintf("[%q]=true", st)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// Acquire takes a restart slot. ErrNoSlot (possibly wrapped: waiting in the
// queue, or while an empty Redis settles) and *PeersError mean: keep
// working, try again later; the caller keeps its place in the queue.
func (r *Redis) Acquire(ctx context.Context) (Lease, error) {
	now := r.now()
	keys := append([]string{r.keys.dynos, r.keys.presences, r.keys.token, r.keys.epoch, r.keys.queue}, r.keys.leases...)
	res, err := acquireScript.Run(ctx, r.client, keys,
		r.dyno, r.boot, r.ptype, r.minPeers, r.leaseTTL.Milliseconds(), now.UnixMilli(),
		r.settle.Milliseconds(), appKeysTTL.Milliseconds(), r.bootAllowance.Milliseconds(),
		r.presenceTTL.Milliseconds(), r.keys.freed,
	).Slice()
	if err != nil {
		return Lease{}, fmt.Errorf("acquire lease: %w", err)
	}
	if len(res) == 0 {
		return Lease{}, errors.New("acquire lease: empty reply")
	}
	kind, _ := res[0].(string)
	// In the queue until granted: only a waiter listens for releases.
	r.setWaiting(kind != "held" && kind != "ok")
	freedAt := map[string]int{"noslot": 2, "settling": 2, "peers": 3, "ok": 4}
	if i, ok := freedAt[kind]; ok && i < len(res) {
		if gone, _ := res[i].(string); gone != "" {
			r.log.Warn("freed a handed-over lease whose holder and successor are gone", "event", "lease_stale_freed",
				"holders", gone, "boot_allowance", r.bootAllowance)
		}
	}
	switch kind {
	case "noslot":
		if ahead := toInt(res, 1); ahead > 0 {
			return Lease{}, fmt.Errorf("%w: %d dynos asked first", ErrNoSlot, ahead)
		}
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
		if kind == "held" {
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
// key is gone (expired unclaimed, or Redis lost its data): the caller is
// still restarting, or booting as the successor, and the slot is free, so
// holding it again keeps the count honest. The token counter is raised past
// the restored token so fencing tokens keep growing, and the epoch starts, so
// an empty Redis settles. A successor whose record was restored by the
// holder without it (the holder did not know it yet) is recorded again, as
// long as the lease is still handed over (not taken back).
//
// KEYS: lease slot, token, epoch. ARGV: token, dyno, boot, ttl ms, the
// caller's lease JSON, now ms, app keys ttl ms.
// Returns {1, value} extended, {2, value} restored, {0} held by another.
var renewScript = redis.NewScript(leaseLua + `
local tok, dyno, boot, now = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[6])
local mine = decode(ARGV[5])
if not mine then return redis.error_reply('renew: unreadable lease copy') end
local v = redis.call('GET', KEYS[1])
local l, res
if v then
  l = decode(v)
  if not l or l.tok ~= tok then return {0} end
  if l.dyno == dyno and l.boot == boot then
    l.hseen = now
  elseif l.sdyno == dyno and l.sboot == boot then
    l.sseen = now
  elseif not l.sdyno and l.rat and mine.sdyno == dyno and mine.sboot == boot and l.dyno == mine.dyno and l.boot == mine.boot then
    l.sdyno, l.sboot, l.sat, l.sseen = dyno, boot, mine.sat or now, now
  else
    return {0}
  end
  res = 1
else
  l = mine
  if l.dyno == dyno and l.boot == boot then l.hseen = now else l.sseen = now end
  raise(KEYS[2], l.tok)
  redis.call('SET', KEYS[3], ARGV[6], 'NX', 'PX', ARGV[7])
  res = 2
end
v = cjson.encode(stamp(l))
redis.call('SET', KEYS[1], v, 'PX', ARGV[4])
return {res, v}
`)

// Renew extends lease by LeaseTTL and restores it if Redis lost it.
// ErrNotHolder when another holder has the slot now.
func (r *Redis) Renew(ctx context.Context, lease Lease) error {
	_, err := r.renew(ctx, lease)
	return err
}

func (r *Redis) renew(ctx context.Context, lease Lease) (Lease, error) {
	key, err := r.leaseKey(lease)
	if err != nil {
		return Lease{}, err
	}
	now := r.now()
	res, err := renewScript.Run(ctx, r.client, []string{key, r.keys.token, r.keys.epoch},
		lease.Token, r.dyno, r.boot, r.leaseTTL.Milliseconds(), r.leaseRecord(lease, now), now.UnixMilli(),
		appKeysTTL.Milliseconds(),
	).Slice()
	if err != nil {
		return Lease{}, fmt.Errorf("renew lease: %w", err)
	}
	switch toInt(res, 0) {
	case 0:
		return Lease{}, ErrNotHolder
	case 2:
		r.log.Warn("lease key was gone, restored", "event", "lease_restored", "slot", lease.Slot, "token", lease.Token)
	}
	v, _ := res[1].(string)
	l, ok := parseLeaseValue(lease.Slot, v)
	if !ok {
		return Lease{}, fmt.Errorf("renew lease: bad lease value in slot %d", lease.Slot)
	}
	l.ExpiresAt = now.Add(r.leaseTTL)
	return l, nil
}

// holderScript is the holder's two marks on its lease, restoring the lease
// first if Redis lost it. "over" records that the holder is about to ask the
// platform for a restart (only the first hand-over time counts); "back"
// undoes that after the platform refused: no hand-over time, no successor
// (whose renewals then fail: see renewScript). Only the holder may do either.
//
// KEYS: lease slot, token, epoch. ARGV: token, dyno, boot, ttl ms, the
// holder's lease JSON, now ms, app keys ttl ms, "over" or "back".
// Returns {1, value} or {0} when the caller does not hold the lease.
var holderScript = redis.NewScript(leaseLua + `
local tok, dyno, boot, now = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[6])
local v = redis.call('GET', KEYS[1])
local l
if v then
  l = decode(v)
  if not l or l.tok ~= tok or l.dyno ~= dyno or l.boot ~= boot then return {0} end
else
  l = decode(ARGV[5])
  if not l or l.dyno ~= dyno or l.boot ~= boot then return {0} end
  raise(KEYS[2], l.tok)
  redis.call('SET', KEYS[3], ARGV[6], 'NX', 'PX', ARGV[7])
end
if ARGV[8] == 'over' then
  if not l.rat then l.rat = now end
else
  l.rat, l.sdyno, l.sboot, l.sat, l.sseen = nil, nil, nil, nil, nil
end
l.hseen = now
v = cjson.encode(stamp(l))
redis.call('SET', KEYS[1], v, 'PX', ARGV[4])
return {1, v}
`)

// HandOver records on lease that its holder is about to ask the platform
// to replace its dyno: of which process type and when. From then on the
// first new dyno of that type started afterwards claims it (see Held). It
// returns the lease as recorded; ErrNotHolder when the caller is not its
// holder.
func (r *Redis) HandOver(ctx context.Context, lease Lease) (Lease, error) {
	return r.markAsHolder(ctx, lease, "over") // the agent logs the hand-over
}

// TakeBack undoes this agent's hand-over of lease (see Fleet.TakeBack).
func (r *Redis) TakeBack(ctx context.Context, lease Lease) (Lease, error) {
	return r.markAsHolder(ctx, lease, "back")
}

// markAsHolder runs holderScript's mark ("over" or "back") on lease.
func (r *Redis) markAsHolder(ctx context.Context, lease Lease, mark string) (Lease, error) {
	what := map[string]string{"over": "hand over lease", "back": "take back lease"}[mark]
	key, err := r.leaseKey(lease)
	if err != nil {
		return Lease{}, err
	}
	now := r.now()
	rec := lease // the copy a restore writes back
	if mark == "over" && rec.RestartAt.IsZero() {
		rec.RestartAt = now
	}
	if mark == "back" {
		rec.RestartAt, rec.Successor, rec.SuccessorBoot, rec.ClaimedAt = time.Time{}, "", "", time.Time{}
	}
	res, err := holderScript.Run(ctx, r.client, []string{key, r.keys.token, r.keys.epoch},
		lease.Token, r.dyno, r.boot, r.leaseTTL.Milliseconds(), r.leaseRecord(rec, now), now.UnixMilli(),
		appKeysTTL.Milliseconds(), mark,
	).Slice()
	if err != nil {
		return Lease{}, fmt.Errorf("%s: %w", what, err)
	}
	if toInt(res, 0) == 0 {
		return Lease{}, ErrNotHolder
	}
	v, _ := res[1].(string)
	l, ok := parseLeaseValue(lease.Slot, v)
	if !ok {
		return Lease{}, fmt.Errorf("%s: bad lease value in slot %d", what, lease.Slot)
	}
	l.ExpiresAt = now.Add(r.leaseTTL)
	return l, nil
}

// releaseScript deletes the lease only if the caller holds it (as holder or
// successor) and tells waiting dynos at once.
//
// KEYS: lease slot. ARGV: token, dyno, boot, channel, slot.
var releaseScript = redis.NewScript(leaseLua + `
local l = decode(redis.call('GET', KEYS[1]))
if not l or l.tok ~= tonumber(ARGV[1]) or not holds(l, ARGV[2], ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
`)

// Release frees lease. ErrNotHolder when it expired or another holder has
// the slot now.
func (r *Redis) Release(ctx context.Context, lease Lease) error {
	key, err := r.leaseKey(lease)
	if err != nil {
		return err
	}
	n, err := releaseScript.Run(ctx, r.client, []string{key},
		lease.Token, r.dyno, r.boot, r.keys.freed, lease.Slot,
	).Int()
	if err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	if n == 0 {
		return ErrNotHolder
	}
	return nil
}

// heldScript finds the lease the caller holds (as holder or successor) or
// claims, as successor, a lease handed over before the caller started by a
// dyno of its process type: on Cedar names only the holder's own name, else
// any name, the caller's own name first, then the oldest hand-over. A lease
// is claimed once; a successor that stopped renewing it for PresenceTTL can
// be replaced by another.
//
// KEYS: lease slots. ARGV: dyno, boot, process type, started ms, now ms,
// lease ttl ms, presence ttl ms, may claim (1 or 0).
// Returns {"mine", slot, value, pttl} | {"claimed", slot, value, pttl} | {"none"}.
var heldScript = redis.NewScript(leaseLua + `
local dyno, boot, ptype = ARGV[1], ARGV[2], ARGV[3]
local started, now, seen = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local best, bestl, bestsame
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  local l = decode(v)
  if l then
    if holds(l, dyno, boot) then
      return {'mine', i - 1, v, redis.call('PTTL', KEYS[i])}
    end
    if ARGV[8] == '1' and l.rat and l.type == ptype and started >= l.rat and
       (not l.sdyno or silent(l, tonumber(l.sseen) or tonumber(l.sat), now, seen)) then
      local same = l.dyno == dyno
      if same or not string.match(l.dyno, '^[^.]+%.%d+$') then
        if not best or (same and not bestsame) or (same == bestsame and l.rat < bestl.rat) then
          best, bestl, bestsame = i, l, same
        end
      end
    end
  end
end
if not best then return {'none'} end
bestl.sdyno, bestl.sboot, bestl.sat, bestl.sseen = dyno, boot, now, now
local v = cjson.encode(stamp(bestl))
redis.call('SET', KEYS[best], v, 'PX', ARGV[6])
return {'claimed', best - 1, v, tonumber(ARGV[6])}
`)

// Held returns the lease this agent holds: one it took, or one handed over
// by the dyno this one replaces, which it claims here as successor (see
// Redis). One round trip.
func (r *Redis) Held(ctx context.Context) (Lease, bool, error) {
	now := r.now()
	mayClaim := "1"
	if OneOff(r.dyno) {
		mayClaim = "0" // a one-off dyno never replaces another
	}
	res, err := heldScript.Run(ctx, r.client, r.keys.leases,
		r.dyno, r.boot, r.ptype, r.started.UnixMilli(), now.UnixMilli(), r.leaseTTL.Milliseconds(),
		r.presenceTTL.Milliseconds(), mayClaim,
	).Slice()
	if err != nil {
		return Lease{}, false, fmt.Errorf("read leases: %w", err)
	}
	kind, _ := res[0].(string)
	if kind == "none" {
		return Lease{}, false, nil
	}
	slot := int(toInt(res, 1))
	v, _ := res[2].(string)
	l, ok := parseLeaseValue(slot, v)
	if !ok {
		return Lease{}, false, fmt.Errorf("read leases: bad lease value in slot %d", slot)
	}
	if ms := toInt(res, 3); ms > 0 {
		l.ExpiresAt = now.Add(time.Duration(ms) * time.Millisecond)
	}
	return l, true, nil // the agent logs the lease it holds, claimed or its own
}

// SlotFreed is signalled when a slot may have been freed while this dyno
// waits for one: another dyno released one, or the subscription was
// (re)established and a release may have been missed. Only while Run runs.
func (r *Redis) SlotFreed() <-chan struct{} { return r.freed }

// Run feeds SlotFreed until ctx ends; it returns nil then. It subscribes to
// the release channel only while this dyno waits in the queue (from an
// Acquire that was refused until one that is granted, or a presence that is
// no longer wanting), so a dyno that only watches holds one connection, the
// client's pool, and a waiting one two. Pub/sub is kept over a blocking pop
// or polling: a blocking pop would hold a pooled connection too, and
// polling adds commands to the Redis Sidekiq uses for every waiter.
// Without Run the fleet still works, and a waiting agent notices a freed
// slot at its next check instead of at once.
func (r *Redis) Run(ctx context.Context) error {
	for {
		if !r.isWaiting() {
			select {
			case <-ctx.Done():
				return nil
			case <-r.waitChanged:
				continue
			}
		}
		subCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.subscribe(subCtx)
		}()
		for r.isWaiting() && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-r.waitChanged:
			}
		}
		stop()
		<-done // the subscription's connection is closed
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (r *Redis) isWaiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waiting
}

func (r *Redis) setWaiting(w bool) {
	r.mu.Lock()
	changed := r.waiting != w
	r.waiting = w
	r.mu.Unlock()
	if changed {
		select {
		case r.waitChanged <- struct{}{}:
		default:
		}
	}
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
	if l.Slot < 0 || l.Slot >= len(r.keys.leases) || !l.HeldBy(r.dyno, r.boot) {
		return "", ErrNotHolder
	}
	return r.keys.leases[l.Slot], nil
}

// leaseRecord is the stored form of a lease: JSON with short names, numbers
// in unix ms (exact in Lua's doubles and in cjson's 14 digits). The hseen and
// sseen stamps are the last renewals by holder and successor.
type leaseRecord struct {
	Token         float64 `json:"tok"`
	At            float64 `json:"at"`
	Type          string  `json:"type"`
	Dyno          string  `json:"dyno"`
	Boot          string  `json:"boot"`
	HolderSeen    float64 `json:"hseen,omitempty"`
	RestartAt     float64 `json:"rat,omitempty"`
	Successor     string  `json:"sdyno,omitempty"`
	SuccessorBoot string  `json:"sboot,omitempty"`
	ClaimedAt     float64 `json:"sat,omitempty"`
	SuccessorSeen float64 `json:"sseen,omitempty"`
}

// leaseRecord encodes l as the caller's copy for a restore.
func (r *Redis) leaseRecord(l Lease, now time.Time) string {
	at := l.AcquiredAt
	if at.IsZero() {
		at = now
	}
	ptype := l.ProcessType
	if ptype == "" {
		ptype = r.ptype
	}
	rec := leaseRecord{
		Token: float64(l.Token), At: float64(at.UnixMilli()), Type: ptype, Dyno: l.Holder, Boot: l.HolderBoot,
		RestartAt: msOrZero(l.RestartAt),
		Successor: l.Successor, SuccessorBoot: l.SuccessorBoot, ClaimedAt: msOrZero(l.ClaimedAt),
	}
	// Only the caller is known to be alive.
	if l.Holder == r.dyno && l.HolderBoot == r.boot {
		rec.HolderSeen = float64(now.UnixMilli())
	} else if l.Successor != "" {
		rec.SuccessorSeen = float64(now.UnixMilli())
	}
	b, _ := json.Marshal(rec) // plain fields: cannot fail
	return string(b)
}

func msOrZero(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixMilli())
}

func msTime(ms float64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(ms))
}

// parseLeaseValue reads a stored lease record; false for anything else
// (a value of an older version, or garbage), which every script treats as
// a taken slot.
func parseLeaseValue(slot int, v string) (Lease, bool) {
	var rec leaseRecord
	if err := json.Unmarshal([]byte(v), &rec); err != nil || rec.Dyno == "" || rec.Token <= 0 {
		return Lease{}, false
	}
	return Lease{
		Slot: slot, Holder: rec.Dyno, HolderBoot: rec.Boot, ProcessType: rec.Type, Token: int64(rec.Token),
		AcquiredAt: msTime(rec.At), RestartAt: msTime(rec.RestartAt),
		Successor: rec.Successor, SuccessorBoot: rec.SuccessorBoot, ClaimedAt: msTime(rec.ClaimedAt),
	}, true
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
