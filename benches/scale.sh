#!/usr/bin/env bash
# scale.sh — how sitelinkd behaves with many configured peers.
#
# For each N in --peers (N = number of EXTRA idle peers besides the one real peer) a fresh
# testbed of four network namespaces is built:
#
#   host_a ---- gw_a ======== sitelink ======== gw_b ---- host_b
#   198.18.1.10   198.18.1.1 | 198.18.0.1/30 -- 198.18.0.2/30 | 198.18.2.1   198.18.2.10
#                 tunnel 198.18.3.1/24          tunnel 198.18.3.2/24
#
# gw_a's config holds the real peer (gw_b) plus N idle peers (random keys, no endpoint,
# one /32 each counting up from 198.18.64.0).  Measured on gw_a's sitelinkd: time from
# exec to READY=1 (sd_notify), VmRSS/VmHWM, idle CPU, single-stream TCP host_a -> host_b,
# `sitelinkctl show --json` and `sitelinkctl peer add` wall times.  Rounds are interleaved
# (every N once per round) and medians over rounds are reported.  See benches/README.md.
#
# Run as root.  Only addresses inside the namespaces (198.18.0.0/15) are used.
set -euo pipefail
export LC_ALL=C   # EPOCHREALTIME and printf must use '.' as the decimal point
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: sudo benches/scale.sh [options]

  --peers "N1 N2 ..."  numbers of EXTRA idle peers on gateway A besides the one real
                       peer (default "0 10000"; each 0..114687; N=0 is the one-peer case)
  --rounds R           interleaved rounds (default 1); medians over rounds are reported
  --idle SECS          idle-CPU window (default 30)
  --time SECS          iperf3 duration (default 10)
  --ready-timeout SECS how long to wait for READY=1 from gateway A (default 120)
  --ctl-timeout SECS   timeout for each sitelinkctl call (default 60)
  --raw FILE           also write the per-run raw results (TSV) to FILE
  --rebuild            run `cargo build --release -p sitelinkd -p sitelinkctl` even if
                       target/release/{sitelinkd,sitelinkctl} already exist
  --keep-logs          keep the work directory (configs, daemon logs, notify messages,
                       iperf3 JSON) and print its path at the end
  -h, --help           this help

Binaries: target/release/sitelinkd and target/release/sitelinkctl of this repo;
override with SITELINKD= and SITELINKCTL= (paths).
EOF
}

# ---------------------------------------------------------------- options
ORIG_ARGS=("$@")
PEERS_LIST="0 10000"
ROUNDS=1
IDLE=30
TIME=10
READY_TIMEOUT=120
CTL_TIMEOUT=60
RAW_OUT=""
REBUILD=0
KEEP_LOGS=0
MAX_EXTRA=114687   # 198.18.64.0 + N must stay inside 198.18.64.0 - 198.19.255.255

VALUE_OPTS=([--peers]=PEERS_LIST [--rounds]=ROUNDS [--idle]=IDLE [--time]=TIME
    [--ready-timeout]=READY_TIMEOUT [--ctl-timeout]=CTL_TIMEOUT [--raw]=RAW_OUT)
EMPTY_OK_OPTS=([--peers]=1)   # --peers "" is reported as "--peers is empty" below
FLAG_OPTS=([--rebuild]=REBUILD [--keep-logs]=KEEP_LOGS)
parse_options "$@"
require_positive_ints ROUNDS IDLE TIME READY_TIMEOUT CTL_TIMEOUT

