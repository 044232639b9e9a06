#!/usr/bin/env bash
# side-by-side.sh — compare sitelink against other WireGuard implementations.
#
# For each implementation a fresh pair of network namespaces is built:
#
#   ns slb-a-$$                                   ns slb-b-$$
#   veth  198.18.0.1/30  <---- veth, MTU 1500 ---->  veth  198.18.0.2/30
#   wa$$  198.19.0.1/24  <== tunnel, MTU 1420 ===>   wb$$  198.19.0.2/24
#
# and measured, in this order, with:
#   ping            RTT on the idle tunnel (median, in µs)
#   iperf3          TCP a -> b, one stream (and the two tunnel daemons' CPU time
#                   during it, per GB received), TCP b -> a (-R), TCP a -> b with
#                   4 streams (-P 4), UDP a -> b with 64-byte payloads at no rate
#                   limit (-u -l 64 -b 0: packets per second the receiver got)
# "veth" is the plain veth pair with no tunnel (the ceiling).
# --sitelink-threads 1,2 adds rows for sitelinkd with `threads = 1` and `= 2`.
# Rounds are interleaved (every row once per round, rotating the start) and the
# median over rounds is reported as a markdown table.  A measurement that fails
# is reported on stderr and shows as n/a; the run goes on.  See benches/README.md.
#
# Run as root.  Only addresses inside the namespaces (198.18.0.0/15) are used.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: sudo benches/side-by-side.sh [options]

  --rounds N        interleaved rounds per implementation (default 3)
  --time SECS       duration of each of the 4 iperf3 runs per round (default 10)
  --only LIST       comma-separated subset of:
                    veth,wireguard-go,boringtun-cli,gotatun,sitelink
                    (default: all of them)
  --sitelink-threads LIST
                    comma-separated packet-thread counts (1-64); adds one row
                    "sitelink (N threads)" per value, with `threads = N` in the
                    [interface] table of sitelinkd's config, besides the
                    "sitelink" row (daemon default: one per core, at most 8).
                    Needs sitelink among the implementations.
  --pings N         pings per RTT measurement (default 50, 0.02 s apart)
  --raw FILE        also write the per-round raw results (TSV) to FILE
  --rebuild         run `cargo build --release -p sitelinkd -p sitelinkctl`
                    even if target/release/sitelinkd already exists
  --keep-logs       keep the work directory (daemon logs, configs, iperf3
                    JSON) and print its path at the end
  -h, --help        this help

Per round and row it measures: TCP a→b, TCP b→a (-R), TCP a→b 4 streams
(-P 4), UDP 64 B a→b (-u -l 64 -b 0, kpps delivered), ping RTT (µs), TCP
retransmits (1 and 4 streams), and the two tunnel daemons' CPU seconds per GB
received during the 1-stream a→b run.  Prints a markdown table of medians.

Binaries are looked up in $PATH and ~/.cargo/bin; override with
WIREGUARD_GO=, BORINGTUN=, GOTATUN=, SITELINKD= (paths).
EOF
}

# ---------------------------------------------------------------- options
ROUNDS=3
TIME=10
PINGS=50
ONLY=""
SL_THREADS=""
RAW_OUT=""
REBUILD=0
KEEP_LOGS=0
ALL_IMPLS=(veth wireguard-go boringtun-cli gotatun sitelink)

VALUE_OPTS=([--rounds]=ROUNDS [--time]=TIME [--only]=ONLY [--pings]=PINGS [--raw]=RAW_OUT
    [--sitelink-threads]=SL_THREADS)
EMPTY_OK_OPTS=([--sitelink-threads]=1)
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

