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
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

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

VALUE_OPTS=([--rounds]=ROUNDS [--time]=TIME [--only]=ONLY [--pings]=PINGS [--raw]=RAW_OUT)
FLAG_OPTS=([--rebuild]=REBUILD [--keep-logs]=KEEP_LOGS)
parse_options "$@"
require_positive_ints ROUNDS TIME PINGS

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

require_root
require_tools "apt-get install iproute2 iputils-ping iperf3" ip ping iperf3
find_python "used to parse iperf3 JSON and compute medians"

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
init_workdir bench

# cleanup_testbed (lib.sh): kills everything in the namespaces (3 s after SIGTERM),
# deletes them, removes the userspace API sockets
TESTBED_NS=("$NSA" "$NSB")
CLEANUP_TERM_TICKS=30
CLEANUP_DEL_TRIES=5
set_traps final_cleanup

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

setup_sitelink() {
    local ca="$WORK/$IFA.toml" cb="$WORK/$IFB.toml" pa pb la lb
    chmod 600 "$WORK/a.key" "$WORK/b.key"
    sitelink_conf "$IFA" "$WORK/a.key" "$TUN_A" site-b "$(cat "$WORK/b.pub")" "$OUTER_B:$PORT" "$TUN_B/32" 25 >"$ca"
    sitelink_conf "$IFB" "$WORK/b.key" "$TUN_B" site-a "$(cat "$WORK/a.pub")" "$OUTER_A:$PORT" "$TUN_A/32" 25 >"$cb"
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
    iperf3_tcp "$NSB" "$NSA" "$dst" "$json" "$srvlog" || return 1

    py "$impl" "$round" "$pingout" "$json" "$IPERF_RC" >>"$RESULTS" <<'PYEOF'
import re, statistics, sys
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
    g, r = iperf_result(jsonf)
    gbps, retr = "%.3f" % g, str(r)
except IperfError as e:
    err = str(e)
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
note_load_start

declare -A FAILS=()
n=${#RUN_IMPLS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < n; k++)); do
        # rotate the start each round so no implementation always goes first
        impl=${RUN_IMPLS[$(((k + round - 1) % n))]}
        log "round $round/$ROUNDS: $impl"
        run_isolated run_one "$impl" "$round"
        if [[ $RUN_RC -ne 0 ]]; then
            FAILS[$impl]=$((${FAILS[$impl]:-0} + 1))
            log "$impl round $round FAILED (rc=$RUN_RC)"
        fi
        cleanup_testbed
    done
done

write_raw impl round gbps rtt_median_ms rtt_avg_ms retransmits replies

# ---------------------------------------------------------------- summary
summary_title side-by-side "$(utc_now)"
echo "Medians over $ROUNDS interleaved round(s); (min–max) across rounds. iperf3 single TCP stream, ${TIME}s, a→b;"
echo "RTT from $PINGS pings at 0.02 s interval (per-round median / mean, then median over rounds)."
echo
py "$RESULTS" "${RUN_IMPLS[*]}" "$(for i in "${RUN_IMPLS[@]}"; do printf '%s=%s ' "$i" "${FAILS[$i]:-0}"; done)" "${!SKIP[*]}" <<'PYEOF'
import statistics, sys
resf, impls, fails, skipped = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
fails = dict(x.split("=") for x in fails)
rows = read_rows(resf, 7)

def fmt(v, nd):
    return med_range(v, nd) if v else "n/a"

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
