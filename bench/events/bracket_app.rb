# The benchmark's jobs (bench/sidekiq/jobs.rb) with a middleware under test
# between two timing middlewares, inside the real Sidekiq: the cost of the
# middleware on the job's thread, its own calls and Sidekiq's two hops of
# its chain, whatever this VM makes of code run between two of Sidekiq's
# jobs. bracket_pair.sh runs two of them side by side. Printed to stderr
# when Sidekiq exits:
#
#   GEM_LIB=bare|<a gem/lib> dynocycle run -- sidekiq -c 10 -r ./bench/events/bracket_app.rb
#
# GEM_LIB=bare: a middleware that only yields, for the floor (the timing
# and the chain's hops); else the gem's integration loaded from that
# directory (its Sidekiq middleware first in the chain).
require_relative "../sidekiq/jobs"

module Bracket
  CLOCK = ::Process::CLOCK_THREAD_CPUTIME_ID
  TOTALS = Hash.new(0)

  def self.now = ::Process.clock_gettime(CLOCK, :nanosecond)

  # Outer is first in the chain; Inner last. The job's thread CPU time
  # from Outer to Inner, and back, is the middlewares' between them.
  class Outer
    def call(_job_instance, job, _queue)
      job["bracket_outer"] = Bracket.now
      yield
    ensure
      t = Bracket.now
      if (inner = job["bracket_inner"])
        TOTALS[:ns] += (inner[0] - job["bracket_outer"]) + (t - inner[1])
        TOTALS[:jobs] += 1
      end
    end
  end

  class Inner
    def call(_job_instance, job, _queue)
      started = Bracket.now
      yield
    ensure
      job["bracket_inner"] = [started, Bracket.now]
    end
  end

  class YieldOnly
    def call(_job_instance, _job, _queue)
      yield
    end
  end
end

lib = ENV.fetch("GEM_LIB")
if lib == "bare"
  Sidekiq.configure_server { |config| config.server_middleware { |chain| chain.prepend(Bracket::YieldOnly) } }
else
  $LOAD_PATH.unshift lib
  require "dynocycle/sidekiq"
end
Sidekiq.configure_server do |config|
  config.server_middleware do |chain|
    chain.prepend(Bracket::Outer)
    chain.add(Bracket::Inner)
  end
end

at_exit do
  n = Bracket::TOTALS[:jobs]
  warn format("bracket: jobs=%d ns/job=%.0f", n, Bracket::TOTALS[:ns].fdiv(n)) if n.positive?
end
