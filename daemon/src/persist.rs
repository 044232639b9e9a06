//! What survives a restart: where each peer was last seen.
//!
//! A gateway that restarts (a crash, SIGKILL, a package upgrade) forgets the endpoints it
//! learned from peers that connect to it (spokes behind NAT, a site whose address is not in
//! our config), and its peers go on sending into sessions that no longer exist until their
//! own timers give up on them: 15 s or more without traffic. So sitelinkd remembers each
//! peer's last endpoint and handshake in `$STATE_DIRECTORY/<interface>.peers.json` (systemd's
//! `StateDirectory=`; without that variable nothing is remembered), and at start-up gives the
//! learned endpoints back and initiates at once to every peer that was up: the links return
//! one round trip after the daemon does.
//!
//! The file is rewritten only when an endpoint or a peer's up/down state changes (rare, even
//! with 100,000 peers), and otherwise touched once a minute: its modification time says how
//! fresh "was up" is, so a daemon that was stopped for an hour does not initiate to everyone.
//!
//! Owns: the file's format, reading it tolerantly (it is a cache: a bad file is reported and
//! ignored, then rewritten), writing it atomically. Doesn't own: when it is written (the
//! daemon's status task) or what the engine does with it. Nothing secret is in it: public
//! keys, addresses, up or down.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sitelink_config::PublicKey;
use sitelink_engine::Engine;

/// "Up" in a file older than this is stale (WireGuard's REJECT_AFTER_TIME: the sessions
/// would be dead anyway), so nothing is initiated from it.
const FRESH: Duration = Duration::from_secs(180);
/// How often an unchanged file is touched, so that its age stays below [`FRESH`].
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);
const VERSION: u32 = 1;

/// The remembered state of one interface.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub version: u32,
    pub peers: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub public_key: String,
    pub endpoint: SocketAddr,
    /// Whether the peer had a session.
    pub up: bool,
}

/// Where `interface`'s state lives: under the first directory of `$STATE_DIRECTORY`.
pub fn path(interface: &str) -> Option<PathBuf> {
    state_file(interface, "peers.json")
}

/// `$STATE_DIRECTORY/<interface>.<suffix>` (the first directory of the variable).
fn state_file(interface: &str, suffix: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("STATE_DIRECTORY")?;
    let first = dirs.to_str()?.split(':').next().filter(|d| !d.is_empty())?;
    Some(Path::new(first).join(format!("{interface}.{suffix}")))
}

/// Reads the file, with its modification time; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<(Remembered, SystemTime)>> {
    let modified = match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let remembered: Remembered = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a sitelink state file (it is ignored and rewritten)",
            path.display()
        )
    })?;
    if remembered.version != VERSION {
        anyhow::bail!(
            "{} has version {}, this sitelinkd writes {VERSION} (ignored and rewritten)",
            path.display(),
            remembered.version
        );
    }
    Ok(Some((remembered, modified)))
}

/// One peer as the file remembers it: its key, endpoint and whether it was up.
pub type Seen = (PublicKey, SocketAddr, bool);

/// What the engine knows now: every peer with an endpoint, in the engine's order. Taken
/// under the engine's lock every few seconds, so it copies plain values and allocates no
/// text per peer; [`Memory::tick`] encodes it only when it changed.
pub fn snapshot(engine: &Engine) -> Vec<Seen> {
    engine
        .peer_views()
        .filter_map(|p| Some((p.public_key, p.endpoint?, p.up)))
        .collect()
}

impl Remembered {
    fn of(seen: &[Seen]) -> Self {
        let peers = seen
            .iter()
            .map(|&(key, endpoint, up)| Entry {
                public_key: key.to_string(),
                endpoint,
                up,
            })
            .collect();
        Remembered {
            version: VERSION,
            peers,
        }
    }
}

/// Replaces the file (a crash leaves the old one or the new one, never a mix).
pub fn save(path: &Path, remembered: &Remembered) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(remembered).context("cannot encode the state")?;
    text.push(b'\n');
    sitelink_config::save::write_atomic(path, &text)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Marks the file fresh without rewriting it.
pub fn touch(path: &Path) -> Result<()> {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .with_context(|| format!("cannot update the time of {}", path.display()))
}

/// The writer's bookkeeping: what the file holds now and when it was last touched.
pub struct Memory {
    path: PathBuf,
    saved: Option<Vec<Seen>>,
    touched: std::time::Instant,
    /// The last write failed (said once, until a write succeeds again).
    failing: bool,
}

impl Memory {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            saved: None,
            touched: std::time::Instant::now(),
            failing: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Called every few seconds: rewrites the file if `now` differs from it, else touches it
    /// when due. A failure is logged once, not every tick, and never stops the daemon.
    pub fn tick(&mut self, now: Vec<Seen>) {
        let result = if self.saved.as_ref() != Some(&now) {
            save(&self.path, &Remembered::of(&now)).map(|()| self.saved = Some(now))
        } else if self.touched.elapsed() >= TOUCH_EVERY {
            touch(&self.path)
        } else {
            return;
        };
        match result {
            Ok(()) => {
                self.touched = std::time::Instant::now();
                if std::mem::take(&mut self.failing) {
                    tracing::info!(path = %self.path.display(), "peer state written again");
                }
            }
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!("cannot remember peer endpoints across restarts: {e:#}");
            }
            Err(_) => {}
        }
    }
}

