#!/usr/bin/env bash
# Builds the Debian package "sitelink": release binaries, man pages and shell completions
# (packaging/assets, into target/assets), then the .deb with cargo-deb 3.x from
# `[package.metadata.deb]` in daemon/Cargo.toml. The last line printed is the .deb's path.
#
# Usage: bash packaging/build-deb.sh [--deb-version VERSION] [--output DIR]
#   --deb-version  package version including revision (default: the crate version + "-1",
#                  which must match packaging/debian/changelog)
#   --output       where the .deb goes (default: target/debian)
#
# Needs the network only for `cargo fetch` (dependencies missing from ~/.cargo) and, once,
# to install cargo-deb; everything after `cargo fetch` runs with --locked --offline.
# Reproducible: file dates and the man pages' date come from the changelog
# (SOURCE_DATE_EPOCH).
set -euo pipefail
cd "$(dirname "$0")/.."

deb_version=
output=target/debian
while [ $# -gt 0 ]; do
    case "$1" in
        --deb-version) deb_version=${2:?--deb-version needs a value}; shift 2 ;;
        --output) output=${2:?--output needs a directory}; shift 2 ;;
        *) echo "build-deb.sh: unknown argument '$1' (see the usage at the top of the script)" >&2; exit 2 ;;
    esac
done

log() { echo "build-deb: $*" >&2; }

# cargo-deb 3.x (the metadata uses its 3.x asset and maintainer-script behaviour).
if ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.'; then
    log "installing cargo-deb 3.x"
    cargo install --locked cargo-deb --version '^3' >&2
fi
# dpkg-shlibdeps computes `$auto` dependencies, dpkg-parsechangelog reads the changelog.
if ! command -v dpkg-shlibdeps >/dev/null || ! command -v dpkg-parsechangelog >/dev/null; then
    log "installing dpkg-dev"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev >&2
fi

changelog=packaging/debian/changelog
changelog_version=$(dpkg-parsechangelog -l "$changelog" -S Version)
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
if [ -z "$deb_version" ] && [ "$changelog_version" != "$crate_version-1" ]; then
    log "$changelog is at $changelog_version but the crate version is $crate_version" \
        "(package $crate_version-1): add a changelog entry (dch -v $crate_version-1)"
    exit 1
fi
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$changelog" -S Timestamp)
export SOURCE_DATE_EPOCH

log "fetching dependencies (no-op when cached)"
cargo fetch --locked >&2
export CARGO_NET_OFFLINE=true

log "building release binaries and the asset generator"
cargo build --release --locked --offline \
    -p sitelinkd -p sitelinkctl -p sitelink-packaging-assets >&2

# `cargo metadata` knows the real target directory (CARGO_TARGET_DIR, build.target-dir);
# the assets go to <workspace>/target/assets regardless, where daemon/Cargo.toml expects them.
target_dir=$(cargo metadata --locked --offline --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# One build at a time from here on: target/assets is shared (daemon/Cargo.toml names it), and
# other scripts (test-deb.sh, vm/run-vm-test.sh) may call this one concurrently.
mkdir -p target
exec 9>target/.build-deb.lock
flock 9
log "generating man pages and completions into target/assets"
rm -rf target/assets
"$target_dir/release/sitelink-packaging-assets" --out-dir target/assets >&2

log "packaging with $(cargo deb --version)"
mkdir -p "$output"   # cargo-deb takes a path that does not exist as the .deb's file name
# --strip: the release profile keeps line tables (debug = "line-tables-only") for backtraces
# in development builds; the package ships stripped binaries as Debian expects.
args=(-p sitelinkd --no-build --strip --locked --offline --output "$output")
if [ -n "$deb_version" ]; then
    args+=(--deb-version "$deb_version")
fi
# cargo-deb warns once per ../target/assets/* asset that it "will not be built": true and
# intended (they were generated just above), so only those lines are dropped.
deb=$(cargo deb "${args[@]}" 2> >(grep -v "'\.\./target/assets/.*will not be built" >&2) | tail -n 1)
if [ ! -f "$deb" ]; then
    log "cargo deb did not report a .deb (got '$deb')"
    exit 1
fi
echo "$deb"
