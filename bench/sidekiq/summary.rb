# Summarizes run.sh's result lines ("variant jobs/s seconds [agent_cpu_%]")
# as a Markdown table.
#
#   ruby bench/sidekiq/summary.rb RESULTS "bare dynocycle ps_gc proc"
rows = File.readlines(ARGV[0]).map(&:split)
order = ARGV[1].split
stats = order.to_h do |v|
  xs = rows.select { |r| r[0] == v }.map { |r| r[1].to_f }
  mean = xs.sum / xs.size
  sd = xs.size > 1 ? Math.sqrt(xs.sum { |x| (x - mean)**2 } / (xs.size - 1)) : 0.0
  [v, { xs: xs, mean: mean, sd: sd, min: xs.min, max: xs.max, n: xs.size, median: xs.sort[xs.size / 2] }]
end
# Paired: each rep runs every variant back to back, so the ratio to the
# same rep's bare run cancels slow drift in the machine's load.
paired = ->(v) do
  r = stats[v][:xs].zip(stats["bare"][:xs]).map { |x, b| 100 * (b - x) / b }.sort
  r[r.size / 2]
end
base = stats["bare"]
puts
puts "| variant | runs | jobs/s mean | sd | median | min | max | cost vs bare (means) | median of paired costs |"
puts "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
order.each do |v|
  s = stats[v]
  cost = base && v != "bare" ? format("%+.1f%%", 100 * (base[:mean] - s[:mean]) / base[:mean]) : "—"
  pc = base && v != "bare" ? format("%+.1f%%", paired.(v)) : "—"
  puts format("| %s | %d | %.0f | %.0f (%.1f%%) | %.0f | %.0f | %.0f | %s | %s |", v, s[:n], s[:mean], s[:sd], 100 * s[:sd] / s[:mean], s[:median], s[:min], s[:max], cost, pc)
end
cpu = rows.select { |r| r[0] == "dynocycle" && r[3] }.map { |r| r[3].to_f }
unless cpu.empty?
  puts
  puts format("dynocycle agent CPU (its own, not Sidekiq's): mean %.3f%% of one core (max %.3f%%) over each run", cpu.sum / cpu.size, cpu.max)
end
