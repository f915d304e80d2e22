package sidekiq

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

type processFixture struct {
	Identity    string `json:"identity"`
	Info        string `json:"info"`
	Busy        string `json:"busy"`
	Beat        string `json:"beat"`
	Quiet       string `json:"quiet"`
	RSS         string `json:"rss"`
	Concurrency string `json:"concurrency"`
}

func (f processFixture) hash() ProcessHash {
	return ProcessHash{Info: f.Info, Busy: f.Busy, Beat: f.Beat, Quiet: f.Quiet, RSS: f.RSS, Concurrency: f.Concurrency}
}

type workFixture struct {
	TID   string `json:"tid"`
	Value string `json:"value"`
	Class string `json:"class"`
	JID   string `json:"jid"`
	Queue string `json:"queue"`
}

func loadFixture[T any](t testing.TB, name string) map[string]T {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "sidekiq", name))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]T
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

func TestParseIdentity(t *testing.T) {
	tests := []struct {
		in      string
		want    Identity
		wantErr bool
	}{
		{in: "worker.1:15547:fbbc2af0baeb", want: Identity{"worker.1", 15547, "fbbc2af0baeb"}},
		{in: "a:b:c:42:00ff", want: Identity{"a:b:c", 42, "00ff"}},
		{in: "worker.1:15547", wantErr: true},
		{in: ":15547:abc", wantErr: true},
		{in: "worker.1:x:abc", wantErr: true},
		{in: "worker.1:0:abc", wantErr: true},
		{in: "worker.1:-3:abc", wantErr: true},
		{in: "worker.1:12:", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseIdentity(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseIdentity(%q) err = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		// The parts put back together are the identity: nothing is lost.
		joined := got.Hostname + ":" + strconv.Itoa(got.PID) + ":" + got.Nonce
		if err == nil && (got != tt.want || joined != tt.in) {
			t.Errorf("ParseIdentity(%q) = %+v (%s), want %+v", tt.in, got, joined, tt.want)
		}
	}
}

func TestParseProcessRecorded(t *testing.T) {
	fx := loadFixture[processFixture](t, "processes.json")
	idle := fx["v6.4.1 idle"]
	p, err := ParseProcess(idle.Identity, idle.hash())
	if err != nil {
		t.Fatal(err)
	}
	if p.Hostname != "worker.1" || p.PID != 15547 || p.Concurrency != 3 || p.Busy != 0 || p.Quiet ||
		p.RSSKiB != 29688 || !slices.Equal(p.Queues, []string{"default", "low"}) {
		t.Errorf("idle 6.4.1 = %+v", p)
	}
	if want := time.Unix(1795609441, 435651300); p.Beat.Sub(want).Abs() > time.Microsecond {
		t.Errorf("beat = %v, want %v", p.Beat, want)
	}
	quiet := fx["v6.4.1 quiet"]
	if p, err := ParseProcess(quiet.Identity, quiet.hash()); err != nil || !p.Quiet {
		t.Errorf("quiet 6.4.1 = %+v, %v", p, err)
	}
	v8 := fx["v8.1.7 colon hostname"]
	p, err = ParseProcess(v8.Identity, v8.hash())
	if err != nil {
		t.Fatal(err)
	}
	if p.Hostname != "ip-10-0-0-1.ec2:internal" || p.PID != 4242 || p.Concurrency != 5 || p.Version != "8.1.7" || p.Busy != 1 {
		t.Errorf("8.1.7 = %+v", p)
	}
}

func TestParseProcessBad(t *testing.T) {
	good := loadFixture[processFixture](t, "processes.json")["v6.4.1 idle"]
	tests := []struct {
		name string
		edit func(*processFixture)
	}{
		{"no info (stale)", func(f *processFixture) { f.Info = "" }},
		{"info not json", func(f *processFixture) { f.Info = "{" }},
		{"info pid differs", func(f *processFixture) { f.Identity = "worker.1:1:fbbc2af0baeb" }},
		{"info without pid", func(f *processFixture) { f.Info = `{"hostname":"worker.1"}` }},
		{"bad identity", func(f *processFixture) { f.Identity = "worker.1" }},
		{"no busy", func(f *processFixture) { f.Busy = "" }},
		{"negative busy", func(f *processFixture) { f.Busy = "-1" }},
		{"no beat", func(f *processFixture) { f.Beat = "" }},
		{"NaN beat", func(f *processFixture) { f.Beat = "NaN" }},
		{"huge beat", func(f *processFixture) { f.Beat = "1e300" }},
		{"bad quiet", func(f *processFixture) { f.Quiet = "yes" }},
		{"bad rss", func(f *processFixture) { f.RSS = "lots" }},
		{"bad concurrency field", func(f *processFixture) { f.Concurrency = "x" }},
		{"negative info concurrency", func(f *processFixture) {
			f.Info = `{"pid":15547,"concurrency":-2}`
		}},
	}
	for _, tt := range tests {
		f := good
		tt.edit(&f)
		if p, err := ParseProcess(f.Identity, f.hash()); err == nil {
			t.Errorf("%s: no error, got %+v", tt.name, p)
		}
	}
	f := good
	f.Info = ""
	if _, err := ParseProcess(f.Identity, f.hash()); !strings.Contains(err.Error(), ErrStale.Error()) {
		t.Errorf("no info: %v, want ErrStale", err)
	}
}

func TestParseWorkRecorded(t *testing.T) {
	for name, f := range loadFixture[workFixture](t, "work.json") {
		w, err := ParseWork(f.TID, f.Value)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if w.Class != f.Class || w.JID != f.JID || w.Queue != f.Queue || w.TID != f.TID {
			t.Errorf("%s: got %+v, want class %s jid %s queue %s", name, w, f.Class, f.JID, f.Queue)
		}
		if !w.RunAt.Equal(time.Unix(1795609444, 0)) {
			t.Errorf("%s: run_at %v", name, w.RunAt)
		}
	}
}

func TestParseWorkBad(t *testing.T) {
	for _, v := range []string{
		``,
		`{`,
		`[]`,
		`{"queue":"default"}`,
		`{"queue":"default","payload":"{"}`,
		`{"queue":"default","payload":"{\"jid\":\"x\"}"}`,
		`{"queue":"default","payload":"{\"class\":\"A\"}"}`,
		`{"queue":"default","payload":"{\"class\":1,\"jid\":\"x\"}"}`,
		`{"queue":"default","payload":42}`,
		`{"queue":"default","payload":null}`,
		`{"queue":"default","payload":"\"just a string\""}`,
		`{"queue":"default","payload":"{\"class\":\"A\",\"jid\":\"x\"}","run_at":"soon"}`,
	} {
		if w, err := ParseWork("t", v); err == nil {
			t.Errorf("ParseWork(%q) = %+v, want an error", v, w)
		}
	}
	// A payload already decoded is accepted: nothing is lost by being lenient.
	w, err := ParseWork("t", `{"queue":"q","payload":{"class":"A","jid":"j"}}`)
	if err != nil || w.Class != "A" || w.JID != "j" || w.Queue != "q" {
		t.Errorf("decoded payload: %+v, %v", w, err)
	}
}

func TestShutdownTimeout(t *testing.T) {
	tests := []struct {
		args []string
		want time.Duration
		ok   bool
	}{
		{[]string{"bundle", "exec", "sidekiq", "-t", "25"}, 25 * time.Second, true},
		{[]string{"sidekiq", "--timeout", "8"}, 8 * time.Second, true},
		{[]string{"sidekiq", "--timeout=9"}, 9 * time.Second, true},
		{[]string{"sidekiq", "-t30"}, 30 * time.Second, true},
		{[]string{"sidekiq", "-c", "5"}, 0, false},
		{[]string{"sidekiq", "-t"}, 0, false},
		{[]string{"sidekiq", "-t", "x"}, 0, false},
	}
	for _, tt := range tests {
		got, ok := ShutdownTimeout(tt.args)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ShutdownTimeout(%q) = %v, %v; want %v, %v", tt.args, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzParseWork(f *testing.F) {
	for _, fx := range loadFixture[workFixture](f, "work.json") {
		f.Add(fx.TID, fx.Value)
	}
	f.Add("t", `{"queue":"q","payload":{"class":"A","jid":"j"}}`)
	f.Add("t", `{"queue":"q","payload":"{\"class\":\"Sidekiq::ActiveJob::Wrapper\",\"wrapped\":7,\"args\":[1],\"jid\":\"j\"}","run_at":1e308}`)
	f.Fuzz(func(t *testing.T, tid, value string) {
		w, err := ParseWork(tid, value)
		if err != nil {
			return
		}
		if w.Class == "" || w.JID == "" || w.TID != tid {
			t.Fatalf("ParseWork accepted %q as %+v", value, w)
		}
	})
}

func FuzzParseProcess(f *testing.F) {
	for _, fx := range loadFixture[processFixture](f, "processes.json") {
		f.Add(fx.Identity, fx.Info, fx.Busy, fx.Beat, fx.Quiet, fx.RSS, fx.Concurrency)
	}
	f.Add("h:1:n", `{"pid":1}`, "0", "1e10", "", "", "")
	f.Fuzz(func(t *testing.T, id, info, busy, beat, quiet, rss, conc string) {
		p, err := ParseProcess(id, ProcessHash{Info: info, Busy: busy, Beat: beat, Quiet: quiet, RSS: rss, Concurrency: conc})
		if err != nil {
			return
		}
		ident, err := ParseIdentity(p.ID)
		if err != nil || ident.PID != p.PID || ident.Hostname != p.Hostname || p.PID <= 0 {
			t.Fatalf("identity %q parsed as %+v", id, p)
		}
		if p.Busy < 0 || p.Concurrency < 0 || p.RSSKiB < 0 || p.Beat.IsZero() {
			t.Fatalf("accepted out-of-range values: %+v", p)
		}
	})
}
