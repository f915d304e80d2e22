// Command bloater is a demo worker that bloats on purpose: every job keeps a
// few megabytes it never frees, the way a Ruby worker's heap grows in stair
// steps. It quiets on SIGTSTP (finishes its job, takes no more) and exits
// cleanly on SIGTERM or SIGINT, like Sidekiq.
//
// Settings: BLOAT_MB per job (default 8), JOB_MS per job (default 500).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	mbPerJob := envInt("BLOAT_MB", 8)
	jobTime := time.Duration(envInt("JOB_MS", 500)) * time.Millisecond
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTSTP, syscall.SIGTERM, syscall.SIGINT)

	var kept [][]byte
	quiet := false
	pid := os.Getpid()
	fmt.Printf("bloater pid=%d: %dMB per job, %v per job\n", pid, mbPerJob, jobTime)
	for job := 1; ; job++ {
		if !quiet {
			chunk := make([]byte, mbPerJob<<20)
			for i := range chunk { // touch every page so it counts as resident
				chunk[i] = byte(i)
			}
			kept = append(kept, chunk)
		}
		select {
		case s := <-sigs:
			switch s {
			case syscall.SIGTSTP:
				quiet = true
				fmt.Printf("bloater pid=%d: quiet, finishing job %d and taking no more\n", pid, job)
			default:
				fmt.Printf("bloater pid=%d: %v, exiting after %d jobs holding %dMB\n", pid, s, job, len(kept)*mbPerJob)
				return
			}
		case <-time.After(jobTime):
			if !quiet {
				fmt.Printf("bloater pid=%d: job %d done, holding %dMB\n", pid, job, len(kept)*mbPerJob)
			}
		}
	}
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}
