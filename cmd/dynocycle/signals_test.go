package main

import (
	"os"
	"syscall"
	"testing"
)

func TestAgentSignal(t *testing.T) {
	for _, tc := range []struct {
		in, want os.Signal
		ok       bool
	}{
		{syscall.SIGTERM, syscall.SIGTERM, true},
		{syscall.SIGINT, syscall.SIGINT, true},
		{syscall.SIGQUIT, syscall.SIGTERM, true},
		{syscall.SIGHUP, nil, false},
	} {
		if got, ok := agentSignal(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("agentSignal(%v) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
