# Helpers the benchmark scripts share; source it (bash). Each benchmark
# runs its own redis-server on a free loopback port, never the shared 6379.

# free_port: a free loopback TCP port.
free_port() { ruby -rsocket -e 's = TCPServer.new("127.0.0.1", 0); puts s.addr[1]; s.close'; }

# start_redis PORT DIR LOG [CPU]: a redis-server that keeps nothing on
# disk, pinned to CPU if given, answering PING when this returns; its pid
# in $redis_pid.
start_redis() {
  local port=$1 dir=$2 log=$3 cpu=${4:-}
  local cmd=(redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir")
  [ -z "$cpu" ] || cmd=(taskset -c "$cpu" "${cmd[@]}")
  "${cmd[@]}" >"$log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "bench: redis-server on port $port did not start; log:" >&2
  tail "$log" >&2
  return 1
}

# ticks PID: the user and system clock ticks the process has used so far.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# sidekiq_pid PID: the Sidekiq process of a started worker: the child of
# the dynocycle agent PID that is not its /bin/sh guard, or PID itself when
# Sidekiq runs bare.
sidekiq_pid() {
  local kid
  for kid in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    [ "$(cat /proc/"$kid"/comm 2>/dev/null)" = sh ] || { echo "$kid"; return; }
  done
  echo "$1"
}

# enqueue_jobs PORT N TOTAL: N NoopJobs (bench/sidekiq/jobs.rb) whose
# argument is TOTAL, the count at which the job run as number TOTAL records
# the time and CPU of the last (give N + 1 for never).
enqueue_jobs() {
  REDIS_URL="redis://127.0.0.1:$1/0" ruby -r sidekiq -e '
    n = Integer(ARGV[0])
    total = Integer(ARGV[1])
    Array.new(n) { [total] }.each_slice(1000) { |s| Sidekiq::Client.push_bulk("class" => "NoopJob", "args" => s) }
  ' "$2" "$3" 2>/dev/null
}
