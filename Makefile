# dynocycle — see README.md.
GO ?= go
# The one version: `dynocycle version` prints it and the gems carry it.
VERSION := $(shell cat VERSION)
LDFLAGS := -s -w -X main.version=$(VERSION)
# Native gems (RubyGems' platform names); `make gem` also builds the plain
# ruby gem, which carries no binary.
GEM_PLATFORMS := x86_64-linux aarch64-linux
PKG ?= pkg

.PHONY: build gem demo test bench footprint clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/dynocycle ./examples/bloater

# Every gem into $(PKG)/, replacing the gems of an earlier run.
gem:
	rm -f $(PKG)/dynocycle-*.gem
	GO='$(GO)' LDFLAGS='$(LDFLAGS)' ./scripts/build-gems $(PKG) $(GEM_PLATFORMS)

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
	rm -rf bin pkg
