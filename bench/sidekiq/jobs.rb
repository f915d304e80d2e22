# The benchmark's job: trivial work, one Redis INCR to count it. The first
# and the last of a run record their wall-clock time, so run.sh measures
# throughput from the first job to the last one (Sidekiq's boot excluded).
#
#   bench:done   jobs run so far
#   bench:first  Unix time at which the first job ran
#   bench:last   Unix time at which job number `total` ran
require "sidekiq"

class NoopJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(total)
    now = ::Process.clock_gettime(::Process::CLOCK_REALTIME)
    Sidekiq.redis do |r|
      n = r.incr("bench:done")
      r.set("bench:first", format("%.6f", now)) if n == 1
      r.set("bench:last", format("%.6f", now)) if n == total
    end
  end
end
