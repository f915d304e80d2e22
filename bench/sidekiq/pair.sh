#!/usr/bin/env bash
# Two variants of the real Sidekiq side by side, at the same moment: the
# way to see a cost of 1% on a shared VM whose speed drifts by 20% from one
# minute to the next (run.sh runs variants one after the other, and the
# drift drowns such a cost).
#
#   bench/sidekiq/pair.sh                       # A=bare B=events REPS=10 WINDOW=8
#   A=bare B=dynocycle REPS=5 bench/sidekiq/pair.sh
#   WORK_MS=2 JOBS=5000 bench/sidekiq/pair.sh   # jobs that each use 2 ms of CPU
#   A=events_vs VS_GEM_LIB=/tmp/old/gem/lib bench/sidekiq/pair.sh  # an older gem against this one
#
# Variants (as in run.sh):
#   bare        sidekiq alone (jobs.rb)
#   bare_mw     sidekiq with a server middleware that only yields: what
#               Sidekiq's middleware chain costs any middleware
#   dynocycle   dynocycle run -- sidekiq ... (CHECK_SCHEDULE=@every 1s,
#               WORKER=auto: the Sidekiq reader polling Redis, never restarting)
#   events      the same with the gem's job events middleware (events_app.rb)
#   agent_mw    bare_mw under dynocycle: against events, only the gem differs
#   events_vs   events with the gem in VS_GEM_LIB (the gem/lib of another
#               commit, e.g. a `git worktree`): two versions of the gem
#
# Each rep starts a private redis-server per variant (free loopback ports,
# never 6379), fills each with JOBS trivial jobs, starts both workers at
# once, waits until both run jobs, then counts over the same WINDOW seconds
# each variant's jobs done and its Sidekiq process's CPU time. Both share the
# two cores, so each runs slower than alone; what is compared is B against A
# in the same window: jobs/s, and CPU µs per job. A dynocycle agent's own CPU
# is counted apart. Which variant starts first alternates between reps.
#
# Both Sidekiqs run on the same core (taskset), everything else (the
# redis-servers, the agents, this script) on the other: this VM's two
# vCPUs differ in speed from moment to moment by more than the cost looked
# for, and on one core the two take turns under the very same conditions.
# So B's figure is the cost inside Sidekiq's process (the middleware, its
# threads); the agent's share of the other core is the last column.
set -euo pipefail

