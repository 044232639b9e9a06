#!/usr/bin/env bash
# Boots a Debian bookworm VM (Debian's kernel, systemd as PID 1) under QEMU software
# emulation, installs the sitelink .deb in it and checks sitelinkd@.service for real:
# start, status, interface and routes, reload, the watchdog restarting a stopped daemon,
# sitelink.target, stop; then sitelinkd against the kernel's WireGuard (handshakes both ways,
# IPv4/IPv6 traffic, a rekey). See packaging/vm/README.md.
#
#   bash packaging/vm/run-vm-test.sh [--deb PATH] [--timeout SECONDS] [--fresh-root]
#
# Runs as root. Caches the debootstrapped root in target/vm/root (delete it, or pass
# --fresh-root, to rebuild). Exits 0 only if every check passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
vm_dir="$repo/target/vm"
root_dir="$vm_dir/root"          # cached pristine bookworm root (debootstrap + kernel)
stage_dir="$vm_dir/stage"        # per-run copy: root + the .deb + the test
disk="$vm_dir/disk.img"
serial_log="$vm_dir/serial.log"
results="$vm_dir/results.txt"
journal_out="$vm_dir/sitelinkd-journal.txt"
mirror="${SITELINK_VM_MIRROR:-http://deb.debian.org/debian}"
# What debootstrap puts in the root. wireguard-tools (wg), socat, jq: the kernel WireGuard
# interop test. The list is recorded in the root's marker file; a cached root built from
# another list is rebuilt.
root_pkgs=systemd,systemd-sysv,dbus,udev,kmod,linux-image-amd64,iproute2,iputils-ping,procps,less,wireguard-tools,socat,jq
vm_timeout=1500                  # hard limit on the whole VM run (seconds)
deb=""
fresh_root=0

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) deb="$2"; shift 2 ;;
        --timeout) vm_timeout="$2"; shift 2 ;;
        --fresh-root) fresh_root=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [ -n "$deb" ]; then
    [ -f "$deb" ] || { echo "run-vm-test.sh: --deb $deb: no such file" >&2; exit 2; }
    deb=$(readlink -f "$deb")
fi
[ "$(id -u)" = 0 ] || { echo "run-vm-test.sh: must run as root (debootstrap, chroot, mkfs)" >&2; exit 2; }

