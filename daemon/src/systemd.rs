//! systemd integration. Owns: the sd_notify messages (READY, STATUS, RELOADING with
//! MONOTONIC_USEC, STOPPING, WATCHDOG), the private key from `LoadCredential=`, and telling
//! whether stderr is the journal. Everything here is a no-op outside systemd: without
//! `NOTIFY_SOCKET` the sd-notify crate sends nothing.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use sd_notify::NotifyState;
use sitelink_config::{Config, PrivateKey};

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The interface is up, routes are set and the sockets listen.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// A reload starts; [`ready`] ends it (whether it was applied or refused).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// How often the packet loop must ping the watchdog (half of `WatchdogSec=`), if enabled.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|usec| usec / 2)
}

pub fn watchdog_ping() {
    notify(&[NotifyState::Watchdog]);
}

/// The private key from systemd's `LoadCredential=private-key:...`, if the unit passes one.
fn credential_private_key() -> Result<Option<PrivateKey>> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return Ok(None);
    };
    let path = PathBuf::from(dir).join("private-key");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read credential {}", path.display()))
        }
    };
    let key = text.trim().parse::<PrivateKey>().map_err(|e| {
        anyhow::anyhow!(
            "credential {}: {e} (it must hold only the base64 private key)",
            path.display()
        )
    })?;
    Ok(Some(key))
}

/// Loads the config, taking the private key from systemd credentials when present (then
/// the config's private-key-file is not read), or from `fallback` (the key in use, after
/// privileges were dropped and the key file is no longer readable).
pub fn load_config(path: &std::path::Path, fallback: Option<&PrivateKey>) -> Result<Config> {
    let key = match credential_private_key()? {
        Some(key) => Some(key),
        None => fallback.cloned(),
    };
    Ok(Config::load_with_private_key(path, key)?)
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` holds the device and inode
/// of the journal stream that systemd connected to our stderr.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = fs::metadata(format!("/proc/self/fd/{}", std::io::stderr().as_raw_fd())) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    journal_stream_matches(&value, meta.dev(), meta.ino())
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    match value.split_once(':') {
        Some((d, i)) => d.parse() == Ok(dev) && i.parse() == Ok(ino),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_match_device_and_inode() {
        assert!(journal_stream_matches("25:12345", 25, 12345));
        assert!(!journal_stream_matches("25:12345", 25, 12346));
        assert!(!journal_stream_matches("garbage", 25, 12345));
    }
}
