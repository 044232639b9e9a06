#!/usr/bin/env bash
# The sitelink demo: two sites joined by sitelinkd, in network namespaces.
#
#   host-a (198.19.1.10) — gw-a ═══ sitelink tunnel ═══ gw-b — host-b (198.19.2.10)
#          LAN A 198.19.1.0/24    WAN 198.18.0.0/30       LAN B 198.19.2.0/24
#
# Builds sitelink, starts sitelinkd on both gateways from config files, shows an
# unmodified application on LAN A (an HTTP client) fetching a file from LAN B through the
# tunnel, prints `sitelinkctl show`, then removes everything. Run as root.
# Only addresses inside the namespaces it creates are used.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo/two-sites.sh: run as root (it creates network namespaces and TUN devices)" >&2
    exit 1
fi
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v python3 >/dev/null || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    echo "== installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "== building sitelink (cargo build --release)"
cargo build --release --locked -q -p sitelinkd -p sitelinkctl
BIN=$PWD/target/release

id=$$
HA=demo-host-a-$id GA=demo-gw-a-$id GB=demo-gw-b-$id HB=demo-host-b-$id
IFA=sla$id IFB=slb$id
WORK=$(mktemp -d /tmp/sitelink-demo.XXXXXX)
export SITELINK_RUN_DIR=$WORK/run
pids=()

cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    for ns in "$HA" "$GA" "$GB" "$HB"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== creating two sites in network namespaces"
for ns in "$HA" "$GA" "$GB" "$HB"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add lan0 netns "$HA" type veth peer name lan0 netns "$GA"
ip link add wan0 netns "$GA" type veth peer name wan0 netns "$GB"
ip link add lan0 netns "$GB" type veth peer name lan0 netns "$HB"
ip -n "$HA" addr add 198.19.1.10/24 dev lan0; ip -n "$GA" addr add 198.19.1.1/24 dev lan0
ip -n "$GA" addr add 198.18.0.1/30 dev wan0;  ip -n "$GB" addr add 198.18.0.2/30 dev wan0
ip -n "$GB" addr add 198.19.2.1/24 dev lan0;  ip -n "$HB" addr add 198.19.2.10/24 dev lan0
for ns in "$HA" "$GA" "$GB" "$HB"; do
    for dev in $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | grep -v '^lo$'); do
        ip -n "$ns" link set "${dev%@*}" up
    done
done
ip -n "$HA" route add default via 198.19.1.1
ip -n "$HB" route add default via 198.19.2.1
ip netns exec "$GA" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$GB" sysctl -qw net.ipv4.ip_forward=1

echo "== generating keys (sitelinkctl genkey | sitelinkctl pubkey)"
umask 077
"$BIN/sitelinkctl" genkey > "$WORK/gw-a.key"
"$BIN/sitelinkctl" genkey > "$WORK/gw-b.key"
A_PUB=$("$BIN/sitelinkctl" pubkey < "$WORK/gw-a.key")
B_PUB=$("$BIN/sitelinkctl" pubkey < "$WORK/gw-b.key")

cat > "$WORK/$IFA.toml" <<CONF
# Site A's gateway
[interface]
private-key-file = "$WORK/gw-a.key"
listen-port = 51820
address = ["198.18.100.1/24"]

[[peer]]
name = "site-b"
public-key = "$B_PUB"
endpoint = "198.18.0.2:51820"
allowed-ips = ["198.18.100.2/32", "198.19.2.0/24"]
persistent-keepalive = 25
CONF
cat > "$WORK/$IFB.toml" <<CONF
# Site B's gateway
[interface]
private-key-file = "$WORK/gw-b.key"
listen-port = 51820
address = ["198.18.100.2/24"]

[[peer]]
name = "site-a"
public-key = "$A_PUB"
endpoint = "198.18.0.1:51820"
allowed-ips = ["198.18.100.1/32", "198.19.1.0/24"]
CONF
echo "--- $WORK/$IFA.toml"; cat "$WORK/$IFA.toml"

echo "== starting sitelinkd on both gateways"
ip netns exec "$GA" "$BIN/sitelinkd" --config "$WORK/$IFA.toml" 2> "$WORK/gw-a.log" & pids+=($!)
ip netns exec "$GB" "$BIN/sitelinkd" --config "$WORK/$IFB.toml" 2> "$WORK/gw-b.log" & pids+=($!)
for i in $(seq 100); do
    [ -S "$SITELINK_RUN_DIR/$IFA.sock" ] && [ -S "$SITELINK_RUN_DIR/$IFB.sock" ] && break
    sleep 0.1
done
if ! [ -S "$SITELINK_RUN_DIR/$IFA.sock" ] || ! [ -S "$SITELINK_RUN_DIR/$IFB.sock" ]; then
    echo "sitelinkd did not start:"; cat "$WORK"/gw-*.log; exit 1
fi

echo "== host-a pings host-b through the tunnel"
ip netns exec "$HA" ping -c 3 -i 0.3 -W 2 198.19.2.10

echo "== host-b serves a file over HTTP; host-a downloads it (unmodified applications)"
mkdir -p "$WORK/www"
head -c 4194304 /dev/urandom > "$WORK/www/payload.bin"
( cd "$WORK/www" && exec ip netns exec "$HB" python3 -m http.server 8080 --bind 198.19.2.10 ) >/dev/null 2>&1 & pids+=($!)
for i in $(seq 50); do
    ip netns exec "$HA" python3 - <<'PY' 2>/dev/null && break
import socket; socket.create_connection(("198.19.2.10", 8080), timeout=1).close()
PY
    sleep 0.1
done
ip netns exec "$HA" python3 - "$WORK/www/payload.bin" <<'PY'
import hashlib, sys, time, urllib.request
t = time.time()
body = urllib.request.urlopen("http://198.19.2.10:8080/payload.bin", timeout=30).read()
dt = time.time() - t
want = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
got = hashlib.sha256(body).hexdigest()
print(f"downloaded {len(body)} bytes in {dt:.2f} s, sha256 {got[:16]}… {'matches' if got == want else 'DIFFERS'}")
sys.exit(0 if got == want else 1)
PY

echo "== sitelinkctl show (gateway A)"
"$BIN/sitelinkctl" --interface "$IFA" show
echo
echo "== sitelinkctl show --json (gateway B)"
"$BIN/sitelinkctl" --interface "$IFB" show --json

echo
echo "== demo complete: cleaning up"
