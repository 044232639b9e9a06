#!/usr/bin/env bash
# flood.sh — a tunnel under a handshake flood: TCP throughput, memory, and a new peer.
#
# One testbed of six network namespaces for the whole run (per implementation):
#
#   host_a --- gw_a ======== tunnel ======== gw_b --- host_b
#   198.18.1.10  198.18.1.1 | 198.18.0.1/30 - 198.18.0.2/30 | 198.18.2.1  198.18.2.10
#                tunnel 198.18.3.1/24         tunnel 198.18.3.2/24
#                                              |  att0 198.18.4.1/24 --- attacker 198.18.4.2/24
#                                              |                         sources 198.18.8.1, ...
#                                              |  wanc 198.18.6.1/30 --- gw_c 198.18.6.2/30
#                                                                         tunnel 198.18.3.3/24
#
# The attacker (benches/flood.rs, `sitelink-flood`) sends from --sources addresses to gw_b's
# listen port.  Interleaved rounds of four phases, each a --time s iperf3 stream
# host_a -> host_b: alone, during a valid-mac1 initiation flood, during a garbage flood, and
# during the garbage flood at a port nothing listens on (sink: a control).
# Then one --long s initiation flood: gw_b's RSS sampled from /proc, and gw_c (a peer gw_b
# knows, not running before) started --new-peer-at s into it: the time to its first ping reply
# through the tunnel.  Optionally the same against wireguard-go.  See benches/README.md.
#
# Run as root.  Only addresses inside the namespaces (198.18.0.0/15) are used.
set -euo pipefail
export LC_ALL=C   # EPOCHREALTIME and printf must use '.' as the decimal point
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: sudo benches/flood.sh [options]

  --rounds N          interleaved rounds of the phases (default 3)
  --time SECS         iperf3 duration per phase (default 10)
  --rate PPS          initiation flood rate the generator aims at (default 150000)
  --garbage-rate PPS  garbage flood rate (default: --rate)
  --sources N         attacker source addresses (default 200, at most 1000)
  --phases LIST       comma-separated phases per round, of alone,init,garbage,sink
                      (default all four; the × alone ratios need alone).  sink: the
                      garbage flood at a gw_b port nothing listens on (a control: what
                      the flood costs the machine without the daemon reading it)
  --long SECS         the long initiation flood for RSS and the new peer (default 60;
                      0 = none)
  --rss-every SECS    RSS sampling interval during it (default 5)
  --new-peer-at SECS  when gw_c starts, counted from the long flood's start (default 10)
  --flood-cpu LIST    pin the generator with `taskset -c LIST` (default: not pinned)
  --wireguard-go      also run everything with wireguard-go on the three gateways
  --raw FILE          also write the per-phase raw results (TSV) to FILE
  --out FILE          also write the markdown summary to FILE
  --rebuild           run `cargo build --release` for the binaries even if they exist
  --keep-logs         keep the work directory (configs, daemon logs, snapshots, iperf3
                      JSON, generator output) and print its path at the end
  -h, --help          this help

Binaries: target/release/{sitelinkd,sitelinkctl,sitelink-flood} of this repo, built if
missing; override with SITELINKD=, SITELINKCTL=, SITELINK_FLOOD=, WIREGUARD_GO= (paths).
EOF
}

# ---------------------------------------------------------------- options
ORIG_ARGS=("$@")
ROUNDS=3
TIME=10
RATE=150000
GARBAGE_RATE=""
SOURCES=200
LONG=60
PHASES_LIST=alone,init,garbage,sink
SINK_PORT=9            # the sink phase's target port on gw_b: no socket there
RSS_EVERY=5
NEW_PEER_AT=10
FLOOD_CPU=""
WITH_WG=0
RAW_OUT=""
MD_OUT=""
REBUILD=0
KEEP_LOGS=0
MAX_SOURCES=1000   # 198.18.8.1 + N stays inside 198.18.8.0/22

VALUE_OPTS=([--rounds]=ROUNDS [--time]=TIME [--rate]=RATE [--garbage-rate]=GARBAGE_RATE
    [--sources]=SOURCES [--long]=LONG [--phases]=PHASES_LIST [--rss-every]=RSS_EVERY [--new-peer-at]=NEW_PEER_AT
    [--flood-cpu]=FLOOD_CPU [--raw]=RAW_OUT [--out]=MD_OUT)
FLAG_OPTS=([--wireguard-go]=WITH_WG [--rebuild]=REBUILD [--keep-logs]=KEEP_LOGS)
parse_options "$@"
GARBAGE_RATE=${GARBAGE_RATE:-$RATE}
require_positive_ints ROUNDS TIME RATE GARBAGE_RATE SOURCES RSS_EVERY NEW_PEER_AT
if ! [[ "$LONG" =~ ^(0|[1-9][0-9]*)$ ]]; then
    echo "error: --long must be 0 or a positive integer (got '$LONG')" >&2; exit 2
fi
PHASES=()
for p in ${PHASES_LIST//,/ }; do
    case "$p" in
        alone|init|garbage|sink) PHASES+=("$p") ;;
        *) echo "error: --phases: unknown phase '$p' (known: alone, init, garbage, sink)" >&2; exit 2 ;;
    esac
done
if ((SOURCES > MAX_SOURCES)); then
    echo "error: --sources must be at most $MAX_SOURCES" >&2; exit 2
fi
if ((LONG > 0 && NEW_PEER_AT + 5 > LONG)); then
    echo "error: --new-peer-at must be at least 5 s before the end of --long" >&2; exit 2
fi
if [[ -n "$FLOOD_CPU" && ! "$FLOOD_CPU" =~ ^[0-9,-]+$ ]]; then
    echo "error: --flood-cpu takes a CPU list such as 1 or 0-1" >&2; exit 2
fi

