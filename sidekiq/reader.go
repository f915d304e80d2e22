package sidekiq

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Reader reads Sidekiq's view of itself from Redis, the way the Web UI does.
// It never loads a queue: queues are only counted.
type Reader struct {
	Client *redis.Client
	// Namespace is the 6.x redis-namespace, if the app uses one: it prefixes
	// keys ("ns:processes") but not the members of the processes set.
	Namespace string
	Logger    *slog.Logger
}

func (r *Reader) key(k string) string {
	ns := strings.TrimSuffix(r.Namespace, ":")
	if ns == "" {
		return k
	}
	return ns + ":" + k
}

func (r *Reader) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// scanSet returns the members of a set without blocking Redis on a big one.
func (r *Reader) scanSet(ctx context.Context, key string) ([]string, error) {
	var all []string
	var cursor uint64
	for {
		members, next, err := r.Client.SScan(ctx, key, cursor, "", 100).Result()
		if err != nil {
			return nil, fmt.Errorf("sscan %s: %w", key, err)
		}
		all = append(all, members...)
		if next == 0 {
			break
		}
		cursor = next
	}
	// SSCAN may return a member more than once.
	sort.Strings(all)
	return compact(all), nil
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// Identities returns the members of the `processes` set: every process that
// heartbeated and did not stop cleanly, including stale ones.
func (r *Reader) Identities(ctx context.Context) ([]string, error) {
	return r.scanSet(ctx, r.key("processes"))
}

// Processes returns every live Sidekiq process known to Redis, sorted by
// identity. Stale members and bad records are skipped with a debug log.
func (r *Reader) Processes(ctx context.Context) ([]Process, error) {
	ids, err := r.Identities(ctx)
	if err != nil {
		return nil, err
	}
	return r.Read(ctx, ids)
}

// Read reads the process hashes and running jobs of the given identities in
// one pipelined round trip. Identities whose hash expired, and records that
// do not parse, are left out with a debug log.
func (r *Reader) Read(ctx context.Context, ids []string) ([]Process, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	type cmds struct {
		hash    *redis.SliceCmd
		work    *redis.MapStringStringCmd // 6.4.2+
		workers *redis.MapStringStringCmd // 6.0-6.4.1
	}
	pipe := r.Client.Pipeline()
	all := make([]cmds, len(ids))
	for i, id := range ids {
		all[i] = cmds{
			hash:    pipe.HMGet(ctx, r.key(id), "info", "busy", "beat", "quiet", "rss", "concurrency"),
			work:    pipe.HGetAll(ctx, r.key(id+":work")),
			workers: pipe.HGetAll(ctx, r.key(id+":workers")),
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read processes: %w", err)
	}
	log := r.logger()
	var procs []Process
	for i, id := range ids {
		vals := all[i].hash.Val()
		p, err := ParseProcess(id, ProcessHash{
			Info:        field(vals, 0),
			Busy:        field(vals, 1),
			Beat:        field(vals, 2),
			Quiet:       field(vals, 3),
			RSS:         field(vals, 4),
			Concurrency: field(vals, 5),
		})
		if err != nil {
			log.Debug("skip sidekiq process", "identity", id, "err", err)
			continue
		}
		for _, m := range []map[string]string{all[i].work.Val(), all[i].workers.Val()} {
			p.rawWork += len(m)
			for tid, v := range m {
				w, err := ParseWork(tid, v)
				if err != nil {
					log.Debug("skip sidekiq work", "identity", id, "tid", tid, "err", err)
					continue
				}
				p.Work = append(p.Work, w)
			}
		}
		sort.Slice(p.Work, func(a, b int) bool { return p.Work[a].TID < p.Work[b].TID })
		procs = append(procs, p)
	}
	return procs, nil
}

// field returns the i-th HMGET value, "" when missing or not a string.
func field(vals []any, i int) string {
	if i >= len(vals) {
		return ""
	}
	s, _ := vals[i].(string)
	return s
}

// Queue is the size of one Sidekiq queue.
type Queue struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// RedisMemory is the memory health of the Redis Sidekiq uses.
type RedisMemory struct {
	UsedBytes int64  `json:"used_bytes"`
	MaxBytes  int64  `json:"max_bytes"` // 0: no limit
	Policy    string `json:"policy"`
	Warning   string `json:"warning,omitempty"`
}

// Stats is the Sidekiq side of `dynocycle status`.
type Stats struct {
	Queues    []Queue     `json:"queues"`
	Enqueued  int64       `json:"enqueued"`
	Scheduled int64       `json:"scheduled"`
	Retry     int64       `json:"retry"`
	Dead      int64       `json:"dead"`
	Redis     RedisMemory `json:"redis"`
}

// Stats counts the queues, the scheduled, retry and dead sets, and reads
// Redis memory health. Only sizes are read, never the jobs themselves.
func (r *Reader) Stats(ctx context.Context) (Stats, error) {
	names, err := r.scanSet(ctx, r.key("queues"))
	if err != nil {
		return Stats{}, err
	}
	pipe := r.Client.Pipeline()
	lens := make([]*redis.IntCmd, len(names))
	for i, q := range names {
		lens[i] = pipe.LLen(ctx, r.key("queue:"+q))
	}
	scheduled := pipe.ZCard(ctx, r.key("schedule"))
	retry := pipe.ZCard(ctx, r.key("retry"))
	dead := pipe.ZCard(ctx, r.key("dead"))
	if _, err := pipe.Exec(ctx); err != nil {
		return Stats{}, fmt.Errorf("read stats: %w", err)
	}
	var s Stats
	for i, q := range names {
		s.Queues = append(s.Queues, Queue{Name: q, Size: lens[i].Val()})
		s.Enqueued += lens[i].Val()
	}
	s.Scheduled, s.Retry, s.Dead = scheduled.Val(), retry.Val(), dead.Val()

	info, err := r.Client.Info(ctx, "memory").Result()
	if err != nil {
		// Some hosted Redis restrict INFO; the counts are still worth showing.
		r.logger().Debug("redis info memory", "err", err)
		s.Redis.Warning = "redis memory unknown: INFO failed"
		return s, nil
	}
	s.Redis = ParseMemoryInfo(info)
	return s, nil
}

// ParseMemoryInfo reads used_memory, maxmemory and maxmemory_policy from the
// output of INFO memory, and warns when the policy may evict Sidekiq's data.
func ParseMemoryInfo(info string) RedisMemory {
	var m RedisMemory
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok {
			continue
		}
		switch k {
		case "used_memory":
			m.UsedBytes, _ = strconv.ParseInt(v, 10, 64)
		case "maxmemory":
			m.MaxBytes, _ = strconv.ParseInt(v, 10, 64)
		case "maxmemory_policy":
			m.Policy = v
		}
	}
	if m.Policy != "" && m.Policy != "noeviction" {
		m.Warning = fmt.Sprintf("maxmemory-policy is %s: Redis may evict Sidekiq's jobs; Sidekiq needs noeviction", m.Policy)
	}
	return m
}
