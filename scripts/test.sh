#!/usr/bin/env bash
# Installs what the tests need (Debian packages) and runs every test.
# Run as root on Debian bookworm: the end-to-end tests build network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (the tests create network namespaces and TUN devices)" >&2
    exit 1
fi

# iproute2: ip netns/veth; wireguard-tools + wireguard-go: the interop peer;
# iperf3: benchmarks; iputils-ping: reachability checks; util-linux: setpriv;
# systemd: systemd-analyze for the unit checks; python3: a slow socket client run as nobody;
# libfaketime: a gateway whose clock is an hour behind (tests/faults.rs); prometheus: promtool
# lints the metrics, and a real server scrapes them (tests/visibility.rs); nftables: LAN hosts
# that filter ICMP (the MSS clamping test), and a router that cuts one tunnel (tests/
# dynamic_routing.rs); bird2: BGP and BFD over the tunnels, keepalived: VRRP for the HA pair
# (tests/dynamic_routing.rs, started and stopped by the tests in their namespaces; the
# packages' own services are not used). (packaging/test-deb.sh installs debootstrap, lintian
# and cargo-deb itself.)
packages=(iproute2 wireguard-tools wireguard-go iperf3 iputils-ping util-linux systemd python3 libfaketime
    prometheus nftables bird2 keepalived)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -c /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
# cargo-fuzz, for the fuzz targets' corpus replay and short runs (scripts/fuzz.sh --ci).
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing: cargo-fuzz"
    cargo install --quiet --locked cargo-fuzz
fi

# Installed above, so the metrics lint must not skip itself.
export SITELINK_REQUIRE_PROMTOOL=1

# The namespace tests run the binaries, so build them first.
cargo build --workspace --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# Engine tests under a virtual clock. A separate build: the mock clock must never be
# compiled into sitelinkd (its timers would stop).
cargo test --locked -p sitelink-engine --features mock-instant --lib 2>&1 | tee -a "$log"

# Packaging: the systemd unit (systemd-analyze verify, security score <= 2.0), and the Debian
# package built with cargo-deb, installed, upgraded and purged in a debootstrapped bookworm
# root, with lintian. (The slower boot test under qemu is separate: packaging/vm/.)
bash packaging/check-units.sh 2>&1 | tee -a "$log"
bash packaging/test-deb.sh 2>&1 | tee -a "$log"

# Fuzz targets (fuzz/, its own workspace): every committed corpus input replayed, then each
# target fuzzed for 10 s. Long runs: `bash scripts/fuzz.sh --long TARGET` (see the README).
bash scripts/fuzz.sh --ci 2>&1 | tee -a "$log"

# One closing line over every test binary above.
awk '/^test result:|^[a-z-]+: [0-9]+ passed, [0-9]+ failed/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log"
