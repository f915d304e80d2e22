package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/agent"
	"github.com/dynocycle/dynocycle/config"
)

// The agent checks at its dyno's own phase of CHECK_SCHEDULE, not on whole
// seconds; two dynos of the app at different phases.
func TestCheckScheduleIsPhasedByDyno(t *testing.T) {
	next := map[string]time.Time{}
	from := time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)
	for _, dyno := range []string{"worker.1", "worker.2"} {
		cleanEnv(t)
		t.Setenv("MAX_RSS", "1GB")
		t.Setenv("DYNO", dyno)
		t.Setenv("HEROKU_APP_NAME", "shop")
		t.Setenv("CHECK_SCHEDULE", "@every 5s")
		t.Setenv("PLATFORM", "exit")
		cfg, errs := config.Read()
		if errs != nil {
			t.Fatal(errs)
		}
		svc, err := (&CLI{}).buildAgent(context.Background(), cfg, nil, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		svc.close()
		got := svc.agent.Settings.CheckSchedule.Next(from)
		want := from.Add(5*time.Second - time.Second + agent.Phase("shop", dyno, 5*time.Second))
		if got.Sub(from) <= 0 || got.Sub(from) > 5*time.Second {
			t.Fatalf("%s: next check %s after a check at %s", dyno, got, from)
		}
		// @every fires on whole seconds; phased, a dyno's fraction is its own.
		if got.Nanosecond() != want.Nanosecond() {
			t.Fatalf("%s: next check %s, want the phase's fraction of a second (%s)", dyno, got.Format("05.000"), want.Format("05.000"))
		}
		next[dyno] = got
	}
	if next["worker.1"].Equal(next["worker.2"]) {
		t.Fatalf("two dynos check at the same instant %s", next["worker.1"])
	}
}
