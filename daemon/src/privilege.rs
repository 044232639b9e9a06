//! Dropping root. Security-sensitive: keep it small.
//!
//! Started as root with `[interface] user = "NAME"`, sitelinkd creates the TUN device,
//! configures it and binds its sockets, then calls [`drop_to`]: it becomes NAME (uid, gid, no
//! supplementary groups) and keeps exactly one capability, CAP_NET_ADMIN, which it still
//! needs for routes and addresses when peers change. Everything else is gone from the
//! effective, permitted, inheritable and bounding sets, so it cannot come back.
//! Under the systemd unit the daemon already starts as that user with the capability
//! (AmbientCapabilities=), and this is not called.

use std::fs;

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// Becomes `user`, keeping only CAP_NET_ADMIN. Must run before other threads that need
/// capabilities exist: capability sets are per thread, and only the calling thread keeps
/// CAP_NET_ADMIN (other threads lose all capabilities when the uid changes).
pub fn drop_to(user: &str) -> Result<()> {
    let passwd = fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    let Some((uid, gid)) = lookup(&passwd, user) else {
        bail!("user {user:?} does not exist (create it, e.g. `adduser --system --group {user}`, or remove `user`)");
    };
    if uid == 0 {
        bail!("user {user:?} is root; name an unprivileged account");
    }
    let keep: CapsHashSet = [Capability::CAP_NET_ADMIN].into_iter().collect();

    // The bounding set limits what can ever be regained (needs CAP_SETPCAP, which root has).
    for cap in caps::all().difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap)
            .with_context(|| format!("cannot drop {cap} from the bounding set"))?;
    }
    // Keep permitted capabilities across the uid change (this thread only).
    set_keepcaps(true)?;
    // SAFETY: plain syscalls with valid arguments: one gid from a live local, and ids. glibc
    // applies setresgid/setresuid to every thread of the process.
    let rc = unsafe { libc::setgroups(1, &gid) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setgroups");
    }
    // SAFETY: as above.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setresgid");
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setresuid");
    }
    set_keepcaps(false)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .context("cannot clear inheritable capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("cannot limit permitted capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("cannot raise CAP_NET_ADMIN")?;

    // Verify rather than trust: a partial drop is a failure, not a warning.
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three uids into the live locals we pass.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    if (r, e, s) != (uid, uid, uid) {
        bail!("privilege drop failed: uids are {r}/{e}/{s}, expected {uid}");
    }
    let permitted = caps::read(None, CapSet::Permitted).context("cannot read capabilities")?;
    if permitted != keep {
        bail!("privilege drop failed: permitted capabilities are {permitted:?}");
    }
    tracing::info!(
        user,
        uid,
        gid,
        "dropped privileges; keeping CAP_NET_ADMIN only"
    );
    Ok(())
}

/// Marks the process non-dumpable before any key is read: no core dump (systemd's watchdog
/// kills with SIGABRT) and no ptrace by other unprivileged processes can expose key material.
pub fn forbid_core_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers and cannot fail with valid args.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot disable core dumps");
    }
}

fn set_keepcaps(on: bool) -> Result<()> {
    // SAFETY: prctl(PR_SET_KEEPCAPS, 0|1) takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_KEEPCAPS)");
    }
    Ok(())
}

/// uid and gid of `user` in /etc/passwd text. (System accounts live there; NSS sources such
/// as LDAP are not consulted.)
fn lookup(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0] != user {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup_finds_exact_names_only() {
        let text = "root:x:0:0:root:/root:/bin/bash\nsitelink:x:998:997::/nonexistent:/usr/sbin/nologin\nbroken:x\n";
        assert_eq!(lookup(text, "sitelink"), Some((998, 997)));
        assert_eq!(lookup(text, "site"), None);
        assert_eq!(lookup(text, "broken"), None);
    }
}
