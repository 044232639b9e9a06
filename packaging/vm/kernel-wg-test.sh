# Sourced by vm-test.sh, INSIDE the VM, after the sitelinkd@sl0 checks: sitelinkd against the
# kernel's WireGuard (Debian's wireguard module; the build machines have none).
#
#   netns slk-a                                   netns slk-b
#   sitelinkd@slk0 (the packaged unit, moved      wgk0 (ip link add type wireguard,
#   here by a NetworkNamespacePath= drop-in)      configured with wg set), port 51821
#   slk0 198.18.60.1/24 fd00:60::1/64             wgk0 198.18.60.2/24 fd00:60::2/64
#   vsl-a 198.18.50.1/24 fd00:50::1/64 ---veth--- vsl-b 198.18.50.2/24 fd00:50::2/64
#
# 1. sitelink initiates (IPv4 underlay): only sitelink knows an endpoint, so the kernel can only
#    answer. Pings (-4, -6, both ways) and byte-checked TCP transfers (socat, SHA-256).
# 2. Rekey: with traffic flowing, the initiator (sitelink) must rekey after REKEY_AFTER_TIME
#    (120 s); both `wg show wgk0 latest-handshakes` and sitelinkctl's latest_handshake change,
#    and traffic still passes.
# 3. The kernel initiates (IPv6 underlay): both sides drop the peer and add it again (no
#    session left), now only the kernel knows an endpoint. The same traffic checks.
# Uses pass/fail/info/check/wait_for/oneline/ms from vm-test.sh. Only 198.18.0.0/15 and
# fd00::/8 addresses.

KUNIT=sitelinkd@slk0.service
KIF=slk0
NS_S=slk-a
NS_K=slk-b
KWG=/root/kwg                        # keys, the test blob, logs
KDROPIN=/etc/systemd/system/$KUNIT.d
KCONF=/etc/sitelink/$KIF.toml
KKEY=/etc/sitelink/$KIF.key
S_UL4=198.18.50.1 K_UL4=198.18.50.2 S_UL6=fd00:50::1 K_UL6=fd00:50::2   # underlay (veth)
S_TUN4=198.18.60.1 K_TUN4=198.18.60.2 S_TUN6=fd00:60::1 K_TUN6=fd00:60::2  # inside the tunnel
S_PORT=51820 K_PORT=51821
REKEY_AFTER_TIME=120
BLOB_MIB=2                           # per transfer; TCP does 0.4-1 MiB/s under TCG

in_s() { ip netns exec "$NS_S" "$@"; }
in_k() { ip netns exec "$NS_K" "$@"; }
kjson() { sitelinkctl --interface "$KIF" show --json; }
# sitelink's view of the kernel peer: FIELD of peers[0] ("null" if unset).
s_peer() { kjson 2> /dev/null | jq -r ".peers[0].$1"; }
# The kernel's view of sitelink: `wg show wgk0 WHAT` for our key (latest-handshakes,
# endpoints, transfer).
k_peer() { in_k wg show wgk0 "$1" 2> /dev/null | awk -v k="$S_PUB" '$1 == k { $1 = ""; sub(/^ /, ""); print }'; }
k_hs() { local v; v=$(k_peer latest-handshakes); echo "${v:-0}"; }
s_hs() { local v; v=$(s_peer latest_handshake); [ "$v" = null ] || [ -z "$v" ] && v=0; echo "$v"; }
# Kernel debug lines (dynamic debug of the wireguard module) about wgk0 matching PATTERN.
kdbg() { dmesg 2> /dev/null | grep -c "wgk0: $1" || true; }
# stop_bg PID: SIGINT (ping prints its summary), then SIGKILL if it is still there after 5 s.
# PID must be the program itself, not a subshell: a background shell function would be a
# subshell, and non-interactive shells ignore SIGINT in background jobs.
stop_bg() {
    local i
    kill -INT "$1" 2> /dev/null
    for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$1" 2> /dev/null || break; sleep 0.5; done
    kill -KILL "$1" 2> /dev/null
    wait "$1" 2> /dev/null
}

kwg_setup() {
    ip netns add "$NS_S" && ip netns add "$NS_K" &&
    ip link add vsl-a type veth peer name vsl-b &&
    ip link set vsl-a netns "$NS_S" && ip link set vsl-b netns "$NS_K" &&
    in_s ip link set lo up && in_k ip link set lo up &&
    in_s ip addr add "$S_UL4/24" dev vsl-a && in_s ip -6 addr add "$S_UL6/64" dev vsl-a nodad &&
    in_k ip addr add "$K_UL4/24" dev vsl-b && in_k ip -6 addr add "$K_UL6/64" dev vsl-b nodad &&
    in_s ip link set vsl-a up && in_k ip link set vsl-b up
}

