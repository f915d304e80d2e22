# The chaos app, in a Sidekiq that ignores TSTP: dynocycle's quiet signal
# does nothing, so the drain can only end at GRACE_TIME and the jobs still
# running at the platform's SIGTERM are handed back by Sidekiq's shutdown.
#
# Sidekiq's CLI installs its own TSTP trap after it has loaded this file, so
# the trap is replaced at :startup, which fires after the CLI's traps.
require_relative "app"

Sidekiq.configure_server do |config|
  config.on(:startup) do
    Signal.trap("TSTP", "IGNORE")
    Sidekiq.logger.info "dynocycle chaos: this Sidekiq ignores TSTP"
  end
end
