# Enqueue jobs for the test app in jobs.rb.
#
#   REDIS_URL=redis://127.0.0.1:PORT/0 ruby examples/sidekiq/enqueue.rb COUNT [CLASS] [ARGS...]
#
# Enqueues COUNT jobs of CLASS (default BloatJob); job i gets the arguments
# [FIRST+i, ARGS...], where FIRST is $FIRST (default 1). Prints the jids.
require "sidekiq"

count = Integer(ARGV.fetch(0) { abort "usage: enqueue.rb COUNT [CLASS] [ARGS...]" })
klass = ARGV.fetch(1, "BloatJob")
extra = ARGV.drop(2).map { |a| Float(a, exception: false) || a }
extra = extra.map { |a| a.is_a?(Float) && a == a.floor ? a.to_i : a }
first = Integer(ENV.fetch("FIRST", "1"))
queue = ENV.fetch("QUEUE", "default")

args = (0...count).map { |i| [first + i, *extra] }
args.each_slice(1000) do |slice|
  jids = Sidekiq::Client.push_bulk("class" => klass, "queue" => queue, "args" => slice)
  puts jids
end
