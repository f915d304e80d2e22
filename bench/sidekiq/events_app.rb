# The benchmark's jobs with the gem's Sidekiq integration (the `events`
# variant of run.sh): the middleware reports each job to the agent. GEM_LIB
# names another gem/lib to load (pair.sh's events_vs).
require_relative "jobs"
$LOAD_PATH.unshift(ENV.fetch("GEM_LIB", nil) || File.expand_path("../../gem/lib", __dir__))
require "dynocycle/sidekiq"