PEER_COUNTS=()
for n in ${PEERS_LIST//,/ }; do
    if ! [[ "$n" =~ ^(0|[1-9][0-9]*)$ ]] || ((n > MAX_EXTRA)); then
        echo "error: --peers: '$n' is not an integer in 0..$MAX_EXTRA" >&2
        exit 2
    fi
    for m in "${PEER_COUNTS[@]}"; do
        [[ "$m" == "$n" ]] && { echo "error: --peers: $n given twice" >&2; exit 2; }
    done
    PEER_COUNTS+=("$n")
done
if [[ ${#PEER_COUNTS[@]} -eq 0 ]]; then
    echo "error: --peers is empty" >&2
    exit 2
fi

require_root
require_tools "apt-get install iproute2 iputils-ping iperf3 coreutils libc-bin" \
    ip ss ping iperf3 timeout getconf
[[ -c /dev/net/tun ]] || { echo "error: /dev/net/tun missing" >&2; exit 1; }
find_python "config generation, notify listener, medians"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- names
ID=$$
NSHA="sls-ha-$ID"      # host_a
NSGA="sls-ga-$ID"      # gw_a
NSGB="sls-gb-$ID"      # gw_b
NSHB="sls-hb-$ID"      # host_b
TESTBED_NS=("$NSHA" "$NSGA" "$NSGB" "$NSHB")
WAN_A=198.18.0.1
WAN_B=198.18.0.2
LAN_A_GW=198.18.1.1
LAN_A_HOST=198.18.1.10
LAN_B_GW=198.18.2.1
LAN_B_HOST=198.18.2.10
TUN_A=198.18.3.1
TUN_B=198.18.3.2
init_workdir scale
# set per run by the main loop (the cleanup needs them)
IFA="" IFB=""

# cleanup_testbed (lib.sh): kills everything in the namespaces (daemons, notify listener,
# iperf3), deletes them, removes the WireGuard API sockets.  A daemon with many peers
# removes many routes on SIGTERM: give it up to 10 s.
CLEANUP_TERM_TICKS=100
CLEANUP_DEL_TRIES=10
set_traps final_cleanup

# ---------------------------------------------------------------- binaries
resolve_bins() {
    local d="$REPO_ROOT/target/release"
    SLD="${SITELINKD:-$d/sitelinkd}"
    SLC="${SITELINKCTL:-$d/sitelinkctl}"
    local need_build=0
    if [[ -z "${SITELINKD:-}" || -z "${SITELINKCTL:-}" ]]; then
        if [[ $REBUILD -eq 1 ]]; then need_build=1; fi
        [[ -z "${SITELINKD:-}" && ! -x "$SLD" ]] && need_build=1
        [[ -z "${SITELINKCTL:-}" && ! -x "$SLC" ]] && need_build=1
    fi
    if [[ $need_build -eq 1 ]]; then
        command -v cargo >/dev/null || { echo "error: binaries missing and cargo not found" >&2; exit 1; }
        log "building: cargo build --release -p sitelinkd -p sitelinkctl (in $REPO_ROOT)"
        (cd "$REPO_ROOT" && cargo build --release -p sitelinkd -p sitelinkctl >&2) \
            || { echo "error: cargo build --release failed" >&2; exit 1; }
    fi
    [[ -x "$SLD" ]] || { echo "error: sitelinkd not executable: $SLD" >&2; exit 1; }
    [[ -x "$SLC" ]] || { echo "error: sitelinkctl not executable: $SLC" >&2; exit 1; }
}
resolve_bins

# ---------------------------------------------------------------- keys and configs
(umask 077; "$SLC" genkey >"$WORK/a.key"; "$SLC" genkey >"$WORK/b.key")
chmod 600 "$WORK/a.key" "$WORK/b.key"
A_PUB=$("$SLC" pubkey <"$WORK/a.key")
B_PUB=$("$SLC" pubkey <"$WORK/b.key")

# peers-N.toml: the N idle [[peer]] tables; newkeys-N.txt: 5 more distinct keys for
# `peer add`.  All random 32-byte keys, distinct, none equal to A's or B's key.
gen_peers() { # gen_peers N
    "$PY" - "$1" "$A_PUB" "$B_PUB" "$WORK/peers-$1.toml" "$WORK/newkeys-$1.txt" <<'PYEOF'
import base64, ipaddress, os, sys
n = int(sys.argv[1])
taken = {sys.argv[2], sys.argv[3]}
keys = []
while len(keys) < n + 5:
    raw = os.urandom(32 * (n + 5 - len(keys)))
    for i in range(0, len(raw), 32):
        k = base64.b64encode(raw[i:i + 32]).decode()
        if k not in taken:
            taken.add(k)
            keys.append(k)
base = int(ipaddress.IPv4Address("198.18.64.0"))
out = []
for i in range(1, n + 1):
    ip = ipaddress.IPv4Address(base + i)
    out.append(f'[[peer]]\nname = "idle-{i:05d}"\npublic-key = "{keys[i - 1]}"\n'
               f'allowed-ips = ["{ip}/32"]\n\n')
with open(sys.argv[4], "w") as f:
    f.write("".join(out))
with open(sys.argv[5], "w") as f:
    f.write("\n".join(keys[n:]) + "\n")
PYEOF
}

for n in "${PEER_COUNTS[@]}"; do
    t0=${EPOCHREALTIME/./}
    gen_peers "$n"
    t1=${EPOCHREALTIME/./}
    log "generated $n idle peers in $(((t1 - t0) / 1000)) ms ($(du -h "$WORK/peers-$n.toml" | cut -f1))"
done

write_confs() { # write_confs FILE_A IF_A FILE_B IF_B N
    {
        echo "# gateway A: the real peer (gateway B) plus $5 idle peers"
        sitelink_conf "$2" "$WORK/a.key" "$TUN_A" site-b "$B_PUB" "$WAN_B:$PORT" "$TUN_B/32 198.18.2.0/24" 25
        echo
        cat "$WORK/peers-$5.toml"
    } >"$1"
    {
        echo "# gateway B: one peer (gateway A); its endpoint is learned from A's handshake"
        sitelink_conf "$4" "$WORK/b.key" "$TUN_B" site-a "$A_PUB" "" "$TUN_A/32 198.18.1.0/24"
    } >"$3"
}

# The notify listener: binds the NOTIFY_SOCKET path, touches BOUND, logs every datagram
# with its time (unix microseconds, the same clock as bash's EPOCHREALTIME) and writes
# the time of the first READY=1 to READY.
cat >"$WORK/notify-listener.py" <<'PYEOF'
import os, socket, sys, time
path, bound, ready, msglog = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
open(bound, "w").close()
seen = False
with open(msglog, "a") as lg:
    while True:
        data = s.recv(65536)
        t = time.time_ns() // 1000
        msg = data.decode(errors="replace")
        lg.write("%d\t%r\n" % (t, msg))
        lg.flush()
        if not seen and "READY=1" in msg.split("\n"):
            seen = True
            with open(ready + ".tmp", "w") as f:
                f.write("%d\n" % t)
            os.rename(ready + ".tmp", ready)
PYEOF

# ---------------------------------------------------------------- helpers
setup_testbed() {
    two_site_testbed
}

# /proc/PID/stat fields 14 (utime) + 15 (stime), all threads, in clock ticks
cpu_ticks() {
    local st rest f
    st=$(<"/proc/$1/stat") || return 1
    rest=${st##*) }            # fields from 3 (state) on
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

status_kb() { # status_kb PID FIELD -> kB
    awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"
}

median_ms() { # median_ms us1 us2 ... -> ms with 1 decimal
    printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {
        if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2;
        printf "%.1f", m / 1000 }'
}

# ---------------------------------------------------------------- one run
# run_one N ROUND K: fresh testbed, both daemons, all measurements; writes KEY<TAB>VALUE
# lines to $RUNRES ("FAIL" for a failed cell).  Runs in a subshell with errexit.
# record_samples KEY WHAT: the median of the caller's `samples` (µs) as KEY, or FAIL if the
# caller's `ok` is 0 (status 1 when gateway A has died). Reads n and round from the caller.
record_samples() {
    local key=$1 what=$2
    if [[ $ok -eq 1 ]]; then
        put "$key" "$(median_ms "${samples[@]}")"
        put "${key}_samples" "$(IFS=,; echo "${samples[*]}")"
        log "N=$n round $round: $what median $(median_ms "${samples[@]}") ms (us: ${samples[*]})"
    else
        a_dead "$key" && return 1
        put "$key" FAIL
    fi
}

run_one() {
    local n=$1 round=$2 k=$3
    local rdir="$WORK/r$k"
    mkdir -p "$rdir"
    RUNRES="$rdir/result"
    : >"$RUNRES"
    put() { printf '%s\t%s\n' "$1" "$2" >>"$RUNRES"; }
    local rundir="$rdir/run"
    local ca="$rdir/$IFA.toml" cb="$rdir/$IFB.toml"
    local la="$rdir/gw-a.log" lb="$rdir/gw-b.log"
    local cells=(startup rss idle tcp show add)
    failall_from() { # mark every cell from $1 on as failed
        local on=0 c
        for c in "${cells[@]}"; do
            [[ "$c" == "$1" ]] && on=1
            [[ $on -eq 1 ]] && put "$c" FAIL
        done
        return 0
    }

    cleanup_testbed
    if ! setup_testbed; then
        echo "error: testbed setup failed" >&2
        failall_from startup; return 1
    fi
    write_confs "$ca" "$IFA" "$cb" "$IFB" "$n"

    # gateway B first, so that A's first handshake initiation is answered
    SITELINK_RUN_DIR="$rundir" ip netns exec "$NSGB" "$SLD" --config "$cb" >"$lb" 2>&1 &
    local pb=$!
    if ! wait_for "gateway B control socket" 15 \
        sh -c "kill -0 $pb && [ -S '$rundir/$IFB.sock' ] && ip -n '$NSGB' addr show dev '$IFB' | grep -q 'inet '"; then
        echo "error: gateway B's sitelinkd did not come up" >&2
        show_log "$lb"
        failall_from startup; return 1
    fi

    # notify listener (inside gw_a's namespace, so the cleanup kills it too)
    local nsock="$rdir/notify.sock"
    ip netns exec "$NSGA" "$PY" "$WORK/notify-listener.py" "$nsock" "$rdir/bound" "$rdir/ready" \
        "$rdir/notify.log" >"$rdir/listener.log" 2>&1 &
    if ! wait_for "notify listener" 10 test -e "$rdir/bound"; then
        show_log "$rdir/listener.log"
        failall_from startup; return 1
    fi

    # 1. start-up to READY=1
    local t0 pa
    t0=${EPOCHREALTIME/./}
    NOTIFY_SOCKET="$nsock" SITELINK_RUN_DIR="$rundir" \
        ip netns exec "$NSGA" "$SLD" --config "$ca" >"$la" 2>&1 &
    pa=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    while [[ ! -e "$rdir/ready" ]]; do
        if ! alive "$pa"; then
            echo "error: gateway A's sitelinkd (N=$n) exited before READY=1" >&2
            show_log "$la"
            failall_from startup; return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "error: no READY=1 from gateway A's sitelinkd (N=$n) within ${READY_TIMEOUT}s" >&2
            show_log "$la"
            failall_from startup; return 1
        fi
        sleep 0.02
    done
    local tr startup
    tr=$(<"$rdir/ready")
    startup=$(awk -v a="$t0" -v b="$tr" 'BEGIN {printf "%.3f", (b - a) / 1e6}')
    put startup "$startup"
    log "N=$n round $round: READY=1 after ${startup}s (pid $pa, $(tr '\n' ' ' <"$rdir/notify.log" | cut -c1-160))"

    a_dead() { # a_dead CELL: if gateway A died, report and fail CELL and the rest
        if ! alive "$pa"; then
            echo "error: gateway A's sitelinkd (N=$n) died (before: $1)" >&2
            show_log "$la"
            failall_from "$1"
            return 0
        fi
        return 1
    }

    # 2. RSS, about 3 s after READY
    sleep 3
    a_dead rss && return 1
    local rss hwm
    rss=$(status_kb "$pa" VmRSS || true)
    hwm=$(status_kb "$pa" VmHWM || true)
    if [[ -n "$rss" && -n "$hwm" ]]; then
        put rss "$rss"; put hwm "$hwm"
        log "N=$n round $round: VmRSS $rss kB, VmHWM $hwm kB"
    else
        put rss FAIL
    fi

    # 3. idle CPU over --idle seconds
    a_dead idle && return 1
    local c1 c2 w1 w2 cpu
    c1=$(cpu_ticks "$pa"); w1=${EPOCHREALTIME/./}
    sleep "$IDLE"
    if c2=$(cpu_ticks "$pa" 2>/dev/null); then
        w2=${EPOCHREALTIME/./}
        cpu=$(awk -v d="$((c2 - c1))" -v hz="$CLK_TCK" -v us="$((w2 - w1))" \
            'BEGIN {printf "%.2f", 100 * (d / hz) / (us / 1e6)}')
        put idle "$cpu"
        log "N=$n round $round: idle CPU ${cpu}% of a core ($((c2 - c1)) ticks in ${IDLE}s)"
    else
        a_dead idle && return 1
        put idle FAIL
    fi

    # 4. single-stream TCP host_a -> host_b
    a_dead tcp && return 1
    local tcp_ok=1
    if ! wait_for "ping host_a -> host_b through the tunnel" 20 \
        ip netns exec "$NSHA" ping -c 1 -W 1 "$LAN_B_HOST"; then
        echo "error: no ping reply from host_b (N=$n)" >&2
        show_log "$la"; show_log "$lb"
        tcp_ok=0
    fi
    local json="$rdir/iperf.json" line
    if [[ $tcp_ok -eq 1 ]] && ! iperf3_tcp "$NSHB" "$NSHA" "$LAN_B_HOST" "$json" "$rdir/iperf-server.log"; then
        tcp_ok=0
    fi
    if [[ $tcp_ok -eq 1 ]]; then
        if line=$(py "$json" "$IPERF_RC" <<'PYEOF'
import sys
try:
    print("%.3f %s" % iperf_result(sys.argv[1]))
except Exception as e:  # noqa: BLE001
    print("iperf3 rc=%s: %s" % (sys.argv[2], e), file=sys.stderr)
    sys.exit(1)
PYEOF
        ); then
            local g r
            read -r g r <<<"$line"
            put tcp "$g"; put retr "$r"
            log "N=$n round $round: TCP $g Gbit/s, $r retransmits"
        else
            tcp_ok=0
        fi
    fi
    if [[ $tcp_ok -eq 0 ]]; then
        a_dead tcp && return 1
        put tcp FAIL
    fi

    # 5. sitelinkctl show --json, 5 times
    a_dead show && return 1
    local i s e samples=() ok=1
    for i in 1 2 3 4 5; do
        s=${EPOCHREALTIME/./}
        if ! SITELINK_RUN_DIR="$rundir" timeout -k 5 "$CTL_TIMEOUT" \
            "$SLC" --interface "$IFA" show --json >/dev/null 2>>"$rdir/ctl.err"; then
            ok=0; echo "error: sitelinkctl show --json failed (N=$n):" >&2
            tail -n 3 "$rdir/ctl.err" >&2; break
        fi
        e=${EPOCHREALTIME/./}
        samples+=($((e - s)))
    done
    record_samples show "show --json" || return 1

    # 6. sitelinkctl peer add, 5 different new peers
    a_dead add && return 1
    local key
    samples=() ok=1 i=0
    while read -r key; do
        i=$((i + 1))
        s=${EPOCHREALTIME/./}
        if ! SITELINK_RUN_DIR="$rundir" timeout -k 5 "$CTL_TIMEOUT" \
            "$SLC" --interface "$IFA" peer add "new-$i" --public-key "$key" \
            --allowed-ips "198.18.63.$i/32" >>"$rdir/ctl.out" 2>>"$rdir/ctl.err"; then
            ok=0; echo "error: sitelinkctl peer add failed (N=$n):" >&2
            tail -n 3 "$rdir/ctl.err" >&2; break
        fi
        e=${EPOCHREALTIME/./}
        samples+=($((e - s)))
    done <"$WORK/newkeys-$n.txt"
    record_samples add "peer add" || return 1

    a_dead end && true
    local nl nw ne
    nl=$(wc -l <"$la")
    nw=$(grep -c 'WARN' "$la" || true)
    ne=$(grep -c 'ERROR' "$la" || true)
    log "N=$n round $round: gateway A log: $nl lines, $nw WARN, $ne ERROR"
    return 0
}

# ---------------------------------------------------------------- main loop
log "work dir $WORK; sitelinkd $SLD; sitelinkctl $SLC"
log "extra peers: ${PEER_COUNTS[*]}; rounds=$ROUNDS idle=${IDLE}s time=${TIME}s ready-timeout=${READY_TIMEOUT}s"
log "namespaces: ${TESTBED_NS[*]}"
DATE_START=$(utc_now)
note_load_start

k=0
np=${#PEER_COUNTS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((j = 0; j < np; j++)); do
        # rotate the start each round so no N always goes first
        n=${PEER_COUNTS[$(((j + round - 1) % np))]}
        k=$((k + 1))
        IFA="sa${ID}x$k"
        IFB="sb${ID}x$k"
        if ((${#IFA} > 15)); then IFA="sa$((ID % 100000))x$k"; IFB="sb$((ID % 100000))x$k"; fi
        log "round $round/$ROUNDS: N=$n extra peers (interfaces $IFA/$IFB)"
        run_isolated run_one "$n" "$round" "$k"
        [[ $RUN_RC -ne 0 ]] && log "N=$n round $round: run FAILED (rc=$RUN_RC)"
        cleanup_testbed
        # one TSV row per run; a missing key (run aborted) counts as failed
        "$PY" - "$WORK/r$k/result" "$n" "$round" >>"$RESULTS" <<'PYEOF'
import sys
d = {}
try:
    with open(sys.argv[1]) as f:
        for line in f:
            key, _, val = line.rstrip("\n").partition("\t")
            d[key] = val
except FileNotFoundError:
    pass
def g(key):
    v = d.get(key, "FAIL")
    return "nan" if v in ("FAIL", "") else v
cols = [sys.argv[2], sys.argv[3], g("startup"), g("rss"), g("hwm") if g("rss") != "nan" else "nan",
        g("idle"), g("tcp"), g("retr") if g("tcp") != "nan" else "nan", g("show"), g("add"),
        d.get("show_samples", ""), d.get("add_samples", "")]
print("\t".join(cols))
PYEOF
    done
done

write_raw extra_peers round startup_s vmrss_kb vmhwm_kb idle_cpu_pct tcp_gbps retransmits \
    show_json_ms peer_add_ms show_json_us_samples peer_add_us_samples

# ---------------------------------------------------------------- summary
CMD=$(quote_cmd bash "$0" "${ORIG_ARGS[@]}")
[[ -n "${SITELINKCTL:-}" ]] && CMD="SITELINKCTL=$(quote_cmd "$SITELINKCTL") $CMD"
[[ -n "${SITELINKD:-}" ]] && CMD="SITELINKD=$(quote_cmd "$SITELINKD") $CMD"

summary_title scale "$DATE_START"
echo "Command: \`$CMD\`"
echo
echo "Medians over $ROUNDS interleaved round(s); (min–max) across rounds when more than one."
echo "N extra idle peers on gateway A besides the real one; RSS = VmRSS / VmHWM in MiB, 3 s after READY=1;"
echo "idle CPU over ${IDLE}s; iperf3 single TCP stream host_a→host_b, ${TIME}s; sitelinkctl times: median of 5 calls each."
echo
py "$RESULTS" "${PEER_COUNTS[*]}" <<'PYEOF'
import statistics, sys
resf, counts = sys.argv[1], sys.argv[2].split()
rows = read_rows(resf, 10)

def fmt(rs, idx, nd, scale=1.0):
    v = [x * scale for x in vals(rs, idx)]
    nfail = len(rs) - len(v)
    if not v:
        return "failed" if rs else "n/a"
    s = med_range(v, nd)
    if nfail:
        s += f" ({nfail}/{len(rs)} failed)"
    return s

base = None
if "0" in rows:
    v = vals(rows["0"], 6)
    base = statistics.median(v) if v else None

print("| N extra peers | start-up to READY (s) | RSS MB | idle CPU % of a core | TCP Gbit/s "
      "| × one-peer TCP | retransmits | show --json ms | peer add ms |")
print("|---|---|---|---|---|---|---|---|---|")
for n in counts:
    rs = rows.get(n, [])
    rss = fmt(rs, 3, 1, 1 / 1024)
    hw = vals(rs, 4)
    if hw:
        rss += f" / {statistics.median(hw) / 1024:.1f}"
    g = vals(rs, 6)
    if not g:
        ratio = "failed" if rs else "n/a"
    elif base:
        ratio = f"{statistics.median(g) / base:.2f}×"
    else:
        ratio = "n/a (no N=0)"
    print(f"| {n} | {fmt(rs, 2, 3)} | {rss} | {fmt(rs, 5, 2)} | {fmt(rs, 6, 2)} | {ratio} "
          f"| {fmt(rs, 7, 0)} | {fmt(rs, 8, 1)} | {fmt(rs, 9, 1)} |")
PYEOF
