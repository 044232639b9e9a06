#!/usr/bin/env bash
# Static checks of the systemd files in packaging/ (no systemd as PID 1 needed, nothing is
# started):
#   - `systemd-analyze verify` of sitelinkd@.service and sitelink.target: must print nothing;
#   - `systemd-analyze security --offline=true`: the exposure score must be <= MAX_SCORE;
#   - sysusers.d and tmpfiles.d files applied to a scratch root: user, group and directory
#     modes as intended.
# verify refuses a unit whose ExecStart= binary is missing, and this machine has no
# /usr/sbin/sitelinkd, so everything runs against a scratch root (--root=) holding the
# host's stock units, our units and stand-ins for the two binaries.
# Usage: bash packaging/check-units.sh     (exit status 0 = all checks passed)
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_SCORE=${MAX_SCORE:-2.0}
units=packaging/systemd

if ! command -v systemd-analyze >/dev/null; then
    echo "installing systemd (for systemd-analyze)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd/system" "$root/usr/sbin" "$root/usr/bin" "$root/etc"
# The stock units (sysinit.target, modprobe@.service, ...) our units depend on.
cp -a /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
cp "$units/sitelinkd@.service" "$units/sitelink.target" "$root/usr/lib/systemd/system/"
for bin in usr/sbin/sitelinkd usr/bin/sitelinkctl; do
    printf '#!/bin/sh\nexit 0\n' >"$root/$bin"
    chmod 755 "$root/$bin"
done

failed=0 passed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

# 1. verify: any output (unknown keys, bad values, missing binaries) counts as failure.
out=$(systemd-analyze verify --man=no --root="$root" sitelinkd@sl0.service sitelink.target 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
    pass "systemd-analyze verify sitelinkd@sl0.service sitelink.target"
else
    fail "systemd-analyze verify (exit $rc):"
    printf '%s\n' "$out" | sed 's/^/    /'
fi

# 2. security. systemd 252 takes --threshold= in tenths (20 = 2.0), not as "2.0".
threshold=$(awk -v s="$MAX_SCORE" 'BEGIN { printf "%d", s * 10 + 0.5 }')
sec=$(systemd-analyze security --offline=true --threshold="$threshold" --root="$root" \
      --no-pager sitelinkd@sl0.service 2>&1) && rc=0 || rc=$?
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' | tail -n 1)
printf '%s\n' "$sec" | grep -E '^✗' | sed 's/^/    /' || true
if [ "$rc" -eq 0 ] && [ -n "$score" ]; then
    pass "systemd-analyze security sitelinkd@sl0.service: exposure $score (limit $MAX_SCORE)"
else
    fail "systemd-analyze security sitelinkd@sl0.service: exposure ${score:-?} (limit $MAX_SCORE, exit $rc)"
    printf '%s\n' "$sec" | grep -vE '^[✓✗]' | sed 's/^/    /'
fi

# 3. sysusers.d + tmpfiles.d in the scratch root: the sitelink system user and the socket
#    directories with the intended owners and modes.
: >"$root/etc/passwd"; : >"$root/etc/group"
mkdir -p "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp packaging/sysusers.d/sitelink.conf "$root/usr/lib/sysusers.d/"
cp packaging/tmpfiles.d/sitelink.conf "$root/usr/lib/tmpfiles.d/"
# Called as the package's postinst calls them (a basename, looked up under --root).
if out=$(systemd-sysusers --root="$root" sitelink.conf 2>&1 &&
          systemd-tmpfiles --root="$root" --create sitelink.conf 2>&1); then
    entry=$(grep '^sitelink:' "$root/etc/passwd" || true)
    uid=$(printf '%s' "$entry" | cut -d: -f3)
    if [ -n "$entry" ] && [ "$uid" -lt 1000 ] \
       && [ "$(printf '%s' "$entry" | cut -d: -f6,7)" = "/nonexistent:/usr/sbin/nologin" ] \
       && grep -q '^sitelink:' "$root/etc/group"; then
        pass "sysusers: $entry"
    else
        fail "sysusers: unexpected passwd entry '$entry'"
    fi
    # stat -c %U/%G would look names up in the host's passwd: compare numbers.
    gid=$(grep '^sitelink:' "$root/etc/group" | cut -d: -f3)
    want_sl="750 $uid $gid"; want_wg="775 0 $gid"
    got_sl=$(stat -c '%a %u %g' "$root/run/sitelink"); got_wg=$(stat -c '%a %u %g' "$root/run/wireguard")
    if [ "$got_sl" = "$want_sl" ] && [ "$got_wg" = "$want_wg" ]; then
        pass "tmpfiles: /run/sitelink 0750 sitelink:sitelink, /run/wireguard 0775 root:sitelink"
    else
        fail "tmpfiles: /run/sitelink '$got_sl' (want '$want_sl'), /run/wireguard '$got_wg' (want '$want_wg')"
    fi
else
    fail "systemd-sysusers/systemd-tmpfiles refused the config files"
    printf '%s\n' "$out" | sed 's/^/    /'
fi

echo "check-units: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
