#!/usr/bin/env bash
# Tests the Debian package in a clean Debian bookworm (minbase) chroot, as root:
#   install with apt (dependencies resolve), files and modes, the sitelink system user,
#   socket directories, conffiles, sitelink.target enabled, the unit verified by the
#   chroot's own systemd-analyze, the key tools working; an upgrade to a higher version;
#   remove (conffiles stay), purge (nothing left but what Debian Policy keeps), purge with
#   administrator files in /etc/sitelink (they and the directory stay); lintian on the .deb.
# Prints one PASS/FAIL line per check, the time taken, and exits non-zero on any failure.
#
# Usage: bash packaging/test-deb.sh [PATH.deb]   (default: build it with build-deb.sh)
# The bookworm root is made once with debootstrap (from the mirror apt uses here) and
# cached in target/bookworm-root (delete it to start over); each run works on a copy.
# Downloaded .debs are cached in target/bookworm-apt-cache. Runs may overlap (each has its
# own copy and package output).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb.sh: run as root (debootstrap, chroot, mounts)" >&2
    exit 1
fi

base=$PWD/target/bookworm-root
# Per run, so that two runs (or a run and a build) never share a tree.
work=$PWD/target/deb-test-root.$$
own_debs=$PWD/target/debian/test-deb.$$
apt_cache=$PWD/target/bookworm-apt-cache
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

failed=0 passed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
info() { echo "      $*"; }
# check DESCRIPTION COMMAND...: PASS if the command succeeds; its output is shown on failure.
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$what"; else fail "$what"; printf '%s\n' "$out" | sed 's/^/      /'; fi
}

# expect DESCRIPTION WANT COMMAND...: PASS if the command's output is exactly WANT.
expect() {
    local what=$1 want=$2 got
    shift 2
    got=$("$@" 2>&1) || true
    if [ "$got" = "$want" ]; then pass "$what"; else fail "$what"; info "got '$got', expected '$want'"; fi
}

host_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing on the host: ${missing[*]}"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
host_install debootstrap lintian debian-archive-keyring

