//! The packet path's view of the peers: what several packet threads read and change without
//! the engine's lock.
//!
//! Owns: each peer's [`Lane`] (its session state, its traffic counters, and what the engine
//! published of its path: where to send, where it may send from), the receiver-index map, the
//! published snapshot of the routing table and lanes, and the fast path itself
//! ([`DataPath::encrypt`], [`DataPath::decrypt`]). Doesn't own: any decision that changes a
//! peer beyond its session's keys and counters (the engine's: handshakes, roaming, timers,
//! liveness, configuration).
//!
//! Locks, and their order:
//! - the engine's own lock (the daemon's `Mutex<Engine>`) is never taken here;
//! - a lane's mutex guards one peer: a packet thread holds it for one encryption or
//!   decryption, the engine (under its lock) for that peer's timer run or slow-path packet.
//!   Order: engine, then lane; never two lanes at once, never the engine while holding a lane;
//! - the index map is sharded (64 `RwLock`s by index): a datagram takes one shard's read lock
//!   for one hash lookup; the engine writes a shard when a session gets or drops an index;
//! - the routing table and the lanes by peer slot are an immutable [`Snapshot`] behind an
//!   `ArcSwap`: a packet reads it with no lock at all, and the engine publishes a new one after
//!   a change ([`crate::Engine::publish`]).
//!
//! The fast path serves the common case, transport data of an established session on a known
//! path, and hands everything else back ([`Fast::Slow`]): the caller then gives that packet
//! to the engine under its lock, which decides as it always has. It never changes what the
//! slow path would have decided: it only takes packets the engine published as routine for
//! this peer (the endpoint and local address it knows, not awaiting key confirmation, not
//! down), and a datagram that does not decrypt is handed back untouched (boringtun marks the
//! replay window only after the tag checks), so the engine counts and logs it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use arc_swap::ArcSwap;
use boringtun::noise::{Tunn, TunnResult};

use crate::log_limit::{LogKind, LogLimiter};
use crate::peers::PeerId;
use crate::routing::RoutingTable;
use crate::session::{Session, Slot};
use crate::{
    Instant, Transmit, MIN_BUF, OVERHEAD, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES, TYPE_DATA,
    TYPE_HANDSHAKE_INIT,
};

/// One peer, as the packet threads see it. Aligned to (two) cache lines, so that the lock
/// and counters one thread writes for its peer never share a line with another peer's.
#[repr(align(128))]
pub(crate) struct Lane {
    pub id: PeerId,
    state: Mutex<LaneState>,
}

impl Lane {
    pub fn new(id: PeerId) -> Self {
        Self {
            id,
            state: Mutex::new(LaneState::default()),
        }
    }

    /// Locks this peer's state. A panic while holding it would be a bug in boringtun or the
    /// engine; the state is still usable, so it is taken rather than wedging every thread.
    pub fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a peer's lane holds.
#[derive(Default)]
pub(crate) struct LaneState {
    /// The boringtun state, created on the first handshake or packet and dropped when the
    /// link has been dead long enough that boringtun gave up (`None`: an idle peer).
    pub session: Option<Box<Session>>,
    pub traffic: Traffic,
    /// What the engine published for the fast path (see [`crate::Engine`]'s `sync_lane`).
    pub path: Path,
    /// Initiations the fast path sent (a packet to a peer whose session had expired between
    /// timer runs): the engine counts them as attempts at the peer's next timer run.
    pub initiated: Option<Instant>,
    /// Decrypted packets the fast path dropped for their source (the inbound check), for the
    /// peer's `bad_source`.
    pub bad_source: u64,
}

/// A peer's traffic: kept here, not in the peer record, because every packet changes it.
#[derive(Default, Clone, Copy)]
pub(crate) struct Traffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// When we last sent this peer anything; persistent keepalives measure from here.
    pub last_sent: Option<Instant>,
    /// When its last authenticated packet arrived; liveness measures from here.
    pub last_received: Option<Instant>,
}

impl Traffic {
    pub fn sent(&mut self, now: Instant, len: usize) {
        self.tx_bytes += len as u64;
        self.last_sent = Some(now);
    }

    pub fn received(&mut self, now: Instant, len: usize) {
        self.rx_bytes += len as u64;
        self.last_received = Some(now);
    }
}

