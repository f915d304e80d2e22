package heartbeat

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/internal/bytesize"
	"github.com/dynocycle/dynocycle/internal/termtext"
)

// FleetStatus is the fleet as `dynocycle status` shows it. It is plain data
// so the status command can add its own sections (Sidekiq, Redis) beside it.
type FleetStatus struct {
	App     string    `json:"app"`
	TakenAt time.Time `json:"taken_at"`
	// Dynos holds every live presence, in natural dyno order.
	Dynos []Presence `json:"dynos"`
	// Slots holds every lease slot, held or free, by slot number.
	Slots []SlotStatus `json:"slots"`
	// SettlesAt is set while Redis is too new to grant leases (see Redis).
	SettlesAt time.Time `json:"settles_at,omitzero"`
	// Store is where the fleet lives when it is not Redis: "postgres".
	Store string `json:"store,omitempty"`
}

// SlotStatus is one lease slot; Holder is empty when it is free. A slot
// whose value cannot be read is taken all the same (the lease script treats
// any value as held): Malformed then holds the start of that value.
type SlotStatus struct {
	Slot      int       `json:"slot"`
	Holder    string    `json:"holder,omitempty"`
	Malformed string    `json:"malformed,omitempty"`
	Token     int64     `json:"token,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// HolderBoot names the holder's agent process (see Lease).
	HolderBoot string `json:"holder_boot,omitempty"`
	// RestartAt, Successor and SuccessorBoot tell a hand-over (see Lease).
	RestartAt     time.Time `json:"restart_at,omitzero"`
	Successor     string    `json:"successor,omitempty"`
	SuccessorBoot string    `json:"successor_boot,omitempty"`
}

// snapshotScript reads live presences, the lease slots and the epoch in one
// atomic round trip; the ZSET bounds the read to live dynos, no SCAN.
//
// KEYS: dynos, presences, epoch, lease slots... ARGV: now ms.
var snapshotScript = redis.NewScript(`
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local pres = {}
if #live > 0 then
  local vals = redis.call('HMGET', KEYS[2], unpack(live))
  for i, name in ipairs(live) do
    if vals[i] then pres[#pres + 1] = vals[i] end
  end
end
local leases = {}
for i = 4, #KEYS do
  leases[#leases + 1] = redis.call('GET', KEYS[i]) or ''
  leases[#leases + 1] = redis.call('PTTL', KEYS[i])
end
return {pres, leases, redis.call('GET', KEYS[3]) or ''}
`)

// Snapshot reads the whole fleet of the app.
func (r *Redis) Snapshot(ctx context.Context) (FleetStatus, error) {
	now := r.now()
	keys := append([]string{r.keys.dynos, r.keys.presences, r.keys.epoch}, r.keys.leases...)
	res, err := snapshotScript.Run(ctx, r.client, keys, now.UnixMilli()).Slice()
	if err != nil {
		return FleetStatus{}, fmt.Errorf("read fleet: %w", err)
	}
	if len(res) != 3 {
		return FleetStatus{}, fmt.Errorf("read fleet: unexpected reply of %d parts", len(res))
	}
	s := FleetStatus{App: r.app, TakenAt: now, Dynos: []Presence{}}
	pres, _ := res[0].([]any)
	for _, v := range pres {
		raw, _ := v.(string)
		var p Presence
		if err := json.Unmarshal([]byte(raw), &p); err != nil {
			continue // one bad entry must not hide the fleet
		}
		s.Dynos = append(s.Dynos, p)
	}
	slices.SortFunc(s.Dynos, func(a, b Presence) int { return naturalCompare(a.Dyno, b.Dyno) })
	leases, _ := res[1].([]any)
	for i := 0; i+1 < len(leases); i += 2 {
		slot := SlotStatus{Slot: i / 2}
		if v, _ := leases[i].(string); v != "" {
			if l, ok := parseLeaseValue(slot.Slot, v); ok {
				slot.Holder, slot.Token, slot.Since = l.Holder, l.Token, l.AcquiredAt
				slot.HolderBoot = l.HolderBoot
				slot.RestartAt, slot.Successor, slot.SuccessorBoot = l.RestartAt, l.Successor, l.SuccessorBoot
			} else {
				slot.Malformed = termtext.Cell(v, termtext.MaxCell)
			}
			if ms := toInt(leases, i+1); ms > 0 {
				slot.ExpiresAt = now.Add(time.Duration(ms) * time.Millisecond)
			}
		}
		s.Slots = append(s.Slots, slot)
	}
	if e, _ := res[2].(string); e != "" && r.settle > 0 {
		if ms, err := strconv.ParseInt(e, 10, 64); err == nil {
			if at := time.UnixMilli(ms).Add(r.settle); at.After(now) {
				s.SettlesAt = at
			}
		}
	}
	return s, nil
}

// WriteTable writes the fleet the way `heroku ps` writes dynos: a header
// naming the app, then one line per dyno grouped by process type, then the
// restart slots. Times are relative to now; every value read from Redis is
// cut and escaped (termtext.Cell), so no record can flood the terminal.
func WriteTable(w io.Writer, s FleetStatus, now time.Time) error {
	var b strings.Builder
	taken := 0
	for _, sl := range s.Slots {
		if sl.Holder != "" || sl.Malformed != "" {
			taken++
		}
	}
	app := cell(s.App)
	if len(s.Dynos) == 0 {
		fmt.Fprintf(&b, "=== %s: no dyno has reported (agents report under FLEET_SCOPE, else HEROKU_APP_NAME, else HEROKU_APP_ID)\n", app)
	} else {
		fmt.Fprintf(&b, "=== %s: %s reporting\n", app, plural(len(s.Dynos), "dyno"))
	}
	dynos := slices.Clone(s.Dynos)
	ptype := func(p Presence) string {
		if p.ProcessType != "" {
			return p.ProcessType
		}
		return ProcessType(p.Dyno)
	}
	slices.SortStableFunc(dynos, func(a, b Presence) int { return strings.Compare(ptype(a), ptype(b)) })
	for i, p := range dynos {
		if i == 0 || ptype(p) != ptype(dynos[i-1]) {
			n := 0
			for _, q := range dynos {
				if ptype(q) == ptype(p) {
					n++
				}
			}
			fmt.Fprintf(&b, "\n=== %s (%d)\n", cell(ptype(p)), n)
		}
		fmt.Fprintf(&b, "%s: %s %s", cell(p.Dyno), cell(string(p.State)), memoryColumn(p.RSS, p.Limit))
		if !p.StartedAt.IsZero() {
			fmt.Fprintf(&b, ", up %s", uptime(p.StartedAt, now))
		}
		switch {
		case p.Restarts == 0:
			b.WriteString(", no restarts")
		case p.LastReason != "":
			fmt.Fprintf(&b, ", %s (last: %s)", plural(p.Restarts, "restart"), cell(p.LastReason))
		default:
			fmt.Fprintf(&b, ", %s", plural(p.Restarts, "restart"))
		}
		b.WriteString("\n")
	}
	// Which jobs grew memory: the point is to learn which job to fix.
	grew := false
	for _, p := range s.Dynos {
		if len(p.TopJobs) == 0 {
			continue
		}
		if !grew {
			b.WriteString("\n")
			grew = true
		}
		parts := make([]string, 0, min(len(p.TopJobs), maxTopJobs))
		for _, j := range p.TopJobs[:min(len(p.TopJobs), maxTopJobs)] {
			parts = append(parts, fmt.Sprintf("%s +%.1fMB over %d runs", cell(j.Class), float64(max(j.Bytes, 0))/(1<<20), j.Runs))
		}
		fmt.Fprintf(&b, "%s grew most in: %s\n", cell(p.Dyno), strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, "\n=== restart slots: %d of %d taken\n", taken, len(s.Slots))
	for _, sl := range s.Slots {
		expires := ""
		if !sl.ExpiresAt.IsZero() {
			expires = ", expires in " + shortDuration(sl.ExpiresAt.Sub(now))
		}
		switch {
		case sl.Malformed != "":
			fmt.Fprintf(&b, "slot %d: taken, by a malformed value \"%s\" (agents treat it as held)%s\n", sl.Slot, sl.Malformed, expires)
		case sl.Holder == "":
			fmt.Fprintf(&b, "slot %d: free\n", sl.Slot)
		default:
			fmt.Fprintf(&b, "slot %d: %s since %s (~ %s ago), token %d%s%s\n",
				sl.Slot, agentName(sl.Holder, sl.HolderBoot), sl.Since.UTC().Format(time.RFC3339), shortDuration(now.Sub(sl.Since)),
				sl.Token, expires, handOverColumn(sl, now))
		}
	}
	if !s.SettlesAt.IsZero() && s.SettlesAt.After(now) {
		store := "redis"
		if s.Store != "" {
			store = s.Store
		}
		fmt.Fprintf(&b, "leases paused for %s: %s holds no fleet history yet (restarted or new)\n",
			shortDuration(s.SettlesAt.Sub(now)), store)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// maxTopJobs bounds the job classes shown per dyno.
const maxTopJobs = 5

func cell(s string) string { return termtext.Cell(s, termtext.MaxCell) }

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func memoryColumn(rss, limit uint64) string {
	if limit == 0 {
		return bytesize.Human(rss) + " (no limit)"
	}
	return fmt.Sprintf("%s / %s (%d%%)", bytesize.Human(rss), bytesize.Human(limit), rss*100/limit)
}

func uptime(started, now time.Time) string {
	if started.IsZero() {
		return "-"
	}
	return shortDuration(now.Sub(started))
}

// shortDuration prints the two largest units: 45s, 12m05s, 3h04m, 2d03h.
func shortDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
	}
}

// naturalCompare orders worker.2 before worker.10.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := leadingDigits(a), leadingDigits(b)
		if da > 0 && db > 0 {
			na, _ := strconv.ParseUint(a[:da], 10, 64)
			nb, _ := strconv.ParseUint(b[:db], 10, 64)
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			if a[0] < b[0] {
				return -1
			}
			return 1
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func leadingDigits(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// agentName names one agent process: its dyno and, when known, its boot id.
func agentName(dyno, boot string) string {
	if boot == "" {
		return cell(dyno)
	}
	return cell(dyno) + " (boot " + cell(boot) + ")"
}

// handOverColumn tells where a handed-over lease is: waiting for the dyno
// that replaces its holder, or claimed by it.
func handOverColumn(sl SlotStatus, now time.Time) string {
	if sl.RestartAt.IsZero() {
		return ""
	}
	s := fmt.Sprintf(", handed over %s ago", shortDuration(now.Sub(sl.RestartAt)))
	if sl.Successor == "" {
		return s + ", waiting for the new dyno"
	}
	return s + " to " + agentName(sl.Successor, sl.SuccessorBoot)
}