require_root
require_tools "apt-get install iproute2 iputils-ping iperf3 coreutils" ip ss ping iperf3 timeout getconf
[[ -n "$FLOOD_CPU" ]] && require_tools "apt-get install util-linux" taskset
[[ -c /dev/net/tun ]] || { echo "error: /dev/net/tun missing" >&2; exit 1; }
find_python "medians, JSON counters, the summary"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- names
ID=$$
NSHA="slf-ha-$ID"      # host_a
NSGA="slf-ga-$ID"      # gw_a
NSGB="slf-gb-$ID"      # gw_b (the target)
NSHB="slf-hb-$ID"      # host_b
NSAT="slf-at-$ID"      # the attacker
NSGC="slf-gc-$ID"      # gw_c (the new peer)
TESTBED_NS=("$NSHA" "$NSGA" "$NSGB" "$NSHB" "$NSAT" "$NSGC")
WAN_A=198.18.0.1
WAN_B=198.18.0.2
LAN_A_GW=198.18.1.1
LAN_A_HOST=198.18.1.10
LAN_B_GW=198.18.2.1
LAN_B_HOST=198.18.2.10
TUN_A=198.18.3.1
TUN_B=198.18.3.2
TUN_C=198.18.3.3
ATT_B=198.18.4.1       # gw_b's address on the attacker's link: the flood's target
ATT_X=198.18.4.2
SRC_BASE=198.18.8.1    # the attacker's sources: SRC_BASE, +1, ... (inside 198.18.8.0/22)
WANC_B=198.18.6.1
WANC_C=198.18.6.2
init_workdir flood
IFA="" IFB="" IFC=""   # set per implementation (the cleanup needs them)

# cleanup_testbed (lib.sh): kills everything in the six namespaces (daemons, iperf3, the
# generator, ping), deletes them, removes the WireGuard API sockets (gw_c's too).
CLEANUP_TERM_TICKS=50
CLEANUP_DEL_TRIES=10
set_traps final_cleanup

# ---------------------------------------------------------------- binaries
resolve_bins() {
    local d="$REPO_ROOT/target/release"
    SLD="${SITELINKD:-$d/sitelinkd}"
    SLC="${SITELINKCTL:-$d/sitelinkctl}"
    FLOOD="${SITELINK_FLOOD:-$d/sitelink-flood}"
    local need=0
    [[ $REBUILD -eq 1 ]] && need=1
    [[ -z "${SITELINKD:-}" && ! -x "$SLD" ]] && need=1
    [[ -z "${SITELINKCTL:-}" && ! -x "$SLC" ]] && need=1
    [[ -z "${SITELINK_FLOOD:-}" && ! -x "$FLOOD" ]] && need=1
    if [[ $need -eq 1 ]]; then
        command -v cargo >/dev/null || { echo "error: binaries missing and cargo not found" >&2; exit 1; }
        log "building: cargo build --release -p sitelinkd -p sitelinkctl -p sitelink-benches --bin sitelink-flood"
        (cd "$REPO_ROOT" && cargo build --release -p sitelinkd -p sitelinkctl \
            -p sitelink-benches --bin sitelink-flood >&2) \
            || { echo "error: cargo build --release failed" >&2; exit 1; }
    fi
    local b
    for b in "$SLD" "$SLC" "$FLOOD"; do
        [[ -x "$b" ]] || { echo "error: not executable: $b" >&2; exit 1; }
    done
    WGGO=""
    if [[ $WITH_WG -eq 1 ]]; then
        WGGO="${WIREGUARD_GO:-$(command -v wireguard-go || true)}"
        [[ -x "$WGGO" ]] || { echo "error: wireguard-go not found (apt-get install wireguard-go)" >&2; exit 1; }
        require_tools "apt-get install wireguard-tools" wg
    fi
}
resolve_bins

IMPLS=(sitelink)
[[ $WITH_WG -eq 1 ]] && IMPLS+=(wireguard-go)

# keys: one set for the run
(umask 077; for g in a b c; do "$SLC" genkey >"$WORK/$g.key"; done)
chmod 600 "$WORK"/{a,b,c}.key
A_PUB=$("$SLC" pubkey <"$WORK/a.key")
B_PUB=$("$SLC" pubkey <"$WORK/b.key")
C_PUB=$("$SLC" pubkey <"$WORK/c.key")

# ---------------------------------------------------------------- testbed
setup_testbed() {
    local ns i
    two_site_testbed
    ip link add att0 netns "$NSGB" type veth peer name att0 netns "$NSAT"
    ip link add wanc netns "$NSGB" type veth peer name wan0 netns "$NSGC"
    ip -n "$NSGB" addr add "$ATT_B/24" dev att0
    ip -n "$NSGB" addr add "$WANC_B/30" dev wanc
    ip -n "$NSAT" addr add "$ATT_X/24" dev att0
    ip -n "$NSGC" addr add "$WANC_C/30" dev wan0
    for spec in "$NSGB att0" "$NSGB wanc" "$NSAT att0" "$NSGC wan0"; do
        read -r ns i <<<"$spec"
        ip -n "$ns" link set "$i" up
    done
    ip -n "$NSGB" route add 198.18.8.0/22 via "$ATT_X"   # cookie replies go back
    # the attacker's source addresses, one /32 each
    "$PY" - "$SRC_BASE" "$SOURCES" <<'PYEOF' | ip -n "$NSAT" -b -
import ipaddress, sys
base = ipaddress.IPv4Address(sys.argv[1])
for i in range(int(sys.argv[2])):
    print(f"addr add {base + i}/32 dev att0")
PYEOF
    wait_for "attacker link ping" 10 ip netns exec "$NSAT" ping -c 1 -W 1 "$ATT_B"
    wait_for "gw_c link ping" 10 ip netns exec "$NSGC" ping -c 1 -W 1 "$WANC_B"
}

