# The benchmark's job: trivial work, one Redis INCR to count it. The first
# and the last of a run record their wall-clock time, so run.sh measures
# throughput from the first job to the last one (Sidekiq's boot excluded).
#
#   bench:done       jobs run so far
#   bench:first      Unix time at which the first job ran
#   bench:last       Unix time at which job number `total` ran
#   bench:first_cpu  the Sidekiq process's CPU time (s) at the first job
#   bench:last_cpu   and at job number `total`
#
# The CPU time per job is steadier than the throughput on a shared machine
# (time spent waiting for a core is not in it), and Sidekiq on trivial jobs
# is bound by its one process's CPU: what a middleware adds per job shows
# there first.
require "sidekiq"

# Quiet: Sidekiq's two log lines per job, and Debian's redis-rb 4.8 warning
# about Sidekiq 6.4's BRPOP call at every fetch, would make a run measure
# writes to its log more than jobs (and a log file on this VM's disk stalls
# now and then, a pipe to the agent does not).
Sidekiq.logger.level = Logger::WARN
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

# WORK_MS: CPU work each job does first (a busy loop), for jobs less
# trivial than an INCR: 0 by default.
WORK_SECONDS = Float(ENV.fetch("WORK_MS", "0")) / 1000

class NoopJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(total)
    if WORK_SECONDS.positive?
      until_t = ::Process.clock_gettime(::Process::CLOCK_THREAD_CPUTIME_ID) + WORK_SECONDS
      nil while ::Process.clock_gettime(::Process::CLOCK_THREAD_CPUTIME_ID) < until_t
    end
    now = ::Process.clock_gettime(::Process::CLOCK_REALTIME)
    Sidekiq.redis do |r|
      n = r.incr("bench:done")
      if n == 1 || n == total
        cpu = ::Process.clock_gettime(::Process::CLOCK_PROCESS_CPUTIME_ID)
        which = n == 1 ? "first" : "last"
        r.set("bench:#{which}_cpu", format("%.6f", cpu))
        r.set("bench:#{which}", format("%.6f", now))
      end
    end
  end
end
