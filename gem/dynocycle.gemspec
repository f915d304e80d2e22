# frozen_string_literal: true

# One gemspec for every dynocycle gem. `make gem` copies this directory once
# per platform and puts that platform's binary in exe/PLATFORM/dynocycle; a
# gem's platform is the binary it carries, and a copy without one is the
# plain "ruby" gem. The gemspec ships inside each gem, so an unpacked gem
# still describes itself (for a Gemfile's `path:`).
require_relative "lib/dynocycle/version"

binaries = Dir.glob("exe/*/dynocycle", base: __dir__).sort
if binaries.size > 1
  raise ArgumentError, "dynocycle.gemspec: a gem carries one binary, found #{binaries.join(", ")}"
end

Gem::Specification.new do |spec|
  spec.name = "dynocycle"
  spec.version = Dynocycle::VERSION
  spec.platform = binaries.empty? ? Gem::Platform::RUBY : File.basename(File.dirname(binaries.first))
  spec.summary = "Restarts bloated Sidekiq workers gracefully, one Heroku dyno at a time"
  spec.description = <<~TEXT.tr("\n", " ").strip
    dynocycle wraps a job worker (`bundle exec dynocycle run -- bundle exec sidekiq`), watches its
    memory, and when it bloats quiets it, lets the jobs in flight finish and restarts the dyno, one
    dyno of the app at a time. The agent is a static Go binary; each native gem carries the one
    built for its platform.
  TEXT
  spec.authors = ["The dynocycle authors"]
  spec.homepage = "https://github.com/dynocycle/dynocycle"
  spec.metadata = {
    "source_code_uri" => "https://github.com/dynocycle/dynocycle",
    "rubygems_mfa_required" => "true"
  }
  spec.required_ruby_version = ">= 2.7"

  spec.files = ["VERSION", "README.md", "dynocycle.gemspec", "exe/dynocycle", *binaries] +
               Dir.glob("lib/**/*.rb", base: __dir__).sort
  spec.bindir = "exe"
  spec.executables = ["dynocycle"]
end