# ---------------------------------------------------------------- gateways
# start_gateways IMPL: gw_b, then gw_a; gw_c is started later (start_gw_c).  Sets PID_A,
# PID_B, LOG_A, LOG_B.  gw_b knows gw_a (endpoint learned) and gw_c (allowed 198.18.3.3/32).
start_gateways() {
    local impl=$1
    LOG_A="$WORK/$impl-gw-a.log"; LOG_B="$WORK/$impl-gw-b.log"
    case "$impl" in
        sitelink)
            {
                sitelink_conf "$IFB" "$WORK/b.key" "$TUN_B" site-a "$A_PUB" "" "$TUN_A/32 198.18.1.0/24"
                echo
                sitelink_peer site-c "$C_PUB" "" "$TUN_C/32"
            } >"$WORK/$IFB.toml"
            sitelink_conf "$IFA" "$WORK/a.key" "$TUN_A" site-b "$B_PUB" "$WAN_B:$PORT" \
                "$TUN_B/32 198.18.2.0/24" 25 >"$WORK/$IFA.toml"
            SITELINK_RUN_DIR="$WORK/run" ip netns exec "$NSGB" "$SLD" --config "$WORK/$IFB.toml" >"$LOG_B" 2>&1 &
            PID_B=$!
            wait_sitelink "$PID_B" "$NSGB" "$IFB" "$LOG_B"
            SITELINK_RUN_DIR="$WORK/run" ip netns exec "$NSGA" "$SLD" --config "$WORK/$IFA.toml" >"$LOG_A" 2>&1 &
            PID_A=$!
            wait_sitelink "$PID_A" "$NSGA" "$IFA" "$LOG_A"
            ;;
        wireguard-go)
            PID_B=$(start_wggo "$NSGB" "$IFB" "$LOG_B")
            wait_wggo "$PID_B" "$NSGB" "$IFB" "$LOG_B"
            ip netns exec "$NSGB" wg set "$IFB" private-key "$WORK/b.key" listen-port "$PORT" \
                peer "$A_PUB" allowed-ips "$TUN_A/32,198.18.1.0/24" \
                peer "$C_PUB" allowed-ips "$TUN_C/32"
            wggo_up "$NSGB" "$IFB" "$TUN_B" 198.18.1.0/24
            PID_A=$(start_wggo "$NSGA" "$IFA" "$LOG_A")
            wait_wggo "$PID_A" "$NSGA" "$IFA" "$LOG_A"
            ip netns exec "$NSGA" wg set "$IFA" private-key "$WORK/a.key" listen-port "$PORT" \
                peer "$B_PUB" allowed-ips "$TUN_B/32,198.18.2.0/24" endpoint "$WAN_B:$PORT" \
                persistent-keepalive 25
            wggo_up "$NSGA" "$IFA" "$TUN_A" 198.18.2.0/24
            ;;
    esac
}

# start_gw_c IMPL: gw_c with one peer, gw_b (endpoint 198.18.6.1, keepalive 25).  Sets PID_C.
start_gw_c() {
    local impl=$1
    LOG_C="$WORK/$impl-gw-c.log"
    case "$impl" in
        sitelink)
            sitelink_conf "$IFC" "$WORK/c.key" "$TUN_C" site-b "$B_PUB" "$WANC_B:$PORT" "$TUN_B/32" 25 \
                >"$WORK/$IFC.toml"
            SITELINK_RUN_DIR="$WORK/run" ip netns exec "$NSGC" "$SLD" --config "$WORK/$IFC.toml" >"$LOG_C" 2>&1 &
            PID_C=$!
            wait_sitelink "$PID_C" "$NSGC" "$IFC" "$LOG_C"
            ;;
        wireguard-go)
            PID_C=$(start_wggo "$NSGC" "$IFC" "$LOG_C")
            wait_wggo "$PID_C" "$NSGC" "$IFC" "$LOG_C"
            ip netns exec "$NSGC" wg set "$IFC" private-key "$WORK/c.key" listen-port "$PORT" \
                peer "$B_PUB" allowed-ips "$TUN_B/32" endpoint "$WANC_B:$PORT" persistent-keepalive 25
            wggo_up "$NSGC" "$IFC" "$TUN_C" ""
            ;;
    esac
}

wait_sitelink() { # wait_sitelink PID NS IF LOG: until IF is addressed and the control socket is up
    wait_for "sitelinkd ($3 in $2)" 15 sh -c \
        "kill -0 $1 && [ -S '$WORK/run/$3.sock' ] && ip -n '$2' addr show dev '$3' | grep -q 'inet '" \
        || { show_log "$4"; return 1; }
}

start_wggo() { # start_wggo NS IF LOG -> echoes PID
    WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 \
        ip netns exec "$1" "$WGGO" -f "$2" >"$3" 2>&1 &
    echo $!
}

wait_wggo() { # wait_wggo PID NS IF LOG
    wait_for "wireguard-go ($3 in $2)" 15 sh -c \
        "kill -0 $1 && [ -S '$WG_RUN/$3.sock' ] && ip -n '$2' link show '$3' >/dev/null" \
        || { show_log "$4"; return 1; }
}

wggo_up() { # wggo_up NS IF ADDR ROUTE|"": address, MTU 1420, up, the route to the far LAN
    ip -n "$1" addr add "$3/24" dev "$2"
    ip -n "$1" link set "$2" mtu 1420 up
    if [[ -n "$4" ]]; then ip -n "$1" route add "$4" dev "$2"; fi
}

# ---------------------------------------------------------------- the flood
# start_flood KIND RATE SECS OUT [PORT]: the generator in the attacker's namespace, aimed at
# gw_b's listen port (or PORT); sets FLOOD_PID.
start_flood() {
    local kind=$1 rate=$2 secs=$3 out=$4 port=${5:-$PORT} pin=()
    [[ -n "$FLOOD_CPU" ]] && pin=(taskset -c "$FLOOD_CPU")
    local args=(--target "$ATT_B:$port" --kind "$kind" --sources "$SOURCES" --source-base "$SRC_BASE"
        --rate "$rate" --seconds "$secs" --print-stats)
    [[ "$kind" == init ]] && args+=(--public-key "$B_PUB")
    ip netns exec "$NSAT" "${pin[@]}" "$FLOOD" "${args[@]}" >"$out" 2>"$out.err" &
    FLOOD_PID=$!
    sleep 0.3
    if ! alive "$FLOOD_PID"; then
        echo "error: sitelink-flood exited at once" >&2
        show_log "$out.err"; return 1
    fi
}