# The kernel side: wgk0 in netns slk-b, sitelink as its peer without an endpoint.
kwg_kernel() {
    # dyndbg: the module's net_dbg lines ("Receiving handshake initiation ...") say who
    # initiated each handshake; harmless if the kernel lacks dynamic debug.
    modprobe wireguard dyndbg=+p 2> "$OUT" || { cat "$OUT"; return 1; }
    in_k ip link add wgk0 type wireguard &&
    in_k wg set wgk0 private-key "$KWG/k.key" listen-port "$K_PORT" &&
    kwg_kernel_peer &&
    in_k ip addr add "$K_TUN4/24" dev wgk0 && in_k ip -6 addr add "$K_TUN6/64" dev wgk0 nodad &&
    in_k ip link set wgk0 mtu 1420 up
}
# kwg_kernel_peer [ENDPOINT]: adds sitelink as the kernel's peer (with ENDPOINT if given).
kwg_kernel_peer() {
    in_k wg set wgk0 peer "$S_PUB" allowed-ips "$S_TUN4/32,$S_TUN6/128" ${1:+endpoint "$1"}
}

# The sitelink side: the packaged unit, run in netns slk-a, with -v (debug: the journal
# then says "handshake completed (rekey)").
kwg_sitelink_config() {
    cat > "$KCONF" <<EOF
# $KIF: written by packaging/vm/kernel-wg-test.sh (runs in netns $NS_S)
[interface]
private-key-file = "$KKEY"
listen-port = $S_PORT
address = ["$S_TUN4/24", "$S_TUN6/64"]

[[peer]]
name = "kernel-wg"
public-key = "$K_PUB"
endpoint = "$K_UL4:$K_PORT"
allowed-ips = ["$K_TUN4/32", "$K_TUN6/128"]
EOF
    chown root:sitelink "$KCONF"
    chmod 0640 "$KCONF"
    mkdir -p "$KDROPIN"
    cat > "$KDROPIN/netns.conf" <<EOF
[Service]
NetworkNamespacePath=/run/netns/$NS_S
ExecStart=
ExecStart=/usr/sbin/sitelinkd -v --config $KCONF
EOF
    systemctl daemon-reload
}

# ping_ok NAME NS ADDR [COUNT]: PASS if all COUNT (3) pings from NS to ADDR are answered.
ping_ok() {
    local name=$1 ns=$2 addr=$3 count=${4:-3} fam=-4
    case "$addr" in *:*) fam=-6 ;; esac
    if ip netns exec "$ns" ping "$fam" -c "$count" -i 0.5 -W 5 "$addr" > "$OUT" 2>&1 &&
        grep -q " $count received" "$OUT"; then
        pass "$name ($(grep -o 'rtt.*' "$OUT" | sed 's/ = / /'))"
    else
        fail "$name" "ping $fam $ns -> $addr: $(grep -E 'transmitted|rtt' "$OUT" | oneline)"
    fi
}
# ping_first NAME NS ADDR: the first ping through the tunnel (it starts the handshake); PASS
# once one is answered within 30 s.
ping_first() {
    local name=$1 ns=$2 addr=$3 fam=-4 t0
    case "$addr" in *:*) fam=-6 ;; esac
    t0=$(ms)
    if wait_for 30 ip netns exec "$ns" ping "$fam" -c 1 -W 2 "$addr"; then
        pass "$name (first reply after $(( $(ms) - t0 )) ms)"
    else
        fail "$name" "no reply from $addr within 30 s"
    fi
}

