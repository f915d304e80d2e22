# dynocycle — see README.md.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build demo test bench footprint clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/dynocycle ./examples/bloater

# The agent wrapping a worker that bloats on purpose: watch it restart the
# worker in place each time it crosses MAX_RSS. Ctrl-C stops both.
# No QUIET_SIGNAL: a worker driven by signals alone cannot say when its last
# job ended, so with one every drain would wait out GRACE_TIME and log a
# warning; the bloater's stop signal is its graceful stop.
demo: build
	MAX_RSS=120MB CHECK_SCHEDULE='@every 1s' SUSTAIN_CHECKS=2 MIN_UPTIME=5s \
	SHUTDOWN_WAIT=10s CONFIRM_AFTER=5s BLOAT_MB=10 JOB_MS=300 \
	./bin/dynocycle run -- ./bin/bloater

test:
	./scripts/test

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./memory/ ./heartbeat/

footprint: build
	./bench/footprint.sh

clean:
	rm -rf bin