stop_flood() { # stop_flood: SIGTERM (it prints its totals) and wait
    [[ -n "${FLOOD_PID:-}" ]] || return 0
    kill -TERM "$FLOOD_PID" 2>/dev/null || true
    wait "$FLOOD_PID" 2>/dev/null || true
    FLOOD_PID=""
}

# ---------------------------------------------------------------- snapshots
# snapshot FILE: everything the deltas of a phase need, as "key value..." lines:
# wall time, gw_b's interface and UDP counters (read through its daemon's /proc/PID/net, i.e.
# in its namespace), gw_b's threads' CPU ticks, the generator's ticks, the machine's
# /proc/stat cpu line, gw_b's handshake counters (sitelink only).
snapshot() {
    local f=$1 t st rest fs
    {
        echo "t $EPOCHREALTIME"
        awk '$1 ~ /^(att0|wan0|wanc):$/ {print "dev", $1, $2, $3, $5}' "/proc/$PID_B/net/dev"
        awk '$1 == "Udp:" {print "udp", $0}' "/proc/$PID_B/net/snmp"
        for t in /proc/"$PID_B"/task/*; do
            st=$(cat "$t/stat" 2>/dev/null) || continue
            rest=${st##*) }
            read -r -a fs <<<"$rest"
            echo "thr ${t##*/} $(tr ' ' '_' <"$t/comm") $((fs[11] + fs[12])) $(cat "$t/schedstat" 2>/dev/null)"
        done
        if [[ -n "${FLOOD_PID:-}" ]] && st=$(cat "/proc/$FLOOD_PID/stat" 2>/dev/null); then
            rest=${st##*) }
            read -r -a fs <<<"$rest"
            echo "gen $((fs[11] + fs[12]))"
        fi
        head -n 1 /proc/stat
        echo "rss $(awk '$1 == "VmRSS:" {print $2}' "/proc/$PID_B/status")"
    } >"$f"
    if [[ "$IMPL" == sitelink ]]; then
        SITELINK_RUN_DIR="$WORK/run" timeout -k 2 10 "$SLC" --interface "$IFB" show --json \
            >"$f.json" 2>>"$WORK/ctl.err" || echo '{}' >"$f.json"
    fi
}

# fpy ARGS... <SCRIPT: like py (lib.sh), with the snapshot helpers below as well
fpy() { { py_helpers; snap_helpers; cat; } | "$PY" - "$@"; }

snap_helpers() {
    cat <<'PYEOF'
import os, re

HS_KEYS = ["queued", "queue_full", "rate_limited", "processed", "unknown_key", "cookie_replies",
           "cookie_budget_spent", "invalid"]   # and whatever else the daemon reports
CPU_COLS = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]

def read_snap(path):
    """A snapshot file of flood.sh (and its .json next to it, if any) as a dict."""
    d = {"dev": {}, "thr": {}, "gen": None, "udp": {}, "hs": None, "dropped": None, "rss": None}
    udp_names = None
    with open(path) as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if p[0] == "t":
                d["t"] = float(p[1])
            elif p[0] == "dev":
                d["dev"][p[1].rstrip(":")] = {"rx_pkts": int(p[3]), "rx_drop": int(p[4])}
            elif p[0] == "udp":
                if udp_names is None:
                    udp_names = p[2:]
                else:
                    d["udp"] = dict(zip(udp_names, map(int, p[2:])))
            elif p[0] == "thr":
                # tid name ticks [run_ns wait_ns slices]: schedstat's wait = runnable, no CPU
                d["thr"][p[1]] = (p[2], int(p[3]), int(p[5]) if len(p) > 5 else None)
            elif p[0] == "gen":
                d["gen"] = int(p[1])
            elif p[0] == "cpu":
                d["cpu"] = [int(x) for x in p[1:9]]
            elif p[0] == "rss" and len(p) > 1:
                d["rss"] = int(p[1])
    try:
        with open(path + ".json") as f:
            j = json.load(f)
        d["hs"] = j["interface"]["handshakes"]
        d["dropped"] = sum(j["interface"].get("dropped", {}).values())
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return d

def deltas(a, b, hz):
    """What happened between snapshots a and b: rates per second, CPU in % of one core."""
    dt = b["t"] - a["t"]
    out = {"dt": dt}
    def dev(name, key):
        if name in a["dev"] and name in b["dev"]:
            return (b["dev"][name][key] - a["dev"][name][key]) / dt
        return float("nan")
    out["att_rx_pps"] = dev("att0", "rx_pkts")
    out["att_drop_pps"] = dev("att0", "rx_drop")
    out["rcvbuf_err_ps"] = (b["udp"].get("RcvbufErrors", 0) - a["udp"].get("RcvbufErrors", 0)) / dt
    # per thread name: summed over the threads of that name alive at both ends
    thr, wait = {}, {}
    for tid, (name, ticks, w) in b["thr"].items():
        if tid in a["thr"]:
            thr[name] = thr.get(name, 0.0) + 100 * (ticks - a["thr"][tid][1]) / hz / dt
            if w is not None and a["thr"][tid][2] is not None:
                wait[name] = wait.get(name, 0.0) + 100 * (w - a["thr"][tid][2]) / 1e9 / dt
    out["threads"] = thr
    out["waits"] = wait
    out["gen_cpu"] = (100 * (b["gen"] - a["gen"]) / hz / dt
                      if a["gen"] is not None and b["gen"] is not None else float("nan"))
    out["machine"] = {c: 100 * (y - x) / hz / dt
                      for c, x, y in zip(CPU_COLS, a["cpu"], b["cpu"])}
    if a["hs"] is not None and b["hs"] is not None:
        keys = HS_KEYS + sorted(k for k in b["hs"] if k not in HS_KEYS)
        out["hs"] = {k: (b["hs"].get(k, 0) - a["hs"].get(k, 0)) / dt for k in keys}
        read = sum(b["hs"].get(k, 0) - a["hs"].get(k, 0) for k in ("queued", "queue_full"))
        # Daemons that limit each source where they queue count rate_limited beside queued;
        # earlier ones counted it among the queued (then it is never more than queued).
        limited = b["hs"].get("rate_limited", 0) - a["hs"].get("rate_limited", 0)
        queued = b["hs"].get("queued", 0) - a["hs"].get("queued", 0)
        if limited > queued:
            read += limited
        read += (b["dropped"] or 0) - (a["dropped"] or 0)
        out["daemon_pps"] = read / dt
    else:
        out["hs"] = None
        out["daemon_pps"] = float("nan")
    return out