/// The engine's word on a peer's path, for the fast path.
#[derive(Default, Clone, Copy)]
pub(crate) struct Path {
    /// Where its datagrams go (its endpoint), from which of our addresses.
    pub send_to: Option<SocketAddr>,
    pub local: Option<IpAddr>,
    /// The endpoint, if datagrams from it need no check (`allowed-endpoints` admits it):
    /// a datagram from anywhere else goes to the engine (roaming, refusal).
    pub accept_from: Option<SocketAddr>,
    /// The index of the session whose first data completes a handshake (key confirmation):
    /// that datagram goes to the engine.
    pub awaiting_confirm: Option<u32>,
    /// Liveness is not down, so an authenticated packet needs no liveness work.
    pub heard_ok: bool,
}

const INDEX_SHARDS: usize = 64;

/// Receiver index (24 bits) → lane, sharded so that threads reading different indices do not
/// share a lock, and a handshake's write blocks one shard for a moment.
pub(crate) struct IndexMap {
    shards: Vec<Shard>,
}

/// One shard, on cache lines of its own: a read lock writes the lock's word, and shards of
/// different peers' indices must not share a line.
#[repr(align(128))]
#[derive(Default)]
struct Shard(RwLock<HashMap<u32, Arc<Lane>>>);

impl Default for IndexMap {
    fn default() -> Self {
        Self {
            shards: (0..INDEX_SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl IndexMap {
    fn shard(&self, index: u32) -> &RwLock<HashMap<u32, Arc<Lane>>> {
        &self.shards[index as usize % INDEX_SHARDS].0
    }

    pub fn get(&self, index: u32) -> Option<Arc<Lane>> {
        let shard = self.shard(index).read().unwrap_or_else(|p| p.into_inner());
        shard.get(&index).cloned()
    }

    pub fn peer(&self, index: u32) -> Option<PeerId> {
        let shard = self.shard(index).read().unwrap_or_else(|p| p.into_inner());
        shard.get(&index).map(|lane| lane.id)
    }

    pub fn contains(&self, index: u32) -> bool {
        let shard = self.shard(index).read().unwrap_or_else(|p| p.into_inner());
        shard.contains_key(&index)
    }

    pub fn insert(&self, index: u32, lane: Arc<Lane>) {
        let mut shard = self.shard(index).write().unwrap_or_else(|p| p.into_inner());
        shard.insert(index, lane);
    }

    pub fn remove(&self, index: u32) {
        let mut shard = self.shard(index).write().unwrap_or_else(|p| p.into_inner());
        shard.remove(&index);
    }
}

/// The routing table and the lanes by peer slot, as the engine last published them.
#[derive(Default)]
pub(crate) struct Snapshot {
    pub routes: Arc<RoutingTable<PeerId>>,
    /// Indexed by peer slot; a removed peer's slot is `None` or holds its successor.
    pub lanes: Vec<Option<Arc<Lane>>>,
}

impl Snapshot {
    fn lane(&self, id: PeerId) -> Option<&Arc<Lane>> {
        self.lanes
            .get(id.slot())?
            .as_ref()
            .filter(|lane| lane.id == id)
    }
}

/// What the engine and its packet threads share.
pub(crate) struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub index: Arc<IndexMap>,
    pub standby: AtomicBool,
    pub log: Arc<LogLimiter>,
    /// Counted by the fast path; added to the engine's own in [`crate::Engine::counters`].
    pub bad_source: AtomicU64,
    pub invalid: AtomicU64,
}

/// What the fast path did with a packet.
pub enum Fast<'b> {
    /// Send this datagram.
    Network(Transmit<'b>),
    /// Write this decrypted packet to the TUN device.
    Tunnel(&'b [u8]),
    /// Handled: nothing to send or write (a keepalive, or a packet dropped and counted).
    Done,
    /// Not routine: give the same packet, unchanged, to the engine
    /// ([`crate::Engine::handle_tunnel_packet`] or [`crate::Engine::handle_datagram`]).
    Slow,
}

/// A packet thread's handle on the engine's fast path. Cheap to clone; every method takes
/// `&self` and no engine lock.
#[derive(Clone)]
pub struct DataPath {
    pub(crate) shared: Arc<Shared>,
}

impl DataPath {
    /// Encrypts an IP packet read from the TUN device, if its peer has a session and an
    /// endpoint; [`Fast::Slow`] otherwise (and for every packet of an HA standby).
    pub fn encrypt<'b>(&self, now: Instant, packet: &[u8], buf: &'b mut [u8]) -> Fast<'b> {
        let shared = &*self.shared;
        if shared.standby.load(Ordering::Relaxed)
            || buf.len() < MIN_BUF.max(packet.len() + OVERHEAD)
        {
            return Fast::Slow;
        }
        let Some(dst) = Tunn::dst_address(packet) else {
            return Fast::Slow;
        };
        let snapshot = shared.snapshot.load();
        let Some(lane) = snapshot.routes.lookup(dst).and_then(|id| snapshot.lane(id)) else {
            return Fast::Slow;
        };
        let mut state = lane.lock();
        let state = &mut *state;
        let (Some(endpoint), local) = (state.path.send_to, state.path.local) else {
            return Fast::Slow;
        };
        let Some(session) = state.session.as_mut() else {
            return Fast::Slow;
        };
        let slot = session.send_slot();
        let Some(tunnel) = session.tunnel(slot) else {
            return Fast::Slow;
        };
        if tunnel.sent >= REJECT_AFTER_MESSAGES {
            return Fast::Slow;
        }
        match tunnel.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(payload) => {
                match payload[0] {
                    TYPE_DATA => {
                        tunnel.sent += 1;
                        tunnel.rekey_due |= tunnel.sent == REKEY_AFTER_MESSAGES;
                    }
                    // The keys expired since the last timer run: boringtun queued the packet
                    // and starts a handshake (the engine flushes the queue when it completes).
                    TYPE_HANDSHAKE_INIT => state.initiated = Some(now),
                    _ => {}
                }
                state.traffic.sent(now, payload.len());
                Fast::Network(Transmit {
                    dst: endpoint,
                    src: local,
                    payload,
                })
            }
            // boringtun queued it (a handshake is under way) or cannot encrypt: nothing sent.
            _ => Fast::Done,
        }
    }

    /// Decrypts a transport data datagram from `from`, arrived at our address `local`, if it
    /// belongs to the current or previous keys of a peer whose path it matches;
    /// [`Fast::Slow`] for anything else (handshake messages, unknown indices, a new endpoint
    /// or local address, key confirmation, a down peer, a datagram that does not decrypt).
    pub fn decrypt<'b>(
        &self,
        now: Instant,
        from: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        buf: &'b mut [u8],
    ) -> Fast<'b> {
        let shared = &*self.shared;
        if datagram.len() < 32
            || datagram[..4] != [TYPE_DATA, 0, 0, 0]
            || buf.len() < MIN_BUF.max(datagram.len())
            || shared.standby.load(Ordering::Relaxed)
        {
            return Fast::Slow;
        }
        let index = u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
        let Some(lane) = shared.index.get(index >> 8) else {
            return Fast::Slow;
        };
        let mut state = lane.lock();
        let state = &mut *state;
        let path = state.path;
        if path.accept_from != Some(from)
            || !path.heard_ok
            || path.awaiting_confirm == Some(index)
            || local.is_some_and(|l| path.local != Some(l))
        {
            return Fast::Slow;
        }
        let Some(session) = state.session.as_mut() else {
            return Fast::Slow;
        };
        let Some(slot @ (Slot::Current | Slot::Previous)) = session.slot_of(index >> 8) else {
            return Fast::Slow;
        };
        let Some(tunnel) = session.tunnel(slot) else {
            return Fast::Slow;
        };
        let base = buf.as_ptr() as usize;
        let (range, src) = match tunnel.tunn.decapsulate(Some(from.ip()), datagram, buf) {
            TunnResult::WriteToTunnelV4(out, src) => (crate::range_of(base, out), IpAddr::V4(src)),
            TunnResult::WriteToTunnelV6(out, src) => (crate::range_of(base, out), IpAddr::V6(src)),
            // A keepalive (or, never for data, anything else boringtun accepted).
            TunnResult::Done | TunnResult::WriteToNetwork(_) => {
                state.traffic.received(now, datagram.len());
                return Fast::Done;
            }
            // Not marked in the replay window: the engine does it again, counts and logs.
            TunnResult::Err(_) => return Fast::Slow,
        };
        state.traffic.received(now, datagram.len());
        // The inbound source check (as the engine's `inbound`).
        let header = if src.is_ipv4() { 20 } else { 40 };
        if range.len() < header {
            shared.invalid.fetch_add(1, Ordering::Relaxed);
            return Fast::Done;
        }
        let snapshot = shared.snapshot.load();
        if snapshot.routes.lookup(src) != Some(lane.id) {
            shared.bad_source.fetch_add(1, Ordering::Relaxed);
            state.bad_source += 1;
            if let Some(n) = shared.log.allow(LogKind::BadSource, now) {
                tracing::warn!(%from, %src, suppressed = n,
                    "dropped decrypted packet whose source is routed to another peer (or to none)");
            }
            return Fast::Done;
        }
        Fast::Tunnel(&buf[range])
    }
}
