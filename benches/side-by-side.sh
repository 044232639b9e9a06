#!/usr/bin/env bash
# side-by-side.sh — compare sitelink against other WireGuard implementations.
#
# For each implementation a fresh pair of network namespaces is built:
#
#   ns slb-a-$$                                   ns slb-b-$$
#   veth  198.18.0.1/30  <---- veth, MTU 1500 ---->  veth  198.18.0.2/30
#   wa$$  198.19.0.1/24  <== tunnel, MTU 1420 ===>   wb$$  198.19.0.2/24
#
# and measured with ping (RTT) and iperf3 (single-stream TCP, a -> b).
# "veth" is the plain veth pair with no tunnel (the ceiling).
# Rounds are interleaved (every implementation once per round) and the
# median over rounds is reported.  See benches/README.md.
#
# Run as root.  Only addresses inside the namespaces (198.18.0.0/15) are used.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo benches/side-by-side.sh [options]

  --rounds N        interleaved rounds per implementation (default 3)
  --time SECS       iperf3 duration per measurement (default 10)
  --only LIST       comma-separated subset of:
                    veth,wireguard-go,boringtun-cli,gotatun,sitelink
                    (default: all of them)
  --pings N         pings per RTT measurement (default 50, 0.02 s apart)
  --raw FILE        also write the per-round raw results (TSV) to FILE
  --rebuild         run `cargo build --release` for sitelinkd even if
                    target/release/sitelinkd already exists
  --keep-logs       keep the work directory (daemon logs, configs, iperf3
                    JSON) and print its path at the end
  -h, --help        this help

Binaries are looked up in $PATH and ~/.cargo/bin; override with
WIREGUARD_GO=, BORINGTUN=, GOTATUN=, SITELINKD= (paths).
EOF
}

# ---------------------------------------------------------------- options
ROUNDS=3
TIME=10
PINGS=50
ONLY=""
RAW_OUT=""
REBUILD=0
KEEP_LOGS=0
ALL_IMPLS=(veth wireguard-go boringtun-cli gotatun sitelink)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="${2:?--rounds needs a value}"; shift 2 ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        --time) TIME="${2:?--time needs a value}"; shift 2 ;;
        --time=*) TIME="${1#*=}"; shift ;;
        --only) ONLY="${2:?--only needs a value}"; shift 2 ;;
        --only=*) ONLY="${1#*=}"; shift ;;
        --pings) PINGS="${2:?--pings needs a value}"; shift 2 ;;
        --pings=*) PINGS="${1#*=}"; shift ;;
        --raw) RAW_OUT="${2:?--raw needs a value}"; shift 2 ;;
        --raw=*) RAW_OUT="${1#*=}"; shift ;;
        --rebuild) REBUILD=1; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

for v in ROUNDS TIME PINGS; do
    if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: --${v,,} must be a positive integer (got '${!v}')" >&2
        exit 2
    fi
done

IMPLS=()
if [[ -n "$ONLY" ]]; then
    IFS=',' read -r -a req <<<"$ONLY"
    for i in "${req[@]}"; do
        i="${i// /}"
        [[ -z "$i" ]] && continue
        [[ "$i" == gotatun-cli ]] && i=gotatun
        [[ "$i" == boringtun ]] && i=boringtun-cli
        ok=0
        for a in "${ALL_IMPLS[@]}"; do [[ "$a" == "$i" ]] && ok=1; done
        if [[ $ok -eq 0 ]]; then
            echo "error: unknown implementation '$i' (known: ${ALL_IMPLS[*]})" >&2
            exit 2
        fi
        IMPLS+=("$i")
    done
else
    IMPLS=("${ALL_IMPLS[@]}")
fi

if [[ $EUID -ne 0 ]]; then
    echo "error: must run as root (network namespaces, TUN devices)" >&2
    exit 1
fi

for tool in ip ping iperf3; do
    command -v "$tool" >/dev/null || { echo "error: '$tool' not found (apt-get install iproute2 iputils-ping iperf3)" >&2; exit 1; }