# transfer NAME FROM_NS TO_NS ADDR: sends the random blob over TCP (socat) from FROM_NS to
# ADDR in TO_NS; PASS if what arrived has the blob's SHA-256.
kwg_tcp_port=7000
listening() { ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q LISTEN; }
transfer() {
    local name=$1 from=$2 to=$3 addr=$4 proto=TCP4 host=$4 recv=$KWG/recv t0 lpid got
    case "$addr" in *:*) proto=TCP6 host="[$addr]" ;; esac
    kwg_tcp_port=$((kwg_tcp_port + 1))
    rm -f "$recv"
    ip netns exec "$to" timeout 120 socat -u "$proto-LISTEN:$kwg_tcp_port,bind=$host,reuseaddr" \
        "CREATE:$recv" 2> "$KWG/socat-listen.err" &
    lpid=$!
    if ! wait_for 20 listening "$to" "$kwg_tcp_port"; then
        fail "$name" "socat did not listen on $host:$kwg_tcp_port: $(oneline < "$KWG/socat-listen.err")"
        stop_bg "$lpid"
        return
    fi
    t0=$(ms)
    if ! ip netns exec "$from" timeout 120 socat -u "OPEN:$KWG/blob" "$proto:$host:$kwg_tcp_port" > "$OUT" 2>&1; then
        fail "$name" "sending to $host:$kwg_tcp_port failed: $(oneline < "$OUT")"
        stop_bg "$lpid"
        return
    fi
    wait "$lpid"
    local took=$(( $(ms) - t0 ))
    got=$(sha256sum < "$recv" 2> /dev/null | cut -d' ' -f1)
    if [ "$got" = "$BLOB_SHA" ]; then
        pass "$name ($BLOB_MIB MiB in $took ms, $(( BLOB_MIB * 1024 * 1000 / (took > 0 ? took : 1) )) KiB/s, sha256 equal)"
    else
        fail "$name" "received $(stat -c %s "$recv" 2> /dev/null || echo 0) of $(stat -c %s "$KWG/blob") bytes, sha256 ${got:-none} != $BLOB_SHA; $(oneline < "$KWG/socat-listen.err")"
    fi
}

# traffic PREFIX: pings both ways in both families and a transfer in each family.
# $1: prefix of the check names; $2: "s2k" or "k2s", the direction of the IPv4 transfer
# (IPv6 goes the other way).
traffic() {
    local p=$1
    ping_ok "$p-ping4-sitelink-to-kernel" "$NS_S" "$K_TUN4"
    ping_ok "$p-ping6-sitelink-to-kernel" "$NS_S" "$K_TUN6"
    ping_ok "$p-ping4-kernel-to-sitelink" "$NS_K" "$S_TUN4"
    ping_ok "$p-ping6-kernel-to-sitelink" "$NS_K" "$S_TUN6"
    if [ "$2" = s2k ]; then
        transfer "$p-tcp4-sitelink-to-kernel" "$NS_S" "$NS_K" "$K_TUN4"
        transfer "$p-tcp6-kernel-to-sitelink" "$NS_K" "$NS_S" "$S_TUN6"
    else
        transfer "$p-tcp4-kernel-to-sitelink" "$NS_K" "$NS_S" "$S_TUN4"
        transfer "$p-tcp6-sitelink-to-kernel" "$NS_S" "$NS_K" "$K_TUN6"
    fi
}

kwg_cleanup() {
    [ -n "${kwg_ping_pid:-}" ] && stop_bg "$kwg_ping_pid"
    systemctl stop "$KUNIT" > /dev/null 2>&1
    in_k ip link del wgk0 > /dev/null 2>&1
    ip netns del "$NS_S" > /dev/null 2>&1
    ip netns del "$NS_K" > /dev/null 2>&1
    rm -rf "$KDROPIN"
    systemctl daemon-reload
}