# Unmounts everything under $1 (deepest first) and only then deletes it: a bind mount that
# survived would let rm -rf reach the host.
safe_remove() {
    local dir=$1 m
    [ -e "$dir" ] || return 0
    for m in $(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    if awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        echo "test-deb.sh: mounts remain under $dir; not deleting it" >&2
        return 1
    fi
    rm -rf "$dir"
}

upgrade_dir=
logs=$(mktemp -d /tmp/sitelink-test-deb.XXXXXX)
cleanup() {
    if [ -d "$work" ]; then
        # Keep what apt downloaded for the next run.
        cp -n "$work"/var/cache/apt/archives/*.deb "$apt_cache/" 2>/dev/null || true
        safe_remove "$work" || true
    fi
    rm -rf "${upgrade_dir:-}" "$own_debs" "$logs"
}
trap cleanup EXIT

# --- The packages under test ---------------------------------------------------------------
if [ $# -ge 1 ]; then
    deb=$(realpath "$1")
else
    echo "building the package (packaging/build-deb.sh)"
    deb=$(realpath "$(bash packaging/build-deb.sh --output "$own_debs" 2>"$logs/build-deb.log" | tail -n 1)") || {
        tail -n 30 "$logs/build-deb.log"; echo "FAIL: build-deb.sh"; exit 1; }
fi
[ -f "$deb" ] || { echo "FAIL: no package at $deb"; exit 1; }
version=$(dpkg-deb -f "$deb" Version)
# The upgrade: the same package repacked with a higher version (+1 sorts after the original).
upgrade_dir=$(mktemp -d)
upgrade_deb=$upgrade_dir/sitelink_${version}+1_$(dpkg-deb -f "$deb" Architecture).deb
dpkg-deb -R "$deb" "$upgrade_dir/tree"
sed -i "s/^Version: .*/Version: ${version}+1/" "$upgrade_dir/tree/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz -b "$upgrade_dir/tree" "$upgrade_deb" >/dev/null
rm -rf "$upgrade_dir/tree"
echo "package: $deb ($version); upgrade: ${version}+1"

# --- The bookworm root (cached) --------------------------------------------------------------
# The mirror apt uses here (deb822 .sources or one-line .list), unless MIRROR is set.
find_mirror() {
    {
        awk 'BEGIN { RS = ""; FS = "\n" }
             { u = ""; s = ""
               for (i = 1; i <= NF; i++) {
                   if ($i ~ /^URIs:/) { u = $i; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
                   if ($i ~ /^Suites:/) s = $i }
               if (u != "" && s ~ /[ \t]bookworm([ \t]|$)/) print u }' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm([[:space:]].*)?$/\2/;t;d'
    } | head -n 1 || true
}

bootstrap_seconds=0
if [ ! -x "$base/usr/bin/apt-get" ]; then
    mirror=${MIRROR:-$(find_mirror)}
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "debootstrap --variant=minbase bookworm from $mirror into $base (once; cached)"
    proxy=$(apt-config shell p Acquire::http::Proxy | sed -n "s/^p='\(.*\)'$/\1/p")
    [ -n "$proxy" ] && export http_proxy=$proxy
    t0=$(date +%s)
    if ! debootstrap --variant=minbase bookworm "$base.$$" "$mirror" >/tmp/sitelink-debootstrap.log 2>&1; then
        tail -n 20 /tmp/sitelink-debootstrap.log
        safe_remove "$base.$$" || true
        echo "FAIL: debootstrap (log: /tmp/sitelink-debootstrap.log)"
        exit 1
    fi
    if [ -n "$proxy" ]; then
        echo "Acquire::http::Proxy \"$proxy\";" >"$base.$$/etc/apt/apt.conf.d/01proxy"
    fi
    # Another run may have finished first: keep its root, drop ours.
    if [ -x "$base/usr/bin/apt-get" ]; then safe_remove "$base.$$"; else safe_remove "$base" && mv "$base.$$" "$base"; fi
    bootstrap_seconds=$(($(date +%s) - t0))
    echo "debootstrap took ${bootstrap_seconds}s"
else
    echo "reusing $base"
fi

# --- A fresh copy to work in -------------------------------------------------------------------
safe_remove "$work"
cp -a "$base" "$work"
mount -t proc proc "$work/proc"
# A private /dev (tmpfs with the few nodes apt and dpkg use) rather than a bind of the host's.
mount -t tmpfs -o mode=755 devtmp "$work/dev"
for node in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9" "tty c 5 0"; do
    read -r name type major minor <<<"$node"
    mknod -m 666 "$work/dev/$name" "$type" "$major" "$minor"
done
mkdir -p "$work/dev/net" "$work/dev/pts" "$work/dev/shm" "$apt_cache"
# .debs downloaded by earlier runs (copied, not bind-mounted: runs may overlap).
cp -n "$apt_cache"/*.deb "$work/var/cache/apt/archives/" 2>/dev/null || true
cp /etc/resolv.conf "$work/etc/resolv.conf"
# No service starts inside the chroot (there is no systemd running there anyway).
printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
chmod 755 "$work/usr/sbin/policy-rc.d"
cp "$deb" "$upgrade_deb" "$work/tmp/"
deb_in=/tmp/$(basename "$deb")
upgrade_in=/tmp/$(basename "$upgrade_deb")

in_root() { chroot "$work" "$@"; }
apt_in_root() { in_root apt-get -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "$@"; }

echo "apt-get update in the chroot"
apt_in_root update >"$logs/apt.log" 2>&1 || { tail -n 20 "$logs/apt.log"; echo "FAIL: apt-get update"; exit 1; }

# --- Install ---------------------------------------------------------------------------------
t0=$(date +%s)
if apt_in_root install "$deb_in" >"$logs/apt.log" 2>&1; then
    pass "apt-get install ./$(basename "$deb") ($(($(date +%s) - t0))s, dependencies: $(dpkg-deb -f "$deb" Depends))"
else
    fail "apt-get install ./$(basename "$deb")"; tail -n 30 "$logs/apt.log" | sed 's/^/      /'
    exit 1
fi
expect "dpkg status is installed, version $version" "install ok installed $version" \
    in_root dpkg-query -W -f='${Status} ${Version}' sitelink

# mode owner group of a path inside the chroot, names resolved by the chroot's own passwd.
stat_in() { in_root stat -c '%a %U %G' "$1"; }
expect_stat() {
    local path=$1 want=$2 got
    got=$(stat_in "$path" 2>&1) || got="missing"
    [ "$got" = "$want" ] || { echo "$path: $got, expected $want"; return 1; }
}
check_files() {
    local bad=0
    expect_stat /usr/sbin/sitelinkd "755 root root" || bad=1
    expect_stat /usr/bin/sitelinkctl "755 root root" || bad=1
    for f in /usr/lib/systemd/system/sitelinkd@.service /usr/lib/systemd/system/sitelink.target \
             /usr/lib/sysusers.d/sitelink.conf /usr/lib/tmpfiles.d/sitelink.conf \
             /usr/share/man/man8/sitelinkd.8.gz /usr/share/man/man1/sitelinkctl.1.gz \
             /usr/share/bash-completion/completions/sitelinkd /usr/share/bash-completion/completions/sitelinkctl \
             /usr/share/zsh/vendor-completions/_sitelinkd /usr/share/zsh/vendor-completions/_sitelinkctl \
             /usr/share/fish/vendor_completions.d/sitelinkd.fish /usr/share/fish/vendor_completions.d/sitelinkctl.fish \
             /usr/share/doc/sitelink/copyright /usr/share/doc/sitelink/changelog.Debian.gz \
             /etc/sitelink/example.toml.sample /etc/iproute2/rt_protos.d/sitelink.conf; do
        expect_stat "$f" "644 root root" || bad=1
    done
    for f in /usr/share/man/man8/sitelinkd.8.gz /usr/share/man/man1/sitelinkctl.1.gz \
             /usr/share/doc/sitelink/changelog.Debian.gz; do
        in_root gzip -t "$f" || { echo "$f: not valid gzip"; bad=1; }
    done
    zcat "$work/usr/share/man/man8/sitelinkd.8.gz" | grep -q '^\.TH SITELINKD 8 ' || { echo "sitelinkd.8: no .TH SITELINKD 8"; bad=1; }
    zcat "$work/usr/share/man/man1/sitelinkctl.1.gz" | grep -q '^\.TH SITELINKCTL 1 ' || { echo "sitelinkctl.1: no .TH SITELINKCTL 1"; bad=1; }
    grep -q 'complete -F' "$work/usr/share/bash-completion/completions/sitelinkctl" || { echo "bash completion looks wrong"; bad=1; }
    return $bad
}
check "files and modes: binaries 0755, units, sysusers/tmpfiles, man pages (gzip), completions, docs, example" check_files
check "/etc/sitelink is 0750 root:sitelink" expect_stat /etc/sitelink "750 root sitelink"
expect "dpkg-statoverride records /etc/sitelink" "root sitelink 750 /etc/sitelink" \
    in_root dpkg-statoverride --list /etc/sitelink
check "example config holds no key" \
    sh -c "! grep -Eq '^[[:space:]]*(private-key|preshared-key)[[:space:]]*=' '$work/etc/sitelink/example.toml.sample'"

check_user() {
    local pw gr uid gid sys_max
    pw=$(in_root getent passwd sitelink) || { echo "no user sitelink"; return 1; }
    gr=$(in_root getent group sitelink) || { echo "no group sitelink"; return 1; }
    uid=$(echo "$pw" | cut -d: -f3); gid=$(echo "$pw" | cut -d: -f4)
    sys_max=$(awk '$1 == "SYS_UID_MAX" { print $2 }' "$work/etc/login.defs"); sys_max=${sys_max:-999}
    [ "$uid" -ge 1 ] && [ "$uid" -le "$sys_max" ] || { echo "uid $uid is not a system uid (1..$sys_max)"; return 1; }
    [ "$gid" = "$(echo "$gr" | cut -d: -f3)" ] || { echo "primary group is not sitelink: $pw / $gr"; return 1; }
    [ "$(echo "$pw" | cut -d: -f6-7)" = "/nonexistent:/usr/sbin/nologin" ] || { echo "home/shell: $pw"; return 1; }
    [ ! -e "$work/nonexistent" ] || { echo "/nonexistent was created"; return 1; }
    echo "$pw"
}
if out=$(check_user 2>&1); then pass "system user: $out"; else fail "system user"; info "$out"; fi
check "/run/sitelink is 0750 sitelink:sitelink (tmpfiles)" expect_stat /run/sitelink "750 sitelink sitelink"
check "/run/wireguard is 0775 root:sitelink (tmpfiles)" expect_stat /run/wireguard "775 root sitelink"

expect "conffiles: exactly /etc/iproute2/rt_protos.d/sitelink.conf and /etc/sitelink/example.toml.sample" \
    "/etc/iproute2/rt_protos.d/sitelink.conf /etc/sitelink/example.toml.sample" \
    sh -c "chroot '$work' dpkg-query -W -f='\${Conffiles}' sitelink | awk 'NF { print \$1 }' | sort | xargs"
check "sitelink.target enabled (deb-systemd-helper)" \
    test -L "$work/etc/systemd/system/multi-user.target.wants/sitelink.target"
# The real thing: the chroot's systemd, the binaries at their packaged paths.
check "systemd-analyze verify sitelinkd@sl0.service sitelink.target (in the chroot)" \
    sh -c "out=\$(chroot '$work' systemd-analyze verify --man=no sitelinkd@sl0.service sitelink.target 2>&1); printf '%s' \"\$out\"; [ -z \"\$out\" ]"
check "sitelinkctl runs on bookworm: genkey | pubkey gives a 44-character key" \
    sh -c "k=\$(chroot '$work' sh -c 'sitelinkctl genkey | sitelinkctl pubkey'); echo \"\$k\"; [ \${#k} -eq 44 ]"
check "sitelinkctl --version" in_root sitelinkctl --version
# As an administrator would: enable an instance (links in multi-user and sitelink.target).
check "systemctl enable sitelinkd@sl0 (offline, in the chroot)" \
    sh -c "chroot '$work' systemctl enable sitelinkd@sl0.service 2>&1 &&
           test -L '$work/etc/systemd/system/sitelink.target.wants/sitelinkd@sl0.service' &&
           test -L '$work/etc/systemd/system/multi-user.target.wants/sitelinkd@sl0.service'"

# --- Upgrade ---------------------------------------------------------------------------------
uid_before=$(in_root id -u sitelink)
if apt_in_root install "$upgrade_in" >"$logs/apt.log" 2>&1; then
    pass "upgrade to ${version}+1 with apt-get install"
else
    fail "upgrade to ${version}+1"; tail -n 30 "$logs/apt.log" | sed 's/^/      /'
fi
expect "after upgrade: version ${version}+1 installed" "install ok installed ${version}+1" \
    in_root dpkg-query -W -f='${Status} ${Version}' sitelink
check "after upgrade: /etc/sitelink still 0750 root:sitelink, same uid, instance still enabled" \
    sh -c "[ \"\$(chroot '$work' stat -c '%a %U %G' /etc/sitelink)\" = '750 root sitelink' ] &&
           [ \"\$(chroot '$work' id -u sitelink)\" = '$uid_before' ] &&
           test -L '$work/etc/systemd/system/multi-user.target.wants/sitelinkd@sl0.service'"
check "after upgrade: no conffile prompt or .dpkg-* leftovers" \
    sh -c "! ls '$work/etc/sitelink' | grep -q dpkg"

# --- Remove, then purge ------------------------------------------------------------------------
listed=$(in_root dpkg -L sitelink)
if apt_in_root remove sitelink >"$logs/apt.log" 2>&1; then pass "apt-get remove sitelink"; else
    fail "apt-get remove sitelink"; tail -n 20 "$logs/apt.log" | sed 's/^/      /'; fi
check "after remove: binaries gone, conffile and statoverride kept (status config-files)" \
    sh -c "[ ! -e '$work/usr/sbin/sitelinkd' ] && [ -f '$work/etc/sitelink/example.toml.sample' ] &&
           chroot '$work' dpkg-statoverride --list /etc/sitelink >/dev/null &&
           [ \"\$(chroot '$work' dpkg-query -W -f='\${Status}' sitelink)\" = 'deinstall ok config-files' ]"
if apt_in_root purge sitelink >"$logs/apt.log" 2>&1; then pass "apt-get purge sitelink"; else
    fail "apt-get purge sitelink"; tail -n 20 "$logs/apt.log" | sed 's/^/      /'; fi

check_purged() {
    local bad=0 path
    # Every file and symlink the package listed is gone; of its directories, those that only
    # it used (shared ones like /usr/share/man/man8 belong to other packages too).
    while IFS= read -r path; do
        [ -n "$path" ] && [ "$path" != "/." ] || continue
        if [ -L "$work$path" ] || [ -f "$work$path" ]; then echo "left behind: $path"; bad=1; fi
    done <<<"$listed"
    for path in /etc/sitelink /usr/share/doc/sitelink /run/sitelink \
                /etc/systemd/system/sitelink.target.wants \
                /etc/systemd/system/multi-user.target.wants/sitelinkd@sl0.service \
                /etc/systemd/system/multi-user.target.wants/sitelink.target; do
        if [ -e "$work$path" ] || [ -L "$work$path" ]; then echo "left behind: $path"; bad=1; fi
    done
    if in_root dpkg-statoverride --list /etc/sitelink >/dev/null; then echo "statoverride left"; bad=1; fi
    if in_root dpkg-query -W -f='${Status}' sitelink 2>/dev/null | grep -q 'ok'; then
        echo "dpkg still knows it: $(in_root dpkg-query -W -f='${Status}' sitelink)"; bad=1
    fi
    return $bad
}
check "after purge: every file from dpkg -L, /etc/sitelink (was empty), enable links, statoverride gone" check_purged
check "after purge: user and group sitelink kept (Debian Policy: system users are not removed)" \
    sh -c "chroot '$work' getent passwd sitelink >/dev/null && chroot '$work' getent group sitelink >/dev/null"

# --- Purge with an administrator's config -----------------------------------------------------
if apt_in_root install "$deb_in" >"$logs/apt.log" 2>&1; then
    in_root sh -c 'printf "[interface]\n" > /etc/sitelink/sl0.toml; (umask 077; sitelinkctl genkey > /etc/sitelink/sl0.key)'
    apt_in_root purge sitelink >"$logs/apt.log" 2>&1 || true
    check "purge keeps /etc/sitelink with the administrator's sl0.toml and sl0.key, drops the sample" \
        sh -c "[ -f '$work/etc/sitelink/sl0.toml' ] && [ -f '$work/etc/sitelink/sl0.key' ] &&
               [ ! -e '$work/etc/sitelink/example.toml.sample' ] &&
               [ \"\$(chroot '$work' dpkg-query -W -f='\${Status}' sitelink 2>/dev/null)\" != 'deinstall ok config-files' ]"
else
    fail "reinstall for the admin-files purge test"; tail -n 20 "$logs/apt.log" | sed 's/^/      /'
fi

# --- lintian -------------------------------------------------------------------------------------
lintian_out=$(lintian --display-info --show-overrides "$deb" 2>&1) || true
errors=$(printf '%s\n' "$lintian_out" | grep -c '^E: ' || true)
warnings=$(printf '%s\n' "$lintian_out" | grep -c '^W: ' || true)
printf '%s\n' "$lintian_out" | grep -E '^[EWIO]: ' | sed 's/^/      lintian /' || true
if [ "$errors" -eq 0 ]; then
    pass "lintian: 0 errors, $warnings warnings (overrides with reasons: packaging/debian/lintian-overrides)"
else
    fail "lintian: $errors errors, $warnings warnings"
fi

elapsed=$(($(date +%s) - start))
echo "test-deb took ${elapsed}s (debootstrap: ${bootstrap_seconds}s$([ "$bootstrap_seconds" -eq 0 ] && echo ', cached root'))"
echo "test-deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