done
PY=""
for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null; then PY=$(command -v "$p"); break; fi
done
[[ -n "$PY" ]] || { echo "error: python3 not found (used to parse iperf3 JSON and compute medians)" >&2; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

# ---------------------------------------------------------------- names
ID=$$
NSA="slb-a-$ID"
NSB="slb-b-$ID"
IFA="wa$ID"            # tunnel ifnames must be unique across namespaces:
IFB="wb$ID"            # /var/run/wireguard/<if>.sock is shared
VETHA="sva$ID"
VETHB="svb$ID"
OUTER_A=198.18.0.1
OUTER_B=198.18.0.2
TUN_A=198.19.0.1
TUN_B=198.19.0.2
PORT=51820
WG_RUN=/var/run/wireguard
WORK=$(mktemp -d /tmp/sitelink-bench.XXXXXX)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$1"; }

# Kill every process we started inside our namespaces, delete them, remove
# the userspace API sockets.  Idempotent; never fails.
cleanup_testbed() {
    local ns pids p i
    for ns in "$NSA" "$NSB"; do
        ns_exists "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n "$pids" ]]; then
            for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
            for i in $(seq 1 30); do
                pids=$(ip netns pids "$ns" 2>/dev/null || true)
                [[ -z "$pids" ]] && break
                sleep 0.1
            done
            for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
        fi
    done
    for ns in "$NSA" "$NSB"; do
        # a TUN device can linger a moment after its owner died
        for i in 1 2 3 4 5; do
            ns_exists "$ns" || break
            ip netns del "$ns" 2>/dev/null && break
            sleep 0.2
        done
    done
    rm -f "$WG_RUN/$IFA.sock" "$WG_RUN/$IFB.sock"
}

final_cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    cleanup_testbed
    if [[ $KEEP_LOGS -eq 1 ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap final_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---------------------------------------------------------------- binaries
find_bin() { # find_bin ENVVAR name...
    local envv=$1; shift
    if [[ -n "${!envv:-}" ]]; then
        [[ -x "${!envv}" ]] && { echo "${!envv}"; return 0; }
        return 1
    fi
    local n
    for n in "$@"; do
        if command -v "$n" >/dev/null 2>&1; then command -v "$n"; return 0; fi
        for d in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin /usr/local/bin; do
            [[ -x "$d/$n" ]] && { echo "$d/$n"; return 0; }
        done
    done
    return 1
}

declare -A BIN=()
declare -A SKIP=()

prepare_sitelink() {
    local want="${SITELINKD:-$REPO_ROOT/target/release/sitelinkd}"
    if [[ -n "${SITELINKD:-}" ]]; then
        [[ -x "$want" ]] || { SKIP[sitelink]="SITELINKD=$want is not executable"; return; }
        BIN[sitelink]="$want"; return
    fi
    if [[ $REBUILD -eq 1 || ! -x "$want" ]]; then
        if ! command -v cargo >/dev/null; then
            SKIP[sitelink]="target/release/sitelinkd missing and cargo not found"; return
        fi
        if [[ ! -f "$REPO_ROOT/Cargo.toml" ]]; then
            SKIP[sitelink]="no Cargo.toml in $REPO_ROOT; cannot build sitelinkd"; return
        fi
        log "building sitelinkd: cargo build --release (in $REPO_ROOT)"
        if ! (cd "$REPO_ROOT" && cargo build --release >&2); then
            SKIP[sitelink]="cargo build --release failed"; return
        fi
        if [[ ! -x "$want" ]]; then
            SKIP[sitelink]="cargo build --release did not produce target/release/sitelinkd"; return
        fi
    fi
    BIN[sitelink]="$want"
}

for impl in "${IMPLS[@]}"; do
    case "$impl" in
        veth) ;;
        wireguard-go)
            BIN[$impl]=$(find_bin WIREGUARD_GO wireguard-go) \
                || SKIP[$impl]="wireguard-go not found (apt-get install wireguard-go)" ;;
        boringtun-cli)
            BIN[$impl]=$(find_bin BORINGTUN boringtun-cli boringtun) \
                || SKIP[$impl]="boringtun-cli not found (cargo install --locked boringtun-cli)" ;;
        gotatun)
            # crate gotatun-cli installs a binary called `gotatun`
            BIN[$impl]=$(find_bin GOTATUN gotatun gotatun-cli) \
                || SKIP[$impl]="gotatun not found (cargo install --locked gotatun-cli)" ;;
        sitelink) prepare_sitelink ;;
    esac
    if [[ "$impl" != veth && "$impl" != sitelink && -z "${SKIP[$impl]:-}" ]] \
        && ! command -v wg >/dev/null; then
        SKIP[$impl]="'wg' not found (apt-get install wireguard-tools)"
    fi
