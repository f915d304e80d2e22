package main

import (
	"net"
	"strings"
	"testing"
)

func TestMetricsAddressThatCannotBeBoundExitsTwoBeforeTheWorkerStarts(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cleanEnv(t)
	t.Setenv("MAX_RSS", "1GB")
	t.Setenv("METRICS_ADDR", busy.Addr().String())
	code, out, errOut := runCLI(t, "run", "--", "sh", "-c", "echo worker started; exit 0")
	if code != 2 {
		t.Errorf("code %d, want 2 (configuration error)", code)
	}
	for _, want := range []string{"METRICS_ADDR=" + busy.Addr().String() + ": cannot listen:", "address already in use", "accepted:"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(out, "worker started") {
		t.Error("the worker was started")
	}
}
