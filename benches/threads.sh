#!/usr/bin/env bash
# threads.sh — sitelinkd's multi-threaded data path: one hub, two peers, four TCP streams.
#
# For each packet-thread count in --threads (default 1,2) and each round a fresh testbed of
# three network namespaces is built, with `threads = N` in all three daemons' configs:
#
#   ns slt-b-<pid>                      ns slt-h-<pid> (hub)                   ns slt-c-<pid>
#   wan0 198.18.1.2/30 ── veth ── hb0 198.18.1.1/30 | hc0 198.18.2.1/30 ── veth ── wan0 198.18.2.2/30
#   tb<pid>x<k> 198.19.0.2/32 ══ th<pid>x<k> 198.19.0.1/24 (2 peers) ══ tc<pid>x<k> 198.19.0.3/32
#
# From the hub, two `iperf3 -c … -P 2 -J` clients run at once for --time seconds, one to an
# `iperf3 -s -1` in B and one to one in C: four TCP streams through the hub's sitelinkd.
# Measured: total Gbit/s received (sum of the four streams), TCP retransmits (sum), and the
# hub daemon's CPU seconds (utime+stime from /proc/PID/stat) per 10^9 bytes received.
# Rounds are interleaved (every thread count once per round, rotating the start) and the
# median over rounds is reported as a markdown table, with the ratio of the 2-thread
# throughput to the 1-thread one.  A measurement that fails is reported on stderr and shows
# as n/a; the run goes on.  See benches/README.md.
#
# Run as root.  Only addresses inside the namespaces (198.18.0.0/15) are used.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: sudo benches/threads.sh [options]

  --threads LIST    comma-separated packet-thread counts (1-64), each applied to all
                    three daemons (`threads = N` in [interface]; default 1,2)
  --rounds N        interleaved rounds (default 3); medians over rounds are reported
  --time SECS       duration of the iperf3 run of each round and thread count (default 10)
  --raw FILE        also write the per-run raw results (TSV) to FILE
  --keep-logs       keep the work directory (configs, daemon logs, iperf3 JSON and
                    server logs) and print its path at the end
  -h, --help        this help

Testbed (fresh for every run): a hub namespace H with a veth to each of two peer
namespaces B and C (198.18.1.0/30, 198.18.2.0/30), one sitelinkd in each (tunnel
198.19.0.1/24 on H with peers 198.19.0.2/32 and 198.19.0.3/32; B (198.19.0.2/32) and
C (198.19.0.3/32) have H as their peer with allowed-ips 198.19.0.0/24).  Per run: `iperf3 -c 198.19.0.2 -P 2` and
`iperf3 -c 198.19.0.3 -P 2`, started together from H, for SECS seconds.

Per run it measures: the Gbit/s the receivers got (sum of the 4 streams, and per peer),
TCP retransmits (sum), and the hub sitelinkd's utime+stime during the iperf3 run per
10^9 bytes received.  Prints a markdown table of medians (min–max) and the ratio of the
2-thread throughput median to the 1-thread one.

Binaries: target/release/sitelinkd and target/release/sitelinkctl of this repo (never
built by this script: run `cargo build --release -p sitelinkd -p sitelinkctl` first);
override with SITELINKD= and SITELINKCTL= (paths).  sitelinkd is copied into the work
directory at the start, so that a rebuild during the run does not mix binaries.
EOF
}

# ---------------------------------------------------------------- options
ORIG_ARGS=("$@")
THREADS_OPT=1,2
ROUNDS=3
TIME=10
RAW_OUT=""
KEEP_LOGS=0

VALUE_OPTS=([--threads]=THREADS_OPT [--rounds]=ROUNDS [--time]=TIME [--raw]=RAW_OUT)
FLAG_OPTS=([--keep-logs]=KEEP_LOGS)
parse_options "$@"
require_positive_ints ROUNDS TIME

