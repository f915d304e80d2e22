// Command dynocycle wraps a job worker and restarts it, gracefully and one
// dyno at a time, when its memory bloats.
package main

import (
	"context"
	"os"
)

func main() {
	cli := &CLI{Stdin: os.Stdin}
	os.Exit(cli.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