def gen_result(path):
    """(packets/s the generator sent, errors) from its last line; nan if none."""
    try:
        with open(path) as f:
            lines = [l for l in f if l.startswith("sent=")]
        kv = dict(x.split("=", 1) for x in lines[-1].split())
        return float(kv["pps"]), int(kv["errors"])
    except (OSError, IndexError, KeyError, ValueError):
        return float("nan"), 0

def num(x, nd):
    return "nan" if x != x else f"{x:.{nd}f}"
PYEOF
}

# ---------------------------------------------------------------- one phase
# phase IMPL PHASE ROUND: iperf3 for TIME s alone or during a flood; one row to $RESULTS:
# impl phase round gbps retransmits flood_rx_pps daemon_pps gen_pps rcvbuf_err_ps json
phase() {
    local impl=$1 ph=$2 round=$3
    local tag="$impl-$ph-r$round" gen="$WORK/gen-$impl-$ph-r$round.txt"
    FLOOD_PID=""
    case "$ph" in
        init) start_flood init "$RATE" $((TIME + 20)) "$gen" ;;
        garbage) start_flood garbage "$GARBAGE_RATE" $((TIME + 20)) "$gen" ;;
        sink) start_flood garbage "$GARBAGE_RATE" $((TIME + 20)) "$gen" "$SINK_PORT" ;;
        alone) : >"$gen" ;;
    esac
    [[ "$ph" != alone ]] && sleep 2   # the flood in full swing (and gw_b under load)
    snapshot "$WORK/snap-$tag-0"
    local rc=0
    iperf3_tcp "$NSHB" "$NSHA" "$LAN_B_HOST" "$WORK/iperf-$tag.json" "$WORK/iperf-server-$tag.log" || rc=1
    snapshot "$WORK/snap-$tag-1"
    stop_flood
    if [[ $rc -ne 0 ]]; then
        printf '%s\t%s\t%s\tnan\tnan\tnan\tnan\tnan\tnan\t{}\n' "$impl" "$ph" "$round" >>"$RESULTS"
        return 0
    fi
    fpy "$impl" "$ph" "$round" "$WORK/iperf-$tag.json" "$WORK/snap-$tag-0" "$WORK/snap-$tag-1" \
        "$gen" "$CLK_TCK" "${IPERF_RC:-0}" >>"$RESULTS" <<'PYEOF'
impl, ph, rnd, jsonf, s0, s1, genf, hz, rc = sys.argv[1:10]
try:
    g, r = iperf_result(jsonf)
    gbps, retr = f"{g:.3f}", str(r)
except Exception as e:  # noqa: BLE001
    print(f"iperf3 failed ({impl} {ph} round {rnd}, rc={rc}): {e}", file=sys.stderr)
    gbps = retr = "nan"
d = deltas(read_snap(s0), read_snap(s1), int(hz))
gpps, gerr = gen_result(genf)
d["gen_errors"] = gerr
print("\t".join([impl, ph, rnd, gbps, retr, num(d["att_rx_pps"], 0), num(d["daemon_pps"], 0),
                 num(gpps, 0), num(d["rcvbuf_err_ps"], 0), json.dumps(d)]))
PYEOF
    local _i _p _r gb rt fr dp gp rb
    IFS=$'\t' read -r _i _p _r gb rt fr dp gp rb _ < <(tail -n 1 "$RESULTS")
    log "$impl round $round $ph: TCP $gb Gbit/s, $rt retransmits; flood at gw_b $fr/s, read by the daemon $dp/s, generator $gp/s; UDP RcvbufErrors $rb/s"
}