# --sitelink-threads: thread counts, validated, in the given order
THREADS_LIST=()
if [[ -n "$SL_THREADS" ]]; then
    parse_thread_counts --sitelink-threads "$SL_THREADS"
    if [[ ${#THREADS_LIST[@]} -gt 0 && " ${IMPLS[*]} " != *" sitelink "* ]]; then
        echo "error: --sitelink-threads adds sitelink rows; include sitelink in --only" >&2
        exit 2
    fi
fi

require_root
require_tools "apt-get install iproute2 iputils-ping iperf3 coreutils libc-bin" \
    ip ping iperf3 ss timeout getconf
CLK_TCK=$(getconf CLK_TCK)
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
        log "building sitelinkd: cargo build --release -p sitelinkd -p sitelinkctl (in $REPO_ROOT)"
        if ! (cd "$REPO_ROOT" && cargo build --release -p sitelinkd -p sitelinkctl >&2); then
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

# rows: an implementation, or "sitelink-t<N>" (sitelinkd with threads = N)
declare -A LABEL=()
RUN_IMPLS=()    # the rows that run
SKIPPED=()      # the rows that do not
for impl in "${IMPLS[@]}"; do
    rows=("$impl")
    LABEL[$impl]=$impl
    if [[ "$impl" == sitelink ]]; then
        for t in "${THREADS_LIST[@]}"; do
            rows+=("sitelink-t$t")
            if [[ $t -eq 1 ]]; then LABEL[sitelink-t$t]="sitelink (1 thread)"
            else LABEL[sitelink-t$t]="sitelink ($t threads)"; fi
        done
    fi
    if [[ -n "${SKIP[$impl]:-}" ]]; then
        echo "NOTE: skipping $impl: ${SKIP[$impl]}" >&2
        SKIPPED+=("${rows[@]}")
    else
        RUN_IMPLS+=("${rows[@]}")
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

# with_threads N: copy a sitelinkd config from stdin to stdout, with `threads = N` as the
# first key of its [interface] table (N "" = unchanged)
with_threads() {
    if [[ -z "$1" ]]; then cat; return; fi
    sed "/^\[interface\]\$/a threads = $1"
}

setup_sitelink() { # setup_sitelink ROW [THREADS]
    local row=$1 threads=${2:-}
    local ca="$WORK/$row-$IFA.toml" cb="$WORK/$row-$IFB.toml" pa pb la lb
    chmod 600 "$WORK/a.key" "$WORK/b.key"
    sitelink_conf "$IFA" "$WORK/a.key" "$TUN_A" site-b "$(cat "$WORK/b.pub")" "$OUTER_B:$PORT" "$TUN_B/32" 25 \
        | with_threads "$threads" >"$ca"
    sitelink_conf "$IFB" "$WORK/b.key" "$TUN_B" site-a "$(cat "$WORK/a.pub")" "$OUTER_A:$PORT" "$TUN_A/32" 25 \
        | with_threads "$threads" >"$cb"
    if [[ -n "$threads" ]] && ! grep -qx "threads = $threads" "$ca"; then
        echo "error: could not add 'threads = $threads' to $ca" >&2
        return 1
    fi
    la="$WORK/$row-a.log"; lb="$WORK/$row-b.log"
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
                show_log "$lg"
                if [[ -n "$threads" ]] && grep -q threads "$lg"; then
                    echo "hint: a sitelinkd built before the 'threads' key existed rejects it;" \
                        "rebuild with --rebuild" >&2
                fi
                return 1
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

# sitelink_threads_note [THREADS]: log the packet threads sitelinkd (side a) says it runs
# ("sitelinkd running threads=N ..."); warn if that is not THREADS
sitelink_threads_note() {
    local want=${1:-} n lg=${DAEMON_LOGS%% *}
    n=$(sed 's/\x1b\[[0-9;]*m//g' "$lg" | grep -o 'threads=[0-9]*' | head -n 1 || true)
    log "sitelinkd ${want:+(threads = $want in the config) }reports ${n:-no threads=N in its log}"
    if [[ -n "$want" && -n "$n" && "$n" != "threads=$want" ]]; then
        echo "warning: sitelinkd was configured with threads = $want but reports $n" >&2
    fi
}


# daemon_cpu_ticks: utime+stime (clock ticks) of the processes in DAEMON_PIDS, summed.
# /proc/PID/stat of a process counts all its threads, the exited ones included.
# Prints nothing (and returns 1, with a message) if one of them is gone.
daemon_cpu_ticks() {
    local p st sum=0
    local -a f
    for p in $DAEMON_PIDS; do
        if ! st=$(cat "/proc/$p/stat" 2>/dev/null); then
            echo "error: daemon pid $p is gone; no CPU figure" >&2
            return 1
        fi
        st=${st##*) }              # the fields after "(comm) ": f[0] is field 3 (state)
        read -r -a f <<<"$st"
        sum=$((sum + f[11] + f[12]))   # fields 14 utime, 15 stime
    done
    echo "$sum"
}

# check_daemon_pids ROW: each pid in DAEMON_PIDS runs the row's binary (the scripts start
# them with `ip netns exec NS BIN ... &`, and ip execs BIN in place of itself)
check_daemon_pids() {
    local bin p exe
    local kind=$1
    [[ "$kind" == sitelink-t* ]] && kind=sitelink
    bin=$(readlink -f "${BIN[$kind]}")
    for p in $DAEMON_PIDS; do
        exe=$(readlink -f "/proc/$p/exe" 2>/dev/null || true)
        if [[ "$exe" != "$bin" ]]; then
            echo "error: pid $p runs '${exe:-?}', not $bin; no CPU figure" >&2
            return 1
        fi
    done
}

# iperf3_step NAME DST JSON [CLIENT-ARG...]: one iperf3 run a -> b (b -> a with -R), the
# server in ns b; STEP_RC[NAME] gets "server" if the server did not come up, else iperf3's
# exit status.  Never fails.
declare -A STEP_RC=()
iperf3_step() {
    local name=$1 dst=$2 json=$3
    shift 3
    IPERF_RC=0
    if iperf3_run "$NSB" "$NSA" "$dst" "$json" "${json%.json}.server.log" "$@"; then
        STEP_RC[$name]=$IPERF_RC
    else
        echo "error: iperf3 server for '$name' did not come up" >&2
        STEP_RC[$name]=server
    fi
}

# measure ROW ROUND DST : appends one TSV line to $RESULTS
measure() {
    local impl=$1 round=$2 dst=$3
    local base="$WORK/$impl-r$round"
    local pingout="$base-ping.txt"
    local cpu0="" cpu1="" cpu_ok=1

    # RTT on the idle tunnel
    ip netns exec "$NSA" ping -n -c "$PINGS" -i 0.02 -W 1 "$dst" >"$pingout" 2>&1 || true

    # single stream a -> b, with the daemons' CPU time around it
    if [[ -z "$DAEMON_PIDS" ]]; then
        cpu_ok=none
    elif ! check_daemon_pids "$impl"; then
        cpu_ok=0
    elif ! cpu0=$(daemon_cpu_ticks); then
        cpu_ok=0
    fi
    iperf3_step tcp1 "$dst" "$base-tcp1.json"
    if [[ $cpu_ok == 1 ]] && ! cpu1=$(daemon_cpu_ticks); then
        cpu_ok=0
    fi

    iperf3_step tcp_rev "$dst" "$base-tcp-rev.json" -R
    iperf3_step tcp4 "$dst" "$base-tcp4.json" -P 4
    iperf3_step udp64 "$dst" "$base-udp64.json" -u -l 64 -b 0

    local p
    for p in $DAEMON_PIDS; do
        if ! alive "$p"; then
            echo "error: $impl round $round: a daemon (pid $p) died during the measurements" >&2
            for l in $DAEMON_LOGS; do show_log "$l"; done
            break
        fi
    done

    py "$impl" "$round" "$base" "$PINGS" "$cpu_ok" "$cpu0" "$cpu1" "$CLK_TCK" \
        "${STEP_RC[tcp1]}" "${STEP_RC[tcp_rev]}" "${STEP_RC[tcp4]}" "${STEP_RC[udp64]}" \
        >>"$RESULTS" <<'PYEOF'
import re, statistics, sys
impl, rnd, base, pings, cpu_ok, cpu0, cpu1, clk = sys.argv[1:9]
rcs = dict(zip(["tcp1", "tcp_rev", "tcp4", "udp64"], sys.argv[9:13]))
what = {"tcp1": "TCP a->b", "tcp_rev": "TCP b->a (-R)", "tcp4": "TCP a->b -P 4",
        "udp64": "UDP 64 B a->b", "ping": "ping", "cpu": "CPU"}
failed = []

def fail(step, msg):
    failed.append(step)
    print(f"error: {impl} round {rnd}: {what[step]} failed: {msg}", file=sys.stderr)

def iperf(step, fn):
    """fn(json path) for one iperf3 step, or None (and a message) if it failed."""
    jsonf = f"{base}-{step.replace('_', '-')}.json"
    rc = rcs[step]
    if rc == "server":
        fail(step, "the iperf3 server did not come up")
        return None
    try:
        return fn(jsonf)
    except IperfError as e:
        fail(step, f"iperf3 says: {e} (rc={rc})")
    except Exception as e:  # noqa: BLE001
        err = ""
        try:
            with open(jsonf + ".err") as f:
                err = " ".join(f.read().split())[:200]
        except OSError:
            pass
        kind = "timed out" if rc in ("124", "137") else f"rc={rc}"
        fail(step, f"no usable JSON ({kind}; {type(e).__name__}: {e}){' stderr: ' + err if err else ''}")
    return None

def tcp(jsonf):
    g, r = iperf_result(jsonf)
    return g, r, iperf_tcp_bytes(jsonf)

nan = "nan"
t1 = iperf("tcp1", tcp)
tr = iperf("tcp_rev", tcp)
t4 = iperf("tcp4", tcp)
u = iperf("udp64", iperf_udp_result)

rtts = []
with open(f"{base}-ping.txt") as f:
    for line in f:
        m = re.search(r'time[=<]([0-9.]+) ms', line)
        if m:
            rtts.append(float(m.group(1)) * 1000)
if not rtts:
    fail("ping", f"no replies to {pings} pings")

cpu = cpu_s = "-"        # veth: no daemon
if cpu_ok == "0":        # the reason is on stderr already
    cpu = cpu_s = nan
    failed.append("cpu")
elif cpu_ok == "1":
    cpu_s = (int(cpu1) - int(cpu0)) / int(clk)
    if t1 is None:
        cpu = nan
        fail("cpu", "no GB figure, as TCP a->b failed")
    elif t1[2] <= 0:
        cpu = nan
        fail("cpu", "the receiver got 0 bytes in TCP a->b")
    else:
        cpu = "%.3f" % (cpu_s / (t1[2] / 1e9))
    cpu_s = "%.2f" % cpu_s

def f3(v):
    return nan if v is None else "%.3f" % v

print("\t".join([
    impl, rnd,
    f3(t1 and t1[0]), f3(tr and tr[0]), f3(t4 and t4[0]),
    nan if u is None else "%.1f" % (u[0] / 1000),
    "%.0f" % statistics.median(rtts) if rtts else nan,
    "%.0f" % statistics.mean(rtts) if rtts else nan,
    nan if t1 is None else str(t1[1]),
    nan if t4 is None else str(t4[1]),
    cpu, cpu_s,
    nan if t1 is None else str(t1[2]),
    nan if u is None else str(u[1]),
    str(len(rtts)),
    ",".join(failed) or "-",
]))
PYEOF
    local -a c
    IFS=$'\t' read -r -a c < <(tail -n 1 "$RESULTS")
    log "${LABEL[$impl]} round $round: TCP a→b ${c[2]} Gbit/s, b→a ${c[3]}, 4 streams ${c[4]};" \
        "UDP 64 B ${c[5]} kpps delivered (of ${c[13]} packets sent); RTT median ${c[6]} µs" \
        "(${c[14]}/$PINGS replies); retransmits ${c[8]} / ${c[9]}; CPU ${c[10]} s per GB (${c[11]} s)" \
        "; failed: ${c[15]}"
    return 0
}

# one full run (fresh testbed) for ROW; runs in a subshell with errexit
run_one() {
    local impl=$1 round=$2
    DAEMON_PIDS="" DAEMON_LOGS=""
    cleanup_testbed
    setup_veth
    local dst=$TUN_B
    case "$impl" in
        veth) dst=$OUTER_B ;;
        wireguard-go|boringtun-cli|gotatun) setup_wg_userspace "$impl" ;;
        sitelink) setup_sitelink "$impl" ;;
        sitelink-t*) setup_sitelink "$impl" "${impl#sitelink-t}" ;;
    esac
    tunnel_warmup "$NSA" "$dst" "$NSA" "$NSB"
    case "$impl" in
        sitelink) sitelink_threads_note ;;
        sitelink-t*) sitelink_threads_note "${impl#sitelink-t}" ;;
    esac
    measure "$impl" "$round" "$dst"
}

