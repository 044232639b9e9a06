//! The peer store: every configured peer, found by handle, by public key and by the 24-bit
//! receiver index of its session.
//!
//! Owns: the per-peer record (identity, endpoint and sticky local address, counters, timers'
//! bookkeeping, and its [`Lane`]: the session state once there is one, and its traffic) and
//! the three lookups (the index map shared with the packet threads). Doesn't own: routing
//! (the routing table maps prefixes to [`PeerId`]s) or any protocol decision.
//!
//! Peers live in a slab: a [`PeerId`] is a slot number and a generation, so lookups by handle
//! are an index, and a handle of a removed peer never finds the peer that reuses its slot.
//! A peer without a session holds no `Tunn` at all (see [`crate::lanes::LaneState::session`]), about 200 bytes plus
//! its name and prefixes, so thousands of configured but idle peers stay cheap.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use sitelink_config::{Cidr, PresharedKey, PublicKey};

use crate::health::Health;
use crate::lanes::{IndexMap, Lane};
use crate::Instant;

/// A peer's handle, stable for the peer's lifetime in this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    slot: u32,
    generation: u32,
}

impl PeerId {
    /// The id of no peer, for a record not inserted yet.
    pub(crate) const UNSET: PeerId = PeerId {
        slot: u32::MAX,
        generation: 0,
    };

    pub(crate) fn slot(self) -> usize {
        self.slot as usize
    }
}

pub(crate) struct Peer {
    pub name: String,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Our address that the peer's latest authenticated packet arrived at: replies and
    /// initiations to the peer leave from it (sticky source), so a multi-homed gateway answers
    /// from the address the peer knows.
    pub local: Option<IpAddr>,
    pub allowed_ips: Vec<Cidr>,
    /// Source addresses its datagrams may come from; empty: any.
    pub allowed_endpoints: Vec<Cidr>,
    pub keepalive: Option<u16>,
    pub last_handshake: Option<SystemTime>,
    pub bad_source: u64,
    pub up: bool,
    /// Earliest time of our next own re-initiation of an expired always-on link.
    pub next_reinit: Option<Instant>,
    /// Attempts, last error, endpoint source: what `show` explains a link with.
    pub health: Health,
    /// An initiation is wanted at the next timer run ([`crate::Engine::initiate`]).
    pub initiate: bool,
    /// When we last answered this peer's stale-timestamp initiation with our own (at most
    /// one such answer per REKEY_TIMEOUT).
    pub stale_answered: Option<Instant>,
    /// The session index of the latest initiation we answered, until data arrives under it
    /// (then the handshake is complete: key confirmation).
    pub awaiting_confirm: Option<u32>,
    /// What the packet threads share of this peer: its session state (the boringtun
    /// `Tunn`s), traffic counters, and the path published for the fast path. Set by
    /// [`Peers::insert`].
    pub lane: Arc<Lane>,
    /// This peer's deadline in [`crate::timers::Deadlines`], if it has one.
    pub due: Option<Instant>,
    /// Creation order, for listing peers as they were added.
    pub created: u64,
    /// Up, holding down or down, for routing.
    pub liveness: crate::liveness::Liveness,
}

impl Peer {
    /// Accounts for a datagram we send this peer (attempts); its bytes and the keepalive
    /// clock are the lane's [`crate::lanes::Traffic::sent`].
    pub fn sent(&mut self, now: Instant, datagram: &[u8]) {
        if datagram.first() == Some(&crate::TYPE_HANDSHAKE_INIT) {
            self.health.initiation_sent(now);
        }
    }

    /// An endpoint and a keepalive: a link we keep up ourselves, traffic or not.
    pub fn always_on(&self) -> bool {
        self.endpoint.is_some() && self.keepalive.is_some()
    }
}

struct Entry {
    generation: u32,
    peer: Option<Peer>,
}

#[derive(Default)]
pub(crate) struct Peers {
    slots: Vec<Entry>,
    free: Vec<u32>,
    by_key: HashMap<PublicKey, PeerId>,
    /// Session index (24 bits) → peer. A peer has one entry per `Tunn` it holds. Shared
    /// with the packet threads.
    by_index: Arc<IndexMap>,
    created: u64,
}

impl Peers {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn insert(&mut self, mut peer: Peer) -> PeerId {
        peer.created = self.created;
        self.created += 1;
        let key = peer.public_key;
        let id = match self.free.pop() {
            Some(slot) => PeerId {
                slot,
                generation: self.slots[slot as usize].generation,
            },
            None => {
                // Slots fit in u32: four billion peers do not fit in memory first.
                let slot = self.slots.len() as u32;
                self.slots.push(Entry {
                    generation: 0,
                    peer: None,
                });
                PeerId {
                    slot,
                    generation: 0,
                }
            }
        };
        peer.lane = Arc::new(Lane::new(id));
        self.slots[id.slot()].peer = Some(peer);
        self.by_key.insert(key, id);
        id
    }

    /// Removes a peer and its index entries.
    pub fn remove(&mut self, id: PeerId) -> Option<Peer> {
        let entry = self.slots.get_mut(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        let peer = entry.peer.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(id.slot);
        self.by_key.remove(&peer.public_key);
        if let Some(session) = &peer.lane.lock().session {
            for index in session.indices() {
                self.by_index.remove(index);
            }
        }
        Some(peer)
    }

    pub fn get(&self, id: PeerId) -> Option<&Peer> {
        let entry = self.slots.get(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        entry.peer.as_ref()
    }

    pub fn get_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        let entry = self.slots.get_mut(id.slot as usize)?;
        if entry.generation != id.generation {
            return None;
        }
        entry.peer.as_mut()
    }

    pub fn by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn by_index(&self, index: u32) -> Option<PeerId> {
        self.by_index.peer(index)
    }

    pub fn index_in_use(&self, index: u32) -> bool {
        self.by_index.contains(index)
    }

    pub fn register_index(&mut self, index: u32, id: PeerId) {
        if let Some(peer) = self.get(id) {
            self.by_index.insert(index, Arc::clone(&peer.lane));
        }
    }

    pub fn release_index(&mut self, index: u32) {
        self.by_index.remove(index);
    }

    /// The index map, for the packet threads.
    pub fn index_map(&self) -> Arc<IndexMap> {
        Arc::clone(&self.by_index)
    }

    /// Every peer's lane by slot, for a [`crate::lanes::Snapshot`].
    pub fn lanes(&self) -> Vec<Option<Arc<Lane>>> {
        self.slots
            .iter()
            .map(|e| e.peer.as_ref().map(|p| Arc::clone(&p.lane)))
            .collect()
    }

    /// Every peer's handle, in creation order.
    pub fn ids(&self) -> Vec<PeerId> {
        let mut ids: Vec<(u64, PeerId)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| {
                let peer = e.peer.as_ref()?;
                // Slot numbers came from u32.
                let id = PeerId {
                    slot: slot as u32,
                    generation: e.generation,
                };
                Some((peer.created, id))
            })
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }
}