# ---------------------------------------------------------------- the long flood
# long_flood IMPL: LONG s of initiations; VmRSS every RSS_EVERY s; gw_c started NEW_PEER_AT s
# in, pinging gw_b through the tunnel until the first reply.  One row to $WORK/long.tsv.
long_flood() {
    local impl=$1 tag="$1-long" gen="$WORK/gen-$1-long.txt" samples="$WORK/rss-$1.txt"
    local pingf="$WORK/ping-new-peer-$1.txt" t_exec="" t_if="" ping_pid="" rss0 hwm
    local deadline=$((LONG - NEW_PEER_AT - 2))
    rss0=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$PID_B/status")
    log "$impl: long flood, ${LONG}s; VmRSS before: $rss0 kB"
    start_flood init "$RATE" $((LONG + 10)) "$gen"
    snapshot "$WORK/snap-$tag-0"
    local t0=${EPOCHREALTIME/./} now el next=0 started=0
    : >"$samples"
    while :; do
        now=${EPOCHREALTIME/./}
        el=$(((now - t0) / 1000))   # ms since the flood started
        if ((el >= next)); then
            alive "$PID_B" || { echo "error: gw_b's daemon died during the flood" >&2; show_log "$LOG_B"; return 1; }
            echo "$el $(awk '$1 == "VmRSS:" {print $2}' "/proc/$PID_B/status")" >>"$samples"
            log "$impl: ${el} ms: VmRSS $(tail -n 1 "$samples" | cut -d' ' -f2) kB"
            next=$((next + RSS_EVERY * 1000))
        fi
        if ((started == 0 && el >= NEW_PEER_AT * 1000)); then
            started=1
            t_exec=$EPOCHREALTIME
            start_gw_c "$impl"
            t_if=$EPOCHREALTIME
            ip netns exec "$NSGC" ping -n -D -c 1 -i 0.1 -w "$deadline" "$TUN_B" >"$pingf" 2>&1 &
            ping_pid=$!
        fi
        ((el >= LONG * 1000)) && break
        sleep 0.1
    done
    snapshot "$WORK/snap-$tag-1"
    hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$PID_B/status")
    stop_flood
    [[ -n "$ping_pid" ]] && { wait "$ping_pid" 2>/dev/null || true; }
    fpy "$impl" "$rss0" "$hwm" "$samples" "$pingf" "$t_exec" "$t_if" "$WORK/snap-$tag-0" \
        "$WORK/snap-$tag-1" "$gen" "$CLK_TCK" "$RSS_UP" >>"$WORK/long.tsv" <<'PYEOF'
impl, rss0, hwm, samplef, pingf, t_exec, t_if, s0, s1, genf, hz, rss_up = sys.argv[1:13]
samples = [tuple(map(int, l.split())) for l in open(samplef) if len(l.split()) == 2]
newpeer = "nan"
try:
    for line in open(pingf):
        m = re.match(r"\[([0-9.]+)\] .*bytes from", line)
        if m:
            newpeer = f"{float(m.group(1)) - float(t_exec):.3f}"
            break
except OSError:
    pass
startup = f"{float(t_if) - float(t_exec):.3f}" if t_exec and t_if else "nan"
a, b = read_snap(s0), read_snap(s1)
d = deltas(a, b, int(hz))
d["hs_end"] = b["hs"]
d["samples"] = samples
d["rss_up"] = int(rss_up)
gpps, d["gen_errors"] = gen_result(genf)
rss_end = samples[-1][1] if samples else float("nan")
rss_max = max(s[1] for s in samples) if samples else float("nan")
print("\t".join([impl, rss0, str(rss_end), str(rss_max), hwm, newpeer, startup,
                 num(d["att_rx_pps"], 0), num(d["daemon_pps"], 0), num(gpps, 0), json.dumps(d)]))
PYEOF
    local line
    line=$(tail -n 1 "$WORK/long.tsv")
    log "$impl long flood: $(cut -f2-10 <<<"$line" | tr '\t' ' ') (rss0 rss_end rss_max hwm newpeer_s startup_s flood_rx daemon gen)"
    [[ -s "$pingf" ]] && log "$impl new peer ping: $(grep -m1 'bytes from' "$pingf" || tail -n 1 "$pingf")"
    return 0
}

# ---------------------------------------------------------------- one implementation
run_impl() {
    IMPL=$1
    cleanup_testbed
    setup_testbed
    start_gateways "$IMPL"
    if ! wait_for "ping host_a -> host_b through the tunnel" 20 \
        ip netns exec "$NSHA" ping -c 1 -W 1 "$LAN_B_HOST"; then
        show_log "$LOG_A"; show_log "$LOG_B"
        return 1
    fi
    ip netns exec "$NSHA" ping -c 5 -i 0.05 -W 1 "$LAN_B_HOST" >/dev/null 2>&1 || true
    RSS_UP=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$PID_B/status")
    log "$IMPL: tunnel up; gw_b pid $PID_B; VmRSS $RSS_UP kB"
    local round k ph np=${#PHASES[@]}
    for ((round = 1; round <= ROUNDS; round++)); do
        for ((k = 0; k < np; k++)); do
            # rotate the start each round so no phase always goes first
            ph=${PHASES[$(((k + round - 1) % np))]}
            log "$IMPL round $round/$ROUNDS: $ph"
            phase "$IMPL" "$ph" "$round"
            alive "$PID_B" || { echo "error: gw_b's daemon died" >&2; show_log "$LOG_B"; return 1; }
            sleep 3   # gw_b's "under load" hold (1 s) passes, queues drain
        done
    done
    if ((LONG > 0)); then long_flood "$IMPL"; fi
    local nw ne
    nw=$(grep -c 'WARN' "$LOG_B" || true)
    ne=$(grep -c 'ERROR' "$LOG_B" || true)
    log "$IMPL: gw_b log: $(wc -l <"$LOG_B") lines, $nw WARN, $ne ERROR"
}

# ---------------------------------------------------------------- main
log "work dir $WORK; sitelinkd $SLD; generator $FLOOD"
log "implementations: ${IMPLS[*]}; rounds=$ROUNDS time=${TIME}s rate=$RATE garbage-rate=$GARBAGE_RATE sources=$SOURCES long=${LONG}s"
log "namespaces: ${TESTBED_NS[*]}"
DATE_START=$(utc_now)
UPTIME_START=$(uptime)
note_load_start
: >"$WORK/long.tsv"
declare -A FAILED=()
for impl in "${IMPLS[@]}"; do
    case "$impl" in
        sitelink) IFA="fa$ID" IFB="fb$ID" IFC="fc$ID" ;;
        wireguard-go) IFA="ga$ID" IFB="gb$ID" IFC="gc$ID" ;;
    esac
    TESTBED_EXTRA_IFS=("$IFC")
    log "=== $impl (interfaces $IFA/$IFB/$IFC)"
    run_isolated run_impl "$impl"
    if [[ $RUN_RC -ne 0 ]]; then
        FAILED[$impl]=1
        log "$impl: run FAILED (rc=$RUN_RC); the table shows what was measured"
    fi
    cleanup_testbed
done
UPTIME_END=$(uptime)

write_raw impl phase round tcp_gbps retransmits flood_rx_pps daemon_read_pps generator_pps \
    udp_rcvbuf_errors_ps details_json