done

RUN_IMPLS=()
for impl in "${IMPLS[@]}"; do
    if [[ -n "${SKIP[$impl]:-}" ]]; then
        echo "NOTE: skipping $impl: ${SKIP[$impl]}" >&2
    else
        RUN_IMPLS+=("$impl")
    fi
done
if [[ ${#RUN_IMPLS[@]} -eq 0 ]]; then
    echo "error: nothing to run" >&2
    exit 1
fi

# keys (shared by every run of this invocation)
if [[ " ${RUN_IMPLS[*]} " != " veth " ]]; then
    command -v wg >/dev/null || { echo "error: 'wg' (wireguard-tools) is needed to generate keys" >&2; exit 1; }
    (umask 077; wg genkey >"$WORK/a.key"; wg genkey >"$WORK/b.key")
    wg pubkey <"$WORK/a.key" >"$WORK/a.pub"
    wg pubkey <"$WORK/b.key" >"$WORK/b.pub"
fi

# ---------------------------------------------------------------- helpers
# wait_for DESC TIMEOUT_S CMD... : poll CMD every 0.1 s
wait_for() {
    local desc=$1 timeout=$2; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "timed out after ${timeout}s waiting for $desc" >&2
            return 1
        fi
        sleep 0.1
    done
}

alive() { kill -0 "$1" 2>/dev/null; }

show_log() { # show_log FILE
    if [[ -s "$1" ]]; then
        echo "---- last lines of $1:" >&2
        tail -n 20 "$1" | sed 's/\x1b\[[0-9;]*m//g' >&2
        echo "----" >&2
    fi
}

# wait for the userspace daemon to create its TUN device and API socket
wait_daemon() { # wait_daemon PID NS IF LOG
    local pid=$1 ns=$2 ifn=$3 lg=$4 deadline=$((SECONDS + 15))
    while :; do
        if ! alive "$pid"; then
            echo "error: daemon for $ifn in $ns exited during startup" >&2
            show_log "$lg"; return 1
        fi
        if [[ -S "$WG_RUN/$ifn.sock" ]] && ip -n "$ns" link show "$ifn" >/dev/null 2>&1; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "error: timed out waiting for $ifn / $WG_RUN/$ifn.sock in $ns" >&2
            show_log "$lg"; return 1
        fi
        sleep 0.1
    done
}

setup_veth() {
    ip netns add "$NSA"
    ip netns add "$NSB"
    ip -n "$NSA" link set lo up
    ip -n "$NSB" link set lo up
    ip link add "$VETHA" netns "$NSA" mtu 1500 type veth peer name "$VETHB" netns "$NSB" mtu 1500
    ip -n "$NSA" addr add "$OUTER_A/30" dev "$VETHA"
    ip -n "$NSB" addr add "$OUTER_B/30" dev "$VETHB"
    ip -n "$NSA" link set "$VETHA" up
    ip -n "$NSB" link set "$VETHB" up
    wait_for "veth ping" 10 ip netns exec "$NSA" ping -c 1 -W 1 "$OUTER_B"
}

# start_wg_userspace IMPL NS IF LOG -> echoes PID
start_wg_userspace() {
    local impl=$1 ns=$2 ifn=$3 lg=$4
    case "$impl" in
        wireguard-go)
            WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 \
                ip netns exec "$ns" "${BIN[$impl]}" -f "$ifn" >"$lg" 2>&1 &
            ;;
        boringtun-cli)
            # --disable-drop-privileges: as root without a login session the
            # privilege drop fails ("NULL from getlogin") and the daemon exits.
            ip netns exec "$ns" "${BIN[$impl]}" --foreground --disable-drop-privileges \
                --log "$lg.daemon" "$ifn" >"$lg" 2>&1 &
            ;;
        gotatun)
            ip netns exec "$ns" "${BIN[$impl]}" --foreground --disable-drop-privileges \
                --verbosity error --log "$lg.daemon" "$ifn" >"$lg" 2>&1 &
            ;;
    esac
    echo $!
}

