#!/usr/bin/env bash
# Throughput of trivial jobs in the real Sidekiq, bare and watched:
#
#   bare        sidekiq alone
#   dynocycle   dynocycle run -- sidekiq ...   (CHECK_SCHEDULE=@every 1s, WORKER=auto:
#               the Sidekiq worker reading Redis, limit too high to restart)
#   events      the same, with the gem's job events middleware (events_app.rb):
#               a sample after job ends, at most one per 15 ms
#   ps_gc       sidekiq with a server middleware that after every job runs
#               `ps -o rss= -p PID` and GC.start (rss_check_middleware.rb)
#   proc        the same middleware reading /proc/self/status, no GC
#
# Usage (from the repository root):
#   bench/sidekiq/run.sh          # JOBS=10000 PS_GC_JOBS=500 REPS=7 CONCURRENCY=10
#   JOBS=3000 REPS=3 VARIANTS="bare dynocycle" bench/sidekiq/run.sh
#
# ps_gc runs about 60 times slower than the others, so it gets PS_GC_JOBS
# jobs (jobs/s is a rate; a few hundred jobs are enough to measure it).
#
# It starts its own redis-server on a free loopback port (never 6379), builds
# dynocycle into a temporary directory, and runs the variants interleaved
# (rep 1: bare, dynocycle, ps_gc, proc; rep 2: ...) so that drift in the
# machine's load spreads over all of them. For each run: enqueue JOBS jobs,
# start the worker, time the first job to the last (Sidekiq's boot excluded),
# stop it with TERM. Prints one line per run and a summary: jobs/s mean, sd,
# min, max, and the cost of each variant against bare, in throughput and in
# the Sidekiq process's CPU time per job (jobs.rb).
set -euo pipefail

JOBS=${JOBS:-10000}
PS_GC_JOBS=${PS_GC_JOBS:-500}
REPS=${REPS:-7}
CONCURRENCY=${CONCURRENCY:-10}
VARIANTS=${VARIANTS:-"bare dynocycle ps_gc proc"}
TIMEOUT=${TIMEOUT:-600} # seconds per run

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$root/bench/lib.sh"
for tool in redis-server redis-cli sidekiq ruby go; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found (apt-get install redis-server ruby-sidekiq golang)" >&2; exit 1; }
done

work=$(mktemp -d)
redis_pid=""
worker_pid=""
cleanup() {
  [ -n "$worker_pid" ] && kill -KILL -- "-$worker_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && CGO_ENABLED=0 go build -trimpath -o "$work/" ./cmd/dynocycle)

port=$(free_port)
start_redis "$port" "$work" "$work/redis.log"
url="redis://127.0.0.1:$port/0"
rcli() { redis-cli -p "$port" "$@"; }

enqueue() { enqueue_jobs "$port" "$1" "$1"; } # COUNT

# run_one VARIANT: prints "VARIANT jobs_per_s seconds sidekiq_cpu_us_per_job [agent_cpu_percent]".
run_one() {
  local v=$1 cmd n=$JOBS
  [ "$v" = ps_gc ] && n=$PS_GC_JOBS
  rcli flushall >/dev/null
  enqueue "$n"
  local sk=(sidekiq -c "$CONCURRENCY" -t 5 -q default)
  case $v in
    bare) cmd=(setsid "${sk[@]}" -r "$here/jobs.rb") ;;
    dynocycle) cmd=(setsid env MAX_RSS=100GB "CHECK_SCHEDULE=@every 1s" PLATFORM=local WORKER=auto FLEET_SCOPE=bench
                    "$work/dynocycle" run -- "${sk[@]}" -r "$here/jobs.rb") ;;
    events) cmd=(setsid env MAX_RSS=100GB "CHECK_SCHEDULE=@every 1s" PLATFORM=local WORKER=auto FLEET_SCOPE=bench
                 "$work/dynocycle" run -- "${sk[@]}" -r "$here/events_app.rb") ;;
    ps_gc) cmd=(setsid "${sk[@]}" -r "$here/rss_check_middleware.rb") ;;
    proc) cmd=(setsid env RSS_CHECK=proc "${sk[@]}" -r "$here/rss_check_middleware.rb") ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  local t0 ticks0
  t0=$(date +%s.%N)
  REDIS_URL=$url DYNO=worker.1 "${cmd[@]}" >"$work/$v.log" 2>&1 &
  worker_pid=$!
  ticks0=$(ticks "$worker_pid")
  local deadline=$((SECONDS + TIMEOUT))
  until [ -n "$(rcli get bench:last)" ]; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$worker_pid" 2>/dev/null; then
      echo "run.sh: $v did not finish $n jobs (done: $(rcli get bench:done)); log:" >&2
      tail -20 "$work/$v.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  local extra=""
  if [ "$v" = dynocycle ] || [ "$v" = events ]; then
    # The agent's own CPU (not its child's) over its whole life so far.
    local ticks1 hz t1
    ticks1=$(ticks "$worker_pid"); hz=$(getconf CLK_TCK); t1=$(date +%s.%N)
    extra=$(awk -v d="$((ticks1 - ticks0))" -v hz="$hz" -v a="$t0" -v b="$t1" 'BEGIN { printf " %.3f", 100 * (d / hz) / (b - a) }')
    # ticks0 is ~0: the agent had just been spawned.
  fi
  kill -TERM "$worker_pid"
  wait "$worker_pid" || { echo "run.sh: $v exited $?" >&2; exit 1; }
  worker_pid=""
  local first last first_cpu last_cpu
  first=$(rcli get bench:first); last=$(rcli get bench:last)
  first_cpu=$(rcli get bench:first_cpu); last_cpu=$(rcli get bench:last_cpu)
  awk -v v="$v" -v n="$n" -v f="$first" -v l="$last" -v fc="$first_cpu" -v lc="$last_cpu" -v x="$extra" \
    'BEGIN { printf "%s %.1f %.3f %.2f%s\n", v, (n - 1) / (l - f), l - f, 1e6 * (lc - fc) / (n - 1), x }'
}

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), $(nproc) cores, $(ruby -e 'print RUBY_VERSION'), sidekiq $(ruby -r sidekiq -e 'print Sidekiq::VERSION' 2>/dev/null), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
echo "# JOBS=$JOBS PS_GC_JOBS=$PS_GC_JOBS REPS=$REPS CONCURRENCY=$CONCURRENCY VARIANTS=\"$VARIANTS\""
echo "# variant jobs/s seconds sidekiq_cpu_us/job [agent_cpu_%_of_one_core]"
: >"$work/results"
for rep in $(seq "$REPS"); do
  for v in $VARIANTS; do
    run_one "$v" >>"$work/results" # not in a subshell: cleanup must see worker_pid
    tail -1 "$work/results"
  done
done

ruby "$here/summary.rb" "$work/results" "$VARIANTS"
