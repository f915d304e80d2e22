# frozen_string_literal: true

require "socket"

module Dynocycle
  # ForkCount counts the forks that made this process, through
  # Process._fork, which Kernel#fork, Process.fork and IO.popen("-") call
  # (Ruby 3.1+). ActiveSupport hooks forks the same way. Installed only
  # under dynocycle, by the first enabled Events.
  module ForkCount
    @value = 0
    @installed = false
    class << self
      attr_reader :value

      def forked
        @value += 1
      end

      # install reports whether forks are counted from now on.
      def install
        return @installed if @installed || !::Process.respond_to?(:_fork)

        ::Process.singleton_class.prepend(Hook)
        @installed = true
      end
    end

    # Hook is prepended to Process's singleton class.
    module Hook
      def _fork
        pid = super
        ForkCount.forked if pid.zero?
        pid
      end
    end
  end

  # Events reports job starts and ends to the dynocycle agent that runs this
  # worker, one line per event on the unix socket named by DYNOCYCLE_EVENTS
  # (the protocol is in the README). Outside dynocycle the variable is unset
  # and every call returns at once.
  #
  # Nothing here may slow or fail a job: writes never block (a full socket
  # drops the connection, and the agent falls back to Sidekiq's heartbeats
  # until the next hello), every error is swallowed, and a dead agent is
  # retried at most once per RETRY_AFTER seconds.
  #
  # What it costs a job, measured with the real Sidekiq and 10 threads
  # (bench/sidekiq/pair.sh), shaped this code:
  # - A job's thread queues its job's fields, made once per job, on a
  #   queue of starts or of ends (Thread::Queue takes no Ruby lock); the
  #   write makes the lines. Making each line on the job's thread cost it
  #   about a tenth more inside Sidekiq (bench/events/bracket_pair.sh).
  #   A job's end writes what is queued when FLUSH_EVERY has passed since
  #   the last write: one write for a burst of jobs. A start never writes:
  #   the agent acts on ends, and the start goes with the next write. A
  #   write per event cost more than all the rest of a job's events, and
  #   each write wakes the agent (its CPU is about one wake-up per write).
  # - No Mutex#lock on a job's path: taken on every job, CRuby handed its
  #   lock between Sidekiq's threads about twice per job (8% of Sidekiq's
  #   throughput on trivial jobs). The write takes the lock with try_lock;
  #   a thread that finds it taken leaves its job to the writer.
  # - No writer thread: busy job threads keep a background thread from
  #   CRuby's lock for up to 100 ms at a time, and the queue then grew into
  #   Ruby's old generation. A small thread only writes what was left
  #   queued when nothing was written for LINGER, and sleeps without a
  #   timer while nothing is queued.
  # - FLUSH_EVERY is 30 ms: the agent's CPU is about one wake-up per write
  #   (a write every 5 ms cost it 3 to 7% of a core), and a write, which
  #   wakes the agent on the other core, costs the job's thread more than
  #   the rest of its job's events (about 50 µs on this VM; from 20 ms to
  #   30 ms took 8% off the gem's time per job). 30 ms keeps a job's end
  #   within about 33 ms of its memory sample (p99), under the 50 ms goal.
  # Once the process is quiet every line is written at once: then the agent
  # counts a drained worker the moment its last job ends.
  class Events
    ENV_VAR = "DYNOCYCLE_EVENTS"
    RETRY_AFTER = 1.0
    FLUSH_EVERY = 0.03
    LINGER = 0.03
    CLASS_WORDS_MAX = 1000
    SPACE = /\s/.freeze

    # The process's reporter, made once when the integration is installed.
    def self.default
      @default ||= new(ENV.fetch(ENV_VAR, nil))
    end

    attr_reader :path

    def initialize(path, flush_every: FLUSH_EVERY, linger: LINGER)
      @path = path.nil? || path.empty? ? nil : path
      @flush_every = flush_every
      @linger = linger
      @class_words = {}
      @pid = nil
      @forks = nil
      @fork_hooked = @path ? ForkCount.install : false
    end

    def enabled?
      !@path.nil?
    end

    # hello connects now (at the worker's startup), so the agent knows the
    # process before its first job.
    def hello
      flush
    end

    # start reports a job's start and returns what finish takes to report
    # its end: the line's job fields (the job id and class, each one word),
    # made once per job.
    def start(jid, klass)
      return unless @path

      own_process if !@fork_hooked || @forks != ForkCount.value
      jid = word(jid) if !jid.is_a?(String) || jid.match?(SPACE)
      fields = "#{jid} #{@class_words[klass] || class_word(klass)}\n"
      @starts << fields
      unpark if @parked
      fields
    rescue StandardError
      # Never into the job. Exception (Sidekiq::Shutdown, Interrupt) is left
      # alone: Sidekiq raises it into a job to stop it.
      nil
    end

    # finish reports the end of the job start returned fields for, and
    # writes what is queued if it is time.
    def finish(fields)
      return unless fields

      own_process if !@fork_hooked || @forks != ForkCount.value
      @ends << fields
      write_due if @quiet || ::Process.clock_gettime(::Process::CLOCK_MONOTONIC) - @written_at >= @flush_every
      unpark if @parked && queued?
    rescue StandardError
      nil
    end

    # quiet says no job starts in this process from now on, and from now on
    # each line is written at once.
    def quiet
      return unless @path

      own_process
      @quiet = true
      @quiet_line = "quiet #{@pid}\n"
      flush
    rescue StandardError
      nil
    end

    # flush writes what is queued now (connecting first if need be).
    def flush
      return unless @path

      own_process
      @write_lock.synchronize { write_queued }
    rescue StandardError
      nil
    end

    # in_flight is this process's count of jobs between start and finish,
    # once what is queued is written.
    def in_flight
      return 0 unless @path

      flush
      @in_flight
    end

    private

    # own_process makes the queues, the socket and the lingering-line
    # thread this process's own when it is not the process that made them:
    # a fork (Sidekiq 8's swarm, or a job that forks). An event calls it
    # when the fork count moved (Ruby's fork hook, 3.1+: a compare, inline
    # in start and finish, where a method call costs a job more), or every
    # time without the hook (a getpid).
    def own_process
      @forks = ForkCount.value if @fork_hooked
      pid = ::Process.pid
      forked(pid) if pid != @pid
    end

    def forked(pid)
      # Not the parent's socket: the parent goes on writing to it.
      @sock = nil
      @starts = Thread::Queue.new
      @ends = Thread::Queue.new
      @quiet_line = nil
      @start_prefix = "start #{pid} "
      @end_prefix = "end #{pid} "
      @write_lock = Mutex.new
      @written_at = 0.0
      @in_flight = 0
      @retry_at = 0.0
      @quiet = false
      @pid = pid
      @wake = Thread::Queue.new
      @parked = false
      Thread.new { run_linger }
    end

    # write_due writes what is queued: at once when quiet, else unless
    # another thread is at it.
    def write_due
      if @quiet
        flush
      elsif @write_lock.try_lock
        begin
          write_queued
        ensure
          @write_lock.unlock
        end
      end
    end

    # run_linger writes the lines left queued when no job's end wrote them
    # within LINGER of the last write. It wakes LINGER after the last write,
    # not on a fixed beat: under load the ends write, and a write of the
    # starts alone in between would only wake the agent once more. With
    # nothing queued it parks until a job queues a line: woken 50 times a
    # second, it made an idle Sidekiq use four times the CPU.
    def run_linger
      Thread.current.report_on_exception = false
      Thread.current.name = "dynocycle-events"
      loop do
        park unless queued?
        wait = @written_at + @linger - clock
        sleep(wait.positive? ? wait : @linger)
        next if !queued? || clock - @written_at < @linger || !@write_lock.try_lock

        begin
          write_queued
        ensure
          @write_lock.unlock
        end
      rescue StandardError
        nil
      end
    end

    # park waits for unpark. @parked is set before the queues are looked at
    # and read by a job's thread after it queued its job, so a job queued
    # meanwhile is never left waiting; at worst a spare wake-up is queued
    # and the loop goes round once more.
    def park
      @parked = true
      @wake.pop unless queued?
      @parked = false
    end

    def unpark
      @parked = false
      @wake << true
    end

    def queued?
      !(@starts.empty? && @ends.empty?)
    end

    # write_queued makes the lines of what is queued, counts the jobs, and
    # writes the lines in one write: the starts, then the ends, then the
    # quiet. The ends and the quiet are those queued when it began, so each
    # follows every start queued before it: a job's start always goes
    # before its end, and no start after the quiet. Without an agent to talk
    # to the jobs are counted and let go: the next hello carries the count.
    # Called with @write_lock.
    def write_queued
      @written_at = clock
      ends = @ends.size
      quiet_line = @quiet_line
      sock = @sock || connect
      text = sock && +""
      until @starts.empty?
        fields = @starts.pop
        text << @start_prefix << fields if text
        @in_flight += 1
      end
      ends.times do
        fields = @ends.pop
        text << @end_prefix << fields if text
        @in_flight -= 1
      end
      @quiet_line = nil if quiet_line
      return unless text

      text << quiet_line if quiet_line
      drop unless text.empty? || put(sock, text)
    end

    # connect opens the socket and says hello with the count of jobs in
    # flight before the lines still queued, or returns nil (no agent, or too
    # soon since the last try).
    def connect
      now = clock
      return nil if now < @retry_at

      @retry_at = now + RETRY_AFTER
      sock = Socket.new(:UNIX, :STREAM)
      if sock.connect_nonblock(Socket.pack_sockaddr_un(@path), exception: false) != 0 ||
         !put(sock, "hello #{@pid} #{@in_flight}\n")
        sock.close
        return nil
      end
      @sock = sock
    rescue StandardError
      sock&.close
      nil
    end

    # put writes the whole text or nothing it can count on: a partial write
    # leaves a cut line on the stream, so the caller closes the connection
    # and the agent knows it lost a line. write_nonblock, not
    # sendmsg_nonblock with MSG_NOSIGNAL: sendmsg lets go of CRuby's global
    # lock around the call, and with busy job threads waiting for it each
    # write then cost a hand-over (bench/sidekiq/pair.sh). A dead agent
    # still gives EPIPE and no signal: Ruby handles SIGPIPE itself, even
    # after trap("PIPE", "DEFAULT"); only "SYSTEM_DEFAULT" would let it kill.
    def put(sock, text)
      sock.write_nonblock(text, exception: false) == text.bytesize
    rescue StandardError
      false
    end

    def drop
      @sock&.close
    rescue StandardError
      nil
    ensure
      @sock = nil
      @retry_at = clock + RETRY_AFTER
    end

    def clock
      ::Process.clock_gettime(::Process::CLOCK_MONOTONIC)
    end

    # word keeps a field one word: job ids and class names have no spaces,
    # but a line must not be broken by one that has.
    def word(value)
      value.to_s.gsub(SPACE, "_")
    end

    # class_word is word for a class name, remembered: a worker runs a few
    # hundred classes at most, and the hash lookup in the hot path is
    # cheaper than the check. Bounded all the same, in case a class name is
    # made per job. Two threads may both miss and both store: the same word.
    def class_word(klass)
      @class_words.clear if @class_words.size >= CLASS_WORDS_MAX
      @class_words[klass] = word(klass)
    end
  end
end