parse_thread_counts --threads "$THREADS_OPT"
if [[ ${#THREADS_LIST[@]} -eq 0 ]]; then
    echo "error: --threads is empty" >&2
    exit 2
fi

require_root
require_tools "apt-get install iproute2 iputils-ping iperf3 coreutils libc-bin" \
    ip ss ping iperf3 timeout getconf
[[ -c /dev/net/tun ]] || { echo "error: /dev/net/tun missing" >&2; exit 1; }
find_python "used to parse iperf3 JSON and compute medians"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- names
ID=$$
NSH="slt-h-$ID"        # hub
NSB="slt-b-$ID"        # peer B
NSC="slt-c-$ID"        # peer C
TESTBED_NS=("$NSH" "$NSB" "$NSC")
OUTER_HB=198.18.1.1    # H side of the H–B veth (/30)
OUTER_B=198.18.1.2
OUTER_HC=198.18.2.1    # H side of the H–C veth (/30)
OUTER_C=198.18.2.2
TUN_H=198.19.0.1
TUN_B=198.19.0.2
TUN_C=198.19.0.3
init_workdir threads
RUN_DIR="$WORK/run"    # SITELINK_RUN_DIR: the daemons' control sockets
mkdir -p "$RUN_DIR"
# tunnel interface names, set per run by the main loop (the cleanup needs them): they are
# unique per run, as /var/run/wireguard/<if>.sock is shared by all namespaces
IFA="" IFB=""          # hub, B
TESTBED_EXTRA_IFS=()   # C

# cleanup_testbed (lib.sh): kills everything in the three namespaces (daemons, iperf3;
# 3 s after SIGTERM), deletes them, removes the /var/run/wireguard sockets
CLEANUP_TERM_TICKS=30
CLEANUP_DEL_TRIES=5
set_traps final_cleanup

# ---------------------------------------------------------------- binaries and keys
SLD_SRC="${SITELINKD:-$REPO_ROOT/target/release/sitelinkd}"
SLC="${SITELINKCTL:-$REPO_ROOT/target/release/sitelinkctl}"
for b in "$SLD_SRC" "$SLC"; do
    if [[ ! -x "$b" ]]; then
        echo "error: $b is not executable (build it: cargo build --release -p sitelinkd -p sitelinkctl)" >&2
        exit 1
    fi
done
mkdir -p "$WORK/bin"
cp "$SLD_SRC" "$WORK/bin/sitelinkd"
SLD="$WORK/bin/sitelinkd"

(umask 077; for s in h b c; do "$SLC" genkey >"$WORK/$s.key"; done)
chmod 600 "$WORK/h.key" "$WORK/b.key" "$WORK/c.key"
H_PUB=$("$SLC" pubkey <"$WORK/h.key")
B_PUB=$("$SLC" pubkey <"$WORK/b.key")
C_PUB=$("$SLC" pubkey <"$WORK/c.key")

# ---------------------------------------------------------------- helpers
# with_threads N: copy a sitelinkd config from stdin to stdout, with `threads = N` as the
# first key of its [interface] table
with_threads() { sed "/^\[interface\]\$/a threads = $1"; }

# as_host_address: copy a sitelinkd config from stdin to stdout with its `address` made a
# /32.  B and C route all of 198.19.0.0/24 to the hub (allowed-ips): with a /24 address the
# kernel's connected route would already cover it, and sitelinkd refuses to start ("a route
# for 198.19.0.0/24 already exists").
as_host_address() { sed 's|^address = \["\(.*\)/24"\]$|address = ["\1/32"]|'; }

# write_confs DIR N: DIR/{h,b,c}.toml for this run's interfaces, with threads = N
write_confs() {
    local d=$1 n=$2
    {
        sitelink_conf "$IFH" "$WORK/h.key" "$TUN_H" site-b "$B_PUB" "$OUTER_B:$PORT" "$TUN_B/32" 25
        echo
        sitelink_peer site-c "$C_PUB" "$OUTER_C:$PORT" "$TUN_C/32" 25
    } | with_threads "$n" >"$d/h.toml"
    sitelink_conf "$IFB" "$WORK/b.key" "$TUN_B" hub "$H_PUB" "$OUTER_HB:$PORT" "198.19.0.0/24" 25 \
        | with_threads "$n" | as_host_address >"$d/b.toml"
    sitelink_conf "$IFC" "$WORK/c.key" "$TUN_C" hub "$H_PUB" "$OUTER_HC:$PORT" "198.19.0.0/24" 25 \
        | with_threads "$n" | as_host_address >"$d/c.toml"
    local f
    for f in h b c; do
        if ! grep -qx "threads = $n" "$d/$f.toml"; then
            echo "error: could not add 'threads = $n' to $d/$f.toml" >&2
            return 1
        fi
    done
    for f in b c; do
        if ! grep -q '^address = \[".*/32"\]$' "$d/$f.toml"; then
            echo "error: could not make the address in $d/$f.toml a /32" >&2
            return 1
        fi
    done
}

setup_testbed() {
    local ns
    for ns in "${TESTBED_NS[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add hb0 netns "$NSH" mtu 1500 type veth peer name wan0 netns "$NSB" mtu 1500
    ip link add hc0 netns "$NSH" mtu 1500 type veth peer name wan0 netns "$NSC" mtu 1500
    ip -n "$NSH" addr add "$OUTER_HB/30" dev hb0
    ip -n "$NSB" addr add "$OUTER_B/30" dev wan0
    ip -n "$NSH" addr add "$OUTER_HC/30" dev hc0
    ip -n "$NSC" addr add "$OUTER_C/30" dev wan0
    ip -n "$NSH" link set hb0 up
    ip -n "$NSH" link set hc0 up
    ip -n "$NSB" link set wan0 up
    ip -n "$NSC" link set wan0 up
    wait_for "veth ping H -> B" 10 ip netns exec "$NSH" ping -c 1 -W 1 "$OUTER_B"
    wait_for "veth ping H -> C" 10 ip netns exec "$NSH" ping -c 1 -W 1 "$OUTER_C"
}

# start_daemon NS CONF LOG: sitelinkd in NS; echoes its PID (`ip netns exec` execs sitelinkd
# in place of itself, so $! is the daemon)
start_daemon() {
    SITELINK_RUN_DIR="$RUN_DIR" ip netns exec "$1" "$SLD" --config "$2" >"$3" 2>&1 &
    echo $!
}

# wait_daemon PID NS IF LOG: until sitelinkd has created and addressed IF (15 s)
wait_daemon() {
    local pid=$1 ns=$2 ifn=$3 lg=$4 deadline=$((SECONDS + 15))
    while ! ip -n "$ns" addr show dev "$ifn" 2>/dev/null | grep -q 'inet '; do
        if ! alive "$pid"; then
            echo "error: sitelinkd ($ifn in $ns) exited during startup" >&2
            show_log "$lg"; return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "error: timed out (15s) waiting for sitelinkd to create and address $ifn in $ns" >&2
            show_log "$lg"; return 1
        fi
        sleep 0.1
    done
}

# reported_threads LOG: N of the "sitelinkd running … threads=N" line (waits up to 10 s),
# or "?" if there is none
reported_threads() {
    local lg=$1 n="" deadline=$((SECONDS + 10))
    while :; do
        n=$(sed 's/\x1b\[[0-9;]*m//g' "$lg" | grep 'sitelinkd running' | grep -o 'threads=[0-9]*' \
            | head -n 1 || true)
        [[ -n "$n" ]] && { echo "${n#threads=}"; return 0; }
        ((SECONDS >= deadline)) && { echo "?"; return 0; }
        sleep 0.1
    done
}


# cpu_ticks PID: /proc/PID/stat fields 14 (utime) + 15 (stime), all threads, in clock ticks
cpu_ticks() {
    local st rest
    local -a f
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${st##*) }            # fields from 3 (state) on
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

# start_server NS DST LOG: a one-shot `iperf3 -s -1 -B DST` in NS; echoes its PID
start_server() {
    ip netns exec "$1" iperf3 -s -1 -B "$2" >"$3" 2>&1 &
    echo $!
}

# ---------------------------------------------------------------- one run
# measure N ROUND K: servers in B and C, the two clients from H at once, the hub's CPU time
# around them; appends one TSV row to $RESULTS.  Never fails.
measure() {
    local n=$1 round=$2 k=$3
    local rdir="$WORK/r$k"
    local sb sc cb cc rc_b=0 rc_c=0 servers_ok=1 cpu_ok=1 cpu0="" cpu1="" exe
    sb=$(start_server "$NSB" "$TUN_B" "$rdir/iperf-server-b.log")
    sc=$(start_server "$NSC" "$TUN_C" "$rdir/iperf-server-c.log")
    if ! wait_for "iperf3 server in $NSB" 10 \
        sh -c "ip netns exec '$NSB' ss -Htln 'sport = :5201' | grep -q ."; then
        show_log "$rdir/iperf-server-b.log"; servers_ok=0
    fi
    if ! wait_for "iperf3 server in $NSC" 10 \
        sh -c "ip netns exec '$NSC' ss -Htln 'sport = :5201' | grep -q ."; then
        show_log "$rdir/iperf-server-c.log"; servers_ok=0
    fi

    exe=$(readlink -f "/proc/$HUB_PID/exe" 2>/dev/null || true)
    if [[ "$exe" != "$(readlink -f "$SLD")" ]]; then
        echo "error: threads=$n round $round: pid $HUB_PID runs '${exe:-?}', not $SLD; no CPU figure" >&2
        cpu_ok=0
    elif ! cpu0=$(cpu_ticks "$HUB_PID"); then
        echo "error: threads=$n round $round: the hub's sitelinkd (pid $HUB_PID) is gone; no CPU figure" >&2
        cpu_ok=0
    fi

    if [[ $servers_ok -eq 1 ]]; then
        timeout --foreground -k 5 $((TIME + 30)) ip netns exec "$NSH" \
            iperf3 -c "$TUN_B" -t "$TIME" -P 2 -J >"$rdir/to-b.json" 2>"$rdir/to-b.json.err" &
        cb=$!
        timeout --foreground -k 5 $((TIME + 30)) ip netns exec "$NSH" \
            iperf3 -c "$TUN_C" -t "$TIME" -P 2 -J >"$rdir/to-c.json" 2>"$rdir/to-c.json.err" &
        cc=$!
        wait "$cb" || rc_b=$?
        wait "$cc" || rc_c=$?
    else
        rc_b=server rc_c=server
    fi

    if [[ $cpu_ok -eq 1 ]] && ! cpu1=$(cpu_ticks "$HUB_PID"); then
        echo "error: threads=$n round $round: the hub's sitelinkd (pid $HUB_PID) died during iperf3; no CPU figure" >&2
        cpu_ok=0
    fi
    kill "$sb" "$sc" 2>/dev/null || true
    wait "$sb" "$sc" 2>/dev/null || true

    local p l
    for p in $DAEMON_PIDS; do
        if ! alive "$p"; then
            echo "error: threads=$n round $round: a sitelinkd (pid $p) died during the measurement" >&2
            for l in $DAEMON_LOGS; do show_log "$l"; done
            break
        fi
    done

    py "$n" "$round" "$rdir" "$rc_b" "$rc_c" "$cpu_ok" "$cpu0" "$cpu1" "$CLK_TCK" "$REPORTED" \
        >>"$RESULTS" <<'PYEOF'
import sys
n, rnd, rdir, rc_b, rc_c, cpu_ok, cpu0, cpu1, clk, reported = sys.argv[1:11]
failed = []

def fail(step, msg):
    failed.append(step)
    print(f"error: threads={n} round {rnd}: {msg}", file=sys.stderr)

def client(peer, rc):
    """(Gbit/s received, retransmits, bytes received) of the client to peer, or None."""
    jsonf = f"{rdir}/to-{peer}.json"
    what = f"iperf3 H->{peer.upper()} (-P 2)"
    if rc == "server":
        fail(peer, f"{what}: not run, an iperf3 server did not come up")
        return None
    try:
        g, r = iperf_result(jsonf)
        return g, r, iperf_tcp_bytes(jsonf)
    except IperfError as e:
        kind = "timed out, " if rc in ("124", "137") else ""
        fail(peer, f"{what} failed: iperf3 says: {e} ({kind}rc={rc})")
    except Exception as e:  # noqa: BLE001
        err = ""
        try:
            with open(jsonf + ".err") as f:
                err = " ".join(f.read().split())[:200]
        except OSError:
            pass
        kind = "timed out" if rc in ("124", "137") else f"rc={rc}"
        fail(peer, f"{what} failed: no usable JSON ({kind}; {type(e).__name__}: {e})"
             f"{' stderr: ' + err if err else ''}")
    return None

nan = "nan"
b = client("b", rc_b)
c = client("c", rc_c)
both = b is not None and c is not None
total = b[0] + c[0] if both else None
nbytes = b[2] + c[2] if both else None
try:
    retr = str(int(b[1]) + int(c[1])) if both else nan
except (TypeError, ValueError):
    retr = nan
    fail("retransmits", "iperf3 reported no retransmit count")
if not both:
    print(f"error: threads={n} round {rnd}: no total for this run (needs both clients)",
          file=sys.stderr)

cpu = cpu_s = nan
if cpu_ok != "1":
    failed.append("cpu")       # the reason is on stderr already
else:
    s = (int(cpu1) - int(cpu0)) / int(clk)
    cpu_s = "%.2f" % s
    if not both:
        fail("cpu", "no CPU s per GB figure, as an iperf3 client failed")
    elif nbytes <= 0:
        fail("cpu", "no CPU s per GB figure: the receivers got 0 bytes")
    else:
        cpu = "%.3f" % (s / (nbytes / 1e9))

def f3(v):
    return nan if v is None else "%.3f" % v

print("\t".join([
    n, rnd, f3(total), f3(b and b[0]), f3(c and c[0]), retr, cpu, cpu_s,
    nan if nbytes is None else str(nbytes), reported, ",".join(failed) or "-",
]))
PYEOF
    local -a r
    IFS=$'\t' read -r -a r < <(tail -n 1 "$RESULTS")
    log "threads=$n round $round: total ${r[2]} Gbit/s (to B ${r[3]}, to C ${r[4]});" \
        "retransmits ${r[5]}; hub CPU ${r[6]} s per GB (${r[7]} s); daemons report threads ${r[9]};" \
        "failed: ${r[10]}"
    return 0
}

# run_one N ROUND K: fresh testbed, three daemons with threads = N, the measurement.  Runs
# in a subshell with errexit (run_isolated); a failure before the measurement leaves no row.
run_one() {
    local n=$1 round=$2 k=$3
    local rdir="$WORK/r$k"
    mkdir -p "$rdir"
    DAEMON_PIDS="" DAEMON_LOGS=""
    cleanup_testbed
    setup_testbed
    write_confs "$rdir" "$n"
    local ph pb pc
    ph=$(start_daemon "$NSH" "$rdir/h.toml" "$rdir/h.log")
    pb=$(start_daemon "$NSB" "$rdir/b.toml" "$rdir/b.log")
    pc=$(start_daemon "$NSC" "$rdir/c.toml" "$rdir/c.log")
    HUB_PID=$ph
    DAEMON_PIDS="$ph $pb $pc"
    DAEMON_LOGS="$rdir/h.log $rdir/b.log $rdir/c.log"
    wait_daemon "$ph" "$NSH" "$IFH" "$rdir/h.log"
    wait_daemon "$pb" "$NSB" "$IFB" "$rdir/b.log"
    wait_daemon "$pc" "$NSC" "$IFC" "$rdir/c.log"

    # every daemon must run the configured number of packet threads
    local s t got=()
    for s in h b c; do
        t=$(reported_threads "$rdir/$s.log")
        got+=("$t")
        if [[ "$t" == "?" ]]; then
            echo "warning: threads=$n round $round: no 'sitelinkd running … threads=N' line in $rdir/$s.log" >&2
        elif [[ "$t" != "$n" ]]; then
            echo "error: threads=$n round $round: the ${s^^} daemon was configured with threads = $n" \
                "but reports threads=$t; no figures from this run" >&2
            show_log "$rdir/$s.log"
            return 1
        fi
    done
    REPORTED=$(IFS=,; echo "${got[*]}")
    log "threads=$n round $round: daemons H,B,C report threads=$REPORTED (hub pid $HUB_PID)"

    tunnel_warmup "$NSH" "$TUN_B" "$NSH"
    tunnel_warmup "$NSH" "$TUN_C" "$NSH"
    measure "$n" "$round" "$k"
}

# ---------------------------------------------------------------- main loop
log "work dir $WORK; sitelinkd $SLD_SRC (copied to $SLD); sitelinkctl $SLC"
log "threads: ${THREADS_LIST[*]}; rounds=$ROUNDS time=${TIME}s; namespaces: ${TESTBED_NS[*]}"
DATE_START=$(utc_now)
note_load_start

k=0
nt=${#THREADS_LIST[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((j = 0; j < nt; j++)); do
        # rotate the start each round so no thread count always goes first
        n=${THREADS_LIST[$(((j + round - 1) % nt))]}
        k=$((k + 1))
        IFH="th${ID}x$k" IFB="tb${ID}x$k" IFC="tc${ID}x$k"
        if ((${#IFH} > 15)); then
            IFH="th$((ID % 100000))x$k" IFB="tb$((ID % 100000))x$k" IFC="tc$((ID % 100000))x$k"
        fi
        IFA=$IFH
        TESTBED_EXTRA_IFS=("$IFC")
        log "round $round/$ROUNDS: threads = $n (interfaces $IFH/$IFB/$IFC)"
        rows_before=$(wc -l <"$RESULTS")
        run_isolated run_one "$n" "$round" "$k"
        if [[ $(wc -l <"$RESULTS") -eq $rows_before ]]; then
            log "threads=$n round $round: run FAILED (rc=$RUN_RC): no figures from this run"
            printf '%s\t%s\tnan\tnan\tnan\tnan\tnan\tnan\tnan\t-\tsetup\n' "$n" "$round" >>"$RESULTS"
        fi
        cleanup_testbed
    done
done

write_raw threads round total_gbps to_b_gbps to_c_gbps retransmits hub_cpu_s_per_gb hub_cpu_s \
    bytes_received threads_reported failed

# ---------------------------------------------------------------- summary
CMD=$(quote_cmd bash "$0" "${ORIG_ARGS[@]}")
[[ -n "${SITELINKCTL:-}" ]] && CMD="SITELINKCTL=$(quote_cmd "$SITELINKCTL") $CMD"
[[ -n "${SITELINKD:-}" ]] && CMD="SITELINKD=$(quote_cmd "$SITELINKD") $CMD"

summary_title threads "$DATE_START"
echo "Command: \`$CMD\`"
echo
echo "Medians over $ROUNDS interleaved round(s), (min–max) across rounds; [k/n]: only k of n runs gave a figure."
echo "Hub H with peers B and C; \`threads = N\` in all three sitelinkd configs. Per run, from H for ${TIME}s at once:"
echo "\`iperf3 -c B -P 2\` and \`iperf3 -c C -P 2\` (4 TCP streams); Gbit/s = end.sum_received, summed."
echo "CPU: the hub sitelinkd's utime+stime during the iperf3 run, per 10^9 bytes received in total."
echo
py "$RESULTS" "${THREADS_LIST[*]}" <<'PYEOF'
import statistics, sys
resf, counts = sys.argv[1], sys.argv[2].split()
rows = read_rows(resf, 11)

def cell(rs, idx, nd):
    v = vals(rs, idx)
    if not v:
        return "n/a"
    s = med_range(v, nd)
    return s if len(v) == len(rs) else f"{s} [{len(v)}/{len(rs)}]"

def median_tp(n):
    v = vals(rows.get(n, []), 2)
    return statistics.median(v) if v else None

base = median_tp("1")
print("| threads | total Gbit/s (4 streams) | H→B Gbit/s | H→C Gbit/s | × 1 thread "
      "| retransmits | hub CPU s per GB | ok runs |")
print("|---|---|---|---|---|---|---|---|")
for n in counts:
    rs = rows.get(n, [])
    m = median_tp(n)
    if m is None or base is None:
        ratio = "n/a"
    else:
        ratio = f"{m / base:.2f}×"
    ok = sum(1 for r in rs if r[10] == "-")
    print(f"| {n} | {cell(rs, 2, 2)} | {cell(rs, 3, 2)} | {cell(rs, 4, 2)} | {ratio} "
          f"| {cell(rs, 5, 0)} | {cell(rs, 6, 2)} | {ok}/{len(rs)} |")
print()
one, two = base, median_tp("2")
if "1" not in counts or "2" not in counts:
    print("2 threads / 1 thread (total throughput medians): n/a (--threads must include 1 and 2)")
elif one is None or two is None:
    print("2 threads / 1 thread (total throughput medians): n/a (no figure for "
          + " and ".join(f"{x} thread{'s' if x != '1' else ''}"
                         for x, v in (("1", one), ("2", two)) if v is None) + ")")
else:
    print(f"2 threads / 1 thread (total throughput medians): {two / one:.2f}× "
          f"({two:.2f} / {one:.2f} Gbit/s)")
PYEOF