kernel_wg_test() {
    local t_kwg; t_kwg=$(date +%s)
    info "--- kernel WireGuard interop: $KUNIT in netns $NS_S, kernel wgk0 in netns $NS_K"
    mkdir -p "$KWG"
    local tool
    for tool in wg socat jq ss; do
        command -v "$tool" > /dev/null || { fail kwg-tools "$tool missing in the VM root (run-vm-test.sh --fresh-root)"; return; }
    done
    (umask 077; sitelinkctl genkey > "$KKEY"; wg genkey > "$KWG/k.key")
    S_PUB=$(sitelinkctl pubkey < "$KKEY")
    K_PUB=$(wg pubkey < "$KWG/k.key")
    if [ "$(wg pubkey < "$KKEY")" = "$S_PUB" ]; then pass kwg-keys-wg-compatible
    else fail kwg-keys-wg-compatible "wg pubkey and sitelinkctl pubkey differ for the same key"; fi
    head -c $((BLOB_MIB << 20)) /dev/urandom > "$KWG/blob"
    BLOB_SHA=$(sha256sum < "$KWG/blob" | cut -d' ' -f1)

    if kwg_setup > "$OUT" 2>&1; then pass kwg-netns-veth
    else fail kwg-netns-veth "$(oneline < "$OUT")"; kwg_cleanup; return; fi
    if wait_for 10 in_s ping -c 1 -W 1 "$K_UL4" && wait_for 10 in_s ping -6 -c 1 -W 1 "$K_UL6"; then
        pass kwg-underlay-reachable
    else
        fail kwg-underlay-reachable "$S_UL4 -> $K_UL4 or $S_UL6 -> $K_UL6 does not ping"
    fi
    if kwg_kernel > "$OUT" 2>&1; then
        pass "kwg-kernel-interface (wireguard module $(cat /sys/module/wireguard/version 2> /dev/null || echo '?'))"
    else
        fail kwg-kernel-interface "$(oneline < "$OUT")"; kwg_cleanup; return
    fi
    local dyndbg=0
    cat /proc/dynamic_debug/control /sys/kernel/debug/dynamic_debug/control 2> /dev/null |
        grep -q '\[wireguard\].*=p .*handshake initiation' && dyndbg=1
    info "kernel wireguard debug messages: $([ $dyndbg = 1 ] && echo on || echo 'off (no dynamic debug): handshake directions from endpoints only')"

    # --- 1. sitelink initiates, IPv4 underlay -------------------------------------------------
    kwg_sitelink_config
    local t0; t0=$(ms)
    if timeout 120 systemctl start "$KUNIT" > "$OUT" 2>&1; then pass "kwg-sitelinkd-start ($(( $(ms) - t0 )) ms)"
    else fail kwg-sitelinkd-start "$(oneline < "$OUT"); journal: $(journalctl -u "$KUNIT" --no-pager -o cat -n 15 | oneline)"; kwg_cleanup; return; fi
    if in_s ip link show "$KIF" > /dev/null 2>&1 && ! ip link show "$KIF" > /dev/null 2>&1; then pass kwg-sitelink-in-netns
    else fail kwg-sitelink-in-netns "$KIF in $NS_S: $(in_s ip -br link 2>&1 | oneline); in the root namespace: $(ip -br link 2>&1 | oneline)"; fi

    local init_before; init_before=$(kdbg 'Receiving handshake initiation')
    ping_first kwg-sl-initiates-first-ping4 "$NS_S" "$K_TUN4"
    local k_ep s_ep
    k_ep=$(k_peer endpoints)
    if [ "$(k_hs)" != 0 ] && [ "$k_ep" = "$S_UL4:$S_PORT" ]; then
        pass "kwg-sl-initiated (the kernel, without an endpoint, learned $k_ep from sitelink's initiation)"
    else
        fail kwg-sl-initiated "kernel: latest handshake $(k_hs), endpoint '$k_ep' (want $S_UL4:$S_PORT)"
    fi
    if [ $dyndbg = 1 ]; then
        if [ "$(kdbg 'Receiving handshake initiation')" -gt "$init_before" ]; then pass kwg-sl-initiated-kernel-log
        else fail kwg-sl-initiated-kernel-log "no 'Receiving handshake initiation' in dmesg: $(dmesg | grep wgk0 | tail -n 5 | oneline)"; fi
    fi
    s_ep=$(s_peer endpoint)
    local s_hs1; s_hs1=$(s_hs)
    if [ "$s_hs1" != 0 ] && [ $(( $(date +%s) - s_hs1 )) -lt 60 ] && [ "$s_ep" = "$K_UL4:$K_PORT" ]; then
        pass "kwg-sl-show-json (latest_handshake $(( $(date +%s) - s_hs1 )) s ago, endpoint $s_ep)"
    else
        fail kwg-sl-show-json "latest_handshake '$s_hs1', endpoint '$s_ep': $(kjson 2>&1 | oneline)"
    fi
    # Stock wg reads sitelinkd's UAPI socket (/run/wireguard/slk0.sock, from the root namespace).
    local wg_hs; wg_hs=$(wg show "$KIF" latest-handshakes 2> "$OUT" | awk -v k="$K_PUB" '$1 == k { print $2 }')
    if [ -n "$wg_hs" ] && [ "$wg_hs" = "$(s_hs)" ]; then pass "kwg-wg-show-sitelink (wg show $KIF agrees: $wg_hs)"
    else fail kwg-wg-show-sitelink "wg show $KIF latest-handshakes: '$wg_hs' vs sitelinkctl $(s_hs); $(oneline < "$OUT")"; fi
    traffic kwg-sl s2k

    # --- 2. rekey after REKEY_AFTER_TIME (sitelink initiated the session) ----------------------
    local k_hs0 s_hs0 start now deadline k_new=0 s_new=0 t_rekey
    k_hs0=$(k_hs); s_hs0=$(s_hs)
    init_before=$(kdbg 'Receiving handshake initiation')
    local send_before; send_before=$(kdbg 'Sending handshake initiation')
    start=$(date +%s)
    deadline=$(( k_hs0 + REKEY_AFTER_TIME + 90 ))
    info "waiting for the rekey: session from $(date -d "@$k_hs0" +%T), due after $(date -d "@$(( k_hs0 + REKEY_AFTER_TIME ))" +%T); pinging $K_TUN4 every second meanwhile"
    # Traffic from the initiator's side: WireGuard rekeys on sending, not on a timer alone.
    ip netns exec "$NS_S" ping -i 1 -W 2 "$K_TUN4" > "$KWG/rekey-ping.txt" 2>&1 &
    kwg_ping_pid=$!
    while now=$(date +%s); [ "$now" -lt "$deadline" ]; do
        [ "$k_new" = 0 ] && [ "$(k_hs)" -gt "$k_hs0" ] && k_new=$(k_hs)
        [ "$s_new" = 0 ] && [ "$(s_hs)" -gt "$s_hs0" ] && s_new=$(s_hs)
        [ "$k_new" != 0 ] && [ "$s_new" != 0 ] && break
        sleep 2
    done
    t_rekey=$(( $(date +%s) - start ))
    sleep 3   # a few pings after the switch
    stop_bg "$kwg_ping_pid"; kwg_ping_pid=
    if [ "$k_new" != 0 ]; then
        pass "kwg-rekey-kernel (wg show latest-handshakes $k_hs0 -> $k_new: $(( k_new - k_hs0 )) s into the session)"
    else
        fail kwg-rekey-kernel "no new handshake in $(( deadline - k_hs0 )) s of the session: latest-handshakes still $(k_hs)"
    fi
    if [ "$s_new" != 0 ]; then
        pass "kwg-rekey-sitelink-show-json (latest_handshake $s_hs0 -> $s_new)"
    else
        fail kwg-rekey-sitelink-show-json "latest_handshake still $(s_hs) (kernel: $k_hs0 -> $(k_hs))"
    fi
    if [ $dyndbg = 1 ]; then
        local got_init sent_init
        got_init=$(( $(kdbg 'Receiving handshake initiation') - init_before ))
        sent_init=$(( $(kdbg 'Sending handshake initiation') - send_before ))
        if [ "$got_init" -ge 1 ] && [ "$sent_init" = 0 ]; then pass "kwg-rekey-initiated-by-sitelink ($got_init initiation(s) received by the kernel)"
        else fail kwg-rekey-initiated-by-sitelink "the kernel received $got_init and sent $sent_init initiations during the wait: $(dmesg | grep 'wgk0:.*handshake' | tail -n 6 | oneline)"; fi
    fi
    if journalctl -u "$KUNIT" --no-pager -o cat | grep -q 'handshake completed (rekey)'; then pass kwg-rekey-in-sitelink-journal
    else fail kwg-rekey-in-sitelink-journal "no 'handshake completed (rekey)': $(journalctl -u "$KUNIT" --no-pager -o cat -n 6 | oneline)"; fi
    info "rekey wait ${t_rekey}s; pings meanwhile: $(grep -E 'transmitted' "$KWG/rekey-ping.txt" | oneline)"
    traffic kwg-after-rekey s2k

    # --- 3. the kernel initiates, IPv6 underlay -------------------------------------------------
    # Both sides forget the peer (and its session) and add it again; now only the kernel knows
    # an endpoint, so sitelink can only answer.
    local reset_ok=1
    sitelinkctl --interface "$KIF" peer remove kernel-wg > "$OUT" 2>&1 || reset_ok=0
    sitelinkctl --interface "$KIF" peer add kernel-wg --public-key "$K_PUB" \
        --allowed-ips "$K_TUN4/32,$K_TUN6/128" >> "$OUT" 2>&1 || reset_ok=0
    in_k wg set wgk0 peer "$S_PUB" remove >> "$OUT" 2>&1 || reset_ok=0
    kwg_kernel_peer "[$S_UL6]:$S_PORT" >> "$OUT" 2>&1 || reset_ok=0
    if [ $reset_ok = 1 ] && [ "$(k_hs)" = 0 ] && [ "$(s_hs)" = 0 ] && [ "$(s_peer endpoint)" = null ]; then
        pass kwg-reset-both-sides
    else
        fail kwg-reset-both-sides "$(oneline < "$OUT"); kernel handshake $(k_hs), sitelink $(s_hs) endpoint $(s_peer endpoint)"
    fi
    send_before=$(kdbg 'Sending handshake initiation')
    ping_first kwg-k-initiates-first-ping6 "$NS_K" "$S_TUN6"
    s_ep=$(s_peer endpoint)
    if [ "$(s_hs)" != 0 ] && [ "$s_ep" = "[$K_UL6]:$K_PORT" ]; then
        pass "kwg-k-initiated (sitelink, without an endpoint, learned $s_ep from the kernel's initiation)"
    else
        fail kwg-k-initiated "sitelink: latest_handshake $(s_hs), endpoint '$s_ep' (want [$K_UL6]:$K_PORT)"
    fi
    if [ $dyndbg = 1 ]; then
        if [ "$(kdbg 'Sending handshake initiation')" -gt "$send_before" ]; then pass kwg-k-initiated-kernel-log
        else fail kwg-k-initiated-kernel-log "no 'Sending handshake initiation' in dmesg: $(dmesg | grep wgk0 | tail -n 5 | oneline)"; fi
    fi
    k_ep=$(k_peer endpoints)
    if [ "$(k_hs)" != 0 ] && [ "$k_ep" = "[$S_UL6]:$S_PORT" ]; then pass "kwg-k-kernel-side (handshake, endpoint $k_ep)"
    else fail kwg-k-kernel-side "kernel: latest handshake $(k_hs), endpoint '$k_ep'"; fi
    traffic kwg-k k2s

    # --- counters, logs, stop -------------------------------------------------------------------
    # Both count WireGuard datagram bytes since the peer was re-added: what one sent, the
    # other received. (Read up to 3 times: a keepalive may be on its way between the reads.)
    local i k_rx k_tx s_rx s_tx
    for i in 1 2 3; do
        read -r k_rx k_tx <<< "$(k_peer transfer)"
        s_rx=$(s_peer rx_bytes); s_tx=$(s_peer tx_bytes)
        [ "$k_rx" = "$s_tx" ] && [ "$k_tx" = "$s_rx" ] && break
        sleep 1
    done
    if [ -n "$k_rx" ] && [ "$k_rx" = "$s_tx" ] && [ "$k_tx" = "$s_rx" ] && [ "$k_rx" -gt $((BLOB_MIB << 20)) ] && [ "$k_tx" -gt $((BLOB_MIB << 20)) ]; then
        pass "kwg-transfer-counters-agree (sitelink tx = kernel rx = $s_tx, sitelink rx = kernel tx = $s_rx)"
    else
        fail kwg-transfer-counters-agree "kernel rx $k_rx tx $k_tx; sitelink rx $s_rx tx $s_tx"
    fi
    info "sitelink dropped counters: $(kjson 2> /dev/null | jq -c '.interface.dropped')"
    journalctl _SYSTEMD_UNIT="$KUNIT" -p err --no-pager -o cat > "$OUT" 2>&1
    if [ ! -s "$OUT" ]; then pass kwg-no-errors-in-journal
    else fail kwg-no-errors-in-journal "$(oneline < "$OUT")"; fi
    local warns; warns=$(journalctl _SYSTEMD_UNIT="$KUNIT" -p warning --no-pager -o cat | oneline)
    [ -n "$warns" ] && info "sitelinkd warnings: $warns"
    journalctl -u "$KUNIT" --no-pager -o short-monotonic > /root/sitelinkd-slk0-journal.txt 2>&1
    dmesg | grep -E 'wireguard|wgk0' > /root/kernel-wg-dmesg.txt 2>&1
    check kwg-sitelinkd-stop timeout 60 systemctl stop "$KUNIT"
    if [ "$(systemctl show -p Result --value "$KUNIT")" = success ] && ! in_s ip link show "$KIF" > /dev/null 2>&1; then
        pass kwg-sitelinkd-stop-clean
    else
        fail kwg-sitelinkd-stop-clean "Result=$(systemctl show -p Result --value "$KUNIT"); $(in_s ip -br link 2>&1 | oneline)"
    fi
    kwg_cleanup
    info "kernel WireGuard part took $(( $(date +%s) - t_kwg ))s (rekey wait ${t_rekey}s)"
}
