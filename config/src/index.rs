//! Validation of a live change in time proportional to the change, not to the peer count.
//!
//! A running daemon holds a validated [`Config`] and a [`PeerIndex`] of it (names, public keys
//! and prefixes, each with the peer that has it). A change builds the next config by copying
//! the peer list: peers it does not touch stay the same `Arc` allocation. So
//! [`Config::validate_change`] needs to check only the peers that are new or changed — against
//! the index, minus the peers that are gone or changed, and against each other — with the very
//! rules and messages of [`Config::validate`]. With 100,000 peers, adding one costs a pointer
//! scan and a few hash lookups instead of re-checking everyone.
//!
//! The one difference from `validate`: when a changed peer clashes with one left alone, the
//! error is reported on the changed peer (the one the operator just touched), where `validate`
//! would report whichever comes later in the file.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use crate::config::{
    check_allowed_ip, check_keepalive, check_peer_name, check_public_key, check_unique_name, Holder,
};
use crate::error::Scope;
use crate::{Cidr, Config, ConfigError, Peer, PublicKey};

/// What a validated config's peers use: names, keys (with the peer's name) and prefixes.
#[derive(Debug, Default, Clone)]
pub struct PeerIndex {
    names: HashMap<String, PublicKey>,
    keys: HashMap<PublicKey, String>,
    prefixes: HashMap<Cidr, PublicKey>,
}

impl PeerIndex {
    /// The index of `config`'s peers (which must have passed [`Config::validate`]).
    pub fn new(config: &Config) -> Self {
        let mut index = Self::default();
        for peer in &config.peers {
            index.insert(peer);
        }
        index
    }

    /// Brings the index from `base` to `new` (`delta` between them), once `new` has replaced
    /// `base`.
    pub fn apply(&mut self, delta: &Delta<'_>) {
        for peer in &delta.gone {
            self.remove(peer);
        }
        for (_, peer) in &delta.fresh {
            self.insert(peer);
        }
    }

    fn insert(&mut self, peer: &Peer) {
        self.names.insert(peer.name.clone(), peer.public_key);
        self.keys.insert(peer.public_key, peer.name.clone());
        for cidr in &peer.allowed_ips {
            self.prefixes.insert(*cidr, peer.public_key);
        }
    }

    fn remove(&mut self, peer: &Peer) {
        let key = peer.public_key;
        if self.names.get(&peer.name) == Some(&key) {
            self.names.remove(&peer.name);
        }
        if self.keys.get(&key) == Some(&peer.name) {
            self.keys.remove(&key);
        }
        for cidr in &peer.allowed_ips {
            if self.prefixes.get(cidr) == Some(&key) {
                self.prefixes.remove(cidr);
            }
        }
    }
}

/// The peers of `new` that are not in `base` as the same allocation (with their position in
/// `new`): added or changed; and the peers of `base` that are not in `new` so: removed or
/// changed. A changed peer is in both (old version in `gone`, new one in `fresh`).
pub struct Delta<'a> {
    pub fresh: Vec<(usize, &'a Arc<Peer>)>,
    pub gone: Vec<&'a Arc<Peer>>,
}

impl<'a> Delta<'a> {
    /// What changed from `base` to `new`: a walk of both lists comparing pointers, which keeps
    /// up with insertions, removals and in-place changes (the order every change keeps).
    /// Anything it cannot pair up counts as changed, so a reordered list costs time, never
    /// correctness: a peer wrongly taken as changed is only checked once more.
    pub fn between(base: &'a Config, new: &'a Config) -> Self {
        let (b, n) = (&base.peers, &new.peers);
        let same = |x: &Arc<Peer>, y: &Arc<Peer>| Arc::ptr_eq(x, y);
        let (mut fresh, mut gone) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < b.len() && j < n.len() {
            if same(&b[i], &n[j]) {
                i += 1;
                j += 1;
            } else if b.get(i + 1).is_some_and(|next| same(next, &n[j])) {
                gone.push(&b[i]);
                i += 1;
            } else if n.get(j + 1).is_some_and(|next| same(&b[i], next)) {
                fresh.push((j, &n[j]));
                j += 1;
            } else {
                gone.push(&b[i]);
                fresh.push((j, &n[j]));
                i += 1;
                j += 1;
            }
        }
        gone.extend(&b[i..]);
        fresh.extend(n.iter().enumerate().skip(j));
        Self { fresh, gone }
    }
}

