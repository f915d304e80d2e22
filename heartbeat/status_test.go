package heartbeat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

var statusNow = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

func sampleStatus() FleetStatus {
	const mb = 1 << 20
	return FleetStatus{
		App:     "shop",
		TakenAt: statusNow,
		Dynos: []Presence{
			{Dyno: "worker.1", ProcessType: "worker", State: StateWatching, RSS: 300 * mb, Limit: 512 * mb,
				StartedAt: statusNow.Add(-3*time.Hour - 4*time.Minute), Restarts: 2, LastReason: "max_rss", Version: "1.0.0",
				TopJobs: []JobGrowth{{Class: "ExportCsvJob", Bytes: 410 * mb, Runs: 37}, {Class: "MailerJob", Bytes: 3 * mb, Runs: 900}}},
			{Dyno: "worker.2", ProcessType: "worker", State: StateDraining, RSS: 530 * mb, Limit: 512 * mb,
				StartedAt: statusNow.Add(-26 * time.Hour), Restarts: 0, Version: "1.0.0"},
			{Dyno: "worker.10", ProcessType: "worker", State: StateWanting, RSS: 1536 * mb, Limit: 2048 * mb,
				StartedAt: statusNow.Add(-12*time.Minute - 5*time.Second), Restarts: 1, LastReason: "schedule", Version: "1.0.0"},
			{Dyno: "web.1", ProcessType: "web", State: StateWatching, RSS: 900 << 10, Version: "1.0.0"},
		},
		Slots: []SlotStatus{
			{Slot: 0, Holder: "worker.2", Token: 42, Since: statusNow.Add(-90 * time.Second),
				ExpiresAt: statusNow.Add(3*time.Minute + 20*time.Second)},
			{Slot: 1},
		},
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, sampleStatus(), statusNow); err != nil {
		t.Fatal(err)
	}
	want := `=== shop: 4 dynos reporting

=== web (1)
web.1: watching 900KB (no limit), no restarts

=== worker (3)
worker.1: watching 300MB / 512MB (58%), up 3h04m, 2 restarts (last: max_rss)
worker.2: draining 530MB / 512MB (103%), up 1d02h, no restarts
worker.10: wanting 1.5GB / 2.0GB (75%), up 12m05s, 1 restart (last: schedule)

worker.1 grew most in: ExportCsvJob +410.0MB over 37 runs, MailerJob +3.0MB over 900 runs

=== restart slots: 1 of 2 taken
slot 0: worker.2 since 2026-03-14T11:58:30Z (~ 1m30s ago), token 42, expires in 3m20s
slot 1: free
`
	if got := b.String(); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteTableEmptyAndSettling(t *testing.T) {
	var b bytes.Buffer
	s := FleetStatus{App: "shop", Slots: []SlotStatus{{Slot: 0}}, SettlesAt: statusNow.Add(4 * time.Minute)}
	if err := WriteTable(&b, s, statusNow); err != nil {
		t.Fatal(err)
	}
	want := `=== shop: no dyno has reported (agents report under FLEET_SCOPE, else HEROKU_APP_NAME, else HEROKU_APP_ID)

=== restart slots: 0 of 1 taken
slot 0: free
leases paused for 4m00s: redis holds no fleet history yet (restarted or new)
`
	if got := b.String(); got != want {
		t.Fatalf("table:\n%q\nwant:\n%q", got, want)
	}
}

// One record with a huge or hostile value must not flood the terminal: no
// line grows with the widest cell, and control characters are escaped.
func TestWriteTableIsBoundedAndEscaped(t *testing.T) {
	huge := strings.Repeat("q", 20000)
	s := FleetStatus{App: "shop", Slots: []SlotStatus{{Slot: 0, Holder: huge, Token: 1, Since: statusNow}}}
	for i := range 50 {
		s.Dynos = append(s.Dynos, Presence{Dyno: fmt.Sprintf("worker.%d", i+1), State: StateWatching, RSS: 1 << 20})
	}
	s.Dynos[0].Dyno = "worker.\x1b[2J\x1b]0;pwned\x07"
	s.Dynos[1].LastReason, s.Dynos[1].Restarts = huge, 1
	s.Dynos[2].TopJobs = []JobGrowth{{Class: huge, Bytes: 1 << 20, Runs: 1}}
	var b bytes.Buffer
	if err := WriteTable(&b, s, statusNow); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if b.Len() > 20000 {
		t.Errorf("%d bytes for 50 dynos", b.Len())
	}
	for _, line := range strings.Split(out, "\n") {
		if len(line) > 300 {
			t.Errorf("line of %d bytes: %.80q...", len(line), line)
		}
	}
	if strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `worker.\x1b[2J\x1b]0;pwned\a`) {
		t.Errorf("control characters reach the terminal:\n%q", out[:min(len(out), 400)])
	}
}

