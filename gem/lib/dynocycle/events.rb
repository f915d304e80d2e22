# frozen_string_literal: true

require "socket"

module Dynocycle
  # Events reports job starts and ends to the dynocycle agent that runs this
  # worker, one line per event on the unix socket named by DYNOCYCLE_EVENTS
  # (the protocol is in the gem's README). Outside dynocycle the variable is
  # unset and every call returns at once.
  #
  # Nothing here may slow or fail a job: writes never block (a full socket
  # drops the connection, and the agent falls back to Sidekiq's heartbeats
  # until the next hello), every error is swallowed, and a dead agent is
  # retried at most once per RETRY_AFTER seconds.
  class Events
    ENV_VAR = "DYNOCYCLE_EVENTS"
    RETRY_AFTER = 1.0

    # The process's reporter, made once when the integration is installed.
    def self.default
      @default ||= new(ENV.fetch(ENV_VAR, nil))
    end

    attr_reader :path

    def initialize(path)
      @path = path.nil? || path.empty? ? nil : path
      # One lock for the count and the socket: a hello must carry the count
      # that matches the lines after it, and lines of two threads must not
      # interleave.
      @lock = Mutex.new
      @pid = nil
      @sock = nil
      @in_flight = 0
      @retry_at = 0.0
    end

    def enabled?
      !@path.nil?
    end

    # hello connects now (at the worker's startup), so the agent knows the
    # process before its first job.
    def hello
      emit(nil, 0)
    end

    def start(jid, klass)
      emit("start", 1, jid, klass)
    end

    def finish(jid, klass)
      emit("end", -1, jid, klass)
    end

    def quiet
      emit("quiet", 0)
    end

    # in_flight is this process's count of jobs between start and finish.
    def in_flight
      @lock.synchronize { @in_flight }
    end

    private

    def emit(kind, delta, jid = nil, klass = nil)
      return unless @path

      @lock.synchronize do
        pid = ::Process.pid
        forked(pid) if pid != @pid
        # Connect first: the hello carries the count before this event.
        sock = @sock || connect(pid)
        @in_flight += delta
        if sock && kind
          line = jid ? "#{kind} #{pid} #{word(jid)} #{word(klass)}\n" : "#{kind} #{pid}\n"
          drop unless put(sock, line)
        end
      end
    rescue StandardError
      # Never into the job. Exception (Sidekiq::Shutdown, Interrupt) is left
      # alone: Sidekiq raises it into a job to stop it.
      nil
    end

    # After a fork (Sidekiq 8's swarm) the socket is the parent's: let it be,
    # and start this process's own count and connection.
    def forked(pid)
      @sock&.close if @pid
      @sock = nil
      @in_flight = 0
      @retry_at = 0.0
      @pid = pid
    end

    # connect opens the socket and says hello with the count of jobs in
    # flight, or returns nil (no agent, or too soon since the last try).
    def connect(pid)
      now = ::Process.clock_gettime(::Process::CLOCK_MONOTONIC)
      return nil if now < @retry_at

      @retry_at = now + RETRY_AFTER
      sock = Socket.new(:UNIX, :STREAM)
      if sock.connect_nonblock(Socket.pack_sockaddr_un(@path), exception: false) != 0 ||
         !put(sock, "hello #{pid} #{@in_flight}\n")
        sock.close
        return nil
      end
      @sock = sock
    rescue StandardError
      sock&.close
      nil
    end

    # put writes the whole line or nothing it can count on: a partial write
    # leaves a cut line on the stream, so the caller closes the connection
    # and the agent knows it lost a line. MSG_NOSIGNAL: a dead agent gives
    # EPIPE, never SIGPIPE, whatever the app did with the signal.
    def put(sock, line)
      sock.sendmsg_nonblock(line, Socket::MSG_NOSIGNAL, exception: false) == line.bytesize
    rescue StandardError
      false
    end

    def drop
      @sock&.close
    rescue StandardError
      nil
    ensure
      @sock = nil
      @retry_at = ::Process.clock_gettime(::Process::CLOCK_MONOTONIC) + RETRY_AFTER
    end

    # word keeps a field one word: job ids and class names have no spaces,
    # but a line must not be broken by one that has.
    def word(value)
      s = value.to_s
      s.match?(/\s/) ? s.gsub(/\s/, "_") : s
    end
  end
end