# configure_wg NS IF KEY PEERPUB PEER_TUN_IP PEER_OUTER_IP LOCAL_TUN_IP
configure_wg() {
    local ns=$1 ifn=$2 key=$3 peerpub=$4 peertun=$5 peerouter=$6 localtun=$7
    ip netns exec "$ns" wg set "$ifn" private-key "$key" listen-port "$PORT" \
        peer "$peerpub" allowed-ips "$peertun/32" endpoint "$peerouter:$PORT" \
        persistent-keepalive 25
    ip -n "$ns" addr add "$localtun/24" dev "$ifn"
    ip -n "$ns" link set "$ifn" mtu 1420 up
}

setup_wg_userspace() { # setup_wg_userspace IMPL
    local impl=$1 pa pb
    pa=$(start_wg_userspace "$impl" "$NSA" "$IFA" "$WORK/$impl-a.log")
    pb=$(start_wg_userspace "$impl" "$NSB" "$IFB" "$WORK/$impl-b.log")
    wait_daemon "$pa" "$NSA" "$IFA" "$WORK/$impl-a.log"
    wait_daemon "$pb" "$NSB" "$IFB" "$WORK/$impl-b.log"
    configure_wg "$NSA" "$IFA" "$WORK/a.key" "$(cat "$WORK/b.pub")" "$TUN_B" "$OUTER_B" "$TUN_A"
    configure_wg "$NSB" "$IFB" "$WORK/b.key" "$(cat "$WORK/a.pub")" "$TUN_A" "$OUTER_A" "$TUN_B"
    DAEMON_PIDS="$pa $pb"
    DAEMON_LOGS="$WORK/$impl-a.log $WORK/$impl-b.log"
}

write_sitelink_conf() { # FILE IF KEY LOCALTUN PEERPUB PEEROUTER PEERTUN PEERNAME
    cat >"$1" <<EOF
[interface]
name = "$2"
private-key-file = "$3"
listen-port = $PORT
address = ["$4/24"]
mtu = 1420

[[peer]]
name = "$8"
public-key = "$5"
endpoint = "$6:$PORT"
allowed-ips = ["$7/32"]
persistent-keepalive = 25
EOF
}

setup_sitelink() {
    local ca="$WORK/$IFA.toml" cb="$WORK/$IFB.toml" pa pb la lb
    chmod 600 "$WORK/a.key" "$WORK/b.key"
    write_sitelink_conf "$ca" "$IFA" "$WORK/a.key" "$TUN_A" "$(cat "$WORK/b.pub")" "$OUTER_B" "$TUN_B" site-b
    write_sitelink_conf "$cb" "$IFB" "$WORK/b.key" "$TUN_B" "$(cat "$WORK/a.pub")" "$OUTER_A" "$TUN_A" site-a
    la="$WORK/sitelink-a.log"; lb="$WORK/sitelink-b.log"
    ip netns exec "$NSA" "${BIN[sitelink]}" --config "$ca" >"$la" 2>&1 &
    pa=$!
    ip netns exec "$NSB" "${BIN[sitelink]}" --config "$cb" >"$lb" 2>&1 &
    pb=$!
    DAEMON_PIDS="$pa $pb"
    DAEMON_LOGS="$la $lb"
    # sitelinkd creates, addresses and brings up the interface itself
    local deadline=$((SECONDS + 15)) p ns ifn lg
    for spec in "$pa $NSA $IFA $la" "$pb $NSB $IFB $lb"; do
        read -r p ns ifn lg <<<"$spec"
        while ! ip -n "$ns" addr show dev "$ifn" 2>/dev/null | grep -q 'inet '; do
            if ! alive "$p"; then
                echo "error: sitelinkd ($ifn in $ns) exited during startup" >&2
                show_log "$lg"; return 1
            fi
            if ((SECONDS >= deadline)); then
                echo "error: timed out (15s) waiting for sitelinkd to create and address $ifn in $ns" >&2
                ip -n "$ns" addr >&2 || true
                show_log "$lg"; return 1
            fi
            sleep 0.1
        done
    done
}

