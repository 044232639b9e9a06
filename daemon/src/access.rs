//! Who may use the local sockets (control and UAPI). Security-sensitive: keep it small.
//!
//! The sockets are 0660, owned by root (or the daemon's user) and the configured
//! `control-group`; on top of the file mode, every connection's credentials (SO_PEERCRED)
//! are checked, so a socket whose mode was loosened by mistake still refuses strangers.
//! Allowed: root, the daemon's own uid, and members (primary or supplementary, from
//! SO_PEERGROUPS) of the control group.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use tokio::net::UnixStream;

#[derive(Debug, Clone)]
pub struct Access {
    /// The daemon's effective uid.
    pub uid: u32,
    /// The control group's gid and name, if configured.
    pub group: Option<(u32, String)>,
}

impl Access {
    pub fn new(group: Option<&str>) -> Result<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let group = match group {
            None => None,
            Some(name) => {
                let text = fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
                match gid_of(&text, name) {
                    Some(gid) => Some((gid, name.to_string())),
                    None => bail!("control-group {name:?} does not exist (create it with `groupadd {name}`, or remove the key)"),
                }
            }
        };
        Ok(Self { uid, group })
    }

    /// Gives a freshly bound socket (or its directory) the group and `mode`.
    pub fn secure(&self, path: &Path, mode: u32) -> Result<()> {
        // chown only when needed: under the unit the socket already has the group (and the
        // unit's system call filter has no chown).
        let current = fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .ok();
        if let Some((gid, _)) = self.group.as_ref().filter(|(gid, _)| current != Some(*gid)) {
            chown(path, None, Some(*gid))
                .with_context(|| format!("cannot give {} to the control group", path.display()))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set mode {mode:04o} on {}", path.display()))
    }

    /// Checks the peer of `stream`. The error text is sent to the refused client.
    pub fn check(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("cannot read peer credentials: {e}"))?;
        // Only needed when a group may be allowed; a failure means primary group only.
        let groups = match &self.group {
            Some(_) => peer_groups(stream.as_raw_fd()).unwrap_or_default(),
            None => Vec::new(),
        };
        self.decide(cred.uid(), cred.gid(), &groups)
    }

    fn decide(&self, uid: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
        if uid == 0 || uid == self.uid {
            return Ok(());
        }
        match &self.group {
            Some((g, _)) if gid == *g || groups.contains(g) => Ok(()),
            Some((_, name)) => Err(format!("permission denied: uid {uid} is not root and not in group {name}")),
            None => Err(format!(
                "permission denied: uid {uid} is not root (set `control-group` in [interface] to allow a group)"
            )),
        }
    }
}

fn gid_of(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The connecting process's supplementary groups (SO_PEERGROUPS), recorded by the kernel
/// with its other credentials at connect time: no /proc lookup, no pid race.
fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 32];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`, a live buffer of exactly
        // that size, and updates `len` to the bytes written (or needed, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() || count > 65536 {
            return Err(e);
        }
        groups.resize(count, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(group: Option<(u32, &str)>) -> Access {
        Access {
            uid: 0,
            group: group.map(|(g, n)| (g, n.to_string())),
        }
    }

    #[test]
    fn root_and_own_uid_are_allowed_others_are_refused() {
        let a = Access {
            uid: 998,
            group: None,
        };
        assert!(a.decide(0, 0, &[]).is_ok());
        assert!(a.decide(998, 998, &[]).is_ok());
        let err = a.decide(1000, 1000, &[4, 27]).unwrap_err();
        assert!(
            err.contains("uid 1000") && err.contains("control-group"),
            "{err}"
        );
    }

    #[test]
    fn control_group_members_are_allowed_by_primary_or_supplementary_group() {
        let a = access(Some((120, "sitelink")));
        assert!(a.decide(1000, 120, &[]).is_ok());
        assert!(a.decide(1000, 1000, &[27, 120]).is_ok());
        let err = a.decide(1001, 1001, &[27]).unwrap_err();
        assert!(err.contains("not in group sitelink"), "{err}");
    }

    #[test]
    fn group_lookup_reads_etc_group_lines() {
        let text = "root:x:0:\nsitelink:x:120:alice,bob\nsitelinkers:x:121:\n";
        assert_eq!(gid_of(text, "sitelink"), Some(120));
        assert_eq!(gid_of(text, "sitelinkers"), Some(121));
        assert_eq!(gid_of(text, "site"), None);
    }
}
