package sidekiq

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/redis/go-redis/v9"
)

func newClient(t testing.TB, srv *testredis.Server) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}

// fakeProcess writes a process the way Sidekiq's heartbeat does: a member of
// processes, its hash, and its work hash under workKey ("work" or "workers").
type fakeProcess struct {
	ns      string
	id      string
	fields  map[string]string
	workKey string
	work    map[string]string
}

func (f fakeProcess) write(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := context.Background()
	k := func(s string) string {
		if f.ns == "" {
			return s
		}
		return f.ns + ":" + s
	}
	// One MULTI, as Sidekiq 6.4.1 writes a beat: a reader never sees the
	// new hash with the old work.
	_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, k("processes"), f.id)
		if len(f.fields) > 0 {
			p.HSet(ctx, k(f.id), f.fields)
		}
		key := k(f.id + ":" + f.workKey)
		p.Del(ctx, key)
		if len(f.work) > 0 {
			p.HSet(ctx, key, f.work)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func fields(f processFixture) map[string]string {
	m := map[string]string{"info": f.Info, "busy": f.Busy, "beat": f.Beat, "quiet": f.Quiet, "rss": f.RSS}
	if f.Concurrency != "" {
		m["concurrency"] = f.Concurrency
	}
	return m
}

func TestReaderProcesses(t *testing.T) {
	srv := testredis.Start(t)
	c := newClient(t, srv)
	pf := loadFixture[processFixture](t, "processes.json")
	wf := loadFixture[workFixture](t, "work.json")
	busy := pf["v6.4.1 busy"]
	fakeProcess{id: busy.Identity, fields: fields(busy), workKey: "workers", work: map[string]string{
		"bfv": wf["v6.4.1 SleepJob"].Value,
		"bfj": wf["v6.4.1 OtherJob"].Value,
		"bad": `{"queue":"default","payload":"{not json"}`,
	}}.write(t, c)
	v8 := pf["v8.1.7 colon hostname"]
	fakeProcess{id: v8.Identity, fields: fields(v8), workKey: "work", work: map[string]string{
		"c1x": wf["ActiveJob wrapper"].Value,
	}}.write(t, c)
	// A member whose hash expired, and one whose info is garbage.
	fakeProcess{id: "worker.1:777:0000deadbeef", workKey: "work"}.write(t, c)
	fakeProcess{id: "worker.1:778:0000deadbeef", fields: map[string]string{"info": "{", "busy": "0", "beat": "1"}, workKey: "work"}.write(t, c)

	var logs bytes.Buffer
	r := &Reader{Client: c, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	procs, err := r.Processes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(procs) != 2 {
		t.Fatalf("got %d processes, want 2: %+v", len(procs), procs)
	}
	// Sorted by identity: "ip-…" before "worker.1…".
	p8, p6 := procs[0], procs[1]
	if p6.ID != busy.Identity || p6.Busy != 2 || p6.Concurrency != 3 || len(p6.Work) != 2 || p6.rawWork != 3 {
		t.Errorf("6.4.1 process = %+v (raw work %d)", p6, p6.rawWork)
	}
	if p6.Work[0].Class != "OtherJob" || p6.Work[1].Class != "SleepJob" {
		t.Errorf("6.4.1 work = %+v", p6.Work)
	}
	if p8.ID != v8.Identity || p8.Concurrency != 5 || len(p8.Work) != 1 || p8.Work[0].Class != "ExportCsvJob" {
		t.Errorf("8.1.7 process = %+v", p8)
	}
	for _, want := range []string{"identity=worker.1:777:0000deadbeef", "identity=worker.1:778:0000deadbeef", "tid=bad"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no debug log with %s in:\n%s", want, logs.String())
		}
	}
}

func TestReaderNamespace(t *testing.T) {
	srv := testredis.Start(t)
	c := newClient(t, srv)
	idle := loadFixture[processFixture](t, "processes.json")["v6.4.1 idle"]
	fakeProcess{ns: "myapp", id: idle.Identity, fields: fields(idle), workKey: "workers",
		work: map[string]string{"bfv": loadFixture[workFixture](t, "work.json")["v6.4.1 SleepJob"].Value}}.write(t, c)
	ctx := context.Background()

	procs, err := (&Reader{Client: c, Namespace: "myapp"}).Processes(ctx)
	if err != nil || len(procs) != 1 || procs[0].PID != 15547 || len(procs[0].Work) != 1 {
		t.Fatalf("with namespace: %+v, %v", procs, err)
	}
	procs, err = (&Reader{Client: c}).Processes(ctx)
	if err != nil || len(procs) != 0 {
		t.Fatalf("without namespace: %+v, %v", procs, err)
	}
}

func TestReaderStats(t *testing.T) {
	srv := testredis.Start(t)
	c := newClient(t, srv)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.SAdd(ctx, "queues", "default", "low", "empty").Err())
	must(c.LPush(ctx, "queue:default", "a", "b", "c").Err())
	must(c.LPush(ctx, "queue:low", "d").Err())
	must(c.ZAdd(ctx, "schedule", redis.Z{Score: 1, Member: "s1"}, redis.Z{Score: 2, Member: "s2"}).Err())
	must(c.ZAdd(ctx, "retry", redis.Z{Score: 1, Member: "r1"}).Err())
	must(c.ZAdd(ctx, "dead", redis.Z{Score: 1, Member: "d1"}, redis.Z{Score: 2, Member: "d2"}, redis.Z{Score: 3, Member: "d3"}).Err())

	r := &Reader{Client: c}
	s, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []Queue{{"default", 3}, {"empty", 0}, {"low", 1}}
	if len(s.Queues) != 3 || s.Queues[0] != want[0] || s.Queues[1] != want[1] || s.Queues[2] != want[2] {
		t.Errorf("queues = %+v, want %+v", s.Queues, want)
	}
	if s.Enqueued != 4 || s.Scheduled != 2 || s.Retry != 1 || s.Dead != 3 {
		t.Errorf("stats = %+v", s)
	}
	if s.Redis.UsedBytes <= 0 || s.Redis.Policy != "noeviction" || s.Redis.Warning != "" {
		t.Errorf("redis memory = %+v", s.Redis)
	}

	must(c.ConfigSet(ctx, "maxmemory", "104857600").Err())
	must(c.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err())
	s, err = r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Redis.MaxBytes != 104857600 || s.Redis.Policy != "allkeys-lru" || !strings.Contains(s.Redis.Warning, "noeviction") {
		t.Errorf("redis memory with eviction = %+v", s.Redis)
	}

	var out bytes.Buffer
	procs := []Process{{ID: "worker.1:15547:fbbc2af0baeb", Busy: 1, Concurrency: 3, Quiet: true, RSSKiB: 300 * 1024,
		Queues: []string{"default"}, Work: []Work{{Class: "ExportCsvJob"}}, Beat: time.Now()}}
	if err := WriteStatus(&out, procs, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"=== sidekiq: 1 processes, 1 of 3 threads busy", "worker.1:15547:fbbc2af0baeb: quiet, 1/3 busy, 300MB, queues default, running ExportCsvJob",
		"=== queues: 4 enqueued, 2 scheduled, 1 retry, 3 dead", "default: 3", "of 100MB", "allkeys-lru", "WARNING: maxmemory-policy"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status has no %q:\n%s", want, out.String())
		}
	}
}
