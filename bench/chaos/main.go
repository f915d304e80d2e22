// Command chaos runs dynocycle's fleet chaos benchmark: N Heroku-like dynos,
// each a real Sidekiq wrapped by dynocycle, one redis-server, a fake Platform
// API, a stream of bloating jobs, and faults on a seeded schedule. It checks
// the invariants, prints a summary, and writes the memory picture.
//
//	go run ./bench/chaos -dynos 10 -duration 10m -seed 1 -out bench/chaos/
//
// Run it from the repository root; it needs redis-server and sidekiq
// (apt-get install redis-server ruby-sidekiq). It exits 1 when an invariant
// broke. See bench/chaos/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dynocycle/dynocycle/bench/chaos/harness"
)

func main() {
	var cfg harness.Config
	flag.IntVar(&cfg.Dynos, "dynos", 10, "worker dynos")
	flag.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long the jobs and faults go on")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the fault schedule and job lengths")
	flag.IntVar(&cfg.Slots, "slots", 1, "MAX_CONCURRENT_RESTARTS")
	flag.IntVar(&cfg.MaxRSSMB, "max-rss", 110, "MAX_RSS in MB")
	flag.IntVar(&cfg.JobMB, "job-mb", 4, "MB each job retains")
	flag.Float64Var(&cfg.JobsPerSec, "rate", 0.8, "jobs enqueued per second")
	flag.IntVar(&cfg.Faults, "faults", 0, "faults to inject (0: one a minute, at least 6)")
	flag.DurationVar(&cfg.Grace, "grace", 30*time.Second, "the dyno manager's SIGTERM to SIGKILL")
	flag.StringVar(&cfg.Store, "store", "redis", "where the agents coordinate: redis or postgres (jobs stay in Redis)")
	out := flag.String("out", "bench/chaos/", "directory for chaos.svg, summary.md and fleet.log")
	flag.Parse()
	os.Exit(run(cfg, *out))
}

func run(cfg harness.Config, out string) int {
	root, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := os.Stat(filepath.Join(root, "bench/chaos/app.rb")); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: run me from the repository root:", err)
		return 2
	}
	tmp, err := os.MkdirTemp("", "dynocycle-chaos")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer os.RemoveAll(tmp)
	build := exec.Command("go", "build", "-o", tmp+"/", "./cmd/dynocycle")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: build:", err)
		return 2
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fleetLog, err := os.Create(filepath.Join(out, "fleet.log"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer fleetLog.Close()
	cfg.Root, cfg.Agent, cfg.Dir = root, filepath.Join(tmp, "dynocycle"), tmp
	cfg.Log, cfg.FleetLog = os.Stderr, fleetLog

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	started := time.Now()
	res, err := harness.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		if res == nil {
			return 2
		}
	}
	summary := fmt.Sprintf("Run of %s, %s\n\n    go run ./bench/chaos %s\n\n%s", started.UTC().Format("2006-01-02 15:04 MST"),
		hostLine(), argLine(), res.Summary())
	fmt.Print(summary)
	if err := os.WriteFile(filepath.Join(out, "summary.md"), []byte(summary), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	svg, err := os.Create(filepath.Join(out, "chaos.svg"))
	if err == nil {
		err = harness.WriteSVG(svg, res)
		svg.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos: picture:", err)
	}
	if !res.OK() {
		return 1
	}
	return 0
}

func argLine() string {
	s := ""
	for i, a := range os.Args[1:] {
		if i > 0 {
			s += " "
		}
		s += a
	}
	return s
}

func hostLine() string {
	n, _ := os.ReadFile("/proc/cpuinfo")
	cpus := 0
	for i := 0; i+9 < len(n); i++ {
		if string(n[i:i+9]) == "processor" && (i == 0 || n[i-1] == '\n') {
			cpus++
		}
	}
	return fmt.Sprintf("%d CPUs", cpus)
}
