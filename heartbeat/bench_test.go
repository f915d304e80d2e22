package heartbeat

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
)

// BenchmarkLeaseHandoff measures the time from a holder calling Release to
// the next of 20 waiting dynos returning from Acquire, with waiters woken by
// the freed-slot channel (pub/sub).
func BenchmarkLeaseHandoff(b *testing.B) {
	benchmarkHandoff(b, 0)
}

// BenchmarkLeaseHandoffPoll is the same with waiters that only poll every
// 100ms, for contrast; agents that only poll wait up to a check interval (5s).
func BenchmarkLeaseHandoffPoll(b *testing.B) {
	benchmarkHandoff(b, 100*time.Millisecond)
}

func benchmarkHandoff(b *testing.B, poll time.Duration) {
	srv := testredis.Start(b)
	const waiters = 20
	fleets := make([]*Redis, waiters)
	for i := range fleets {
		fleets[i] = newFleet(b, srv, RedisOptions{Dyno: fmt.Sprintf("worker.%d", i+1), Settle: -1, LeaseTTL: time.Minute})
	}
	seed := newFleet(b, srv, RedisOptions{Dyno: "seed.1", Settle: -1, LeaseTTL: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lease, err := seed.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if poll == 0 {
		// Only a waiter subscribes: each asks once, then listens.
		for _, f := range fleets {
			if _, err := f.Acquire(ctx); err == nil {
				b.Fatal("a waiter took the seed's slot")
			}
			subscribe(b, f)
			waitSignal(b, f.SlotFreed(), 10*time.Second, "subscribed")
		}
	}

	var (
		mu         sync.Mutex
		releasedAt time.Time
		lat        = make([]time.Duration, 0, b.N)
		done       = make(chan struct{})
	)
	var wg sync.WaitGroup
	for _, f := range fleets {
		wg.Go(func() {
			var wake <-chan struct{}
			if poll == 0 {
				wake = f.SlotFreed()
			}
			for {
				tick := poll
				if tick == 0 {
					tick = time.Second // a lost message must not stall the run
				}
				select {
				case <-ctx.Done():
					return
				case <-wake:
				case <-time.After(tick):
				}
				l, err := f.Acquire(ctx)
				if err != nil {
					continue
				}
				got := time.Now()
				mu.Lock()
				lat = append(lat, got.Sub(releasedAt))
				last := len(lat) == b.N
				releasedAt = time.Now()
				mu.Unlock()
				if last {
					close(done)
					return
				}
				if err := f.Release(ctx, l); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}

	b.ResetTimer()
	mu.Lock()
	releasedAt = time.Now()
	mu.Unlock()
	if err := seed.Release(ctx, lease); err != nil {
		b.Fatal(err)
	}
	<-done
	b.StopTimer()
	cancel()
	wg.Wait()

	slices.Sort(lat)
	pct := func(p float64) float64 {
		i := min(len(lat)-1, int(float64(len(lat))*p))
		return float64(lat[i]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
}

// BenchmarkPublish reports the Redis round trips one check's Publish costs.
func BenchmarkPublish(b *testing.B) {
	srv := testredis.Start(b)
	ctx := context.Background()
	f := newFleet(b, srv, RedisOptions{Dyno: "worker.1", Settle: -1})
	p := Presence{State: StateWatching, RSS: 300 << 20, Limit: 512 << 20, StartedAt: time.Now(), Version: "bench",
		TopJobs: []JobGrowth{{Class: "ImportJob", Bytes: 80 << 20, Runs: 3}, {Class: "ReportJob", Bytes: 20 << 20, Runs: 9}}}
	if err := f.Publish(ctx, p); err != nil { // dial and load the script first
		b.Fatal(err)
	}
	hook := &countHook{}
	f.client.AddHook(hook)
	n := 0
	for b.Loop() {
		if err := f.Publish(ctx, p); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(hook.n.Load())/float64(n), "roundtrips/op")
}
