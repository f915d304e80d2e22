# How much slower a little Ruby runs after the thread has been busy
# elsewhere, on this machine: the reason the gem's calls cost 5 to 10 times
# more inside Sidekiq (bench/events/bracket_pair.sh) than in a loop
# (bench/events/middleware.rb).
#
#   taskset -c 1 ruby bench/events/cold_probe.rb [GAP_SECONDS...]   # 0 0.002 0.02
#
# For each gap: 300 times, busy-wait GAP seconds on the monotonic clock (a
# vDSO read, no system call), then time on the thread's CPU clock (a system
# call) nothing, a system call, and a string built into a hash. The empty
# bracket is the cost of reading the clock itself.
def thread_ns = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID, :nanosecond)
def mono_ns = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)

PROBES = {
  "empty" => -> {},
  "a system call" => -> { Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) },
  "a string into a hash" => -> { {}["end #{Process.pid} j1 HardJob\n"] = 1 },
}.freeze

gaps = ARGV.empty? ? %w[0 0.002 0.02] : ARGV
gaps.each do |gap|
  gap_ns = Float(gap) * 1e9
  PROBES.each do |name, probe|
    total = 0
    300.times do
      t0 = thread_ns
      probe.call
      total += thread_ns - t0
      until_ns = mono_ns + gap_ns
      nil while mono_ns < until_ns
    end
    puts format("gap %-6s %-22s %6.1f µs", gap, name, total / 300e3)
  end
end
