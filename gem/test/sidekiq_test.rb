# frozen_string_literal: true

# The Sidekiq middleware and the events it writes:
#   ruby -Ilib test/sidekiq_test.rb      (from gem/; gem_test.go runs it)
require "minitest/autorun"
require "socket"
require "timeout"
require "tmpdir"
require "dynocycle/sidekiq"

class SidekiqMiddlewareTest < Minitest::Test
  def setup
    @dir = Dir.mktmpdir
    @path = File.join(@dir, "events.sock")
  end

  def teardown
    @server&.close
    FileUtils.remove_entry(@dir)
  end

  def listen
    @server = UNIXServer.new(@path)
  end

  # lines reads n lines from the one connection the test's agent accepts.
  def lines(conn, n)
    Timeout.timeout(5) { Array.new(n) { conn.gets } }
  end

  def run_job(events, job = { "jid" => "j1", "class" => "HardJob" })
    Dynocycle::Sidekiq::Middleware.new(events).call(Object.new, job, "default") { yield if block_given? }
  end

  def test_outside_dynocycle_does_nothing
    events = Dynocycle::Events.new(nil)
    refute events.enabled?
    refute Dynocycle::Sidekiq.install(events)
    assert_equal :result, run_job(events) { :result }
    assert_equal 0, events.in_flight
    assert_nil Dynocycle::Events.new("").path
  end

  def test_reports_start_and_end_after_hello
    listen
    events = Dynocycle::Events.new(@path)
    events.hello
    conn = @server.accept
    pid = Process.pid
    assert_equal ["hello #{pid} 0\n"], lines(conn, 1)
    in_job = nil
    run_job(events) { in_job = events.in_flight }
    assert_equal 1, in_job
    assert_equal 0, events.in_flight
    run_job(events, { "jid" => "j2", "class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",
                      "wrapped" => "Mailer Job" })
    events.quiet
    assert_equal ["start #{pid} j1 HardJob\n", "end #{pid} j1 HardJob\n",
                  "start #{pid} j2 Mailer_Job\n", "end #{pid} j2 Mailer_Job\n", "quiet #{pid}\n"], lines(conn, 5)
  end

  def test_a_failing_job_still_ends_and_its_error_goes_through
    listen
    events = Dynocycle::Events.new(@path)
    assert_raises(ZeroDivisionError) { run_job(events) { 1 / 0 } }
    conn = @server.accept
    pid = Process.pid
    # Connected by the first event, with the count before it.
    assert_equal ["hello #{pid} 0\n", "start #{pid} j1 HardJob\n", "end #{pid} j1 HardJob\n"], lines(conn, 3)
  end

  def test_no_agent_never_fails_or_blocks_a_job
    events = Dynocycle::Events.new(@path) # nothing listens
    Timeout.timeout(5) do
      1000.times { |i| assert_equal i, run_job(events) { i } }
    end
    assert_equal 0, events.in_flight
  end

  def test_an_agent_that_dies_never_fails_a_job
    listen
    events = Dynocycle::Events.new(@path)
    events.hello
    @server.accept.close
    @server.close
    @server = nil
    Timeout.timeout(5) do
      100.times { |i| assert_equal i, run_job(events) { i } }
    end
  end

  def test_a_full_socket_drops_the_connection_and_the_next_hello_has_the_count
    listen
    events = Dynocycle::Events.new(@path)
    events.hello
    conn = @server.accept
    # The agent does not read: the socket fills; a job never waits on it.
    Timeout.timeout(10) do
      100_000.times { |i| run_job(events, { "jid" => "j#{i}", "class" => "FillJob" }) }
    end
    # A job running now, when the connection was dropped: the reconnect's
    # hello must count it.
    conn.read # to EOF: the writer closed the connection it could not write to
    started = Queue.new
    release = Queue.new
    job = Thread.new { run_job(events, { "jid" => "long", "class" => "LongJob" }) { started << 1; release.pop } }
    started.pop
    sleep Dynocycle::Events::RETRY_AFTER # the reconnect waits this long after the drop
    events.quiet
    conn2 = @server.accept
    pid = Process.pid
    assert_equal ["hello #{pid} 1\n", "quiet #{pid}\n"], lines(conn2, 2)
    release << 1
    job.join
    assert_equal ["end #{pid} long LongJob\n"], lines(conn2, 1)
  end

  def test_a_forked_process_has_its_own_connection_and_count
    listen
    events = Dynocycle::Events.new(@path)
    started = Queue.new
    release = Queue.new
    job = Thread.new { run_job(events) { started << 1; release.pop } }
    started.pop
    parent = @server.accept
    child = fork do
      events.hello
      exit!(0)
    end
    Process.wait(child)
    from_child = @server.accept
    assert_equal ["hello #{child} 0\n"], lines(from_child, 1)
    release << 1
    job.join
    pid = Process.pid
    assert_equal ["hello #{pid} 0\n", "start #{pid} j1 HardJob\n", "end #{pid} j1 HardJob\n"], lines(parent, 3)
  end
  def test_lines_of_many_threads_keep_each_jobs_order
    listen
    events = Dynocycle::Events.new(@path)
    events.hello
    conn = @server.accept
    # Read as the agent does, while the jobs run. The lines (about 60 KB)
    # also fit in the socket's buffer, so a reader kept waiting for the GVL
    # cannot make the writer drop the connection.
    reader = Thread.new { lines(conn, 1 + 8 * 150 * 2) }
    threads = Array.new(8) do |t|
      Thread.new do
        150.times { |i| run_job(events, { "jid" => "t#{t}j#{i}", "class" => "ManyJob" }) { Thread.pass if i.odd? } }
      end
    end
    threads.each(&:join)
    events.flush
    got = reader.value
    assert_equal "hello #{Process.pid} 0\n", got.shift
    seen = {}
    got.each do |line|
      kind, pid, jid, klass = line.split
      assert_equal [Process.pid.to_s, "ManyJob"], [pid, klass]
      if kind == "start"
        refute seen.key?(jid), "#{jid} started twice"
        seen[jid] = :running
      else
        assert_equal :running, seen[jid], "#{jid} ended before it started"
        seen[jid] = :done
      end
    end
    assert_equal 1200, seen.size
    assert(seen.values.all?(:done))
    assert_equal 0, events.in_flight
  end

  def test_a_last_line_is_written_without_another_event
    listen
    # Never due by time: only the lingering-line thread can write them.
    events = Dynocycle::Events.new(@path, flush_every: 3600, linger: 0.01)
    events.hello
    conn = @server.accept
    run_job(events)
    pid = Process.pid
    assert_equal ["hello #{pid} 0\n", "start #{pid} j1 HardJob\n", "end #{pid} j1 HardJob\n"], lines(conn, 3)
  end

  def test_an_idle_reporter_waits_without_a_timer_and_wakes_for_a_line
    listen
    # Never due by time: only the lingering-line thread can write the lines.
    events = Dynocycle::Events.new(@path, flush_every: 3600, linger: 0.01)
    events.hello
    conn = @server.accept
    pid = Process.pid
    assert_equal ["hello #{pid} 0\n"], lines(conn, 1)
    # Parked on its queue, not sleeping on a timer, while nothing is queued.
    wake = events.instance_variable_get(:@wake)
    Timeout.timeout(5) { sleep 0.01 until wake.num_waiting == 1 }
    run_job(events)
    assert_equal ["start #{pid} j1 HardJob\n", "end #{pid} j1 HardJob\n"], lines(conn, 2)
    Timeout.timeout(5) { sleep 0.01 until wake.num_waiting == 1 }
  end

  def test_a_write_puts_the_starts_first_then_the_ends_then_the_quiet
    listen
    # Nothing due by time or lingered: the quiet writes all at once.
    events = Dynocycle::Events.new(@path, flush_every: 3600, linger: 3600)
    events.hello
    conn = @server.accept
    a = events.start("a", "A")
    b = events.start("b", "B")
    events.finish(b)
    c = events.start("c", "C")
    events.finish(a)
    events.quiet
    pid = Process.pid
    # Each job's start before its end, and every start before the quiet.
    assert_equal ["hello #{pid} 0\n", "start #{pid} a A\n", "start #{pid} b B\n", "start #{pid} c C\n",
                  "end #{pid} b B\n", "end #{pid} a A\n", "quiet #{pid}\n"], lines(conn, 7)
    events.finish(c)
    assert_equal ["end #{pid} c C\n"], lines(conn, 1)
    assert_equal 0, events.in_flight
  end

  def test_after_quiet_each_line_is_written_at_once
    listen
    # Neither due by time nor lingered: only the quiet makes them go.
    events = Dynocycle::Events.new(@path, flush_every: 3600, linger: 3600)
    started = Queue.new
    release = Queue.new
    job = Thread.new { run_job(events) { started << 1; release.pop } }
    started.pop
    events.quiet
    conn = @server.accept
    pid = Process.pid
    assert_equal ["hello #{pid} 0\n", "start #{pid} j1 HardJob\n", "quiet #{pid}\n"], lines(conn, 3)
    release << 1
    job.join
    assert_equal ["end #{pid} j1 HardJob\n"], lines(conn, 1)
  end
end
