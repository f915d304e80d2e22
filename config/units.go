package config

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/dynocycle/dynocycle/internal/bytesize"
)

// Size is an amount of memory: bytes, or a percentage of the detected limit.
type Size struct {
	Bytes   uint64
	Percent float64 // 0 < Percent <= 100 when set; resolved against the limit by Resolve
	set     bool
}

// minSize is the smallest limit accepted: below it (5B, 0.0001MB) a limit
// prints as 0.0MB and every worker is over it from its first breath.
const minSize = 1 << 20

const sizeForm = "a size such as 512MB, 1.5GB, 900000KB, a bare number of MB, or a percentage such as 90%"

var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30},
	{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
}

// Decode parses a size; it is called by envconfig.
func (s *Size) Decode(v string) error {
	v = strings.TrimSpace(v)
	if v == "" {
		*s = Size{}
		return nil
	}
	if p, ok := strings.CutSuffix(v, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f <= 0 || f > 100 || math.IsNaN(f) {
			return fmt.Errorf("percentage must be above 0 and at most 100")
		}
		*s = Size{Percent: f, set: true}
		return nil
	}
	num, mult := strings.ToUpper(v), float64(1<<20) // a bare number is MB
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("not a size")
	}
	if f <= 0 {
		return fmt.Errorf("size must be above zero")
	}
	if f*mult < minSize {
		return fmt.Errorf("size below 1MB; every process is bigger, so it would restart at once")
	}
	if f*mult > math.MaxInt64 {
		return fmt.Errorf("size too large")
	}
	*s = Size{Bytes: uint64(f * mult), set: true}
	return nil
}

// Set reports whether a value was given.
func (s Size) Set() bool { return s.set }

// Resolve returns the size in bytes; a percentage needs a known limit.
func (s Size) Resolve(limit uint64) (uint64, bool) {
	switch {
	case !s.set:
		return 0, false
	case s.Percent > 0:
		if limit == 0 {
			return 0, false
		}
		return uint64(float64(limit) * s.Percent / 100), true
	default:
		return s.Bytes, true
	}
}

func (s Size) String() string {
	switch {
	case !s.set:
		return "off"
	case s.Percent > 0:
		return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
	default:
		return bytesize.MB(s.Bytes)
	}
}

// Duration is a length of time: Go syntax (2m, 120s, 1h30m) or bare seconds.
type Duration time.Duration

const durationForm = "a duration such as 120s, 2m or 1h30m, or a bare number of seconds"

// Decode parses a duration; it is called by envconfig.
func (d *Duration) Decode(v string) error {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if n < 0 || math.IsNaN(n) || n > float64(math.MaxInt64/int64(time.Second)) {
			return fmt.Errorf("seconds out of range")
		}
		*d = Duration(time.Duration(n * float64(time.Second)))
		return nil
	}
	dur, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("not a duration")
	}
	if dur < 0 {
		return fmt.Errorf("duration must not be negative")
	}
	*d = Duration(dur)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// Schedule is a cron spec ("*/5 * * * *", "@hourly", "@every 5s").
type Schedule struct {
	Spec string
	cron.Schedule
}

const scheduleForm = "a cron spec such as \"*/5 * * * *\" (minute hour day month weekday), \"@hourly\" or \"@every 5s\""

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Decode parses a cron spec; it is called by envconfig.
func (s *Schedule) Decode(v string) error {
	v = strings.TrimSpace(v)
	if v == "" || strings.EqualFold(v, "off") {
		*s = Schedule{}
		return nil
	}
	sched, err := cronParser.Parse(v)
	if err != nil {
		return fmt.Errorf("not a cron spec: %w", err)
	}
	// cron rounds sub-second intervals up to 1s silently; say so instead.
	if every, ok := strings.CutPrefix(v, "@every "); ok {
		if d, err := time.ParseDuration(strings.TrimSpace(every)); err == nil && d < time.Second {
			return fmt.Errorf("interval must be at least 1s")
		}
	}
	*s = Schedule{Spec: v, Schedule: sched}
	return nil
}

// MinRestartEvery is the shortest gap allowed between rolling restarts: more
// often is a restart loop, not maintenance.
const MinRestartEvery = time.Hour

// problem says what is wrong with the schedule's firings from now on, or "":
// a schedule that never fires would leave its loop nothing to wait for, and
// one that fires more often than minEvery is a mistake.
func (s Schedule) problem(now time.Time, minEvery time.Duration) string {
	if !s.Set() {
		return ""
	}
	// robfig/cron gives up after five years and returns the zero time.
	first := s.Schedule.Next(now)
	if first.IsZero() {
		return "never fires (no matching date in the next five years)"
	}
	prev := first
	for range 16 {
		next := s.Schedule.Next(prev)
		if next.IsZero() {
			break // fires, just rarely
		}
		if gap := next.Sub(prev); gap < minEvery {
			return "fires every " + fmtEvery(gap) + ", more often than allowed"
		}
		prev = next
	}
	return ""
}

func fmtEvery(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// Set reports whether a schedule was given.
func (s Schedule) Set() bool { return s.Schedule != nil }

func (s Schedule) String() string {
	if !s.Set() {
		return "off"
	}
	return s.Spec
}

// Signal is a Unix signal given by name (TERM, SIGTERM) or number.
type Signal struct{ Sig syscall.Signal }

const signalForm = "a signal name such as TERM, INT, TSTP or QUIT (SIG prefix optional)"

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM,
	"TSTP": syscall.SIGTSTP, "TTIN": syscall.SIGTTIN, "TTOU": syscall.SIGTTOU,
	"WINCH": syscall.SIGWINCH, "CONT": syscall.SIGCONT, "PWR": syscall.SIGPWR,
}

// Decode parses a signal; it is called by envconfig.
func (s *Signal) Decode(v string) error {
	name := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(v)), "SIG")
	if name == "" {
		*s = Signal{}
		return nil
	}
	if n, err := strconv.Atoi(name); err == nil {
		for _, sig := range signalNames {
			if int(sig) == n {
				*s = Signal{Sig: sig}
				return nil
			}
		}
	}
	if sig, ok := signalNames[name]; ok {
		*s = Signal{Sig: sig}
		return nil
	}
	if name == "KILL" || name == "STOP" {
		return fmt.Errorf("%s cannot be handled by a worker, so it cannot quiet or stop one gracefully", name)
	}
	return fmt.Errorf("unknown signal")
}

// Set reports whether a signal was given.
func (s Signal) Set() bool { return s.Sig != 0 }

func (s Signal) String() string {
	if s.Sig == 0 {
		return "none"
	}
	for name, sig := range signalNames {
		if sig == s.Sig {
			return name
		}
	}
	return s.Sig.String()
}

// OSSignal returns the signal for os.Process.Signal, or nil.
func (s Signal) OSSignal() os.Signal {
	if s.Sig == 0 {
		return nil
	}
	return s.Sig
}