// TestFleetStatusJSON pins the field names `dynocycle status --json` shows.
func TestFleetStatusJSON(t *testing.T) {
	s := sampleStatus()
	s.Dynos = s.Dynos[1:2]
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	want := `{
  "app": "shop",
  "taken_at": "2026-03-14T12:00:00Z",
  "dynos": [
    {
      "dyno": "worker.2",
      "process_type": "worker",
      "state": "draining",
      "rss_bytes": 555745280,
      "limit_bytes": 536870912,
      "started_at": "2026-03-13T10:00:00Z",
      "restarts": 0,
      "version": "1.0.0",
      "updated_at": "0001-01-01T00:00:00Z"
    }
  ],
  "slots": [
    {
      "slot": 0,
      "holder": "worker.2",
      "token": 42,
      "since": "2026-03-14T11:58:30Z",
      "expires_at": "2026-03-14T12:03:20Z"
    },
    {
      "slot": 1
    }
  ]
}
`
	if got := b.String(); got != want {
		t.Fatalf("json:\n%s\nwant:\n%s", got, want)
	}
	var back FleetStatus
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Slots[0].Holder != "worker.2" || back.Dynos[0].RSS != s.Dynos[0].RSS {
		t.Fatalf("round trip lost data: %+v", back)
	}
}

func TestSnapshot(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	clock := testutil.NewClock()
	mk := func(dyno string) *Redis {
		return newFleet(t, srv, RedisOptions{App: "shop", Dyno: dyno, Slots: 2, Settle: -1,
			LeaseTTL: 5 * time.Minute, Now: clock.Now})
	}
	w10, w2, web, gone := mk("worker.10"), mk("worker.2"), mk("web.1"), mk("worker.3")
	started := clock.Now().Add(-time.Hour)
	if err := gone.Publish(ctx, Presence{State: StateWatching}); err != nil {
		t.Fatal(err)
	}
	clock.Add(10 * time.Second)
	for _, p := range []struct {
		f     *Redis
		state State
	}{{w10, StateWanting}, {w2, StateDraining}, {web, StateWatching}} {
		if err := p.f.Publish(ctx, Presence{State: p.state, RSS: 400 << 20, Limit: 512 << 20, StartedAt: started}); err != nil {
			t.Fatal(err)
		}
	}
	lease, err := w2.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(10 * time.Second) // worker.3's presence (15s) has run out

	s, err := web.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range s.Dynos {
		names = append(names, p.Dyno+"/"+string(p.State))
	}
	if got, want := names, []string{"web.1/watching", "worker.2/draining", "worker.10/wanting"}; !slices.Equal(got, want) {
		t.Fatalf("dynos %v, want %v", got, want)
	}
	if p := s.Dynos[2]; p.ProcessType != "worker" || p.RSS != 400<<20 || !p.StartedAt.Equal(started) {
		t.Fatalf("worker.10 presence %+v", p)
	}
	if len(s.Slots) != 2 || s.Slots[1].Holder != "" {
		t.Fatalf("slots %+v", s.Slots)
	}
	sl := s.Slots[0]
	if sl.Holder != "worker.2" || sl.Token != lease.Token || !sl.Since.Equal(lease.AcquiredAt) {
		t.Fatalf("slot 0 = %+v, lease %+v", sl, lease)
	}
	if left := sl.ExpiresAt.Sub(s.TakenAt); left <= 0 || left > 5*time.Minute {
		t.Fatalf("slot 0 expires in %s", left)
	}
	if s.App != "shop" || !s.TakenAt.Equal(clock.Now()) || !s.SettlesAt.IsZero() {
		t.Fatalf("status header %+v", s)
	}

	// A hand-over shows, waiting and then claimed, with each agent's boot;
	// a value the scripts cannot read is shown taken, as they treat it.
	if _, err := w2.HandOver(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if err := web.client.Set(ctx, web.keys.leases[1], "garbage", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	clock.Add(30 * time.Second)
	table := func() string {
		t.Helper()
		s, err := web.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := WriteTable(&b, s, s.TakenAt); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	// Expiry runs on the Redis clock, not the test's: any expiry matches.
	holder := regexp.QuoteMeta(fmt.Sprintf("slot 0: worker.2 (boot %s) since %s (~ 40s ago), token %d",
		w2.Boot(), lease.AcquiredAt.UTC().Format(time.RFC3339), lease.Token)) + `, expires in \w+` +
		regexp.QuoteMeta(", handed over 30s ago")
	for _, want := range []string{
		holder + regexp.QuoteMeta(", waiting for the new dyno") + "\n",
		regexp.QuoteMeta(`slot 1: taken, by a malformed value "garbage" (agents treat it as held), expires in `),
		regexp.QuoteMeta("restart slots: 2 of 2 taken"),
	} {
		if out := table(); !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("status lacks %s:\n%s", want, out)
		}
	}
	reborn := mk("worker.2")
	if _, held, err := reborn.Held(ctx); err != nil || !held {
		t.Fatalf("the reborn dyno claims the lease: held %v, %v", held, err)
	}
	want := holder + regexp.QuoteMeta(" to worker.2 (boot "+reborn.Boot()+")") + "\n"
	if out := table(); !regexp.MustCompile(want).MatchString(out) {
		t.Errorf("status lacks %s:\n%s", want, out)
	}
	if _, err := w10.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Errorf("acquire over an unreadable slot: %v, want ErrNoSlot", err)
	}
}

func TestNaturalCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"worker.2", "worker.10", -1},
		{"worker.10", "worker.2", 1},
		{"web.1", "worker.1", -1},
		{"worker.1", "worker.1", 0},
		{"worker", "worker.1", -1},
	} {
		got := naturalCompare(tc.a, tc.b)
		if (got < 0) != (tc.want < 0) || (got > 0) != (tc.want > 0) {
			t.Errorf("naturalCompare(%q, %q) = %d, want sign of %d", tc.a, tc.b, got, tc.want)
		}
	}
}