if [[ -n "$RAW_OUT" ]]; then
    cp "$WORK/long.tsv" "$RAW_OUT.long"
    log "long-flood raw results written to $RAW_OUT.long"
fi

# ---------------------------------------------------------------- summary
CMD=$(quote_cmd bash "$0" "${ORIG_ARGS[@]}")
for v in SITELINK_FLOOD SITELINKCTL SITELINKD WIREGUARD_GO; do
    [[ -n "${!v:-}" ]] && CMD="$v=$(quote_cmd "${!v}") $CMD"
done

summary() {
    summary_title flood "$DATE_START"
    echo "Command: \`$CMD\`"
    echo
    echo "uptime at start: \`${UPTIME_START# }\`; at end: \`${UPTIME_END# }\`"
    echo
    echo "Medians over $ROUNDS interleaved round(s), (min–max) across rounds. iperf3 single TCP stream host_a→host_b, ${TIME}s per phase."
    echo "\"× alone\" = median of the phase / median of alone (the goals are judged on it); \"per round\" = each round's"
    echo "phase / the same round's alone, median (min–max), which drifting load on the machine disturbs less."
    echo "The flood"
    echo "starts 2 s before iperf3: initiations with a valid mac1 from strangers (target $RATE/s) or random"
    echo "148-byte datagrams (target $GARBAGE_RATE/s), from $SOURCES source addresses to gw_b's listen port."
    echo "\"at gw_b\" = packets/s received on gw_b's attacker-side veth; \"read\" = what gw_b's daemon counted"
    echo "(handshakes.queued + queue_full [+ rate_limited where counted before the queue] + interface.dropped, sitelink"
    echo "only); \"sent\" = the generator's own count."
    if [[ " ${PHASES[*]} " == *" sink "* ]]; then
        echo "sink = the garbage flood at gw_b's port $SINK_PORT, where nothing listens: a control for what the flood"
        echo "costs the 2 cores (generator, kernel receive path) without the daemon reading it."
    fi
    echo "The generator${FLOOD_CPU:+ (taskset -c $FLOOD_CPU)} shares the $(nproc) cores with both tunnel ends and iperf3."
    echo
    fpy "$RESULTS" "$WORK/long.tsv" "${IMPLS[*]}" "${!FAILED[*]}" "$RSS_EVERY" "$NEW_PEER_AT" "$LONG" <<'PYEOF'
resf, longf, impls, failed, rss_every, new_at, long_s = sys.argv[1:8]
impls, failed = impls.split(), failed.split()
rows = read_rows(resf, 10)
GOAL = {"init": 0.5, "garbage": 0.7}
PHASES = ("alone", "init", "garbage", "sink")

def fmt(v, nd, scale=1.0):
    v = [x * scale for x in v]
    return med_range(v, nd) if v else "n/a"

def details(rs):
    out = []
    for r in rs:
        try:
            out.append(json.loads(r[9]))
        except (ValueError, IndexError):
            pass
    return [d for d in out if d]

print("| implementation | phase | TCP Gbit/s | × alone | × alone, per round | retransmits | flood at gw_b kpps "
      "| read by gw_b kpps | sent kpps | UDP RcvbufErrors /s | goal |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for impl in impls:
    base = vals([r for r in rows.get(impl, []) if r[1] == "alone"], 3)
    for ph in PHASES:
        rs = [r for r in rows.get(impl, []) if r[1] == ph]
        if not rs:
            continue
        g = vals(rs, 3)
        ratio, goal = "–", ""
        # the same round's alone as the reference: less sensitive to load that drifts
        alone = {r[2]: r for r in rows.get(impl, []) if r[1] == "alone"}
        paired = []
        for r in rs:
            try:
                x, y = float(r[3]), float(alone[r[2]][3])
            except (KeyError, ValueError):
                continue
            if x == x and y == y and y > 0:
                paired.append(x / y)
        pr = fmt(paired, 2) if ph != "alone" else "–"
        if g and base and ph != "alone":
            x = statistics.median(g) / statistics.median(base)
            ratio = f"{x:.2f}×"
            if ph in GOAL:
                goal = f"≥ {GOAL[ph]}×: " + ("met" if x >= GOAL[ph] else "**not met**")
            else:
                goal = "control, no goal"
        print(f"| {impl} | {ph} | {fmt(g, 2)} | {ratio} | {pr} | {fmt(vals(rs, 4), 0)} "
              f"| {fmt(vals(rs, 5), 1, 1e-3)} | {fmt(vals(rs, 6), 1, 1e-3)} | {fmt(vals(rs, 7), 1, 1e-3)} "
              f"| {fmt(vals(rs, 8), 0)} | {goal} |")
for impl in failed:
    print(f"| {impl} | run failed part-way (see the log) | | | | | | | | | |")
PYEOF
}
summary_rest() {
    fpy "$RESULTS" "$WORK/long.tsv" "${IMPLS[*]}" "$RSS_EVERY" "$NEW_PEER_AT" "$LONG" "$RATE" <<'PYEOF'
resf, longf, impls, rss_every, new_at, long_s, rate = sys.argv[1:8]
impls = impls.split()
rows = read_rows(resf, 10)

def med(v, nd):
    v = [x for x in v if x == x]
    return f"{statistics.median(v):.{nd}f}" if v else "n/a"

print()
print("CPU during each phase, % of one core (medians over rounds): gw_b's daemon per thread as \"on CPU (runnable")
print("but waiting for a CPU)\" from /proc/PID/task/TID/stat and schedstat, the generator, and the whole machine")
print("(user, nice = niced fuzzers or other low-priority load, system, softirq, idle; 200 = both cores).")
print()
print("| implementation | phase | gw_b threads, on CPU (waiting) | generator | machine user / nice / sys / softirq / idle |")
print("|---|---|---|---|---|")
for impl in impls:
    for ph in ("alone", "init", "garbage", "sink"):
        ds = []
        for r in rows.get(impl, []):
            if r[1] == ph:
                try:
                    ds.append(json.loads(r[9]))
                except ValueError:
                    pass
        ds = [d for d in ds if d]
        if not ds:
            continue
        names = sorted({n for d in ds for n in d["threads"]},
                       key=lambda n: -statistics.median([d["threads"].get(n, 0) for d in ds]))
        thr = ", ".join(f"{n} {med([d['threads'].get(n, 0) for d in ds], 0)} "
                        f"({med([d.get('waits', {}).get(n, float('nan')) for d in ds], 0)})" for n in names
                        if statistics.median([d['threads'].get(n, 0) for d in ds]) >= 0.5) or "–"
        mach = " / ".join(med([d["machine"][c] for d in ds], 0)
                          for c in ("user", "nice", "system", "softirq", "idle"))
        gen = med([d["gen_cpu"] for d in ds], 0) if ph != "alone" else "–"
        print(f"| {impl} | {ph} | {thr} | {gen} | {mach} |")

print()
print("gw_b's handshake counters (sitelink, `sitelinkctl show --json`, interface.handshakes): per second during")
print("the iperf3 window of each phase (median over rounds), and the totals at the end of the run's long flood.")
print()
keys = list(HS_KEYS)
for impl in impls:
    for r in rows.get(impl, []):
        try:
            d = json.loads(r[9])
        except ValueError:
            continue
        keys += [k for k in (d.get("hs") or {}) if k not in keys]
print("| implementation | phase | " + " | ".join(keys) + " |")
print("|---|---|" + "---|" * len(keys))
for impl in impls:
    for ph in ("alone", "init", "garbage", "sink"):
        ds = []
        for r in rows.get(impl, []):
            if r[1] == ph:
                try:
                    d = json.loads(r[9])
                except ValueError:
                    continue
                if d and d.get("hs"):
                    ds.append(d["hs"])
        if ds:
            print(f"| {impl} | {ph} /s | " + " | ".join(med([d.get(k, float("nan")) for d in ds], 0) for k in keys) + " |")
longs = {}
try:
    for line in open(longf):
        p = line.rstrip("\n").split("\t")
        if len(p) >= 11:
            longs[p[0]] = p
except OSError:
    pass
for impl in impls:
    p = longs.get(impl)
    if not p:
        continue
    d = json.loads(p[10])
    if d.get("hs"):
        print(f"| {impl} | long flood /s | " + " | ".join(f"{d['hs'].get(k, float('nan')):.0f}" for k in keys) + " |")
    if d.get("hs_end"):
        print(f"| {impl} | totals at the end | " + " | ".join(str(d["hs_end"].get(k, "–")) for k in keys) + " |")

if long_s == "0":
    sys.exit(0)
print()
print(f"Long flood: {long_s} s of initiations (target {rate}/s), after the rounds. RSS = gw_b's VmRSS, sampled every")
print(f"{rss_every} s; \"at tunnel up\" = once the tunnel first answered a ping, before any TCP or flood (the rounds' TCP")
print("streams grow the buffers, which is why \"before\" is the baseline of the goal);")
print(f"\"new peer\" = gw_c (a peer gw_b knows, not running before) started {new_at} s into the flood: time from its")
print("exec to the first ping reply from gw_b through the tunnel (ping every 0.1 s), i.e. start-up + handshake.")
print()
print("| implementation | RSS at tunnel up MB | RSS before MB | RSS at the end MB | growth MB | max MB | VmHWM MB | new peer s "
      "| of which start-up s | flood at gw_b kpps | read by gw_b kpps | sent kpps | generator CPU % | goals |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for impl in impls:
    p = longs.get(impl)
    if not p:
        print(f"| {impl} | failed | | | | | | | | | | | | |")
        continue
    d = json.loads(p[10])
    mb = lambda x: float(x) / 1024
    r0, r1, rmax, hwm = (mb(x) for x in p[1:5])
    growth = r1 - r0
    try:
        np_s = float(p[5])
    except ValueError:
        np_s = float("nan")
    goals = ("RSS growth ≤ 10 MB: " + ("met" if growth <= 10 else "**not met**") + "; new peer ≤ 5 s: "
             + ("met" if np_s == np_s and np_s <= 5 else "**not met**"))
    k = lambda x: "n/a" if x == "nan" else f"{float(x) / 1000:.1f}"
    nps = "no reply" if np_s != np_s else f"{np_s:.2f}"
    print(f"| {impl} | {d['rss_up'] / 1024:.1f} | {r0:.1f} | {r1:.1f} | {growth:+.1f} | {rmax:.1f} | {hwm:.1f} | {nps} | {p[6]} "
          f"| {k(p[7])} | {k(p[8])} | {k(p[9])} | {d['gen_cpu']:.0f} | {goals} |")
for impl in impls:
    p = longs.get(impl)
    if p:
        d = json.loads(p[10])
        s = ", ".join(f"{t / 1000:.0f}s {kb / 1024:.1f}" for t, kb in d["samples"])
        print(f"\n{impl} RSS samples (MB): {s}")
        thr = ", ".join(f"{n} {v:.0f} ({d.get('waits', {}).get(n, float('nan')):.0f})"
                        for n, v in sorted(d["threads"].items(), key=lambda x: -x[1]) if v >= 0.5)
        m = d["machine"]
        print(f"\n{impl} CPU during the long flood (% of one core): gw_b threads: {thr}; generator {d['gen_cpu']:.0f}; "
              f"machine user {m['user']:.0f} / nice {m['nice']:.0f} / sys {m['system']:.0f} / softirq {m['softirq']:.0f} / idle {m['idle']:.0f}")
PYEOF
}
{ summary; summary_rest; } >"$WORK/summary.md"
cat "$WORK/summary.md"
if [[ -n "$MD_OUT" ]]; then
    cp "$WORK/summary.md" "$MD_OUT"
    log "summary written to $MD_OUT"
fi
