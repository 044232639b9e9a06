#!/usr/bin/env bash
# Fuzzing of sitelink's parsers of untrusted input (fuzz/, cargo-fuzz + libFuzzer).
#
#   bash scripts/fuzz.sh --ci                    build; replay every committed corpus file; fuzz
#                                                each target 10 s (about 50 s in all)
#   bash scripts/fuzz.sh --long TARGET [EXECS]   fuzz one target until EXECS executions
#                                                (default 10,000,000), then print the figures
#   bash scripts/fuzz.sh --list                  the targets
#
# Inputs that the short and long runs add go to fuzz/work/ (ignored by git); the committed
# corpus (fuzz/corpus/, written by `cargo run --example write_seeds` in fuzz/) stays small.
# A crash leaves its input in fuzz/artifacts/TARGET/ and makes the script fail; reproduce it
# with the command the script prints.
#
# Limits on every run: -rss_limit_mb=512 (an unbounded allocation fails the run) and
# -timeout=10 (one input taking 10 s is a hang). FUZZ_SECONDS overrides the 10 s of --ci;
# FUZZ_MAX_SECONDS ends a --long run after that many seconds even if EXECS is not reached
# (the engine targets run a few hundred inputs a second: every input is new handshakes).
# FUZZ_JOBS=N runs a --long run as N parallel jobs (libFuzzer's -fork=N; one per core), the
# executions counted over all of them.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

RSS_LIMIT_MB=512
TIMEOUT_S=10
CI_SECONDS=${FUZZ_SECONDS:-10}

