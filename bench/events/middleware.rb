# The cost per job of the dynocycle Sidekiq middleware, against a bare
# middleware that only yields, and against what the prior art pays per job
# (`ps -o rss=` forked, or /proc/self/status read).
#
#   bench/events/run.sh runs it under the real agent:
#     WORKER=sidekiq ... dynocycle run -- ruby bench/events/middleware.rb N
#   so the events go to the agent's own reader, in another process, as in a
#   dyno. Run by hand (DYNOCYCLE_EVENTS unset), it starts a stand-in reader
#   process that reads every line as it comes.
#
# Method: batches of 100 jobs, bare and events alternating, a 1 ms pause
# after each batch (not timed). Back to back, a 1 us job writes faster than
# any reader, the socket fills and the middleware rightly drops the
# connection; real jobs are not 1 us apart. Alternating batches share the
# machine's drift, and the medians over thousands of batches shrug off the
# batches in which this process lost its core. A batch with events in which
# the connection was dropped anyway (the reader was not scheduled in time)
# is not counted: its calls after the drop skipped the write and were
# cheaper. The drops are reported.
require "socket"
require "tmpdir"
require "fileutils"
$LOAD_PATH.unshift File.expand_path("../../gem/lib", __dir__)
require "dynocycle/events"
require "sidekiq"
require "dynocycle/sidekiq"

N = Integer(ARGV[0] || 200_000)
PS_N = 200
BATCH = 100

class BareMiddleware
  def call(_worker, _job, _queue)
    yield
  end
end

def now_ns = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)

def batch_ns
  t0 = now_ns
  BATCH.times { |i| yield i }
  dt = now_ns - t0
  sleep 0.001
  dt.fdiv(BATCH)
end

def median(a) = a.sort[a.size / 2]

# stand_in_reader forks a process that reads each connection to its end:
# the bench without an agent.
def stand_in_reader(path)
  server = UNIXServer.new(path)
  pid = fork do
    trap(:TERM) { exit!(0) }
    loop do
      Thread.new(server.accept) do |c|
        buf = +""
        loop { c.sysread(1 << 20, buf) }
      rescue EOFError, IOError, SystemCallError
        c.close
      end
    end
  end
  server.close
  pid
end

dir = Dir.mktmpdir
path = ENV.fetch(Dynocycle::Events::ENV_VAR, nil)
reader = nil
unless path
  path = File.join(dir, "events.sock")
  reader = stand_in_reader(path)
end
events = Dynocycle::Events.new(path)
events.hello
abort "middleware.rb: cannot connect to #{path}" unless events.instance_variable_get(:@sock)

job = { "jid" => "0123456789abcdef01234567", "class" => "HardJob" }
worker = Object.new
# Sidekiq makes a new middleware instance per job: so do these.
bare = -> { BareMiddleware.new.call(worker, job, "default") { nil } }
with_events = -> { Dynocycle::Sidekiq::Middleware.new(events).call(worker, job, "default") { nil } }

dropped = 0
run = lambda do |batches, record|
  batches.times do
    b = batch_ns { bare.call }
    e = batch_ns { with_events.call }
    if events.instance_variable_get(:@sock).nil?
      dropped += 1
      sleep Dynocycle::Events::RETRY_AFTER
      events.hello
      next
    end
    record&.call(b, e)
  end
end

run.call(N / BATCH / 10, nil) # warm up
GC.start
bare_ns = []
events_ns = []
diff_ns = []
run.call(N / BATCH, lambda { |b, e|
  bare_ns << b
  events_ns << e
  diff_ns << e - b
})

proc_status = batch_ns { File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i }
t0 = now_ns
PS_N.times { `ps -o rss= -p #{Process.pid}`.to_i }
ps_fork = (now_ns - t0).fdiv(PS_N)

puts format("# ruby %s, sidekiq %s, %d jobs each in batches of %d, events read by %s",
            RUBY_VERSION, Sidekiq::VERSION, bare_ns.size * BATCH, BATCH,
            reader ? "a stand-in reader process" : "the dynocycle agent")
puts format("bare middleware (yield only)          %10.0f ns/job (median batch)", median(bare_ns))
puts format("dynocycle events middleware           %10.0f ns/job (median batch)", median(events_ns))
puts format("  its cost over bare                  %10.0f ns/job (median of paired batches)", median(diff_ns))
puts format("  batches not counted: dropped %d of %d", dropped, N / BATCH)
puts format("read /proc/self/status per job        %10.0f ns/job", proc_status)
puts format("fork `ps -o rss=` per job (prior art) %10.0f ns/job", ps_fork)
if reader
  Process.kill(:TERM, reader)
  Process.wait(reader)
end
FileUtils.rm_rf(dir)
