package main

import (
	"context"
	"log/slog"
	"os"
	"syscall"
)

// agentSignal maps a signal the agent received to the one it acts on, or
// false when it is ignored. Go's default for the signals not caught ends the
// agent at once and orphans the worker, so every signal a terminal or an
// operator commonly sends is caught.
//
//   - TERM and INT: as received; the agent stops the worker and exits.
//   - QUIT (Ctrl-\, kill -QUIT): as TERM, a graceful stop. Sent on as is, it
//     would kill Sidekiq, which has no trap for it, and lose its jobs.
//   - HUP: ignored. The configuration comes from the environment once, so
//     there is nothing to reload; Sidekiq dies on HUP mid-job; and a closed
//     terminal should not end a worker, which runs on as under nohup.
func agentSignal(s os.Signal) (os.Signal, bool) {
	switch s {
	case syscall.SIGHUP:
		return nil, false
	case syscall.SIGQUIT:
		return syscall.SIGTERM, true
	}
	return s, true
}

// relaySignals passes signals from in to out through agentSignal, and a
// SIGTERM once ctx ends, until done is closed.
func relaySignals(ctx context.Context, in <-chan os.Signal, out chan<- os.Signal, done <-chan struct{}, log *slog.Logger) {
	ctxDone := ctx.Done()
	for {
		select {
		case <-done:
			return
		case <-ctxDone:
			ctxDone = nil
			select {
			case out <- syscall.SIGTERM:
			default:
			}
		case s := <-in:
			as, ok := agentSignal(s)
			if !ok {
				log.Info("signal ignored: the worker keeps running", "event", "signal_ignored", "signal", s.String())
				continue
			}
			if as != s {
				log.Info("signal handled as "+as.String(), "event", "signal_mapped", "signal", s.String(), "as", as.String())
			}
			select {
			case out <- as:
			case <-done:
				return
			}
		}
	}
}