impl Config {
    /// [`Config::validate`] for a change from `base` (which passed it, and whose index is
    /// `index`; `delta` is [`Delta::between`] them): see the module docs. A change of our own
    /// key re-checks every peer.
    pub fn validate_change(
        &self,
        base: &Config,
        delta: &Delta<'_>,
        index: &PeerIndex,
    ) -> Result<(), ConfigError> {
        if self.interface.public_key() != base.interface.public_key() {
            return self.validate();
        }
        self.validate_interface()?;
        let own = self.interface.public_key();
        let gone: HashSet<PublicKey> = delta.gone.iter().map(|p| p.public_key).collect();
        // Still held by a peer the change leaves alone.
        let kept = |key: &PublicKey| !gone.contains(key);
        // The new and changed peers checked so far, by name, key and prefix.
        let mut names: HashMap<&str, usize> = HashMap::default();
        let mut keys: HashMap<PublicKey, usize> = HashMap::default();
        let mut prefixes: HashMap<Cidr, usize> = HashMap::default();
        let holder_at = |at: usize| Holder {
            name: &self.peers[at].name,
            line: None,
            same_peer: false,
        };
        let holder_of = |key: &PublicKey| {
            index.keys.get(key).map(|name| Holder {
                name,
                line: None,
                same_peer: false,
            })
        };

        for &(at, peer) in &delta.fresh {
            if let Err(message) = check_peer_name(&peer.name) {
                let scope = Scope::Peer {
                    index: at,
                    name: None,
                };
                return Err(ConfigError::live(scope, "name", message));
            }
            let err = |key: &str, message: String| ConfigError::live_peer(&peer.name, key, message);

            let holder = match names.get(peer.name.as_str()) {
                Some(&other) => Some(holder_at(other)),
                None => index
                    .names
                    .get(&peer.name)
                    .filter(|key| kept(key))
                    .and_then(&holder_of),
            };
            check_unique_name(holder).map_err(|m| err("name", m))?;

            let holder = match keys.get(&peer.public_key) {
                Some(&other) => Some(holder_at(other)),
                None => Some(&peer.public_key)
                    .filter(|key| kept(key))
                    .and_then(&holder_of),
            };
            check_public_key(&peer.public_key, own.as_ref(), holder)
                .map_err(|m| err("public-key", m))?;

            for cidr in &peer.allowed_ips {
                let holder = match prefixes.get(cidr) {
                    Some(&other) if other == at => Some(Holder {
                        name: "",
                        line: None,
                        same_peer: true,
                    }),
                    Some(&other) => Some(holder_at(other)),
                    None => index
                        .prefixes
                        .get(cidr)
                        .filter(|key| kept(key))
                        .and_then(&holder_of),
                };
                check_allowed_ip(cidr, holder).map_err(|m| err("allowed-ips", m))?;
                prefixes.insert(*cidr, at);
            }
            if let Some(seconds) = peer.persistent_keepalive {
                check_keepalive(seconds.into()).map_err(|m| err("persistent-keepalive", m))?;
            }
            names.insert(&peer.name, at);
            keys.insert(peer.public_key, at);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::PrivateKey;

    fn peer(name: &str, ips: &[&str]) -> Arc<Peer> {
        // Any 32 bytes are a public key as far as validation goes; deriving real ones would
        // make the 100,000-peer test slow in a debug build.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut key = [0x5a; 32];
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        key[..8].copy_from_slice(&n.to_le_bytes());
        Arc::new(Peer {
            name: name.into(),
            public_key: PublicKey::from_bytes(key),
            preshared_key: None,
            preshared_key_file: None,
            endpoint: None,
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            persistent_keepalive: None,
            allowed_endpoints: Vec::new(),
            more_endpoints: Vec::new(),
        })
    }

    fn base(n: usize) -> Config {
        let key = PrivateKey::generate();
        let text = format!("[interface]\nprivate-key = \"{}\"\n", key.expose_base64());
        let mut config = Config::parse(&text, Path::new("sl0.toml")).unwrap();
        for i in 0..n {
            let addr = std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i as u32,
            );
            config
                .peers
                .push(peer(&format!("p{i}"), &[&format!("{addr}/32")]));
        }
        config.validate().unwrap();
        config
    }

    /// Both validations agree on `new` (accepted, or refused for the same key of the same
    /// kind of problem).
    #[track_caller]
    fn agree(base: &Config, new: &Config) -> Result<(), String> {
        let index = PeerIndex::new(base);
        let full = new
            .validate()
            .map_err(|e| e.key().unwrap_or("").to_string());
        let fast = new
            .validate_change(base, &Delta::between(base, new), &index)
            .map_err(|e| e.key().unwrap_or("").to_string());
        assert_eq!(full, fast, "full and incremental validation disagree");
        fast
    }

    #[test]
    fn agrees_with_full_validation() {
        let b = base(50);
        // Adding a peer: fine, or clashing with a kept one by name, key or prefix.
        let mut new = b.clone();
        new.peers.push(peer("new", &["198.19.9.0/24"]));
        assert_eq!(agree(&b, &new), Ok(()));
        let mut new = b.clone();
        new.peers.push(peer("p7", &["198.19.9.0/24"]));
        assert_eq!(agree(&b, &new), Err("name".into()));
        let mut new = b.clone();
        let mut dup = (*peer("dup", &[])).clone();
        dup.public_key = b.peers[3].public_key;
        new.peers.push(Arc::new(dup));
        assert_eq!(agree(&b, &new), Err("public-key".into()));
        let mut new = b.clone();
        new.peers.push(peer("new", &["198.18.0.5/32"]));
        assert_eq!(agree(&b, &new), Err("allowed-ips".into()));
        // Nested is fine; listed twice is not.
        let mut new = b.clone();
        new.peers.push(peer("hub", &["198.18.0.0/16", "0.0.0.0/0"]));
        assert_eq!(agree(&b, &new), Ok(()));
        let mut new = b.clone();
        new.peers
            .push(peer("twice", &["198.19.1.0/24", "198.19.1.0/24"]));
        assert_eq!(agree(&b, &new), Err("allowed-ips".into()));

        // A prefix moving from a changed peer to a new one; a removed peer's name reused.
        let mut new = b.clone();
        new.peer_mut(5).allowed_ips.clear();
        new.peers.push(peer("taker", &["198.18.0.5/32"]));
        assert_eq!(agree(&b, &new), Ok(()));
        let mut new = b.clone();
        new.peers.remove(9);
        new.peers.push(peer("p9", &["198.18.0.9/32"]));
        assert_eq!(agree(&b, &new), Ok(()));
        // Two new peers clashing with each other.
        let mut new = b.clone();
        new.peers.push(peer("x", &["198.19.3.0/24"]));
        new.peers.push(peer("y", &["198.19.3.0/24"]));
        assert_eq!(agree(&b, &new), Err("allowed-ips".into()));
        // A changed peer renamed onto a kept one's name.
        let mut new = b.clone();
        new.peer_mut(1).name = "p2".into();
        assert_eq!(agree(&b, &new), Err("name".into()));
        // Bad syntax in a changed peer.
        let mut new = b.clone();
        new.peer_mut(0).persistent_keepalive = Some(0);
        assert_eq!(agree(&b, &new), Err("persistent-keepalive".into()));
    }

    #[test]
    fn the_delta_finds_every_changed_peer_even_when_reordered() {
        let b = base(10);
        let mut new = b.clone();
        new.peers.reverse();
        new.peer_mut(0).name = "renamed".into();
        let delta = Delta::between(&b, &new);
        // Reversed: everything counts as changed, safely.
        assert!(delta.fresh.iter().any(|(at, _)| *at == 0));
        assert_eq!(agree(&b, &new), Ok(()));
        let mut new = b.clone();
        new.peers.remove(3);
        new.peers.insert(6, peer("mid", &["198.19.4.0/24"]));
        let delta = Delta::between(&b, &new);
        assert_eq!(delta.fresh.len(), 1);
        assert_eq!(delta.gone.len(), 1);
        assert_eq!(delta.gone[0].name, "p3");
    }

    #[test]
    fn the_index_follows_applied_changes() {
        let b = base(20);
        let mut index = PeerIndex::new(&b);
        let mut new = b.clone();
        new.peers.remove(4);
        new.peer_mut(6).allowed_ips = vec!["198.19.6.0/24".parse().unwrap()];
        new.peers.push(peer("late", &["198.18.0.4/32"]));
        let delta = Delta::between(&b, &new);
        new.validate_change(&b, &delta, &index).unwrap();
        index.apply(&delta);
        let rebuilt = PeerIndex::new(&new);
        assert_eq!(index.names, rebuilt.names);
        assert_eq!(index.keys, rebuilt.keys);
        assert_eq!(index.prefixes, rebuilt.prefixes);
    }

    #[test]
    fn a_change_among_100k_peers_is_checked_quickly() {
        let b = base(100_000);
        let index = PeerIndex::new(&b);
        let mut new = b.clone();
        new.peers.push(peer("one-more", &["198.19.250.0/24"]));
        let start = std::time::Instant::now();
        new.validate_change(&b, &Delta::between(&b, &new), &index)
            .unwrap();
        // Generous for a debug build; the full validation takes far longer.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
