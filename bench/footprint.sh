#!/usr/bin/env bash
# The agent's own memory while it watches a worker at 1 s checks.
# Usage: bench/footprint.sh [SECONDS]   (default 60; builds bin/ if needed)
# With REDIS_URL set, the agent also runs its Redis fleet heartbeat.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
[ -x bin/dynocycle ] && [ -x bin/bloater ] || make build >/dev/null

# A worker that never crosses the limit, so the agent only watches.
MAX_RSS=4GB CHECK_SCHEDULE='@every 1s' LOG_LEVEL=warn BLOAT_MB=1 JOB_MS=1000 \
  bin/dynocycle run -- bin/bloater >/dev/null 2>&1 &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent 2>/dev/null || true' EXIT

sleep "$secs"
# Measure only a live agent that still supervises a live worker: a process
# that exited (or a zombie) would give an empty or meaningless row.
state=$(awk '/^State/ {print $2}' /proc/$agent/status 2>/dev/null || true)
case "$state" in
  ""|Z|X) echo "footprint: the agent (pid $agent) is not alive after ${secs}s (state '${state}')" >&2; exit 1 ;;
esac
worker=$(pgrep -P "$agent" -x bloater || true)
if [ -z "$worker" ] || [ "$(awk '/^State/ {print $2}' /proc/$worker/status 2>/dev/null)" = Z ]; then
  echo "footprint: the agent (pid $agent) has no live bloater worker after ${secs}s" >&2; exit 1
fi
rss=$(awk '/^VmRSS/ {print $2}' /proc/$agent/status)
hwm=$(awk '/^VmHWM/ {print $2}' /proc/$agent/status)
anon=$(awk '/^RssAnon/ {print $2}' /proc/$agent/status)
file=$(awk '/^RssFile/ {print $2}' /proc/$agent/status)
threads=$(awk '/^Threads/ {print $2}' /proc/$agent/status)
cpu=$(awk '{print $14 + $15}' /proc/$agent/stat)
hz=$(getconf CLK_TCK)
awk -v s="$secs" -v r="$rss" -v h="$hwm" -v a="$anon" -v f="$file" -v t="$threads" -v c="$cpu" -v hz="$hz" 'BEGIN {
  printf "agent after %ss of 1s checks: VmRSS %.1f MB (anonymous %.1f MB, file-backed %.1f MB: the binary'"'"'s own pages), peak (VmHWM) %.1f MB, %s threads, CPU %.2fs (%.2f%% of one core)\n", s, r/1024, a/1024, f/1024, h/1024, t, c/hz, 100*c/hz/s }'
