// Package testutil holds the helpers every package's tests share: polling
// with a deadline instead of sleeping, a buffer safe for the many goroutines
// that log at once, a settable clock, and loops run for the length of a
// test. Only tests import it.
package testutil

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// pollEvery is how often a condition is polled: short against any deadline
// a test sets, long enough not to busy the shared machine.
const pollEvery = 10 * time.Millisecond

// Eventually polls cond until it holds, failing t when within passes first.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	Until(ctx, t, what, cond)
}

// Until polls cond until it holds, failing t when ctx ends first.
func Until(ctx context.Context, t testing.TB, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("not true after %s: %s", time.Since(start).Round(time.Millisecond), what)
		case <-tick.C:
		}
	}
}

// Loop runs a long-running loop (a Run(ctx) method) until the test ends,
// then cancels it and waits for it, as the command runs its loops.
func Loop(t testing.TB, run func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// Buffer is a bytes.Buffer that many goroutines may write at once: a
// logger, a worker's output copier, a test reading it all.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Clock is a settable clock that the members of one test share.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock starts at a fixed time, so that expected output can name it.
func NewClock() *Clock { return &Clock{t: time.Date(2026, 3, 14, 9, 26, 53, 0, time.UTC)} }

// Now is the current time of the clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Add moves the clock on.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