/// The handshake clock: the wall-clock time of the latest initiation sent from here, in
/// `$STATE_DIRECTORY/<interface>.clock` (Unix milliseconds, one line). WireGuard peers refuse
/// an initiation whose timestamp is not newer than the last they accepted from this key, so a
/// gateway whose clock is behind that time would be refused until its clock catches up; an HA
/// gateway checks it before it goes active (see `ha.rs`). Written at most every few seconds,
/// only when it moved forward.
pub struct HandshakeClock {
    path: PathBuf,
    saved: Option<SystemTime>,
}

impl HandshakeClock {
    /// The clock file of `interface`, if there is a state directory.
    pub fn open(interface: &str) -> Option<Self> {
        let path = state_file(interface, "clock")?;
        let saved = read_clock(&path);
        Some(Self { path, saved })
    }

    /// The latest initiation time on record (from a previous run, or saved since).
    pub fn saved(&self) -> Option<SystemTime> {
        self.saved
    }

    /// Records `latest` if it is later than what the file holds.
    pub fn advance(&mut self, latest: Option<SystemTime>) {
        let Some(latest) = latest else { return };
        if self.saved.is_some_and(|s| s >= latest) {
            return;
        }
        let millis = latest
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        match sitelink_config::save::write_atomic(&self.path, format!("{millis}\n").as_bytes()) {
            Ok(()) => self.saved = Some(latest),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot record the handshake clock: {e}")
            }
        }
    }
}

/// The time in a clock file; `None` if there is none or it does not parse (it is rewritten).
fn read_clock(path: &Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(path).ok()?;
    let millis: u64 = text.trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis))
}

impl Remembered {
    /// The entries whose key parses, with whether the peer was up just now: up in a file
    /// `modified` recently enough before `now`.
    pub fn entries(
        &self,
        modified: SystemTime,
        now: SystemTime,
    ) -> impl Iterator<Item = (PublicKey, SocketAddr, bool)> + '_ {
        let fresh = now.duration_since(modified).is_ok_and(|age| age < FRESH);
        self.peers.iter().filter_map(move |e| {
            let key = e.public_key.parse().ok()?;
            Some((key, e.endpoint, e.up && fresh))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sitelink-persist-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_was_up_window() {
        let dir = temp_dir("rt");
        let path = dir.join("sl0.peers.json");
        assert_eq!(load(&path).unwrap(), None, "no file yet");
        let key = sitelink_config::PrivateKey::generate().public_key();
        let r = Remembered {
            version: VERSION,
            peers: vec![
                Entry {
                    public_key: key.to_string(),
                    endpoint: "198.18.0.1:51820".parse().unwrap(),
                    up: true,
                },
                Entry {
                    public_key: key.to_string(),
                    endpoint: "[fd18::1]:51820".parse().unwrap(),
                    up: false,
                },
                Entry {
                    public_key: "not a key".into(),
                    endpoint: "198.18.0.9:1".parse().unwrap(),
                    up: true,
                },
            ],
        };
        save(&path, &r).unwrap();
        let (back, modified) = load(&path).unwrap().unwrap();
        assert_eq!(back, r);
        let now = SystemTime::now();
        let entries: Vec<_> = back.entries(modified, now).collect();
        assert_eq!(entries.len(), 2, "the bad key is skipped");
        assert_eq!(
            (entries[0].1, entries[0].2),
            ("198.18.0.1:51820".parse().unwrap(), true)
        );
        assert!(!entries[1].2, "was down");
        // Written 10 minutes ago: nobody counts as up.
        let stale = back.entries(modified, now + Duration::from_secs(600));
        assert!(stale.into_iter().all(|e| !e.2));
        // Touching makes it fresh again.
        let old = SystemTime::now() - Duration::from_secs(600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (_, modified) = load(&path).unwrap().unwrap();
        assert!(back.entries(modified, SystemTime::now()).all(|e| !e.2));
        touch(&path).unwrap();
        let (_, modified) = load(&path).unwrap().unwrap();
        assert!(back.entries(modified, SystemTime::now()).any(|e| e.2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_file_is_an_error_that_names_it() {
        let dir = temp_dir("bad");
        let path = dir.join("sl0.peers.json");
        std::fs::write(&path, "{ truncated").unwrap();
        let e = format!("{:#}", load(&path).unwrap_err());
        assert!(e.contains("sl0.peers.json") && e.contains("ignored"), "{e}");
        std::fs::write(&path, r#"{"version": 9, "peers": []}"#).unwrap();
        let e = format!("{:#}", load(&path).unwrap_err());
        assert!(e.contains("version 9"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