# ---------------------------------------------------------------- main loop
log "work dir $WORK; rows: ${RUN_IMPLS[*]}; rounds=$ROUNDS time=${TIME}s (x4 iperf3 runs) pings=$PINGS"
log "testbed: $NSA/$NSB, veth $VETHA/$VETHB, tunnel $IFA/$IFB"
note_load_start

declare -A FAILS=()
n=${#RUN_IMPLS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < n; k++)); do
        # rotate the start each round so no implementation always goes first
        impl=${RUN_IMPLS[$(((k + round - 1) % n))]}
        log "round $round/$ROUNDS: ${LABEL[$impl]}"
        run_isolated run_one "$impl" "$round"
        if [[ $RUN_RC -ne 0 ]]; then
            FAILS[$impl]=$((${FAILS[$impl]:-0} + 1))
            log "${LABEL[$impl]} round $round FAILED (rc=$RUN_RC): no figures from this run"
        fi
        cleanup_testbed
    done
done

write_raw impl round tcp_ab_gbps tcp_ba_gbps tcp4_gbps udp64_kpps rtt_median_us rtt_avg_us \
    retransmits_1 retransmits_4 cpu_s_per_gb cpu_s tcp_ab_bytes udp64_sent ping_replies failed

# ---------------------------------------------------------------- summary
summary_title side-by-side "$(utc_now)"
echo "Medians over $ROUNDS interleaved round(s), (min–max) across rounds; [k/n]: only k of n runs gave a figure."
echo "iperf3 runs of ${TIME}s each, a→b unless marked: TCP 1 stream, TCP b→a (-R), TCP 4 streams (-P 4, sum),"
echo "UDP -l 64 -b 0 (packets/s the receiver got). RTT: median of $PINGS pings at 0.02 s on the idle tunnel."
echo "CPU: both tunnel daemons' utime+stime during the 1-stream a→b run, per 10^9 bytes received."
echo
labels=()
for i in "${RUN_IMPLS[@]}" "${SKIPPED[@]}"; do labels+=("$i=${LABEL[$i]}"); done
py "$RESULTS" "${RUN_IMPLS[*]}" "$(for i in "${RUN_IMPLS[@]}"; do printf '%s=%s ' "$i" "${FAILS[$i]:-0}"; done)" \
    "${SKIPPED[*]}" "${labels[@]}" <<'PYEOF'
import sys
resf, impls, fails, skipped = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
label = dict(x.split("=", 1) for x in sys.argv[5:])
fails = dict(x.split("=") for x in fails)
rows = read_rows(resf, 16)

def cell(rs, idx, nd, total):
    v = vals(rs, idx)
    if not v:
        return "n/a"
    s = med_range(v, nd)
    return s if len(v) == total else f"{s} [{len(v)}/{total}]"

cols = [("TCP a→b Gbit/s", 2, 2), ("TCP b→a Gbit/s", 3, 2), ("TCP 4 streams Gbit/s", 4, 2),
        ("UDP 64 B kpps delivered", 5, 1), ("RTT µs", 6, 0), ("retransmits 1 stream", 8, 0),
        ("retransmits 4 streams", 9, 0), ("CPU s per GB", 10, 2)]
print("| implementation | " + " | ".join(c[0] for c in cols) + " | ok runs |")
print("|---" * (len(cols) + 2) + "|")
for impl in impls:
    rs = rows.get(impl, [])
    total = len(rs) + int(fails.get(impl, 0))
    cells = []
    for _, idx, nd in cols:
        if idx == 10 and impl == "veth":
            cells.append("—")
        else:
            cells.append(cell(rs, idx, nd, total))
    ok = sum(1 for r in rs if r[15] == "-")
    print(f"| {label[impl]} | " + " | ".join(cells) + f" | {ok}/{total} |")
for s in skipped:
    print(f"| {label[s]} | skipped |" + " |" * len(cols))
PYEOF
for impl in "${!SKIP[@]}"; do
    echo
    echo "_${impl} skipped: ${SKIP[$impl]}_"
done