t_start=$(date +%s)
say() { printf '[vm-test %4ds] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }

# --- prerequisites ----------------------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
{ command -v mkfs.ext4 && command -v debugfs; } >/dev/null || need_pkgs+=(e2fsprogs)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    say "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if ! apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null; then
        # This machine kind ships a newer qemu-utils (bookworm-backports) that Breaks
        # bookworm's qemu-system-common; take both from bookworm.
        say "retrying with qemu-utils from bookworm (the installed one conflicts)"
        apt-get install -y -qq --no-install-recommends --allow-downgrades \
            "${need_pkgs[@]}" qemu-utils/bookworm >/dev/null
    fi
fi

# --- the cached bookworm root -------------------------------------------------------------
# The VM boots with -kernel/-initrd taken from this root; its initramfs (MODULES=most)
# carries virtio_blk/virtio_pci, so root=/dev/vda works without a bootloader.
build_root() {
    local tmp="$vm_dir/root.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    say "debootstrap bookworm into $tmp (cold: several minutes)"
    debootstrap --variant=minbase \
        --include="$root_pkgs" \
        bookworm "$tmp" "$mirror" > "$vm_dir/debootstrap.log" 2>&1 || {
        tail -n 30 "$vm_dir/debootstrap.log" >&2
        echo "debootstrap failed (full log: $vm_dir/debootstrap.log)" >&2
        exit 1
    }
    echo sitelink-vm > "$tmp/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tsitelink-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        > "$tmp/etc/hosts"
    # Root is mounted rw from the kernel command line; no fsck of a fresh image.
    echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' > "$tmp/etc/fstab"
    # Nothing to log in with (the test runs as a unit), and no periodic jobs under TCG.
    local unit
    for unit in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer \
        apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer dpkg-db-backup.timer; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$unit"
    done
    chroot "$tmp" apt-get clean
    ls "$tmp"/boot/vmlinuz-* "$tmp"/boot/initrd.img-* >/dev/null
    if ! chroot "$tmp" sh -c 'lsinitramfs /boot/initrd.img-* | grep -q "/virtio_blk.ko"'; then
        echo "the initramfs lacks virtio_blk; cannot boot root=/dev/vda" >&2
        exit 1
    fi
    echo "$root_pkgs" > "$tmp/.sitelink-vm-root-complete"
    rm -rf "$root_dir"
    mv "$tmp" "$root_dir"
}

mkdir -p "$vm_dir"
t_root=$(date +%s)
if [ "$fresh_root" = 1 ] || [ ! -e "$root_dir/.sitelink-vm-root-complete" ]; then
    build_root
    root_state="built (cold)"
elif [ "$(cat "$root_dir/.sitelink-vm-root-complete")" != "$root_pkgs" ]; then
    say "the cached root has another package list: rebuilding it"
    build_root
    root_state="rebuilt (package list changed)"
else
    root_state="cached (warm)"
fi
root_secs=$(( $(date +%s) - t_root ))
say "bookworm root: $root_state, ${root_secs}s"

# --- the package ---------------------------------------------------------------------------
if [ -z "$deb" ]; then
    if [ -f "$repo/packaging/build-deb.sh" ]; then
        say "building the .deb with packaging/build-deb.sh"
        build_log="$vm_dir/build-deb.log"
        # build-deb.sh logs to stderr; its last line on stdout is the .deb's path (relative
        # paths are relative to the repo, where it runs).
        # Into target/vm/deb, so that other scripts cleaning target/debian don't race us.
        if ! deb=$(bash "$repo/packaging/build-deb.sh" --output "$vm_dir/deb" 2> "$build_log" | tail -n 1); then
            tail -n 30 "$build_log" >&2
            echo "packaging/build-deb.sh failed (log: $build_log)" >&2
            exit 1
        fi
        case "$deb" in /*) ;; ?*) deb="$repo/$deb" ;; esac
        [ -n "$deb" ] && [ -f "$deb" ] || { echo "build-deb.sh did not name a .deb (log: $build_log)" >&2; exit 1; }
    fi
fi

# --- the per-run image ---------------------------------------------------------------------
t_image=$(date +%s)
rm -rf "$stage_dir"
cp -a "$root_dir" "$stage_dir"
rm -f "$stage_dir/.sitelink-vm-root-complete"
cp /etc/resolv.conf "$stage_dir/etc/resolv.conf" 2>/dev/null || true

if [ -n "$deb" ]; then
    deb=$(readlink -f "$deb")
    say "installing $(basename "$deb") into the image"
    cp "$deb" "$stage_dir/tmp/"
    # The maintainer scripts run systemd-sysusers and systemd-tmpfiles, which want /proc.
    mount -t proc proc "$stage_dir/proc"
    trap 'umount "$stage_dir/proc" 2>/dev/null || true' EXIT
    # apt resolves any dependency the minimal root lacks (from the mirror, with the host's
    # network); the maintainer scripts see no running systemd and only create the user
    # (sysusers) and directories (tmpfiles).
    if ! chroot "$stage_dir" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "/tmp/$(basename "$deb")" > "$vm_dir/install.log" 2>&1; then
        tail -n 30 "$vm_dir/install.log" >&2
        echo "installing the .deb in the image failed (log: $vm_dir/install.log)" >&2
        exit 1
    fi
    umount "$stage_dir/proc"
    trap - EXIT
    rm -f "$stage_dir/tmp/$(basename "$deb")"
    chroot "$stage_dir" apt-get clean
    package_desc="$(basename "$deb")"
else
    # Stand-in until packaging/build-deb.sh exists: what the package installs, by hand.
    say "no .deb (packaging/build-deb.sh missing, no --deb): installing binaries and units by hand"
    if [ ! -x "$repo/target/release/sitelinkd" ] || [ ! -x "$repo/target/release/sitelinkctl" ]; then
        (cd "$repo" && cargo build --release --locked -p sitelinkd -p sitelinkctl)
    fi
    install -m 755 "$repo/target/release/sitelinkd" "$stage_dir/usr/sbin/sitelinkd"
    install -m 755 "$repo/target/release/sitelinkctl" "$stage_dir/usr/bin/sitelinkctl"
    install -m 644 "$repo"/packaging/systemd/sitelinkd@.service "$repo"/packaging/systemd/sitelink.target \
        "$stage_dir/lib/systemd/system/"
    install -m 644 "$repo/packaging/sysusers.d/sitelink.conf" "$stage_dir/usr/lib/sysusers.d/sitelink.conf"
    install -m 644 "$repo/packaging/tmpfiles.d/sitelink.conf" "$stage_dir/usr/lib/tmpfiles.d/sitelink.conf"
    chroot "$stage_dir" systemd-sysusers sitelink.conf
    install -d -m 750 -o root -g "$(chroot "$stage_dir" getent group sitelink | cut -d: -f3)" \
        "$stage_dir/etc/sitelink"
    package_desc="stand-in (target/release binaries + packaging/systemd units)"
fi

# The test: a oneshot unit that runs after boot, then powers the VM off either way.
install -m 755 "$here/vm-test.sh" "$stage_dir/root/vm-test.sh"
install -m 644 "$here/kernel-wg-test.sh" "$stage_dir/root/kernel-wg-test.sh"
install -m 644 "$here/sitelink-vm-test.service" "$stage_dir/etc/systemd/system/sitelink-vm-test.service"
mkdir -p "$stage_dir/etc/systemd/system/multi-user.target.wants"
ln -sf ../sitelink-vm-test.service \
    "$stage_dir/etc/systemd/system/multi-user.target.wants/sitelink-vm-test.service"

kernel=$(ls "$stage_dir"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$(ls "$stage_dir"/boot/initrd.img-* | sort -V | tail -n 1)
cp "$kernel" "$vm_dir/vmlinuz"
cp "$initrd" "$vm_dir/initrd.img"

rm -f "$disk"
truncate -s 2G "$disk"
# mkfs.ext4 -d copies the tree (owners, modes, xattrs) without a loop mount.
mkfs.ext4 -q -F -L sitelink-vm -d "$stage_dir" "$disk"
rm -rf "$stage_dir"
image_secs=$(( $(date +%s) - t_image ))
say "disk image ready (${image_secs}s): package: $package_desc"

# --- boot --------------------------------------------------------------------------------
say "booting the VM (TCG, no KVM; hard limit ${vm_timeout}s); serial console: $serial_log"
rm -f "$serial_log" "$results" "$journal_out" "$vm_dir/sitelinkd-slk0-journal.txt" "$vm_dir/kernel-wg-dmesg.txt"
t_vm=$(date +%s)
vm_rc=0
timeout --kill-after=15 "$vm_timeout" \
    qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 \
        -nographic -monitor none -serial "file:$serial_log" -no-reboot \
        -kernel "$vm_dir/vmlinuz" -initrd "$vm_dir/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0,115200 panic=1 net.ifnames=0 systemd.show_status=auto" \
        -drive "file=$disk,if=virtio,format=raw" \
        -nic none -device virtio-rng-pci \
    < /dev/null > "$vm_dir/qemu.log" 2>&1 || vm_rc=$?
vm_secs=$(( $(date +%s) - t_vm ))
if [ "$vm_rc" = 124 ] || [ "$vm_rc" = 137 ]; then
    say "the VM did not power off within ${vm_timeout}s: killed"
elif [ "$vm_rc" != 0 ]; then
    say "qemu exited with $vm_rc: $(tail -n 5 "$vm_dir/qemu.log")"
fi

# --- results -----------------------------------------------------------------------------
# The guest wrote its results to /root/vm-results.txt (and the console); read the file
# back from the image, falling back to the serial log if the guest never synced it.
debugfs -R "cat /root/vm-results.txt" "$disk" > "$results" 2>/dev/null || true
debugfs -R "cat /root/sitelinkd-journal.txt" "$disk" > "$journal_out" 2>/dev/null || true
debugfs -R "cat /root/security.txt" "$disk" > "$vm_dir/security.txt" 2>/dev/null || true
debugfs -R "cat /root/sitelinkd-slk0-journal.txt" "$disk" > "$vm_dir/sitelinkd-slk0-journal.txt" 2>/dev/null || true
debugfs -R "cat /root/kernel-wg-dmesg.txt" "$disk" > "$vm_dir/kernel-wg-dmesg.txt" 2>/dev/null || true
if ! grep -q '^VM-TEST-DONE' "$results"; then
    tr -d '\r' < "$serial_log" | grep -aoE '(PASS|FAIL|INFO) .*|VM-TEST-DONE.*' > "$results" || true
fi

echo
echo "==== results (guest) ===="
grep -E '^(PASS|FAIL|INFO|VM-TEST-DONE)' "$results" || echo "(no results)"
echo "========================="
n_pass=$(grep -c '^PASS ' "$results" || true)
n_fail=$(grep -c '^FAIL ' "$results" || true)
boot_secs=$(sed -n 's/^INFO boot-seconds \([0-9]*\).*/\1/p' "$results" | head -n 1)
kwg_secs=$(sed -n 's/^INFO kernel WireGuard part took \([0-9]*s (rekey wait [0-9]*s)\).*/\1/p' "$results" | head -n 1)
total_secs=$(( $(date +%s) - t_start ))
say "root ${root_secs}s ($root_state), image ${image_secs}s, VM ${vm_secs}s (boot to test start: ${boot_secs:-?}s; kernel WireGuard part: ${kwg_secs:-?}), total ${total_secs}s"
say "serial log: $serial_log; sitelinkd journal: $journal_out; security report: $vm_dir/security.txt"
say "kernel WireGuard test: sitelinkd@slk0 journal $vm_dir/sitelinkd-slk0-journal.txt, kernel log $vm_dir/kernel-wg-dmesg.txt"
if ! grep -q '^VM-TEST-DONE' "$results"; then
    say "FAILED: the test did not finish (VM-TEST-DONE missing); see the serial log:"
    tr -d '\r' < "$serial_log" | tail -n 40
    exit 1
fi
if [ "$n_fail" != 0 ] || [ "$n_pass" = 0 ]; then
    say "FAILED: $n_fail failed, $n_pass passed"
    exit 1
fi
rm -f "$disk"
say "OK: all $n_pass checks passed"