A=${A:-bare}
B=${B:-events}
REPS=${REPS:-10}
WINDOW=${WINDOW:-8}
JOBS=${JOBS:-60000}
export WORK_MS=${WORK_MS:-0}
CONCURRENCY=${CONCURRENCY:-10}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$root/bench/lib.sh"
for tool in redis-server redis-cli sidekiq ruby go taskset; do
  command -v "$tool" >/dev/null || { echo "pair.sh: $tool not found (apt-get install redis-server ruby-sidekiq golang)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && CGO_ENABLED=0 go build -trimpath -o "$work/" ./cmd/dynocycle)

SIDEKIQ_CPU=$(($(nproc) - 1))
OTHER_CPU=0
[ "$SIDEKIQ_CPU" -gt 0 ] || { echo "pair.sh: needs two cores" >&2; exit 1; }
taskset -p -c "$OTHER_CPU" $$ >/dev/null

hz=$(getconf CLK_TCK)

# fill SLOT: a private redis-server holding JOBS jobs.
declare -A port worker
fill() {
  local slot=$1 p
  p=$(free_port)
  start_redis "$p" "$work" "$work/redis-$slot.log" "$OTHER_CPU"
  pids+=("$redis_pid")
  enqueue_jobs "$p" "$JOBS" $((JOBS + 1))
  port[$slot]=$p
}

# start VARIANT SLOT: the worker, on the slot's redis.
start() {
  local v=$1 slot=$2 p=${port[$2]} cmd
  local sk=(taskset -c "$SIDEKIQ_CPU" sidekiq -c "$CONCURRENCY" -t 5 -q default)
  local agent=(taskset -c "$OTHER_CPU" env MAX_RSS=100GB "CHECK_SCHEDULE=@every 1s" PLATFORM=local WORKER=sidekiq FLEET_SCOPE=bench "DYNO=worker.$slot" "$work/dynocycle" run --)
  case $v in
    bare) cmd=("${sk[@]}" -r "$here/jobs.rb") ;;
    dynocycle) cmd=("${agent[@]}" "${sk[@]}" -r "$here/jobs.rb") ;;
    events) cmd=("${agent[@]}" "${sk[@]}" -r "$here/events_app.rb") ;;
    bare_mw) cmd=("${sk[@]}" -r "$here/bare_middleware_app.rb") ;;
    agent_mw) cmd=("${agent[@]}" "${sk[@]}" -r "$here/bare_middleware_app.rb") ;;
    events_vs)
      [ -d "${VS_GEM_LIB:-}" ] || { echo "pair.sh: events_vs needs VS_GEM_LIB, a gem/lib directory" >&2; exit 2; }
      cmd=(env "GEM_LIB=$(cd "$VS_GEM_LIB" && pwd)" "${agent[@]}" "${sk[@]}" -r "$here/events_app.rb") ;;
    *) echo "pair.sh: unknown variant $v" >&2; exit 2 ;;
  esac
  REDIS_URL="redis://127.0.0.1:$p/0" "${cmd[@]}" >"$work/$v-$slot.log" 2>&1 &
  worker[$slot]=$!
  pids+=($!)
}
done_count() { redis-cli -p "${port[$1]}" get bench:done; }

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm), Sidekiqs on CPU $SIDEKIQ_CPU, the rest on CPU $OTHER_CPU, ruby $(ruby -e 'print RUBY_VERSION'), sidekiq $(ruby -r sidekiq -e 'print Sidekiq::VERSION' 2>/dev/null)"
echo "# A=$A B=$B REPS=$REPS WINDOW=${WINDOW}s JOBS=$JOBS CONCURRENCY=$CONCURRENCY WORK_MS=$WORK_MS"
echo "# rep A_jobs/s B_jobs/s B_vs_A_% A_cpu_us/job B_cpu_us/job B_vs_A_cpu_% B_agent_cpu_%"
: >"$work/results"
for rep in $(seq "$REPS"); do
  pids=()
  fill 1
  fill 2
  if ((rep % 2)); then start "$A" 1; start "$B" 2; else start "$B" 2; start "$A" 1; fi
  deadline=$((SECONDS + 120))
  until [ -n "$(done_count 1)" ] && [ -n "$(done_count 2)" ]; do
    [ $SECONDS -lt $deadline ] || { echo "pair.sh: a worker did not start; logs in $work" >&2; tail "$work"/*.log >&2; exit 1; }
    sleep 0.1
  done
  sleep 1 # both past their first jobs
  skA=$(sidekiq_pid "${worker[1]}"); skB=$(sidekiq_pid "${worker[2]}")
  n1a=$(done_count 1); n1b=$(done_count 2); c1a=$(ticks "$skA"); c1b=$(ticks "$skB"); g1=$(ticks "${worker[2]}")
  t1=$(date +%s.%N)
  sleep "$WINDOW"
  n2a=$(done_count 1); n2b=$(done_count 2); c2a=$(ticks "$skA"); c2b=$(ticks "$skB"); g2=$(ticks "${worker[2]}")
  t2=$(date +%s.%N)
  left=$(( JOBS - (n2a > n2b ? n2a : n2b) ))
  [ "$left" -gt 0 ] || { echo "pair.sh: a worker ran out of jobs within the window; raise JOBS" >&2; exit 1; }
  agent=0
  case $B in dynocycle | events | agent_mw | events_vs) agent=$(awk -v d="$((g2 - g1))" -v hz="$hz" -v a="$t1" -v b="$t2" 'BEGIN { printf "%.2f", 100 * (d / hz) / (b - a) }') ;; esac
  awk -v r="$rep" -v na="$((n2a - n1a))" -v nb="$((n2b - n1b))" -v ca="$((c2a - c1a))" -v cb="$((c2b - c1b))" \
      -v hz="$hz" -v a="$t1" -v b="$t2" -v g="$agent" 'BEGIN {
    ra = na / (b - a); rb = nb / (b - a); ua = 1e6 * ca / hz / na; ub = 1e6 * cb / hz / nb
    printf "%d %.1f %.1f %+.2f %.1f %.1f %+.2f %s\n", r, ra, rb, 100 * (rb - ra) / ra, ua, ub, 100 * (ub - ua) / ua, g
  }' | tee -a "$work/results"
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
done

ruby -e '
  rows = File.readlines(ARGV[0]).map { |l| l.split.map(&:to_f) }
  t = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13, 2.12, 2.11, 2.10, 2.09]
  ci = lambda do |xs|
    m = xs.sum / xs.size
    sd = Math.sqrt(xs.sum { |x| (x - m)**2 } / [xs.size - 1, 1].max)
    [m, t[[xs.size - 2, t.size - 1].min] * sd / Math.sqrt(xs.size), xs.sort[xs.size / 2]]
  end
  tp = ci.(rows.map { |r| r[3] }); cpu = ci.(rows.map { |r| r[6] }); ag = ci.(rows.map { |r| r[7] })
  puts
  puts format("%s against %s, %d reps side by side:", ARGV[2], ARGV[1], rows.size)
  puts format("  throughput  %+.2f%% ± %.2f (95%% interval of the mean; median %+.2f%%)", *tp)
  puts format("  CPU per job %+.2f%% ± %.2f (median %+.2f%%)", *cpu)
  puts format("  agent CPU   %.2f%% of one core (mean)", ag[0]) if %w[dynocycle events agent_mw events_vs].include?(ARGV[2])
' "$work/results" "$A" "$B"
