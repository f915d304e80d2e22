# frozen_string_literal: true

# The Sidekiq integration: in the Sidekiq initializer,
#
#   require "dynocycle/sidekiq"
#
# installs a server middleware that tells the dynocycle agent running this
# worker when each job starts and ends, and hooks that tell it when the
# process is up and when it quiets. The agent then samples memory the moment
# a job ends and knows a quiet worker is drained the moment its last job
# ends. Outside dynocycle (DYNOCYCLE_EVENTS unset: a console, a test, a
# worker run by hand) it installs nothing. Works with Sidekiq 6.4 to 8.x:
# configure_server, server_middleware, Chain#prepend and on(:startup/:quiet)
# are the same in all of them.
require "sidekiq"
require_relative "events"

module Dynocycle
  module Sidekiq
    # Middleware reports each job's start and end. It is first in the chain
    # (prepended), so a job counts as in flight for as long as any other
    # middleware runs around it, and its end is reported however it ends.
    # Sidekiq makes a new instance per job; the state is the process's
    # Events.
    class Middleware
      def initialize(events = Dynocycle::Events.default)
        @events = events
      end

      def call(_job_instance, job, _queue)
        # ActiveJob wraps the app's class; name the app's.
        fields = @events.start(job["jid"], job["wrapped"] || job["class"])
        begin
          yield
        ensure
          @events.finish(fields)
        end
      end
    end

    # install adds the middleware and the lifecycle hooks to Sidekiq's
    # server configuration; false when not running under dynocycle.
    def self.install(events = Dynocycle::Events.default)
      return false unless events.enabled?

      ::Sidekiq.configure_server do |config|
        config.server_middleware { |chain| chain.prepend(Middleware, events) }
        config.on(:startup) { events.hello }
        # Sidekiq fires :quiet once every processor has stopped fetching:
        # from then on no new job starts in this process.
        config.on(:quiet) { events.quiet }
      end
      true
    end
  end
end

Dynocycle::Sidekiq.install
