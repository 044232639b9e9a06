#!/bin/bash
# Runs INSIDE the VM (as sitelink-vm-test.service, after boot) against the installed
# sitelink package: sitelinkd@sl0 under real systemd. Prints `PASS name`, `FAIL name: why`
# and `INFO ...` lines to the console and to /root/vm-results.txt, then `VM-TEST-DONE`.
# Then sitelinkd against kernel WireGuard (kernel-wg-test.sh, sourced). Only 198.18.0.0/15
# (and, inside the kernel WireGuard test's namespaces, fd00::/8) addresses are used.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export SYSTEMD_PAGER='' SYSTEMD_COLORS=0 LC_ALL=C.UTF-8

RESULTS=/root/vm-results.txt
UNIT=sitelinkd@sl0.service
CONF=/etc/sitelink/sl0.toml
KEY=/etc/sitelink/sl0.key
OUT=/tmp/vm-test-out
: > "$RESULTS"
fails=0

say() { echo "$*"; echo "$*" >> "$RESULTS"; }
info() { say "INFO $*"; }
pass() { say "PASS $1"; }
fail() { say "FAIL $1: $2"; fails=$((fails + 1)); }
# One line from a command's output for a FAIL message.
oneline() { tr '\n' ' ' | tr -s ' ' | cut -c1-400; }
# check NAME CMD...: PASS if CMD succeeds, else FAIL with its output.
check() {
    local name=$1; shift
    if "$@" > "$OUT" 2>&1; then pass "$name"; else fail "$name" "\`$*\` failed: $(oneline < "$OUT")"; fi
}
# wait_for SECONDS CMD...: retries CMD every 0.5 s until it succeeds.
wait_for() {
    local limit=$1; shift
    local end=$(( $(date +%s) + limit ))
    until "$@" > /dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
}
prop() { systemctl show -p "$1" --value "$UNIT"; }
main_pid() { prop MainPID; }
is_active() { [ "$(systemctl is-active "$UNIT")" = active ]; }
route_via_sl0() { ip route show "$1" | grep -q 'dev sl0'; }
journal_has() { journalctl -u "$UNIT" --no-pager -o cat | grep -q -- "$1"; }
# systemd time span ("10s", "1min 30s", "500ms") to whole seconds.
span_secs() {
    local total=0 part
    for part in $1; do
        case "$part" in
            *ms) ;;
            *min) total=$((total + ${part%min} * 60)) ;;
            *s) total=$((total + ${part%s})) ;;
            *h) total=$((total + ${part%h} * 3600)) ;;
        esac
    done
    echo "$total"
}

read -r up _ < /proc/uptime
info "boot-seconds ${up%.*} (kernel start to test start)"
info "kernel $(uname -r); $(systemctl --version | head -n 1); package $(dpkg-query -W -f '${Package} ${Version}' sitelink 2>/dev/null || echo 'not a package (stand-in)')"
info "system state: $(systemctl is-system-running 2>&1); sitelink.target: $(systemctl is-enabled sitelink.target 2>&1) $(systemctl is-active sitelink.target 2>&1)"

# --- what the package put in place --------------------------------------------------------
check unit-file-installed systemctl cat sitelinkd@.service sitelink.target
check user-sitelink-exists id sitelink
check run-dirs-exist test -d /run/sitelink -a -d /run/wireguard
info "/run/sitelink: $(stat -c '%A %U:%G' /run/sitelink 2>&1); /run/wireguard: $(stat -c '%A %U:%G' /run/wireguard 2>&1); /etc/sitelink: $(stat -c '%A %U:%G' /etc/sitelink 2>&1)"
# --man=no: the minimal root has no man-db; the pages themselves are checked below.
if systemd-analyze verify --man=no "$UNIT" > "$OUT" 2>&1; then
    pass unit-verifies
    [ -s "$OUT" ] && info "systemd-analyze verify said: $(oneline < "$OUT")"
else
    fail unit-verifies "$(oneline < "$OUT")"
fi
if dpkg-query -W sitelink > /dev/null 2>&1; then
    for page in /usr/share/man/man8/sitelinkd.8.gz /usr/share/man/man1/sitelinkctl.1.gz; do
        if [ -s "$page" ]; then pass "man-page $(basename "$page")"; else fail man-page "$page missing (the unit's Documentation= names it)"; fi
    done
fi