# warm up: ping through the tunnel until it answers (handshake done)
warmup() { # warmup DST
    local dst=$1 deadline=$((SECONDS + 20)) p
    until ip netns exec "$NSA" ping -c 1 -W 1 "$dst" >/dev/null 2>&1; do
        for p in $DAEMON_PIDS; do
            if ! alive "$p"; then
                echo "error: a daemon (pid $p) died before the tunnel came up" >&2
                for l in $DAEMON_LOGS; do show_log "$l"; done
                return 1
            fi
        done
        if ((SECONDS >= deadline)); then
            echo "error: no ping reply from $dst through the tunnel within 20s" >&2
            for ns in "$NSA" "$NSB"; do
                echo "---- $ns:" >&2
                ip -n "$ns" -br addr >&2 || true
                ip -n "$ns" route >&2 || true
            done
            for l in $DAEMON_LOGS; do show_log "$l"; done
            return 1
        fi
    done
    # a few more to settle (ARP/handshake/keepalive state)
    ip netns exec "$NSA" ping -c 5 -i 0.05 -W 1 "$dst" >/dev/null 2>&1 || true
}

# measure IMPL ROUND DST : appends one TSV line to $RESULTS
measure() {
    local impl=$1 round=$2 dst=$3
    local pingout="$WORK/ping-$impl-$round.txt" json="$WORK/iperf-$impl-$round.json"
    local srvlog="$WORK/iperf-server-$impl-$round.log"

    # RTT on the idle tunnel
    ip netns exec "$NSA" ping -n -c "$PINGS" -i 0.02 -W 1 "$dst" >"$pingout" 2>&1 || true

    # throughput
    ip netns exec "$NSB" iperf3 -s -1 -B "$dst" >"$srvlog" 2>&1 &
    local spid=$!
    if ! wait_for "iperf3 server in $NSB" 10 \
        sh -c "ip netns exec '$NSB' ss -Htln 'sport = :5201' | grep -q ."; then
        show_log "$srvlog"; return 1
    fi
    local rc=0
    timeout --foreground -k 5 $((TIME + 30)) ip netns exec "$NSA" iperf3 -c "$dst" -t "$TIME" -J >"$json" 2>"$json.err" || rc=$?
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true

    "$PY" - "$impl" "$round" "$pingout" "$json" "$rc" >>"$RESULTS" <<'PYEOF'
import json, re, statistics, sys
impl, rnd, pingf, jsonf, rc = sys.argv[1:6]
rtts = []
with open(pingf) as f:
    for line in f:
        m = re.search(r'time[=<]([0-9.]+) ms', line)
        if m:
            rtts.append(float(m.group(1)))
gbps = retr = "nan"
err = ""
try:
    with open(jsonf) as f:
        j = json.load(f)
    if "error" in j:
        err = j["error"]
    else:
        end = j["end"]
        gbps = "%.3f" % (end["sum_received"]["bits_per_second"] / 1e9)
        retr = str(end["sum_sent"].get("retransmits", "nan"))
except Exception as e:  # noqa: BLE001
    err = "iperf3 rc=%s: %s" % (rc, e)
if err:
    print("iperf3 failed for %s round %s: %s" % (impl, rnd, err), file=sys.stderr)
if rtts:
    med = "%.3f" % statistics.median(rtts)
    avg = "%.3f" % statistics.mean(rtts)
else:
    med = avg = "nan"
print("\t".join([impl, rnd, gbps, med, avg, retr, str(len(rtts))]))
PYEOF
    local line
    line=$(tail -n 1 "$RESULTS")
    local _i _r g m a r n
    read -r _i _r g m a r n <<<"$line"
    log "$impl round $round: ${g} Gbit/s, RTT median ${m} ms avg ${a} ms ($n/$PINGS replies), retransmits ${r}"
    [[ "$g" != nan ]]
}

# one full run (fresh testbed) for IMPL; runs in a subshell with errexit
run_one() {
    local impl=$1 round=$2
    DAEMON_PIDS="" DAEMON_LOGS=""
    cleanup_testbed
    setup_veth
    local dst=$TUN_B
    case "$impl" in
        veth) dst=$OUTER_B ;;
        wireguard-go|boringtun-cli|gotatun) setup_wg_userspace "$impl" ;;
        sitelink) setup_sitelink ;;
    esac
    warmup "$dst"
    measure "$impl" "$round" "$dst"
}

