# The test app of examples/sidekiq/jobs.rb with the gem's Sidekiq
# integration, as an app's initializer would require it.
require_relative "../../examples/sidekiq/jobs"
$LOAD_PATH.unshift File.expand_path("../../gem/lib", __dir__)
require "dynocycle/sidekiq"

# ChainJob records the server middleware chain it ran in, so a test can see
# whether the integration installed itself.
class ChainJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform
    chain = Sidekiq.server_middleware.entries.map { |e| e.klass.to_s }
    Sidekiq.redis { |r| r.rpush("dynocycle:test:chain", chain.empty? ? "-" : chain.join(",")) }
  end
end
