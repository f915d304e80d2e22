# frozen_string_literal: true

# dynocycle is a Go binary that wraps a worker (see exe/dynocycle); this gem
# carries it. Requiring the gem, as Bundler.require does in a Rails app, only
# defines these constants and starts nothing.
require_relative "dynocycle/version"
require_relative "dynocycle/binary"
