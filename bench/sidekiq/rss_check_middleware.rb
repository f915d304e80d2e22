# What the in-process memory killers do, reduced to their cost: a Sidekiq
# server middleware that after every job measures the process's RSS by
# shelling out to `ps -o rss= -p PID` (GitLab's legacy MemoryKiller,
# Discourse, memmon) and runs a full GC (sidekiq-worker-killer's `gc: true`
# does this before it acts). The limit is never reached, so it never kills:
# what is measured is only the price of checking.
#
#   sidekiq -r bench/sidekiq/rss_check_middleware.rb ...   (loads jobs.rb too)
#
# RSS_CHECK=proc reads /proc/self/status instead of running ps, and skips
# the GC (sidekiq-worker-killer below its limit: get_process_mem on Linux).
require_relative "jobs"

class RssCheckMiddleware
  MAX_RSS_KB = 64 * 1024 * 1024 # never reached

  def initialize
    @proc = ENV["RSS_CHECK"] == "proc"
  end

  def call(_worker, _job, _queue)
    yield
  ensure
    if @proc
      rss = File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i
    else
      rss = `ps -o rss= -p #{::Process.pid}`.to_i
      GC.start(full_mark: true, immediate_sweep: true)
    end
    raise "RSS #{rss} KB over the limit" if rss > MAX_RSS_KB
  end
end

Sidekiq.configure_server do |config|
  config.server_middleware { |chain| chain.add RssCheckMiddleware }
end