die() {
    echo "fuzz.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    die "cargo-fuzz is not installed; install it with: cargo install cargo-fuzz --locked"
fi
# libFuzzer's instrumentation needs nightly flags. On a stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them (the fuzz crate is its own workspace; nothing else is built this way).
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
HOST=$(rustc -vV | sed -n 's/^host: //p')
# Leaves the crypto arithmetic uninstrumented (see the wrapper): 2-3x the executions on the
# engine targets. Its own target dirs, so that no build made without it is taken as fresh.
export RUSTC_WRAPPER=$PWD/rustc-wrapper.sh
CI_DIR=target/ci
LONG_DIR=target/long

mapfile -t TARGETS < <(cargo fuzz list)
[[ ${#TARGETS[@]} -gt 0 ]] || die "cargo fuzz list found no targets in $(pwd)"

is_target() {
    local t
    for t in "${TARGETS[@]}"; do [[ $t == "$1" ]] && return 0; done
    return 1
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The libFuzzer options every run gets; $1 is the target. (Callers split the words.)
limits() {
    mkdir -p "artifacts/$1"
    echo "-rss_limit_mb=$RSS_LIMIT_MB -timeout=$TIMEOUT_S -artifact_prefix=artifacts/$1/"
}

# Fails with the crash's input and how to reproduce it, if the run in log $2 of target $1
# failed.
check_run() {
    local target=$1 log=$2 status=$3 bin=$4
    [[ $status -eq 0 ]] && return 0
    echo "--- $target FAILED (exit $status); the end of its log ($log):" >&2
    tail -n 40 "$log" >&2
    local artifact
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [[ -n $artifact ]]; then
        echo "--- input: fuzz/$artifact; reproduce with: (cd fuzz && $bin $artifact)" >&2
    fi
    exit 1
}

ci() {
    # The CI run keeps AddressSanitizer (the default): slower, but it checks the unsafe code
    # underneath (boringtun, ring) too.
    local start bin_dir t log status
    start=$(now)
    cargo fuzz build --target-dir "$CI_DIR"
    echo "fuzz.sh: build: $(since "$start") s"
    bin_dir="$CI_DIR/$HOST/release"

    start=$(now)
    mkdir -p work
    for t in "${TARGETS[@]}"; do
        log="work/$t.replay.log"
        # -runs=0: run every corpus file once and stop.
        status=0
        "$bin_dir/$t" -runs=0 $(limits "$t") "corpus/$t" >"$log" 2>&1 || status=$?
        check_run "$t" "$log" "$status" "$bin_dir/$t"
        echo "fuzz.sh: replayed $(ls "corpus/$t" | wc -l) inputs of $t"
    done
    echo "fuzz.sh: replay: $(since "$start") s"

    start=$(now)
    CI_TMP=$(mktemp -d)
    trap 'rm -rf "$CI_TMP"' EXIT
    for t in "${TARGETS[@]}"; do
        log="work/$t.ci.log"
        mkdir -p "$CI_TMP/$t"
        # New inputs go to the temp dir (first directory); the committed corpus is only read.
        status=0
        "$bin_dir/$t" -max_total_time="$CI_SECONDS" -print_final_stats=1 $(limits "$t") \
            "$CI_TMP/$t" "corpus/$t" >"$log" 2>&1 || status=$?
        check_run "$t" "$log" "$status" "$bin_dir/$t"
        echo "fuzz.sh: $t: $(summary "$log")"
    done
    echo "fuzz.sh: fuzzing: $(since "$start") s"
    # For scripts/test.sh's closing count (a failure above has already ended the script).
    echo "fuzz-targets: ${#TARGETS[@]} passed, 0 failed"
}

# "N execs, R exec/s, peak RSS M MB, cov: C ft: F" from a libFuzzer log with final stats.
summary() {
    local log=$1 execs rate rss cov
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    if [[ -z $execs ]]; then
        # A forked run (FUZZ_JOBS) prints no final stats: its last "#N: ... time: Ts" line.
        read -r execs rate < <(sed -n 's/^#\([0-9]*\): .* time: \([0-9]*\)s .*/\1 \2/p' "$log" |
            tail -n 1 | awk '{ printf "%d %d\n", $1, ($2 > 0 ? $1 / $2 : 0) }')
    fi
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
    echo "${execs:-?} execs, ${rate:-?} exec/s, peak RSS ${rss:-?} MB, ${cov:-no coverage line}"
}

long() {
    local target=$1 execs=${2:-10000000}
    is_target "$target" || die "no fuzz target $target (there are: ${TARGETS[*]})"
    [[ $execs =~ ^[0-9]+$ ]] || die "EXECS must be a number of executions, not $execs"
    # Long runs are built without a sanitizer, in their own target dir: the code under test is
    # Rust, where ASan finds little that the bounds checks, overflow checks (debug assertions
    # are on) and panics do not, and it costs a factor of two or more in executions. The CI
    # run (--ci) keeps ASan.
    cargo fuzz build --sanitizer none --target-dir "$LONG_DIR" "$target"
    local bin="$LONG_DIR/$HOST/release/$target"
    mkdir -p "work/$target"
    local log="work/$target.long.log" start status=0
    start=$(now)
    echo "fuzz.sh: fuzzing $target for $execs executions (log: fuzz/$log, corpus: fuzz/work/$target)"
    # nice: a long run must not slow down whatever else the machine does.
    local jobs=()
    if [[ ${FUZZ_JOBS:-1} -gt 1 ]]; then
        jobs=(-fork="$FUZZ_JOBS")
    fi
    nice -n 19 "$bin" "${jobs[@]}" -runs="$execs" -max_total_time="${FUZZ_MAX_SECONDS:-0}" \
        -print_final_stats=1 $(limits "$target") \
        "work/$target" "corpus/$target" >"$log" 2>&1 || status=$?
    local wall
    wall=$(since "$start")
    check_run "$target" "$log" "$status" "$bin"
    echo "fuzz.sh: $target: $(summary "$log"), wall time $wall s, no crashes"
    local done
    done=$(summary "$log" | awk '{ print $1 }')
    if [[ ${done:-0} -lt $execs ]]; then
        echo "fuzz.sh: stopped by FUZZ_MAX_SECONDS=$FUZZ_MAX_SECONDS before $execs executions"
    fi
}

case "${1:-}" in
--ci) ci ;;
--long)
    [[ $# -ge 2 && $# -le 3 ]] || usage
    long "$2" "${3:-}"
    ;;
--list) printf '%s\n' "${TARGETS[@]}" ;;
*) usage ;;
esac
