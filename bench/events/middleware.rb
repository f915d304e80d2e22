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

def per_call_ns(n)
  GC.start
  t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
  n.times { |i| yield i }
  (Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - t0).fdiv(n)
end

Dir.mktmpdir do |dir|
  path = File.join(dir, "events.sock")
  server = UNIXServer.new(path)
  reader = fork do
    conn = server.accept
    buf = +""
    nil while conn.read(65_536, buf)
    exit!(0)
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
  per_call_ns(N / 10) { mw.new(events).call(worker, job, "default") { nil } }
  results = Hash.new { |h, k| h[k] = [] }
  5.times do
    results[:bare] << per_call_ns(N) { bare.new.call(worker, job, "default") { nil } }
    results[:events] << per_call_ns(N) { mw.new(events).call(worker, job, "default") { nil } }
  end
  # Every event was written: the connection was never dropped (a dropped one
  # would make the calls cheaper, and the figure a lie).
  abort "middleware.rb: the events connection was dropped" unless events.instance_variable_get(:@sock)
  results[:proc_status] << per_call_ns(N / 10) { File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i }
  results[:ps_fork] << per_call_ns(PS_N) { `ps -o rss= -p #{Process.pid}`.to_i }

  med = ->(a) { a.sort[a.size / 2] }
  puts format("# ruby %s, sidekiq %s, N=%d (ps: %d), median of %d runs", RUBY_VERSION, Sidekiq::VERSION, N, PS_N, 5)
  puts format("bare middleware (yield only)        %10.0f ns/job", med[results[:bare]])
  puts format("dynocycle events middleware         %10.0f ns/job", med[results[:events]])
  puts format("  its cost over bare                %10.0f ns/job", med[results[:events]] - med[results[:bare]])
  puts format("read /proc/self/status per job      %10.0f ns/job", results[:proc_status][0])
  puts format("fork `ps -o rss=` per job (prior art) %8.0f ns/job", results[:ps_fork][0])
  Process.kill(:TERM, reader) rescue nil
  Process.wait(reader)
end
