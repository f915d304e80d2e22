# The benchmark's jobs (bench/sidekiq/jobs.rb) with the gem, timing the
# gem's own calls on each job's thread (CLOCK_THREAD_CPUTIME_ID) inside the
# real Sidekiq; printed to stderr when Sidekiq exits:
#
#   REDIS_URL=... WORK_MS=2 dynocycle run -- sidekiq -c 10 -r ./bench/events/timed_app.rb
#
# start and finish are ns per job, one clock read subtracted; a write's cost
# is counted inside finish and shown apart. Compare with the same calls in a
# hot loop (bench/events/middleware.rb).
require_relative "../sidekiq/jobs"
$LOAD_PATH.unshift File.expand_path("../../gem/lib", __dir__)
require "dynocycle/sidekiq"

module TimedGem
  CLOCK = ::Process::CLOCK_THREAD_CPUTIME_ID
  TOTALS = Hash.new(0)

  def self.now = ::Process.clock_gettime(CLOCK, :nanosecond)

  # Middleware is prepended to the gem's, timing its two calls.
  module Middleware
    def call(_job_instance, job, _queue)
      t0 = TimedGem.now
      t1 = TimedGem.now
      fields = @events.start(job["jid"], job["wrapped"] || job["class"])
      t2 = TimedGem.now
      begin
        yield
      ensure
        t3 = TimedGem.now
        @events.finish(fields)
        t4 = TimedGem.now
        TOTALS[:clock] += t1 - t0
        TOTALS[:start] += t2 - t1
        TOTALS[:finish] += t4 - t3
        TOTALS[:jobs] += 1
      end
    end
  end

  # Events counts the writes and their cost.
  module Events
    def write_queued
      t = TimedGem.now
      super
    ensure
      TOTALS[:writes] += 1
      TOTALS[:write_ns] += TimedGem.now - t
    end
  end
end
Dynocycle::Sidekiq::Middleware.prepend(TimedGem::Middleware)
Dynocycle::Events.prepend(TimedGem::Events)

at_exit do
  t = TimedGem::TOTALS
  n = t[:jobs].to_f
  next if n.zero?

  warn format("timed_app: jobs=%d start=%.0f finish=%.0f ns/job, writes/job=%.3f, %.0f ns/write",
              n, (t[:start] - t[:clock]) / n, (t[:finish] - t[:clock]) / n,
              t[:writes] / n, t[:write_ns].to_f / [t[:writes], 1].max)
end
