package sidekiq

import (
	"bytes"
	"strings"
	"testing"
)

// One process record with a 20 KB queue name once made status print 101 MB,
// every row padded to the widest cell; control characters reached the
// terminal raw.
func TestWriteStatusIsBoundedAndEscaped(t *testing.T) {
	huge := strings.Repeat("q", 20000)
	var procs []Process
	for range 100 {
		procs = append(procs, Process{ID: "worker.1:1:abc", Concurrency: 5, Queues: []string{"default"}})
	}
	procs[0].Queues = []string{huge}
	procs[1].Work = []Work{{Class: huge}}
	procs[2].ID = "evil\x1b]0;title\x07\n"
	stats := Stats{Queues: []Queue{{Name: huge, Size: 1}, {Name: "ok\ttab", Size: 2}}}
	var b bytes.Buffer
	if err := WriteStatus(&b, procs, stats); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if b.Len() > 20000 {
		t.Errorf("%d bytes for 100 processes", b.Len())
	}
	for _, line := range strings.Split(out, "\n") {
		if len(line) > 300 {
			t.Errorf("line of %d bytes: %.80q...", len(line), line)
		}
	}
	if strings.ContainsAny(out, "\x1b\x07\t") || !strings.Contains(out, `evil\x1b]0;title\a\n: running`) || !strings.Contains(out, `ok\ttab: 2`) {
		t.Errorf("control characters reach the terminal:\n%q", out[:min(len(out), 600)])
	}
}
