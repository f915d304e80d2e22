#!/usr/bin/env bash
# The agent's own CPU while a Sidekiq with the gem's job events runs jobs
# flat out under it (from the repository root):
#
#   bench/events/agent_cpu.sh                    # WORK_MS=2 WINDOW=8 REPS=3
#   BIN=/tmp/old/dynocycle GEM_LIB=/tmp/old/gem/lib bench/events/agent_cpu.sh
#   IDLE=1 WINDOW=20 bench/events/agent_cpu.sh   # no jobs: an idle worker
#
# BIN and GEM_LIB name another build of the agent and of the gem (a
# `git worktree` of an older commit), to compare two versions rep by rep
# with VS_BIN and VS_GEM_LIB: each rep then runs both, one after the other.
# Each run has its own redis-server (a free loopback port, never 6379)
# holding JOBS jobs of WORK_MS of CPU each (none with IDLE=1),
# `sidekiq -c 10` under `dynocycle run`, and counts over WINDOW seconds the
# agent's and Sidekiq's CPU time (/proc/PID/stat) and the jobs done.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
source bench/lib.sh
WORK_MS=${WORK_MS:-2}
WINDOW=${WINDOW:-8}
REPS=${REPS:-3}
JOBS=${JOBS:-20000}
export WORK_MS
for tool in redis-server redis-cli sidekiq ruby go; do
  command -v "$tool" >/dev/null || { echo "agent_cpu.sh: $tool not found (apt-get install redis-server ruby-sidekiq golang)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${BIN:-}" ]; then
  CGO_ENABLED=0 go build -trimpath -o "$work/dynocycle" ./cmd/dynocycle
  BIN=$work/dynocycle
fi
GEM_LIB=${GEM_LIB:-$root/gem/lib}
hz=$(getconf CLK_TCK)


# run NAME BIN GEM_LIB: one window; prints a line of the table.
run() {
  local name=$1 bin=$2 lib=$3 port app agent sk n1 n2 c1 c2 s1 s2 t1 t2
  port=$(free_port)
  start_redis "$port" "$work" "$work/redis.log"
  pids+=("$redis_pid")
  [ -n "${IDLE:-}" ] || enqueue_jobs "$port" "$JOBS" $((JOBS + 1))
  app=$work/app-$name.rb
  printf 'require %s\n$LOAD_PATH.unshift %s\nrequire "dynocycle/sidekiq"\n' \
    "\"$root/bench/sidekiq/jobs.rb\"" "\"$lib\"" >"$app"
  env REDIS_URL="redis://127.0.0.1:$port/0" MAX_RSS=100GB "CHECK_SCHEDULE=@every 1s" PLATFORM=local \
    WORKER=sidekiq FLEET_SCOPE=bench DYNO=worker.1 \
    "$bin" run -- sidekiq -c 10 -t 5 -q default -r "$app" >"$work/agent-$name.log" 2>&1 &
  agent=$!
  pids+=($agent)
  # Up: Sidekiq is in Redis (its heartbeat's "processes" set).
  for _ in $(seq 600); do [ "$(redis-cli -p "$port" scard processes)" -gt 0 ] && break; sleep 0.1; done
  [ "$(redis-cli -p "$port" scard processes)" -gt 0 ] || { echo "agent_cpu.sh: Sidekiq did not start; log:" >&2; tail "$work/agent-$name.log" >&2; exit 1; }
  sleep 2 # past the first jobs, or Sidekiq's start-up when idle
  sk=$(sidekiq_pid "$agent")
  n1=$(redis-cli -p "$port" get bench:done); c1=$(ticks "$agent"); s1=$(ticks "$sk"); t1=$(date +%s.%N)
  sleep "$WINDOW"
  n2=$(redis-cli -p "$port" get bench:done); c2=$(ticks "$agent"); s2=$(ticks "$sk"); t2=$(date +%s.%N)
  n1=${n1:-0} n2=${n2:-0}
  [ "$n2" -lt "$JOBS" ] || { echo "agent_cpu.sh: the jobs ran out within the window; raise JOBS" >&2; exit 1; }
  kill -TERM "$agent"; wait "$agent" 2>/dev/null || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  awk -v name="$name" -v c="$((c2 - c1))" -v sc="$((s2 - s1))" -v n="$((n2 - n1))" -v hz="$hz" -v a="$t1" -v b="$t2" 'BEGIN {
    per = n > 0 ? sprintf("%.0f", 1e6 * c / hz / n) : "-"
    printf "%s %.2f %.2f %s %.0f\n", name, 100 * c / hz / (b - a), 100 * sc / hz / (b - a), per, n / (b - a)
  }'
}

echo "# bench/events/agent_cpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), WORK_MS=$WORK_MS WINDOW=${WINDOW}s${IDLE:+ IDLE}"
echo "# variant agent_cpu_% sidekiq_cpu_% agent_us/job jobs/s"
for _ in $(seq "$REPS"); do
  run this "$BIN" "$GEM_LIB"
  if [ -n "${VS_BIN:-}" ]; then run vs "$VS_BIN" "${VS_GEM_LIB:-$GEM_LIB}"; fi
done
