# A worker that is not Sidekiq and reports its jobs with dynocycle's job
# events protocol (README, "The protocol, for other workers"), as a Resque
# hook or a Python worker would. Each job keeps BLOAT_MB; USR2 quiets it:
# it finishes the job under way, writes its quiet line and idles until TERM.
require "socket"

$stdout.sync = true
bloat = Integer(ENV.fetch("BLOAT_MB", "4"))
quiet = false
trap("USR2") { quiet = true }
trap("TERM") { exit!(0) }

sock = UNIXSocket.new(ENV.fetch("DYNOCYCLE_EVENTS"))
sock.write("hello #{Process.pid} 0\n")
puts "events worker pid=#{Process.pid}"
kept = []
n = 0
until quiet
  n += 1
  sock.write("start #{Process.pid} j#{n} BloatJob\n")
  kept << ("x" * (bloat << 20))
  sleep 0.1
  sock.write("end #{Process.pid} j#{n} BloatJob\n")
end
sock.write("quiet #{Process.pid}\n")
puts "events worker pid=#{Process.pid} quiet after #{n} jobs"
sleep
