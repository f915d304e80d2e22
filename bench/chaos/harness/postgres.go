package harness

import (
	"fmt"
	"strings"

	"github.com/dynocycle/dynocycle/internal/testpg"
)

// Fleet stores of a run (Config.Store): where the agents coordinate. The
// jobs and Sidekiq's records are in Redis either way.
const (
	StoreRedis    = "redis"
	StorePostgres = "postgres"
)

// FaultDBDown kills the fleet's PostgreSQL (an immediate shutdown, as a
// crash) and starts it again on the same data; only with StorePostgres.
const FaultDBDown = "db_down"

// fleetDB is the PostgreSQL the agents coordinate through with
// StorePostgres; nil with StoreRedis.
type fleetDB struct{ srv *testpg.Server }

// startFleetDB starts the fleet's database when the run asks for one and
// returns the agents' extra environment.
func startFleetDB(cfg Config) (*fleetDB, []string, error) {
	if cfg.Store != StorePostgres {
		return nil, nil, nil
	}
	srv, err := testpg.Launch(testpg.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("fleet database: %w", err)
	}
	return &fleetDB{srv: srv}, []string{"FLEET_STORE=postgres", "DATABASE_URL=" + srv.URL()}, nil
}

func (d *fleetDB) close() {
	if d != nil {
		d.srv.Close()
	}
}

func (d *fleetDB) crash() { d.srv.Crash() }

func (d *fleetDB) up() error { return d.srv.Up() }

// storeOutages makes every other outage of the schedule (the first, the
// third, ...) one of the fleet's PostgreSQL rather than of Redis when the
// run coordinates through PostgreSQL, so that one seed gives the same
// schedule with either store and the runs compare.
func storeOutages(cfg Config, seq []string) []string {
	if cfg.Store != StorePostgres {
		return seq
	}
	n := 0
	for i, k := range seq {
		if k == FaultRedisDown {
			if n%2 == 0 {
				seq[i] = FaultDBDown
			}
			n++
		}
	}
	return seq
}

// checkStore breaks the run when an agent coordinated anywhere but the
// store the run asked for.
func checkStore(res *Result) {
	want := "fleet=" + res.Config.Store
	saw := false
	for _, l := range res.Lines {
		if !strings.Contains(l.Text, "event=agent_start") {
			continue
		}
		if !strings.Contains(l.Text, want) {
			res.Broken = append(res.Broken, fmt.Sprintf("%s[%d] started without %s: %s", l.Dyno, l.Gen, want, l.Text))
		}
		saw = true
	}
	if !saw {
		res.Broken = append(res.Broken, "no agent logged its start")
	}
}
