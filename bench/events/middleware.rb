# The cost per job of the dynocycle Sidekiq middleware, against a bare
# middleware that only yields, and against what the prior art pays per job
# (`ps -o rss=` forked, or /proc/self/status read). The events go to a real
# unix socket read by another process (not this one's GVL), as in a dyno.
#
#   ruby bench/events/middleware.rb [N]      (from the repository root)
require "socket"
require "tmpdir"
$LOAD_PATH.unshift File.expand_path("../../gem/lib", __dir__)
require "dynocycle/events"
require "sidekiq"
require "dynocycle/sidekiq"

N = Integer(ARGV[0] || 200_000)
PS_N = 200

class BareMiddleware
  def call(_worker, _job, _queue)
    yield
  end
end

BATCH = 100

# per_call_ns times n calls in batches with a pause between them (not
# timed): back to back, a 1 us job writes faster than any reader, the socket
# fills and the middleware rightly drops the connection. A unix stream
# socket holds about 200 small unread writes (each counts ~1 KB against the
# 208 KB send buffer), so a batch is 100 jobs (200 lines). Real jobs are not
# 1 us apart; the pause lets the reader keep up so every event is written.
#
# With events, a batch during which the connection was dropped anyway (the
# reader, on this shared machine, was not scheduled in time) is not counted:
# its calls after the drop skipped the write and were cheaper. The drops are
# reported.
$dropped_batches = 0

def per_call_ns(n, events = nil)
  GC.start
  total = 0
  counted = 0
  (n / BATCH).times do
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
    BATCH.times { |i| yield i }
    dt = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - t0
    sleep 0.001
    if events && !events.instance_variable_get(:@sock)
      $dropped_batches += 1
      sleep Dynocycle::Events::RETRY_AFTER
      events.hello
      next
    end
    total += dt
    counted += BATCH
  end
  total.fdiv(counted)
end

Dir.mktmpdir do |dir|
  path = File.join(dir, "events.sock")
  server = UNIXServer.new(path)
  # The reader takes every connection (the middleware reconnects after a
  # drop) and reads each to its end.
  reader = fork do
    trap(:TERM) { exit!(0) }
    loop do
      conn = server.accept
      Thread.new(conn) do |c|
        buf = +""
        loop { c.sysread(1 << 20, buf) }
      rescue EOFError, IOError, SystemCallError
        c.close
      end
    end
  end
  server.close
  events = Dynocycle::Events.new(path)
  events.hello
  job = { "jid" => "0123456789abcdef01234567", "class" => "HardJob" }
  worker = Object.new
  mw = Dynocycle::Sidekiq::Middleware
  bare = BareMiddleware

  # Sidekiq makes a new middleware instance per job: so do these.
  per_call_ns(N / 10) { bare.new.call(worker, job, "default") { nil } } # warm up
  per_call_ns(N / 10, events) { mw.new(events).call(worker, job, "default") { nil } }
  results = Hash.new { |h, k| h[k] = [] }
  5.times do
    results[:bare] << per_call_ns(N) { bare.new.call(worker, job, "default") { nil } }
    results[:events] << per_call_ns(N, events) { mw.new(events).call(worker, job, "default") { nil } }
  end
  results[:proc_status] << per_call_ns(N / 20) { File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i }
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
  PS_N.times { `ps -o rss= -p #{Process.pid}`.to_i }
  results[:ps_fork] << (Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - t0).fdiv(PS_N)

  med = ->(a) { a.sort[a.size / 2] }
  puts format("# ruby %s, sidekiq %s, N=%d (ps: %d), median of %d runs", RUBY_VERSION, Sidekiq::VERSION, N, PS_N, 5)
  puts format("bare middleware (yield only)        %10.0f ns/job", med[results[:bare]])
  puts format("dynocycle events middleware         %10.0f ns/job", med[results[:events]])
  puts format("  its cost over bare                %10.0f ns/job", med[results[:events]] - med[results[:bare]])
  puts format("  batches of %d not counted: dropped %d", BATCH, $dropped_batches)
  puts format("read /proc/self/status per job      %10.0f ns/job", results[:proc_status][0])
  puts format("fork `ps -o rss=` per job (prior art) %8.0f ns/job", results[:ps_fork][0])
  Process.kill(:TERM, reader) rescue nil
  Process.wait(reader)
end
