package heartbeat

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	pgSnapApp       = `SELECT coalesce($2::timestamptz, now()), (SELECT created_at FROM dynocycle.apps WHERE app = $1)`
	pgSnapPresences = `SELECT body FROM dynocycle.presences WHERE app = $1 AND expires_at > coalesce($2::timestamptz, now())`
)

// Snapshot reads the whole fleet of the app in one round trip, from one
// transaction's view: live presences, every lease slot, and the settle time
// of an app new to the database.
func (p *Postgres) Snapshot(ctx context.Context) (FleetStatus, error) {
	s := FleetStatus{App: p.app, Dynos: []Presence{}, Store: "postgres"}
	var epoch *time.Time
	live := map[int]Lease{}
	err := p.call(ctx, "read fleet", func(ctx context.Context, c *pgx.Conn) error {
		return pgx.BeginTxFunc(ctx, c, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			b.Queue(pgSnapApp, p.app, p.clock()).QueryRow(func(r pgx.Row) error { return r.Scan(&s.TakenAt, &epoch) })
			b.Queue(pgSnapPresences, p.app, p.clock()).Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var body []byte
					if err := rows.Scan(&body); err != nil {
						return err
					}
					var pr Presence
					if json.Unmarshal(body, &pr) == nil { // one bad entry must not hide the fleet
						s.Dynos = append(s.Dynos, pr)
					}
				}
				return rows.Err()
			})
			b.Queue(pgLive, p.app, p.slots, p.clock()).Query(func(rows pgx.Rows) error {
				for rows.Next() {
					l, err := scanLease(rows)
					if err != nil {
						return err
					}
					live[l.Slot] = l.Lease
				}
				return rows.Err()
			})
			return tx.SendBatch(ctx, b).Close()
		})
	})
	if err != nil {
		return FleetStatus{}, err
	}
	slices.SortFunc(s.Dynos, func(a, b Presence) int { return naturalCompare(a.Dyno, b.Dyno) })
	for slot := range p.slots {
		st := SlotStatus{Slot: slot}
		if l, ok := live[slot]; ok {
			st.Holder, st.Token, st.Since, st.ExpiresAt = l.Holder, l.Token, l.AcquiredAt, l.ExpiresAt
			st.RestartAt, st.Successor = l.RestartAt, l.Successor
		}
		s.Slots = append(s.Slots, st)
	}
	if p.settle > 0 && epoch != nil {
		if at := epoch.Add(p.settle); at.After(s.TakenAt) {
			s.SettlesAt = at
		}
	}
	return s, nil
}
