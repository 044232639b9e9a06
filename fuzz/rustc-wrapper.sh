#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz builds (scripts/fuzz.sh sets it): compiles the pure-math crypto
# crates without libFuzzer's coverage instrumentation and without debug assertions and
# overflow checks, everything else as cargo-fuzz asks.
#
# Why: a handshake is a dozen X25519 scalar multiplications, and instrumented (every loop
# condition traced as a comparison) they took ~85% of an engine target's time, for coverage
# that means nothing: constant-time field arithmetic has no input-dependent branches. With
# the instrumentation gone they were still ~85% (perf, December 2026): cargo-fuzz turns on
# debug assertions, and with them overflow checks on every limb operation of the field
# arithmetic, which is reviewed upstream and not what these targets test. Our crates,
# boringtun and the rest keep both. Sanitizer flags (-Zsanitizer=...) are kept, and the
# crates are still compiled with --cfg fuzzing.
set -euo pipefail

rustc=$1
shift

crate=
prev=
for arg in "$@"; do
    [[ $prev == --crate-name ]] && crate=$arg
    prev=$arg
done

case $crate in
curve25519_dalek | x25519_dalek | blake2 | chacha20 | poly1305) ;;
*) exec "$rustc" "$@" ;;
esac

args=()
for arg in "$@"; do
    case $arg in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
    *) args+=("$arg") ;;
    esac
done
# The last -C of a kind wins.
exec "$rustc" "${args[@]}" -Cdebug-assertions=off -Coverflow-checks=off
