# frozen_string_literal: true

# Which binary the gem's executable runs, for each kind of machine:
#   ruby -Ilib test/binary_test.rb      (from gem/; gem_test.go runs it)
require "minitest/autorun"
require "tmpdir"
require "fileutils"
require "dynocycle"

class BinaryTest < Minitest::Test
  # exe_dir lays out an exe/ directory carrying a binary for each platform.
  def with_exe_dir(*platforms)
    Dir.mktmpdir do |dir|
      platforms.each do |platform|
        FileUtils.mkdir_p(File.join(dir, platform))
        File.write(File.join(dir, platform, "dynocycle"), "")
      end
      yield dir
    end
  end

  def test_picks_the_binary_built_for_the_machine
    with_exe_dir("x86_64-linux", "aarch64-linux") do |dir|
      {
        "x86_64-linux" => "x86_64-linux",
        "aarch64-linux" => "aarch64-linux"
      }.each do |local, carried|
        assert_equal File.join(dir, carried, "dynocycle"),
                     Dynocycle::Binary.path(Gem::Platform.new(local), exe_dir: dir), "on #{local}"
      end
    end
  end

  def test_a_native_gem_for_another_machine_names_both_and_the_fix
    with_exe_dir("aarch64-linux") do |dir|
      error = assert_raises(Dynocycle::Binary::Missing) do
        Dynocycle::Binary.path(Gem::Platform.new("x86_64-linux"), exe_dir: dir)
      end
      assert_includes error.message, "no binary for x86_64-linux"
      assert_includes error.message, "it carries aarch64-linux"
      assert_includes error.message, "bundle lock --add-platform x86_64-linux"
      refute_includes error.message, "\n"
    end
  end

  def test_the_plain_gem_on_an_unsupported_machine_says_so_without_a_fix
    with_exe_dir do |dir|
      error = assert_raises(Dynocycle::Binary::Missing) do
        Dynocycle::Binary.path(Gem::Platform.new("arm64-darwin-23"), exe_dir: dir)
      end
      assert_includes error.message, "no binary for arm64-darwin-23"
      assert_includes error.message, "the plain ruby gem"
      assert_includes error.message, "native gems exist for x86_64-linux, aarch64-linux"
      refute_includes error.message, "bundle lock"
      refute_includes error.message, "\n"
    end
  end

  def test_version_is_the_repository_version
    assert_equal File.read(File.expand_path("../../VERSION", __dir__)).strip, Dynocycle::VERSION
    refute_empty Dynocycle::VERSION
  end
end
