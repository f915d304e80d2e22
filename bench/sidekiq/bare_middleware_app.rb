# The benchmark's jobs behind a server middleware that only yields (the
# `bare_mw` variant of pair.sh): what Sidekiq's middleware chain costs any
# middleware, before the middleware does anything.
require_relative "jobs"

class BareMiddleware
  def call(_job_instance, _job, _queue)
    yield
  end
end

Sidekiq.configure_server do |config|
  config.server_middleware { |chain| chain.prepend(BareMiddleware) }
end
