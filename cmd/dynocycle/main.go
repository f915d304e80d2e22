// Command dynocycle wraps a job worker and restarts it, gracefully and one
// dyno at a time, when its memory bloats.
//
// main only hands the process to the CLI value (cli.go). For `run`, wire.go
// builds the agent from the configuration and runService starts every
// long-running loop (the agent, the Redis subscriber, the Sidekiq reader,
// the metrics server) in one group and stops them together. Where a restart
// is decided and carried out: see package agent.
package main

import (
	"context"
	"os"
)

func main() {
	cli := &CLI{Stdin: os.Stdin}
	os.Exit(cli.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