# --- config -------------------------------------------------------------------------------
[ -d /etc/sitelink ] || install -d -m 750 -o root -g sitelink /etc/sitelink
(umask 077; sitelinkctl genkey > "$KEY")
PEER_B=$(sitelinkctl genkey | sitelinkctl pubkey)
PEER_C=$(sitelinkctl genkey | sitelinkctl pubkey)
write_config() {  # write_config [extra TOML appended]
    cat > "$CONF" <<EOF
# sl0: written by packaging/vm/vm-test.sh
[interface]
private-key-file = "$KEY"
listen-port = 51820
address = ["198.18.100.1/24"]

[[peer]]
name = "site-b"
public-key = "$PEER_B"
allowed-ips = ["198.19.2.0/24"]
EOF
    [ $# -eq 0 ] || printf '%s\n' "$@" >> "$CONF"
    chown root:sitelink "$CONF"
    chmod 0640 "$CONF"
}
write_config
info "key $(stat -c '%a %U:%G' "$KEY"); config $(stat -c '%a %U:%G' "$CONF")"

# --- a broken config fails the start, with the reason in the journal -----------------------
(umask 077; sitelinkctl genkey > /etc/sitelink/sl9.key)
printf '[interface]\nprivate-key-file = "/etc/sitelink/sl9.key"\naddress = ["198.18.109.1/24"]\nlisten-prot = 51829\n' \
    > /etc/sitelink/sl9.toml
chown root:sitelink /etc/sitelink/sl9.toml; chmod 0640 /etc/sitelink/sl9.toml
if timeout 60 systemctl start sitelinkd@sl9.service > "$OUT" 2>&1; then
    fail bad-config-start-fails "systemctl start succeeded with an unknown key in the config"
else
    pass bad-config-start-fails
fi
line=$(journalctl -u sitelinkd@sl9.service --no-pager -o cat | grep -m1 'sl9.toml:' || true)
if [ -n "$line" ]; then pass bad-config-error-in-journal; info "bad config: $line"
else fail bad-config-error-in-journal "$(journalctl -u sitelinkd@sl9.service --no-pager -o cat -n 8 | oneline)"; fi
if ip link show sl9 > /dev/null 2>&1; then fail bad-config-no-interface "sl9 exists"; else pass bad-config-no-interface; fi
systemctl stop sitelinkd@sl9.service > /dev/null 2>&1
systemctl reset-failed sitelinkd@sl9.service > /dev/null 2>&1
rm -f /etc/sitelink/sl9.toml /etc/sitelink/sl9.key

# --- start --------------------------------------------------------------------------------
ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(ms)
if timeout 120 systemctl start "$UNIT" > "$OUT" 2>&1; then
    pass "start (systemctl start took $(( $(ms) - t0 )) ms)"
else
    fail start "$(oneline < "$OUT"); journal: $(journalctl -u "$UNIT" --no-pager -o cat -n 15 | oneline)"
fi
if wait_for 30 is_active; then pass is-active; else fail is-active "systemctl is-active says $(systemctl is-active "$UNIT")"; fi
systemctl status "$UNIT" --no-pager -n 0 > "$OUT" 2>&1
if grep -q 'Active: active (running)' "$OUT"; then pass status-active-running
else fail status-active-running "$(oneline < "$OUT")"; fi
info "status: $(grep -E 'Active:|Status:|Main PID:' "$OUT" | sed 's/^ *//' | tr '\n' ';')"

if ip link show sl0 > "$OUT" 2>&1; then
    pass interface-exists
    if grep -q 'mtu 1420' "$OUT"; then pass interface-mtu-1420; else fail interface-mtu-1420 "$(oneline < "$OUT")"; fi
    if grep -qE '<([^>]*,)?UP[,>]' "$OUT"; then pass interface-up; else fail interface-up "$(oneline < "$OUT")"; fi
else
    fail interface-exists "$(oneline < "$OUT")"
fi
if ip -4 addr show sl0 2>&1 | grep -q 'inet 198.18.100.1/24'; then pass interface-address
else fail interface-address "$(ip addr show sl0 2>&1 | oneline)"; fi
if route_via_sl0 198.19.2.0/24; then pass route-peer-b; else fail route-peer-b "$(ip route | oneline)"; fi

if sitelinkctl --interface sl0 show > "$OUT" 2>&1 && grep -q 'site-b' "$OUT"; then pass sitelinkctl-show
else fail sitelinkctl-show "$(oneline < "$OUT")"; fi

pid=$(main_pid)
user=$(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ')
if [ "$user" = sitelink ]; then pass runs-as-sitelink; else fail runs-as-sitelink "MainPID $pid runs as '$user'"; fi
info "capabilities of $pid: $(grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/"$pid"/status 2>&1 | tr '\t\n' ' ;')"
if wait_for 10 journal_has 'sitelinkd running'; then pass journal-running-line
else fail journal-running-line "$(journalctl -u "$UNIT" --no-pager -o cat -n 10 | oneline)"; fi
status_text=$(prop StatusText)
if [[ "$status_text" =~ 0/1\ peers\ up ]]; then pass "status-text ($status_text)"
else fail status-text "StatusText='$status_text'"; fi
if [ -S /run/sitelink/sl0.sock ] && [ -S /run/wireguard/sl0.sock ]; then pass sockets-exist
else fail sockets-exist "$(ls -l /run/sitelink /run/wireguard 2>&1 | oneline)"; fi

# --- reload -------------------------------------------------------------------------------
peer_c=$(printf '\n[[peer]]\nname = "site-c"\npublic-key = "%s"\nallowed-ips = ["198.19.3.0/24"]' "$PEER_C")
write_config "$peer_c"
if timeout 60 systemctl reload "$UNIT" > "$OUT" 2>&1; then pass reload
else fail reload "$(oneline < "$OUT"); journal: $(journalctl -u "$UNIT" --no-pager -o cat -n 8 | oneline)"; fi
if route_via_sl0 198.19.3.0/24; then pass reload-route-peer-c; else fail reload-route-peer-c "$(ip route | oneline)"; fi
if route_via_sl0 198.19.2.0/24; then pass reload-keeps-route-peer-b; else fail reload-keeps-route-peer-b "$(ip route | oneline)"; fi
if [ "$(main_pid)" = "$pid" ]; then pass reload-same-pid; else fail reload-same-pid "MainPID $pid -> $(main_pid)"; fi
if is_active; then pass reload-still-active; else fail reload-still-active "$(systemctl is-active "$UNIT")"; fi
summary=$(journalctl -u "$UNIT" --no-pager -o cat | grep -m1 'peers added: site-c' || true)
if [ -n "$summary" ]; then pass reload-summary-in-journal; info "reload summary: $summary"
else fail reload-summary-in-journal "$(journalctl -u "$UNIT" --no-pager -o cat -n 8 | oneline)"; fi
if wait_for 15 sh -c "systemctl show -p StatusText --value $UNIT | grep -q '0/2 peers up'"; then pass status-text-after-reload
else fail status-text-after-reload "StatusText='$(prop StatusText)'"; fi

# A refused reload: site-d claims site-b's prefix 198.19.2.0/24. (Nested prefixes such as
# 198.19.2.128/25 are legal since sitelinkd routes by longest match; the same prefix on two
# peers is still an error.) systemctl reload must fail, nothing changes.
bad_peer=$(printf '\n[[peer]]\nname = "site-d"\npublic-key = "%s"\nallowed-ips = ["198.19.2.0/24"]' \
    "$(sitelinkctl genkey | sitelinkctl pubkey)")
write_config "$peer_c" "$bad_peer"
if timeout 60 systemctl reload "$UNIT" > "$OUT" 2>&1; then
    fail reload-refused "systemctl reload succeeded with 198.19.2.0/24 on two peers"
else
    pass reload-refused
    info "refused reload, journal: $(journalctl -u "$UNIT" --no-pager -o cat -n 4 | oneline)"
fi
sitelinkctl --interface sl0 show > "$OUT" 2>&1
if is_active && [ "$(main_pid)" = "$pid" ] && ! grep -q site-d "$OUT" && grep -q site-b "$OUT" &&
    route_via_sl0 198.19.2.0/24 && route_via_sl0 198.19.3.0/24; then
    pass reload-refused-changes-nothing
else
    fail reload-refused-changes-nothing "active=$(systemctl is-active "$UNIT") pid $pid->$(main_pid) peers: $(grep -oE 'site-[a-z]' "$OUT" | oneline) routes: $(ip route | oneline)"
fi
write_config "$peer_c"

# --- watchdog -----------------------------------------------------------------------------
wd=$(span_secs "$(prop WatchdogUSec)")
restart_sec=$(span_secs "$(prop RestartUSec)")
info "WatchdogSec=${wd}s RestartSec=${restart_sec}s Restart=$(prop Restart)"
if [ "$wd" -gt 0 ]; then pass watchdog-configured; else fail watchdog-configured "WatchdogUSec=$(prop WatchdogUSec)"; wd=10; fi
old_pid=$(main_pid)
old_restarts=$(prop NRestarts)
t0=$(date +%s)
kill -STOP "$old_pid"
info "SIGSTOP to MainPID $old_pid at $(date +%T) (NRestarts=$old_restarts)"
# Up to 3 x WatchdogSec for the timeout, plus RestartSec and a slow start under emulation.
limit=$(( 3 * wd + restart_sec + 60 ))
restarted() {
    local p; p=$(main_pid)
    [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$old_pid" ] && is_active
}
if wait_for "$limit" restarted; then
    pass "watchdog-restart (new MainPID $(main_pid) after $(( $(date +%s) - t0 ))s)"
else
    fail watchdog-restart "after ${limit}s: MainPID $(main_pid), state $(systemctl is-active "$UNIT"), journal: $(journalctl -u "$UNIT" --no-pager -o cat -n 8 | oneline)"
    kill -CONT "$old_pid" 2>/dev/null
fi
new_restarts=$(prop NRestarts)
if [ "${new_restarts:-0}" -gt "${old_restarts:-0}" ]; then pass "watchdog-nrestarts ($old_restarts -> $new_restarts)"
else fail watchdog-nrestarts "NRestarts $old_restarts -> $new_restarts"; fi
if ! kill -0 "$old_pid" 2>/dev/null; then pass watchdog-old-process-gone; else fail watchdog-old-process-gone "PID $old_pid still exists"; fi
if journal_has 'Watchdog timeout'; then
    pass watchdog-timeout-in-journal
    info "journal: $(journalctl -u "$UNIT" --no-pager -o cat | grep -E 'Watchdog timeout|Killing process|Main process exited|Failed with result|Scheduled restart' | tail -n 5 | tr '\n' '|')"
else
    fail watchdog-timeout-in-journal "$(journalctl -u "$UNIT" --no-pager -o cat -n 10 | oneline)"
fi
if wait_for 15 ip link show sl0; then pass watchdog-interface-back; else fail watchdog-interface-back "no sl0"; fi
if wait_for 15 route_via_sl0 198.19.2.0/24 && route_via_sl0 198.19.3.0/24; then pass watchdog-routes-back
else fail watchdog-routes-back "$(ip route | oneline)"; fi
if sitelinkctl --interface sl0 show > "$OUT" 2>&1 && grep -q site-c "$OUT"; then pass watchdog-control-socket-back
else fail watchdog-control-socket-back "$(oneline < "$OUT")"; fi
# The restarted daemon must keep pinging: still the same process a watchdog period later.
pid=$(main_pid)
sleep $(( wd + 2 ))
if [ "$(main_pid)" = "$pid" ] && is_active; then pass watchdog-pings-after-restart
else fail watchdog-pings-after-restart "MainPID $pid -> $(main_pid), $(systemctl is-active "$UNIT")"; fi

# --- sitelink.target, enable, stop --------------------------------------------------------
check enable systemctl enable "$UNIT"
if [ -L /etc/systemd/system/multi-user.target.wants/$UNIT ] && [ -L /etc/systemd/system/sitelink.target.wants/$UNIT ]; then
    pass enable-links
else
    fail enable-links "$(find /etc/systemd/system -name "sitelinkd@*" 2>&1 | oneline)"
fi
pid=$(main_pid)
check target-restart timeout 90 systemctl restart sitelink.target
if wait_for 30 is_active && [ "$(main_pid)" != "$pid" ]; then pass target-restart-restarts-instance
else fail target-restart-restarts-instance "MainPID $pid -> $(main_pid), $(systemctl is-active "$UNIT")"; fi
check target-stop timeout 60 systemctl stop sitelink.target
# `systemctl stop sitelink.target` can return while the instance (stopped through PartOf=) is
# still deactivating: seen once in 5 runs, the target's stop job done 150 ms before the
# instance's. Wait for it.
wait_for 30 sh -c "[ \"\$(systemctl is-active $UNIT)\" = inactive ]"
state=$(systemctl is-active "$UNIT")
result=$(prop Result)
if [ "$state" = inactive ] && [ "$result" = success ]; then pass stop-clean
else fail stop-clean "state $state, Result=$result"; fi
if ! ip link show sl0 > /dev/null 2>&1; then pass stop-interface-gone; else fail stop-interface-gone "sl0 still exists"; fi
if ! ip route | grep -q 'dev sl0'; then pass stop-routes-gone; else fail stop-routes-gone "$(ip route | oneline)"; fi
if [ ! -e /run/sitelink/sl0.sock ]; then pass stop-socket-removed; else fail stop-socket-removed "/run/sitelink/sl0.sock left behind"; fi

# --- interop with kernel WireGuard (packaging/vm/kernel-wg-test.sh) -------------------------
# A second instance, sitelinkd@slk0, in a network namespace, against the kernel's wireguard
# module in another; sitelinkd@sl0 above is already stopped.
. /root/kernel-wg-test.sh
kernel_wg_test

# --- for the record -----------------------------------------------------------------------
systemd-analyze security --no-pager "$UNIT" > /root/security.txt 2>&1
info "security (live, systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')): $(grep -i 'overall exposure' /root/security.txt | sed 's/^[^A-Za-z]*//')"
journalctl -u "$UNIT" --no-pager -o short-monotonic > /root/sitelinkd-journal.txt 2>&1

say "VM-TEST-DONE fails=$fails"
sync
exit 0
