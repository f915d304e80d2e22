# A tiny Sidekiq app for dynocycle's tests (plain Ruby, no Rails).
#
#   REDIS_URL=redis://127.0.0.1:PORT/0 DYNO=worker.1 \
#     sidekiq -r ./examples/sidekiq/jobs.rb -c 5 -t 5 -q default
#
# Each job records in Redis what happened to it, so a test can check that
# every enqueued job completed exactly where it expects:
#   dynocycle:test:started  SET of job numbers that began running
#   dynocycle:test:done     SET of job numbers that completed
#   dynocycle:test:pid      HASH job number -> pid of the Sidekiq that completed it
#   dynocycle:test:starts   LIST of "n pid start", one per run that began
#   dynocycle:test:spans    LIST of "n pid start end", one per run that completed
#   dynocycle:test:lifecycle LIST of "pid quiet|shutdown time": when each
#                           Sidekiq began to quiet (TSTP, or TERM without one)
#                           and to shut down (TERM)
# Times are Unix seconds (wall clock, microseconds). A run that began but has
# no span was cut short (Sidekiq handed the job back at shutdown, or was killed).
require "sidekiq"

# Memory retained by BloatJob for the life of the process, like a leak or a
# fragmented heap that never gives pages back.
$retained = []

module Record
  def self.now
    format("%.6f", ::Process.clock_gettime(::Process::CLOCK_REALTIME))
  end

  # started records the run and reports whether it is the job's first; the
  # start time is kept for done.
  def self.started(n)
    Thread.current[:dynocycle_start] = start = now
    Sidekiq.redis do |r|
      r.rpush("dynocycle:test:starts", "#{n} #{::Process.pid} #{start}")
      r.sadd?("dynocycle:test:started", n.to_s)
    end
  end

  def self.done(n)
    span = "#{n} #{::Process.pid} #{Thread.current[:dynocycle_start]} #{now}"
    Sidekiq.redis do |r|
      r.multi do |m|
        m.sadd?("dynocycle:test:done", n.to_s)
        m.hset("dynocycle:test:pid", n.to_s, ::Process.pid.to_s)
        m.rpush("dynocycle:test:spans", span)
      end
    end
  end
end

# BloatJob retains mb megabytes, optionally holds them for secs seconds
# first, and records its number on completion.
class BloatJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(n, mb = 5, secs = 0)
    Record.started(n)
    # A fresh string per job, touched so the pages are really resident.
    $retained << ("x" * (mb.to_i * 1024 * 1024))
    sleep(secs.to_f) if secs.to_f > 0
    Record.done(n)
  end
end

# SlowJob sleeps secs seconds, then records its number. When it runs again
# after Sidekiq handed it back to its queue at shutdown (its number is
# already in dynocycle:test:started), it finishes quickly, so a test of the
# hand-back does not wait out the long sleep twice.
class SlowJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(n, secs)
    first = Record.started(n)
    sleep(first ? secs.to_f : 0.1)
    Record.done(n)
  end
end

# Lifecycle events, so a test can tell which runs were in flight when a
# Sidekiq process got TERM (Sidekiq fires :shutdown right as it handles it).
Sidekiq.configure_server do |config|
  %i[quiet shutdown].each do |event|
    config.on(event) do
      Sidekiq.redis { |r| r.rpush("dynocycle:test:lifecycle", "#{::Process.pid} #{event} #{Record.now}") }
    end
  end
end
