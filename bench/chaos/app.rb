# The chaos harness's Sidekiq app: the test jobs of examples/sidekiq/jobs.rb,
# with their bookkeeping made to ride out a Redis outage.
#
# The harness stops redis-server on purpose. A job that finishes while Redis
# is down, or still LOADING its data after the restart, would fail to record
# itself (BloatJob has retry: false) and count as lost, although nothing
# dynocycle does is involved; so Record waits for Redis to come back (up to
# two minutes) instead of failing the job.
require_relative "../../examples/sidekiq/jobs"

module Record
  class << self
    alias_method :started_once, :started
    alias_method :done_once, :done

    def started(n) = patiently { started_once(n) }
    def done(n) = patiently { done_once(n) }

    def patiently
      deadline = ::Process.clock_gettime(::Process::CLOCK_MONOTONIC) + 120
      begin
        yield
      rescue Redis::BaseConnectionError, Redis::CommandError => e
        # A restarted Redis answers LOADING while it reads its data back.
        raise if e.is_a?(Redis::CommandError) && !e.message.start_with?("LOADING")
        raise if ::Process.clock_gettime(::Process::CLOCK_MONOTONIC) > deadline
        sleep 0.5
        retry
      end
    end
  end
end
