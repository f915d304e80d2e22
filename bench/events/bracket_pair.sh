#!/usr/bin/env bash
# The cost of the gem's middleware on the job's thread inside the real
# Sidekiq, two versions side by side (from the repository root):
#
#   bench/events/bracket_pair.sh bare gem/lib           # REPS=4 WINDOW=10 WORK_MS=2
#   bench/events/bracket_pair.sh /tmp/old/gem/lib gem/lib
#
# Each argument is a gem/lib directory (a `git worktree` of another commit)
# or `bare`, a middleware that only yields. Each rep starts two
# redis-servers (free loopback ports, never 6379) holding jobs of WORK_MS of
# CPU, and two `sidekiq -c 10 -r bench/events/bracket_app.rb` under two
# `dynocycle run` agents at once, both Sidekiqs on the last core and the
# rest on the first (as bench/sidekiq/pair.sh does: on one core the two
# take turns under the same conditions). After WINDOW seconds it stops
# them and prints each one's ns per job (bracket_app.rb) and B less A.
# Which starts first alternates between reps.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
source bench/lib.sh
A=${1:?usage: bracket_pair.sh LIB_A LIB_B (a gem/lib directory or bare)}
B=${2:?usage: bracket_pair.sh LIB_A LIB_B (a gem/lib directory or bare)}
REPS=${REPS:-4}
WINDOW=${WINDOW:-10}
JOBS=${JOBS:-20000}
export WORK_MS=${WORK_MS:-2}
for tool in redis-server redis-cli sidekiq ruby go taskset; do
  command -v "$tool" >/dev/null || { echo "bracket_pair.sh: $tool not found (apt-get install redis-server ruby-sidekiq golang)" >&2; exit 1; }
done
abs() { [ "$1" = bare ] && echo bare || (cd "$1" && pwd); }
A=$(abs "$A")
B=$(abs "$B")

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
CGO_ENABLED=0 go build -trimpath -o "$work/dynocycle" ./cmd/dynocycle
sidekiq_cpu=$(($(nproc) - 1))
[ "$sidekiq_cpu" -gt 0 ] || { echo "bracket_pair.sh: needs two cores" >&2; exit 1; }

# fill: a private redis-server holding JOBS jobs; prints its port.
fill() {
  local p
  p=$(free_port)
  start_redis "$p" "$work" "$work/redis-$p.log" 0 >&2
  pids+=("$redis_pid")
  enqueue_jobs "$p" "$JOBS" $((JOBS + 1))
  echo "$p"
}
# start LIB PORT LOG: the agent and its Sidekiq; the agent's pid in $started.
start() {
  env GEM_LIB="$1" REDIS_URL="redis://127.0.0.1:$2/0" MAX_RSS=100GB "CHECK_SCHEDULE=@every 1s" PLATFORM=local \
    WORKER=sidekiq FLEET_SCOPE=bench "DYNO=worker.$2" \
    taskset -c 0 "$work/dynocycle" run -- taskset -c "$sidekiq_cpu" \
    sidekiq -c 10 -t 5 -q default -r "$root/bench/events/bracket_app.rb" >"$3" 2>&1 &
  started=$!
  pids+=($!)
}
cost() { sed -n 's/^bracket: .*ns\/job=\([0-9]*\).*/\1/p' "$1"; }

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), ruby $(ruby -e 'print RUBY_VERSION'), sidekiq $(ruby -r sidekiq -e 'print Sidekiq::VERSION' 2>/dev/null), WORK_MS=$WORK_MS WINDOW=${WINDOW}s"
echo "# A=$A"
echo "# B=$B"
echo "# rep A_ns/job B_ns/job B-A"
for rep in $(seq "$REPS"); do
  pa=$(fill)
  pb=$(fill)
  if ((rep % 2)); then
    start "$A" "$pa" "$work/a.log"; agent_a=$started
    start "$B" "$pb" "$work/b.log"; agent_b=$started
  else
    start "$B" "$pb" "$work/b.log"; agent_b=$started
    start "$A" "$pa" "$work/a.log"; agent_a=$started
  fi
  sleep "$WINDOW"
  left=$((JOBS - $(redis-cli -p "$pa" get bench:done) ))
  kill -TERM "$agent_a" "$agent_b"
  wait "$agent_a" "$agent_b" || true
  [ "$left" -gt 0 ] || { echo "bracket_pair.sh: a worker ran out of jobs within the window; raise JOBS" >&2; exit 1; }
  a=$(cost "$work/a.log")
  b=$(cost "$work/b.log")
  [ -n "$a" ] && [ -n "$b" ] || { echo "bracket_pair.sh: no figure; logs:" >&2; tail -5 "$work"/*.log >&2; exit 1; }
  echo "$rep $a $b $((b - a))"
  for p in "$pa" "$pb"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
done
