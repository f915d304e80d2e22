# Summarizes run.sh's result lines
# ("variant jobs/s seconds sidekiq_cpu_us/job [agent_cpu_%]") as Markdown
# tables: throughput, and the Sidekiq process's CPU time per job.
#
#   ruby bench/sidekiq/summary.rb RESULTS "bare dynocycle ps_gc proc"
rows = File.readlines(ARGV[0]).map(&:split)
order = ARGV[1].split

def stats(xs)
  mean = xs.sum / xs.size
  sd = xs.size > 1 ? Math.sqrt(xs.sum { |x| (x - mean)**2 } / (xs.size - 1)) : 0.0
  { xs: xs, mean: mean, sd: sd, min: xs.min, max: xs.max, n: xs.size, median: xs.sort[xs.size / 2] }
end

# Student's t at 97.5% for n-1 degrees of freedom (a 95% interval), up to 30.
T975 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
        2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05].freeze

# paired: each rep runs every variant back to back, so the difference to
# the same rep's bare run cancels slow drift in the machine's load. Returns
# the mean of the paired differences in % of bare and its 95% interval.
def paired(xs, base, sign)
  d = xs.zip(base).map { |x, b| sign * 100 * (x - b) / b }
  s = stats(d)
  half = s[:n] > 1 ? T975[[s[:n] - 2, T975.size - 1].min] * s[:sd] / Math.sqrt(s[:n]) : Float::NAN
  format("%+.1f%% ± %.1f", s[:mean], half)
end

column = ->(v, i) { rows.select { |r| r[0] == v && r[i] }.map { |r| r[i].to_f } }

[["jobs/s", 1, -1, "throughput lost vs bare"], ["Sidekiq CPU µs/job", 3, 1, "CPU per job added vs bare"]].each do |name, i, sign, what|
  base = order.include?("bare") ? column.("bare", i) : nil
  puts
  puts "| variant | runs | #{name} mean | sd | median | min | max | #{what} (paired mean, 95% interval) |"
  puts "|---|---:|---:|---:|---:|---:|---:|---:|"
  order.each do |v|
    xs = column.(v, i)
    next if xs.empty?

    s = stats(xs)
    cost = base && v != "bare" ? paired(xs, base, sign) : "—"
    puts format("| %s | %d | %.1f | %.1f (%.1f%%) | %.1f | %.1f | %.1f | %s |", v, s[:n], s[:mean], s[:sd],
                100 * s[:sd] / s[:mean], s[:median], s[:min], s[:max], cost)
  end
end
%w[dynocycle events].each do |v|
  cpu = column.(v, 4)
  next if cpu.empty?

  puts
  puts format("%s: agent CPU (its own, not Sidekiq's) mean %.2f%% of one core (max %.2f%%) over each run",
              v, cpu.sum / cpu.size, cpu.max)
end
