#!/usr/bin/env bash
# What the gem route adds to dynocycle's start-up: `dynocycle version` as the
# bare binary, through the RubyGems wrapper (`gem install`), and through
# Bundler (`bundle exec`, and a `bundle binstubs` binstub) in two scratch apps
# installed offline (dynocycle from the gem `make gem` builds, the rest from
# Debian's system gems): a small Gemfile
# (sidekiq, dynocycle) and a Rails-sized one (rails, sidekiq, dynocycle;
# Bundler's work grows with the number of gems it loads).
#
#   bench/gem/startup.sh [OUT.md]     # OUT.md: hyperfine's markdown table
#
# Needs hyperfine and Debian's ruby-rails, ruby-sidekiq, ruby-bundler;
# installs the missing ones with apt-get.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/dev/null}

needs=(hyperfine:hyperfine bundle:ruby-bundler sidekiq:ruby-sidekiq rails:ruby-rails gem:ruby-rubygems)
missing=()
for need in "${needs[@]}"; do
  command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(cat VERSION)
make gem PKG="$work/pkg" >/dev/null

export HOME=$work/home GEM_HOME=$work/gems BUNDLE_SILENCE_ROOT_WARNING=1 LANG=C.UTF-8
mkdir -p "$HOME"
gem install --local --no-document --silent "$work/pkg/dynocycle-$version-x86_64-linux.gem"
binary=$GEM_HOME/gems/dynocycle-$version-x86_64-linux/exe/x86_64-linux/dynocycle

app() { # name, gems before dynocycle
  local dir=$work/$1
  shift
  mkdir -p "$dir"
  {
    echo 'source "https://rubygems.org"'
    for g in "$@" dynocycle; do echo "gem \"$g\""; done
  } >"$dir/Gemfile"
  (cd "$dir" && bundle install --local --quiet && bundle binstubs dynocycle >/dev/null)
  echo "$1: $(grep -c '^    [a-z]' "$dir/Gemfile.lock") gems in Gemfile.lock" >&2
}
app small sidekiq
app rails rails sidekiq

hyperfine -N --warmup 3 --min-runs 30 --export-markdown "$out" \
  -n "binary" "$binary version" \
  -n "ruby -e ''" "ruby -e ''" \
  -n "gem wrapper" "$GEM_HOME/bin/dynocycle version" \
  -n "bundle exec, small" "env BUNDLE_GEMFILE=$work/small/Gemfile bundle exec dynocycle version" \
  -n "binstub, small" "$work/small/bin/dynocycle version" \
  -n "bundle exec, rails" "env BUNDLE_GEMFILE=$work/rails/Gemfile bundle exec dynocycle version" \
  -n "binstub, rails" "$work/rails/bin/dynocycle version"
