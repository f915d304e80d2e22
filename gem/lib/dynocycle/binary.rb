# frozen_string_literal: true

require_relative "version"

module Dynocycle
  # Finds the agent's binary for this machine. A native gem carries exactly
  # one, in exe/PLATFORM/dynocycle; the plain "ruby" gem carries none, so that
  # `bundle add dynocycle` works on any machine (a Mac, say) and the Linux
  # gems can be added to the lockfile for Heroku.
  module Binary
    # Raised, with a one-line message, when no carried binary runs here.
    class Missing < StandardError; end

    # The platforms `make gem` builds native gems for (RubyGems' names).
    PLATFORMS = %w[x86_64-linux aarch64-linux].freeze

    EXE_DIR = File.expand_path("../../exe", __dir__)

    # The path of the binary that runs on +platform+.
    def self.path(platform = Gem::Platform.local, exe_dir: EXE_DIR)
      carried = Dir.glob(File.join(exe_dir, "*", "dynocycle")).sort.map do |file|
        [Gem::Platform.new(File.basename(File.dirname(file))), file]
      end
      found = carried.find { |built_for, _| built_for === platform }
      return found.last if found

      raise Missing, missing_message(platform, carried.map(&:first))
    end

    def self.missing_message(platform, carried)
      this_gem = carried.empty? ? "the plain ruby gem, which carries no binary" : "it carries #{carried.join(", ")}"
      message = "dynocycle: no binary for #{platform} in dynocycle #{VERSION} (#{this_gem}); " \
                "native gems exist for #{PLATFORMS.join(", ")}"
      native = PLATFORMS.find { |name| Gem::Platform.new(name) === platform }
      return message unless native

      "#{message}: run `bundle lock --add-platform #{native}` and `bundle install`"
    end
    private_class_method :missing_message
  end
end
