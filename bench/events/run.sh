#!/usr/bin/env bash
# The job events against the heartbeats, side by side in one run (from the
# repository root):
#
#   bench/events/run.sh        # DRAINS=3 SAMPLES=200 MW_N=100000 REPS=8
#
#   1. idle drain after quiet, heartbeat vs events (real Sidekiq 6.4.1)
#   2. job end -> memory sample latency with events (p50, p99, max)
#   3. the middleware's cost per job vs a bare middleware, and the prior
#      art's per-job check (/proc/self/status read, `ps` fork), the events
#      read by the real agent
#   4. Sidekiq's throughput and CPU per job, side by side on one core
#      (bench/sidekiq/pair.sh): a middleware that only yields against bare,
#      and the events under the agent against each
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/lib.sh
DRAINS=${DRAINS:-3}
SAMPLES=${SAMPLES:-200}
MW_N=${MW_N:-100000}
echo "# bench/events/run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) cores"
echo "## 1-2. idle drain after quiet; job end to sample"
go test -run '^$' -bench 'IdleDrain' -benchtime "${DRAINS}x" ./sidekiq/ 2>&1 | grep -E '^Benchmark'
go test -run '^$' -bench 'JobEndToSample' -benchtime "${SAMPLES}x" ./sidekiq/ 2>&1 | grep -E '^Benchmark'
echo "## 3. middleware cost per job"
port=$(free_port)
work=$(mktemp -d)
redis_pid=""
trap 'kill "$redis_pid" 2>/dev/null; rm -rf "$work"' EXIT
start_redis "$port" "$work" "$work/redis.log"
go build -o "$work/" ./cmd/dynocycle
# WORKER=sidekiq: the agent listens for events (the Sidekiq reader finds no
# Sidekiq in this script and stays idle).
REDIS_URL="redis://127.0.0.1:$port/0" WORKER=sidekiq MAX_RSS=100GB PLATFORM=local FLEET_SCOPE=bench DYNO=worker.1 \
  "$work/dynocycle" run -- ruby bench/events/middleware.rb "$MW_N" 2>&1 | grep -v 'warning:\|^level='
echo "## 4. Sidekiq side by side on one core"
for pair in "bare bare_mw" "bare events" "bare_mw events"; do
  set -- $pair
  A=$1 B=$2 REPS=${REPS:-8} bench/sidekiq/pair.sh | tail -4
done
