# shellcheck shell=bash
# lib.sh — shell code shared by the bench scripts (side-by-side.sh, scale.sh).
# Sourced, not run:  source "$(dirname "$0")/lib.sh"
#
# It only defines functions and constants.  Some functions read variables the script
# sets (each function names them); every script sets:
#   TESTBED_NS                 array of a run's network namespaces
#   CLEANUP_TERM_TICKS         how long cleanup_testbed waits after SIGTERM, in 0.1 s
#   CLEANUP_DEL_TRIES          how often it tries to delete a namespace
#   IFA, IFB                   tunnel interface names ("" = none yet)
#   TIME, RAW_OUT, KEEP_LOGS   --time, --raw, --keep-logs
# and gets WORK and RESULTS from init_workdir, PY from find_python.  Optional:
#   TESTBED_EXTRA_IFS          more tunnel interface names whose API sockets cleanup_testbed
#                              removes (default: none)

# shellcheck disable=SC2034  # REPO_ROOT, PORT, WG_RUN: used by the scripts
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
PORT=51820
WG_RUN=/var/run/wireguard

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- options and checks
# parse_options "$@": the script declares, before calling it,
#   VALUE_OPTS[--name]=VAR     --name V and --name=V set VAR (V must not be empty,
#   EMPTY_OK_OPTS[--name]=1      unless this is set)
#   FLAG_OPTS[--name]=VAR      --name sets VAR=1
# and a usage function (-h/--help).  Anything else is an error (exit 2).
declare -gA VALUE_OPTS=() EMPTY_OK_OPTS=() FLAG_OPTS=()
declare -ga TESTBED_EXTRA_IFS=()
parse_options() {
    local arg opt
    while [[ $# -gt 0 ]]; do
        arg=${1:--}                      # "" is no valid array key; "-" is in no table
        opt=${arg%%=*}; opt=${opt:--}    # --name of --name=V
        if [[ -n "${VALUE_OPTS[$opt]:-}" && "$arg" == *=* ]]; then
            printf -v "${VALUE_OPTS[$opt]}" '%s' "${arg#*=}"; shift
        elif [[ -n "${VALUE_OPTS[$arg]:-}" ]]; then
            if [[ $# -lt 2 || ( -z "$2" && -z "${EMPTY_OK_OPTS[$arg]:-}" ) ]]; then
                echo "$0: $arg needs a value" >&2
                exit 1
            fi
            printf -v "${VALUE_OPTS[$arg]}" '%s' "$2"; shift 2
        elif [[ -n "${FLAG_OPTS[$arg]:-}" ]]; then
            printf -v "${FLAG_OPTS[$arg]}" 1; shift
        elif [[ "$1" == -h || "$1" == --help ]]; then
            usage; exit 0
        else
            echo "unknown option: $1" >&2; usage >&2; exit 2
        fi
    done
}

require_positive_ints() { # require_positive_ints VAR...: --var-name must be 1, 2, ...
    local v opt
    for v in "$@"; do
        if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
            opt=${v,,}; opt=${opt//_/-}
            echo "error: --$opt must be a positive integer (got '${!v}')" >&2
            exit 2
        fi
    done
}

require_root() {
    if [[ $EUID -ne 0 ]]; then
        echo "error: must run as root (network namespaces, TUN devices)" >&2
        exit 1
    fi
}

require_tools() { # require_tools "apt-get install ..." TOOL...
    local hint=$1 tool; shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "error: '$tool' not found ($hint)" >&2; exit 1; }
    done
}

find_python() { # find_python WHAT-FOR: sets PY
    local p
    PY=""
    for p in /usr/bin/python3 python3; do
        if command -v "$p" >/dev/null; then PY=$(command -v "$p"); break; fi
    done
    [[ -n "$PY" ]] || { echo "error: python3 not found ($1)" >&2; exit 1; }
}

# parse_thread_counts OPTION LIST: sets THREADS_LIST to the packet-thread counts (1-64) of the
# comma-separated LIST, in order, duplicates dropped; a bad count exits 2 naming OPTION.
parse_thread_counts() {
    local option=$1 t req
    THREADS_LIST=()
    IFS=',' read -r -a req <<<"$2"
    for t in "${req[@]}"; do
        t="${t// /}"
        [[ -z "$t" ]] && continue
        if ! [[ "$t" =~ ^[1-9][0-9]*$ ]] || ((t > 64)); then
            echo "error: $option: '$t' is not a thread count (1-64)" >&2
            exit 2
        fi
        [[ " ${THREADS_LIST[*]} " == *" $t "* ]] && continue
        THREADS_LIST+=("$t")
    done
}

# ---------------------------------------------------------------- work dir and cleanup
init_workdir() { # init_workdir NAME: WORK=/tmp/sitelink-NAME.XXXXXX, empty $RESULTS in it
    WORK=$(mktemp -d "/tmp/sitelink-$1.XXXXXX")
    RESULTS="$WORK/results.tsv"
    : >"$RESULTS"
}

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$1"; }

# Kill every process inside the namespaces in TESTBED_NS (SIGTERM, then SIGKILL after
# CLEANUP_TERM_TICKS x 0.1 s), delete the namespaces (up to CLEANUP_DEL_TRIES tries),
# remove the WireGuard API sockets of IFA, IFB and TESTBED_EXTRA_IFS.  Idempotent; never fails.
cleanup_testbed() {
    local ns pids p _ ifn
    for ns in "${TESTBED_NS[@]}"; do
        ns_exists "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z "$pids" ]] && continue
        for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
        for _ in $(seq 1 "$CLEANUP_TERM_TICKS"); do
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [[ -z "$pids" ]] && break
            sleep 0.1
        done
        for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    done
    for ns in "${TESTBED_NS[@]}"; do
        # a TUN device can linger a moment after its owner died
        for _ in $(seq 1 "$CLEANUP_DEL_TRIES"); do
            ns_exists "$ns" || break
            ip netns del "$ns" 2>/dev/null && break
            sleep 0.2
        done
    done
    [[ -n "$IFA" ]] && rm -f "$WG_RUN/$IFA.sock"
    [[ -n "$IFB" ]] && rm -f "$WG_RUN/$IFB.sock"
    for ifn in "${TESTBED_EXTRA_IFS[@]}"; do
        [[ -n "$ifn" ]] && rm -f "$WG_RUN/$ifn.sock"
    done
    return 0
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

set_traps() { # set_traps HANDLER: run HANDLER on exit; Ctrl-C exits 130, SIGTERM/SIGHUP 143
    # shellcheck disable=SC2064  # the handler's name, expanded now on purpose
    trap "$1" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
}

# run_isolated CMD...: run CMD in a subshell with errexit, cleaning the testbed when it
# ends; sets RUN_RC to its exit status.  Exits the script if CMD was interrupted.
# (Call it as a plain command: in an `if` or `||` errexit would be off inside.)
run_isolated() {
    set +e
    (
        set -e
        set_traps cleanup_testbed
        "$@"
    )
    RUN_RC=$?
    set -e
    ((RUN_RC >= 128)) && exit "$RUN_RC"   # interrupted
    return 0
}

# ---------------------------------------------------------------- helpers
wait_for() { # wait_for DESC TIMEOUT_S CMD... : poll CMD every 0.1 s
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

# tunnel_warmup FROM_NS DST NS...: pings DST from FROM_NS through the tunnel until it answers
# (the handshake is done; 20 s at most), then five more to settle ARP, handshake and keepalive
# state. Fails if a daemon of $DAEMON_PIDS dies first or nothing answers, showing the NS...
# namespaces' addresses and routes and the $DAEMON_LOGS.
tunnel_warmup() {
    local from=$1 dst=$2 deadline=$((SECONDS + 20)) p l ns
    shift 2
    until ip netns exec "$from" ping -c 1 -W 1 "$dst" >/dev/null 2>&1; do
        for p in $DAEMON_PIDS; do
            if ! alive "$p"; then
                echo "error: a daemon (pid $p) died before the tunnel to $dst came up" >&2
                for l in $DAEMON_LOGS; do show_log "$l"; done
                return 1
            fi
        done
        if ((SECONDS >= deadline)); then
            echo "error: no ping reply from $dst through the tunnel within 20s" >&2
            for ns in "$@"; do
                echo "---- $ns:" >&2
                ip -n "$ns" -br addr >&2 || true
                ip -n "$ns" route >&2 || true
            done
            for l in $DAEMON_LOGS; do show_log "$l"; done
            return 1
        fi
    done
    ip netns exec "$from" ping -c 5 -i 0.05 -W 1 "$dst" >/dev/null 2>&1 || true
}

show_log() { # show_log FILE
    if [[ -s "$1" ]]; then
        echo "---- last lines of $1:" >&2
        tail -n 20 "$1" | sed 's/\x1b\[[0-9;]*m//g' >&2
        echo "----" >&2
    fi
}

# sitelink_conf IF KEYFILE ADDRESS PEERNAME PEERPUB ENDPOINT "CIDR..." [KEEPALIVE]
# prints a sitelinkd config with one [[peer]]: ADDRESS/24, MTU 1420, listening on PORT.
# ENDPOINT "" = none (learned from the peer's handshake); KEEPALIVE "" = none.
sitelink_conf() {
    local ifn=$1 key=$2 addr=$3
    cat <<EOF
[interface]
name = "$ifn"
private-key-file = "$key"
listen-port = $PORT
address = ["$addr/24"]
mtu = 1420

EOF
    sitelink_peer "${@:4}"
}

# sitelink_peer PEERNAME PEERPUB ENDPOINT "CIDR..." [KEEPALIVE]: prints one [[peer]] table
# (ENDPOINT "" = none, KEEPALIVE "" = none); print more after a sitelink_conf for more peers.
sitelink_peer() {
    local name=$1 pub=$2 endpoint=$3 cidrs=$4 keepalive=${5:-}
    local ips="" c
    for c in $cidrs; do ips+="${ips:+, }\"$c\""; done
    cat <<EOF
[[peer]]
name = "$name"
public-key = "$pub"
EOF
    if [[ -n "$endpoint" ]]; then echo "endpoint = \"$endpoint\""; fi
    echo "allowed-ips = [$ips]"
    if [[ -n "$keepalive" ]]; then echo "persistent-keepalive = $keepalive"; fi
}

# iperf3_tcp SERVER_NS CLIENT_NS DST JSON SRVLOG: a one-shot `iperf3 -s` in SERVER_NS bound
# to DST, then a TIME-second single TCP stream from CLIENT_NS; JSON gets the client's -J
# output (stderr in JSON.err) and IPERF_RC its exit status.  Returns 1 (and shows SRVLOG)
# if the server does not come up.
iperf3_tcp() { iperf3_run "$@"; }

# iperf3_run SERVER_NS CLIENT_NS DST JSON SRVLOG [CLIENT-ARG...]: as iperf3_tcp, with more
# arguments for the client (`-R`, `-P 4`, `-u -l 64 -b 0`, ...).
iperf3_run() {
    local sns=$1 cns=$2 dst=$3 json=$4 srvlog=$5 spid
    shift 5
    ip netns exec "$sns" iperf3 -s -1 -B "$dst" >"$srvlog" 2>&1 &
    spid=$!
    if ! wait_for "iperf3 server in $sns" 10 \
        sh -c "ip netns exec '$sns' ss -Htln 'sport = :5201' | grep -q ."; then
        show_log "$srvlog"
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        return 1
    fi
    IPERF_RC=0
    # shellcheck disable=SC2034  # IPERF_RC is read by the caller
    timeout --foreground -k 5 $((TIME + 30)) ip netns exec "$cns" \
        iperf3 -c "$dst" -t "$TIME" -J "$@" >"$json" 2>"$json.err" || IPERF_RC=$?
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
}

# ---------------------------------------------------------------- python
# py ARGS... <SCRIPT: run the python SCRIPT (from stdin, argv as with `python3 -`) after
# the helpers below.
py() { { py_helpers; cat; } | "$PY" - "$@"; }

py_helpers() {
    cat <<'PYEOF'
import json, math, statistics, sys

class IperfError(Exception):
    """iperf3 reported an error in its JSON output."""

def iperf_result(jsonf):
    """(Gbit/s received, sender retransmits) of an `iperf3 -J` run."""
    end = iperf_end(jsonf)
    return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"].get("retransmits", "nan")

def iperf_tcp_bytes(jsonf):
    """Bytes the receiver got in an `iperf3 -J` TCP run (end.sum_received.bytes)."""
    return iperf_end(jsonf)["sum_received"]["bytes"]

def iperf_end(jsonf):
    """The "end" object of an `iperf3 -J` run; IperfError if iperf3 reported an error."""
    with open(jsonf) as f:
        j = json.load(f)
    if "error" in j:
        raise IperfError(j["error"])
    return j["end"]

def iperf_udp_result(jsonf):
    """(packets per second the receiver got, packets sent, lost) of an `iperf3 -u -J` client
    run.  In iperf3 3.12 the client's end.sum_received (and end.sum, the same figures) holds
    the receiver's view, which the server reports back: packets - lost_packets is what
    arrived (it equals sum_received.bytes / the payload size) and `seconds` the duration."""
    end = iperf_end(jsonf)
    r = end.get("sum_received") or end["sum"]
    sent = end.get("sum_sent", end["sum"])["packets"]
    got = r["packets"] - r["lost_packets"]
    return got / r["seconds"], sent, r["lost_packets"]

def read_rows(resf, mincols):
    """TSV rows of at least mincols columns, grouped by their first column."""
    rows = {}
    with open(resf) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= mincols:
                rows.setdefault(p[0], []).append(p)
    return rows

def vals(rs, idx):
    """The numbers in column idx of rows rs (failed = nan or not a number, left out)."""
    out = []
    for r in rs:
        try:
            v = float(r[idx])
        except ValueError:
            continue
        if not math.isnan(v):
            out.append(v)
    return out

def med_range(v, nd):
    """'median (min–max)' of a non-empty list, nd decimals; no range for one value."""
    s = f"{statistics.median(v):.{nd}f}"
    if len(v) > 1:
        s += f" ({min(v):.{nd}f}–{max(v):.{nd}f})"
    return s
PYEOF
}

# ---------------------------------------------------------------- results
# write_raw COLUMN...: if --raw was given, write the header and every row of $RESULTS to it
write_raw() {
    [[ -n "$RAW_OUT" ]] || return 0
    (IFS=$'\t'; echo "$*") >"$RAW_OUT"
    cat "$RESULTS" >>"$RAW_OUT"
    log "raw results written to $RAW_OUT"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

utc_now() { date -u '+%Y-%m-%d %H:%M UTC'; }

note_load_start() { # sets LOAD_START
    LOAD_START=$(loadavg)
    log "load average at start: $LOAD_START (other CPU load on the box skews results)"
}

summary_title() { # summary_title NAME DATE: the "## sitelink NAME: ..." line between blank lines
    echo
    echo "## sitelink $1: $2, kernel $(uname -r), $(nproc) cores, loadavg start $LOAD_START / end $(loadavg)"
    echo
}

# quote_cmd ARGS...: the command line, quoted for a shell (the results' "Command:" line).
quote_cmd() {
    local out="" a
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./=:,+@-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
    done
    echo "${out# }"
}

# two_site_testbed: the namespaces in TESTBED_NS (each with lo up) and the two sites between
# them: NSHA -lan0- NSGA -wan0- NSGB -lan0- NSHB, with LAN_A_HOST/24, LAN_A_GW/24, WAN_A/30,
# WAN_B/30, LAN_B_GW/24 and LAN_B_HOST/24, the hosts' default routes via their gateways and
# IPv4 forwarding on the gateways; returns once the WAN answers a ping. Scripts add their own
# links after it.
two_site_testbed() {
    local ns
    for ns in "${TESTBED_NS[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add lan0 netns "$NSHA" type veth peer name lan0 netns "$NSGA"
    ip link add wan0 netns "$NSGA" type veth peer name wan0 netns "$NSGB"
    ip link add lan0 netns "$NSGB" type veth peer name lan0 netns "$NSHB"
    ip -n "$NSHA" addr add "$LAN_A_HOST/24" dev lan0
    ip -n "$NSGA" addr add "$LAN_A_GW/24" dev lan0
    ip -n "$NSGA" addr add "$WAN_A/30" dev wan0
    ip -n "$NSGB" addr add "$WAN_B/30" dev wan0
    ip -n "$NSGB" addr add "$LAN_B_GW/24" dev lan0
    ip -n "$NSHB" addr add "$LAN_B_HOST/24" dev lan0
    ip -n "$NSHA" link set lan0 up
    ip -n "$NSGA" link set lan0 up
    ip -n "$NSGA" link set wan0 up
    ip -n "$NSGB" link set wan0 up
    ip -n "$NSGB" link set lan0 up
    ip -n "$NSHB" link set lan0 up
    ip -n "$NSHA" route add default via "$LAN_A_GW"
    ip -n "$NSHB" route add default via "$LAN_B_GW"
    ip netns exec "$NSGA" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$NSGB" sysctl -qw net.ipv4.ip_forward=1
    wait_for "WAN ping" 10 ip netns exec "$NSGA" ping -c 1 -W 1 "$WAN_B"
}
