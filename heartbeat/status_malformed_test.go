package heartbeat

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
)

// A slot holding a value no agent wrote is taken for the lease script, so
// status must show it taken too, not free.
func TestSnapshotShowsAMalformedSlotAsTaken(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	f := newFleet(t, srv, RedisOptions{App: "shop", Dyno: "worker.1", Slots: 1, Settle: -1})
	raw := connect(t, srv)
	if err := raw.Set(ctx, "dynocycle:{shop}:lease:0", "garbage\x1b[2J"+strings.Repeat("x", 20000), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Acquire(ctx); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("acquire over a malformed slot: %v, want ErrNoSlot (the premise of this test)", err)
	}
	s, err := f.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sl := s.Slots[0]
	if sl.Malformed == "" || sl.Holder != "" || sl.ExpiresAt.IsZero() || len(sl.Malformed) > 200 {
		t.Fatalf("slot %+v: want malformed, bounded, with its expiry", sl)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, s, s.TakenAt); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.Contains(out, `slot 0: taken, by a malformed value "garbage\x1b[2Jxx`) || strings.Contains(out, "free") ||
		!strings.Contains(out, "restart slots: 1 of 1 taken") || strings.Contains(out, "\x1b") {
		t.Fatalf("status:\n%s", out)
	}
}
