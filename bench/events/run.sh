#!/usr/bin/env bash
# The job events against the heartbeats, side by side in one run (from the
# repository root):
#
#   bench/events/run.sh        # DRAINS=3 SAMPLES=200 MW_N=100000 JOBS=5000 REPS=3
#
#   1. idle drain after quiet, heartbeat vs events (real Sidekiq 6.4.1)
#   2. job end -> memory sample latency with events (p50, p99, max)
#   3. the middleware's cost per job vs a bare middleware, and the prior
#      art's per-job check (/proc/self/status read, `ps` fork)
#   4. Sidekiq throughput: bare, under dynocycle, under dynocycle with the
#      events middleware (bench/sidekiq/run.sh's method)
set -euo pipefail
cd "$(dirname "$0")/../.."
DRAINS=${DRAINS:-3}
SAMPLES=${SAMPLES:-200}
MW_N=${MW_N:-100000}
echo "# bench/events/run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) cores"
echo "## 1-2. idle drain after quiet; job end to sample"
go test -run '^$' -bench 'IdleDrain' -benchtime "${DRAINS}x" ./sidekiq/ 2>&1 | grep -E '^Benchmark'
go test -run '^$' -bench 'JobEndToSample' -benchtime "${SAMPLES}x" ./sidekiq/ 2>&1 | grep -E '^Benchmark'
echo "## 3. middleware cost per job"
ruby bench/events/middleware.rb "$MW_N" 2>&1 | grep -v 'warning:'
echo "## 4. throughput"
JOBS=${JOBS:-5000} REPS=${REPS:-3} VARIANTS="bare dynocycle events" bench/sidekiq/run.sh
