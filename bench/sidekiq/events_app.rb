# The benchmark's jobs with the gem's Sidekiq integration (the `events`
# variant of run.sh): the middleware reports each job to the agent.
require_relative "jobs"
$LOAD_PATH.unshift File.expand_path("../../gem/lib", __dir__)
require "dynocycle/sidekiq"