# ---------------------------------------------------------------- main loop
log "work dir $WORK; implementations: ${RUN_IMPLS[*]}; rounds=$ROUNDS time=${TIME}s pings=$PINGS"
log "testbed: $NSA/$NSB, veth $VETHA/$VETHB, tunnel $IFA/$IFB"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average at start: $LOAD_START (other CPU load on the box skews results)"

declare -A FAILS=()
n=${#RUN_IMPLS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < n; k++)); do
        # rotate the start each round so no implementation always goes first
        impl=${RUN_IMPLS[$(((k + round - 1) % n))]}
        log "round $round/$ROUNDS: $impl"
        set +e
        (
            set -e
            trap cleanup_testbed EXIT
            trap 'exit 130' INT
            trap 'exit 143' TERM HUP
            run_one "$impl" "$round"
        )
        rc=$?
        set -e
        if [[ $rc -ne 0 ]]; then
            ((rc >= 128)) && exit "$rc"   # interrupted
            FAILS[$impl]=$((${FAILS[$impl]:-0} + 1))
            log "$impl round $round FAILED (rc=$rc)"
        fi
        cleanup_testbed
    done
done

[[ -n "$RAW_OUT" ]] && {
    printf 'impl\tround\tgbps\trtt_median_ms\trtt_avg_ms\tretransmits\treplies\n' >"$RAW_OUT"
    cat "$RESULTS" >>"$RAW_OUT"
    log "raw results written to $RAW_OUT"
}

# ---------------------------------------------------------------- summary
echo
echo "## sitelink side-by-side: $(date -u '+%Y-%m-%d %H:%M UTC'), kernel $(uname -r), $(nproc) cores, loadavg start $LOAD_START / end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "Medians over $ROUNDS interleaved round(s); (min–max) across rounds. iperf3 single TCP stream, ${TIME}s, a→b;"
echo "RTT from $PINGS pings at 0.02 s interval (per-round median / mean, then median over rounds)."
echo
"$PY" - "$RESULTS" "${RUN_IMPLS[*]}" "$(for i in "${RUN_IMPLS[@]}"; do printf '%s=%s ' "$i" "${FAILS[$i]:-0}"; done)" "${!SKIP[*]}" <<'PYEOF'
import math, statistics, sys
resf, impls, fails, skipped = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
fails = dict(x.split("=") for x in fails)
rows = {}
with open(resf) as f:
    for line in f:
        p = line.rstrip("\n").split("\t")
        if len(p) < 7:
            continue
        rows.setdefault(p[0], []).append(p)

def vals(rs, idx):
    out = []
    for r in rs:
        try:
            v = float(r[idx])
        except ValueError:
            continue
        if not math.isnan(v):
            out.append(v)
    return out

def fmt(v, nd, rng=True):
    if not v:
        return "n/a"
    m = statistics.median(v)
    s = f"{m:.{nd}f}"
    if rng and len(v) > 1:
        s += f" ({min(v):.{nd}f}–{max(v):.{nd}f})"
    return s

ceiling = None
if "veth" in rows:
    v = vals(rows["veth"], 2)
    ceiling = statistics.median(v) if v else None

print("| implementation | throughput Gbit/s | % of veth | RTT median ms | RTT avg ms | TCP retransmits | ok runs |")
print("|---|---|---|---|---|---|---|")
for impl in impls:
    rs = rows.get(impl, [])
    g = vals(rs, 2)
    pct = "–"
    if ceiling and g and impl != "veth":
        pct = f"{100 * statistics.median(g) / ceiling:.0f}%"
    elif impl == "veth" and g:
        pct = "100%"
    ok = len(g)
    total = ok + int(fails.get(impl, 0))
    print(f"| {impl} | {fmt(g, 2)} | {pct} | {fmt(vals(rs, 3), 3)} | {fmt(vals(rs, 4), 3)} | {fmt(vals(rs, 5), 0)} | {ok}/{total} |")
for s in skipped:
    print(f"| {s} | skipped | | | | | |")
PYEOF
for impl in "${!SKIP[@]}"; do
    echo
    echo "_${impl} skipped: ${SKIP[$impl]}_"
done
