# frozen_string_literal: true

module Dynocycle
  # The version has one home, VERSION at the repository's root: `make gem`
  # stamps it into the binary (`dynocycle version`) and copies it to the root
  # of every gem, where this reads it.
  VERSION = File.read(File.expand_path("../../VERSION", __dir__)).strip
end
