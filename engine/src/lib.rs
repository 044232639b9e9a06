//! sitelink's WireGuard engine, free of I/O.
//!
//! Owns: the peer table (lookup by public key, by 24-bit receiver index and by allowed-ips),
//! one `boringtun::noise::Tunn` per peer, the shared handshake rate limiter, the inbound
//! source check, endpoint roaming, timer ticks and re-initiation after a dead link, and the
//! per-peer counters that status reports. Doesn't own: sockets, the TUN device, the clock,
//! DNS, logging sinks; the caller (sitelinkd) does all I/O and passes time in.
//!
//! # Contract
//! Inputs, each taking caller-owned buffers and returning borrowed results:
//! - [`Engine::handle_tunnel_packet`]: an IP packet read from the TUN device; returns the
//!   datagram to send, if any.
//! - [`Engine::handle_datagram`]: a UDP datagram from the network; returns a decrypted packet
//!   for the TUN device, a datagram to send back, or nothing.
//! - [`Engine::handle_timeout`]: call when `now >= poll_timeout()`.
//!
//! Outputs: after a batch of inputs (and after `handle_timeout`), call
//! [`Engine::poll_transmit`] until it returns `None`: it flushes packets boringtun queued while
//! a handshake was in flight, then runs each peer's timers (handshake retries, keepalives,
//! rekeys). [`Engine::poll_timeout`] says when to call `handle_timeout` next.
//!
//! Buffers: every `buf` must be at least [`MIN_BUF`] bytes and at least the input length
//! plus [`OVERHEAD`]; a shorter one gets the packet dropped and counted, never a panic.

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod allowed_ips;
mod log_limit;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use sitelink_config::{Cidr, PresharedKey, PrivateKey, PublicKey};

use crate::allowed_ips::AllowedIps;
use crate::log_limit::{LogKind, LogLimiter};

/// The engine's monotonic clock type: std's, or mock_instant's in tests.
#[cfg(feature = "mock-instant")]
pub use mock_instant::Instant;
#[cfg(not(feature = "mock-instant"))]
pub use std::time::Instant;

/// Smallest buffer any engine call accepts (a handshake initiation is 148 bytes).
pub const MIN_BUF: usize = 148;
/// Bytes WireGuard adds to an IP packet (16 header + 16 tag).
pub const OVERHEAD: usize = 32;
/// How often peer timers run. boringtun's clock only advances inside `update_timers`, and
/// its timers assume a call at least every 250 ms.
pub const TICK: Duration = Duration::from_millis(100);
/// Minimum spacing of our own re-initiations of an expired link.
const REINIT_INTERVAL: Duration = Duration::from_secs(5);
/// Handshake messages per second before cookie replies are demanded. Every initiation
/// passes the shared limiter twice (our mac1 pre-check before the expensive anonymous
/// parse, then `decapsulate`), so this is twice the effective limit of 100/s.
const HANDSHAKE_RATE_LIMIT: u64 = 200;

const TYPE_COOKIE_REPLY: u8 = 3;
const COOKIE_REPLY_LEN: usize = 64;

/// What a peer is, as the engine needs it: endpoints are already resolved addresses.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub name: String,
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Cidr>,
    pub persistent_keepalive: Option<u16>,
}

/// A peer's handle, stable for the peer's lifetime in this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u32);

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit<'a> {
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// What became of a datagram from the network.
#[derive(Debug)]
pub enum Received<'a> {
    /// A decrypted IP packet, source already checked against the peer's allowed-ips.
    Tunnel(&'a [u8]),
    /// A handshake message or cookie reply to send back.
    Network(Transmit<'a>),
    /// Consumed (keepalive, cookie) or dropped (and counted).
    Nothing,
}

/// Why the engine dropped packets, for status and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// TUN packets whose destination matches no peer's allowed-ips.
    pub no_route: u64,
    /// TUN packets for a peer whose endpoint is not known yet.
    pub no_endpoint: u64,
    /// Decrypted packets whose source is outside the sending peer's allowed-ips.
    pub bad_source: u64,
    /// Handshake initiations from a public key that is not a configured peer.
    pub unknown_key: u64,
    /// Datagrams naming a receiver index no peer has.
    pub unknown_index: u64,
    /// Datagrams that failed to parse, authenticate or decrypt.
    pub invalid: u64,
    /// Cookie replies sent because handshakes arrived faster than the limit.
    pub cookie_replies: u64,
}

/// A peer as status reports it. Holds no secrets.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub id: PeerId,
    pub name: String,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Cidr>,
    pub persistent_keepalive: Option<u16>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub bad_source: u64,
    pub up: bool,
}

struct Peer {
    name: String,
    public_key: PublicKey,
    tunn: Tunn,
    index: u32,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<Cidr>,
    keepalive: Option<u16>,
    last_handshake: Option<SystemTime>,
    rx_bytes: u64,
    tx_bytes: u64,
    bad_source: u64,
    up: bool,
    next_reinit: Option<Instant>,
    /// When we last sent this peer anything; persistent keepalives measure from here.
    last_sent: Option<Instant>,
    preshared_key: Option<PresharedKey>,
}

/// Errors from changing the peer set. Config validation catches these first; the engine
/// checks again so its tables can never disagree.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("peer {0:?}: its public key is already used by another peer")]
    DuplicateKey(String),
    #[error("peer {0:?}: its public key is our own")]
    OwnKey(String),
}

/// The WireGuard engine for one interface. See the crate docs for the calling contract.
pub struct Engine {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    our_key: PublicKey,
    peers: HashMap<PeerId, Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    by_index: HashMap<u32, PeerId>,
    routes: AllowedIps<PeerId>,
    limiter: Arc<RateLimiter>,
    next_peer_id: u32,
    next_index: u32,
    now: Instant,
    wall: SystemTime,
    next_tick: Instant,
    next_limiter_reset: Instant,
    pending_flush: Vec<PeerId>,
    timer_queue: Vec<PeerId>,
    counters: Counters,
    log: LogLimiter,
}

impl Engine {
    pub fn new(private_key: &PrivateKey, now: Instant, wall: SystemTime) -> Self {
        let secret = x25519::StaticSecret::from(*private_key.as_bytes());
        let public = x25519::PublicKey::from(&secret);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Self {
            secret,
            our_key: PublicKey::from_bytes(public.to_bytes()),
            public,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            routes: AllowedIps::default(),
            limiter,
            next_peer_id: 0,
            next_index: random_u32() & 0x00ff_ffff,
            now,
            wall,
            next_tick: now,
            next_limiter_reset: now + Duration::from_secs(1),
            pending_flush: Vec::new(),
            timer_queue: Vec::new(),
            counters: Counters::default(),
            log: LogLimiter::default(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.our_key
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Adds a peer and its routes. It starts with no session; the first packet to it (or a
    /// persistent keepalive) starts the handshake.
    pub fn add_peer(&mut self, spec: PeerSpec) -> Result<PeerId, EngineError> {
        if spec.public_key == self.our_key {
            return Err(EngineError::OwnKey(spec.name));
        }
        if self.by_key.contains_key(&spec.public_key) {
            return Err(EngineError::DuplicateKey(spec.name));
        }
        let id = PeerId(self.next_peer_id);
        self.next_peer_id += 1;
        let index = self.allocate_index();
        let tunn = self.new_tunn(&spec.public_key, spec.preshared_key.as_ref(), index);
        for cidr in &spec.allowed_ips {
            self.routes.insert(*cidr, id);
        }
        self.by_key.insert(spec.public_key, id);
        self.by_index.insert(index, id);
        self.peers.insert(
            id,
            Peer {
                name: spec.name,
                public_key: spec.public_key,
                tunn,
                index,
                endpoint: spec.endpoint,
                allowed_ips: spec.allowed_ips,
                keepalive: spec.persistent_keepalive,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                bad_source: 0,
                up: false,
                next_reinit: None,
                last_sent: None,
                preshared_key: spec.preshared_key,
            },
        );
        Ok(id)
    }

    /// A fresh boringtun session state for a peer. Persistent keepalive is not handed to
    /// boringtun (it has no setter for it): the engine sends keepalives itself, so an
    /// operator can change the interval without breaking the session.
    fn new_tunn(&self, key: &PublicKey, psk: Option<&PresharedKey>, index: u32) -> Tunn {
        Tunn::new(
            self.secret.clone(),
            x25519::PublicKey::from(*key.as_bytes()),
            psk.map(|k| *k.as_bytes()),
            None,
            index,
            Some(Arc::clone(&self.limiter)),
        )
    }

    /// Renames a peer (names are labels; the public key is its identity).
    pub fn set_name(&mut self, id: PeerId, name: String) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.name = name;
        }
    }

    /// Replaces a peer's allowed-ips (routing and the inbound source check). The session
    /// is untouched.
    pub fn set_allowed_ips(&mut self, id: PeerId, allowed_ips: Vec<Cidr>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        self.routes.remove_value(id);
        for cidr in &allowed_ips {
            self.routes.insert(*cidr, id);
        }
        peer.allowed_ips = allowed_ips;
    }

    /// Changes the persistent keepalive interval. The session is untouched.
    pub fn set_keepalive(&mut self, id: PeerId, keepalive: Option<u16>) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.keepalive = keepalive;
        }
    }

    /// Changes a peer's preshared key. The key is part of the handshake, so the peer gets
    /// a fresh session (and a new receiver index): the next packet re-handshakes.
    pub fn set_preshared_key(&mut self, id: PeerId, psk: Option<PresharedKey>) {
        let index = self.allocate_index();
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let tunn = self.new_tunn(&peer.public_key, psk.as_ref(), index);
        self.replace_session(id, tunn, index, psk);
    }

    /// Changes our private key: every peer gets a fresh session.
    pub fn set_private_key(&mut self, private_key: &PrivateKey) {
        self.secret = x25519::StaticSecret::from(*private_key.as_bytes());
        self.public = x25519::PublicKey::from(&self.secret);
        self.our_key = PublicKey::from_bytes(self.public.to_bytes());
        self.limiter = Arc::new(RateLimiter::new(&self.public, HANDSHAKE_RATE_LIMIT));
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let psk = self.peers.get(&id).and_then(|p| p.preshared_key.clone());
            self.set_preshared_key(id, psk);
        }
    }

    fn replace_session(&mut self, id: PeerId, tunn: Tunn, index: u32, psk: Option<PresharedKey>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        self.by_index.remove(&peer.index);
        self.by_index.insert(index, id);
        self.pending_flush.retain(|p| *p != id);
        peer.tunn = tunn;
        peer.index = index;
        peer.preshared_key = psk;
        peer.up = false;
        peer.next_reinit = None;
    }

    /// Removes a peer, its routes and its session.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(peer) = self.peers.remove(&id) else {
            return false;
        };
        self.by_key.remove(&peer.public_key);
        self.by_index.remove(&peer.index);
        self.routes.remove_value(id);
        self.pending_flush.retain(|p| *p != id);
        self.timer_queue.retain(|p| *p != id);
        true
    }

    /// Sets a peer's endpoint (a resolved host name, or an operator's change).
    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.endpoint = Some(endpoint);
        }
    }

    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        let mut ids: Vec<_> = self.peers.keys().copied().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.peer_status(id))
    }

    pub fn peer_status(&self, id: PeerId) -> Option<PeerStatus> {
        let p = self.peers.get(&id)?;
        Some(PeerStatus {
            id,
            name: p.name.clone(),
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.keepalive,
            last_handshake: p.last_handshake,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            bad_source: p.bad_source,
            up: p.up,
        })
    }

    /// Encrypts an IP packet read from the TUN device for the peer whose allowed-ips hold
    /// its destination. Returns the datagram to send, or `None` when the packet was queued
    /// behind a handshake or dropped (counted).
    pub fn handle_tunnel_packet<'b>(
        &mut self,
        packet: &[u8],
        buf: &'b mut [u8],
    ) -> Option<Transmit<'b>> {
        let Some(dst) = Tunn::dst_address(packet) else {
            self.counters.invalid += 1;
            return None;
        };
        let Some(id) = self.routes.lookup(dst) else {
            self.counters.no_route += 1;
            return None;
        };
        let peer = self.peers.get_mut(&id)?;
        let Some(endpoint) = peer.endpoint else {
            self.counters.no_endpoint += 1;
            if let Some(n) = self.log.allow(LogKind::NoEndpoint, self.now) {
                tracing::warn!(peer = %peer.name, %dst, suppressed = n,
                    "dropping packet: peer has no endpoint yet (set `endpoint`, or wait for it to connect to us)");
            }
            return None;
        };
        if buf.len() < MIN_BUF.max(packet.len() + OVERHEAD) {
            self.counters.invalid += 1;
            return None;
        }
        match peer.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(payload) => {
                peer.tx_bytes += payload.len() as u64;
                Some(Transmit {
                    dst: endpoint,
                    payload,
                })
            }
            TunnResult::Err(e) => {
                if let Some(n) = self.log.allow(LogKind::Encapsulate, self.now) {
                    tracing::warn!(peer = %peer.name, error = ?e, suppressed = n, "cannot encrypt packet");
                }
                None
            }
            _ => None,
        }
    }

    /// Handles a datagram from `from`. Handshake initiations pass the rate limiter's mac1
    /// check before the (expensive) anonymous parse that finds their peer; other messages
    /// find their peer by receiver index. A peer's endpoint moves to `from` only after its
    /// packet authenticated: never on cookie replies, in either direction.
    pub fn handle_datagram<'b>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        buf: &'b mut [u8],
    ) -> Received<'b> {
        if buf.len() < MIN_BUF.max(datagram.len()) {
            self.counters.invalid += 1;
            return Received::Nothing;
        }
        match self.datagram_step(from, datagram, buf) {
            Step::Nothing | Step::Dropped => Received::Nothing,
            Step::Tunnel(r) => Received::Tunnel(&buf[r]),
            Step::Network(dst, r) => Received::Network(Transmit {
                dst,
                payload: &buf[r],
            }),
        }
    }

    fn datagram_step(&mut self, from: SocketAddr, datagram: &[u8], buf: &mut [u8]) -> Step {
        let id = match self.find_peer(from, datagram, buf) {
            Ok(id) => id,
            Err(step) => return step,
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return Step::Nothing;
        };
        let kind = datagram[0];
        let base = buf.as_ptr() as usize;
        let (step, authenticated) = match peer.tunn.decapsulate(Some(from.ip()), datagram, buf) {
            TunnResult::Done => (Step::Nothing, kind != TYPE_COOKIE_REPLY),
            TunnResult::Err(e) => {
                self.counters.invalid += 1;
                if let Some(n) = self.log.allow(LogKind::Refused, self.now) {
                    tracing::info!(peer = %peer.name, key = %peer.public_key.short(), %from,
                        reason = reason(&e), suppressed = n, "refused packet");
                }
                (Step::Nothing, false)
            }
            TunnResult::WriteToNetwork(out) => {
                let authenticated = kind != TYPE_COOKIE_REPLY && out[0] != TYPE_COOKIE_REPLY;
                if out[0] == TYPE_COOKIE_REPLY {
                    self.counters.cookie_replies += 1;
                } else {
                    // boringtun may hold packets queued behind this handshake.
                    self.pending_flush.push(id);
                    peer.tx_bytes += out.len() as u64;
                    peer.last_sent = Some(self.now);
                }
                (Step::Network(from, range_of(base, out)), authenticated)
            }
            TunnResult::WriteToTunnelV4(out, src) => {
                let src = IpAddr::V4(src);
                (inbound(&self.routes, id, src, range_of(base, out)), true)
            }
            TunnResult::WriteToTunnelV6(out, src) => {
                let src = IpAddr::V6(src);
                (inbound(&self.routes, id, src, range_of(base, out)), true)
            }
        };
        if authenticated {
            // Status shows a handshake the moment it completes, not at the next tick.
            if kind != 4 || !peer.up {
                note_handshake(peer, self.wall);
            }
            peer.rx_bytes += datagram.len() as u64;
            if peer.endpoint != Some(from) {
                if peer.endpoint.is_some() {
                    tracing::info!(peer = %peer.name, key = %peer.public_key.short(), endpoint = %from, "peer roamed to a new endpoint");
                }
                peer.endpoint = Some(from);
            }
        }
        if matches!(step, Step::Dropped) {
            self.counters.bad_source += 1;
            peer.bad_source += 1;
            if let Some(n) = self.log.allow(LogKind::BadSource, self.now) {
                tracing::warn!(peer = %peer.name, suppressed = n,
                    "dropped decrypted packet whose source is outside the peer's allowed-ips");
            }
            return Step::Nothing;
        }
        step
    }

    /// Finds the peer a datagram belongs to, or what to do instead.
    fn find_peer(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
    ) -> Result<PeerId, Step> {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.counters.invalid += 1;
                return Err(Step::Nothing);
            }
        };
        let index = match packet {
            Packet::HandshakeInit(ref init) => {
                let mut cookie = [0u8; COOKIE_REPLY_LEN];
                let verified = self
                    .limiter
                    .verify_packet(Some(from.ip()), datagram, &mut cookie);
                match verified {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(reply)) => {
                        self.counters.cookie_replies += 1;
                        let n = reply.len();
                        buf[..n].copy_from_slice(reply);
                        return Err(Step::Network(from, 0..n));
                    }
                    Err(result) => {
                        self.counters.invalid += 1;
                        if let (TunnResult::Err(e), Some(n)) =
                            (result, self.log.allow(LogKind::Refused, self.now))
                        {
                            tracing::info!(%from, reason = reason(&e), suppressed = n, "refused handshake");
                        }
                        return Err(Step::Nothing);
                    }
                }
                let half = match parse_handshake_anon(&self.secret, &self.public, init) {
                    Ok(half) => half,
                    Err(e) => {
                        self.counters.invalid += 1;
                        if let Some(n) = self.log.allow(LogKind::Refused, self.now) {
                            tracing::info!(%from, reason = reason(&e), suppressed = n, "refused handshake");
                        }
                        return Err(Step::Nothing);
                    }
                };
                let key = PublicKey::from_bytes(half.peer_static_public);
                return match self.by_key.get(&key) {
                    Some(id) => Ok(*id),
                    None => {
                        self.counters.unknown_key += 1;
                        if let Some(n) = self.log.allow(LogKind::UnknownKey, self.now) {
                            tracing::warn!(%from, public_key = %key, suppressed = n,
                                "refused handshake: public key is not a configured peer");
                        }
                        Err(Step::Nothing)
                    }
                };
            }
            Packet::HandshakeResponse(r) => r.receiver_idx,
            Packet::PacketCookieReply(c) => c.receiver_idx,
            Packet::PacketData(d) => d.receiver_idx,
        };
        match self.by_index.get(&(index >> 8)) {
            Some(id) => Ok(*id),
            None => {
                self.counters.unknown_index += 1;
                Err(Step::Nothing)
            }
        }
    }

    /// Runs timers: resets the rate limiter each second and queues every peer for a timer
    /// tick, which [`Engine::poll_transmit`] then performs.
    pub fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        self.now = now;
        self.wall = wall;
        if now >= self.next_limiter_reset {
            self.limiter.reset_count();
            self.next_limiter_reset = now + Duration::from_secs(1);
        }
        self.timer_queue.clear();
        self.timer_queue.extend(self.peers.keys().copied());
        self.next_tick = now + TICK;
    }

    /// When `handle_timeout` is due, and why.
    pub fn poll_timeout(&self) -> (Instant, &'static str) {
        (self.next_tick, "peer timers")
    }

    /// The next datagram to send that no input returned directly: packets queued behind a
    /// completed handshake, then timer output. Call until `None`.
    pub fn poll_transmit<'b>(&mut self, buf: &'b mut [u8]) -> Option<Transmit<'b>> {
        if buf.len() < MIN_BUF {
            return None;
        }
        loop {
            let out = if let Some(&id) = self.pending_flush.last() {
                let out = self.flush_step(id, buf);
                if out.is_none() {
                    self.pending_flush.pop();
                }
                out
            } else {
                let id = self.timer_queue.pop()?;
                self.timer_step(id, buf)
            };
            if let Some((dst, r)) = out {
                return Some(Transmit {
                    dst,
                    payload: &buf[r],
                });
            }
        }
    }

    fn flush_step(&mut self, id: PeerId, buf: &mut [u8]) -> Option<(SocketAddr, Range<usize>)> {
        let peer = self.peers.get_mut(&id)?;
        let endpoint = peer.endpoint?;
        let base = buf.as_ptr() as usize;
        match peer.tunn.decapsulate(None, &[], buf) {
            TunnResult::WriteToNetwork(out) => {
                peer.tx_bytes += out.len() as u64;
                peer.last_sent = Some(self.now);
                Some((endpoint, range_of(base, out)))
            }
            _ => None,
        }
    }

    fn timer_step(&mut self, id: PeerId, buf: &mut [u8]) -> Option<(SocketAddr, Range<usize>)> {
        let now = self.now;
        let wall = self.wall;
        let peer = self.peers.get_mut(&id)?;
        let base = buf.as_ptr() as usize;
        let out = match peer.tunn.update_timers(buf) {
            TunnResult::WriteToNetwork(out) => Some(range_of(base, out)),
            TunnResult::Err(WireGuardError::ConnectionExpired) => {
                if peer.up {
                    peer.up = false;
                    tracing::warn!(peer = %peer.name, key = %peer.public_key.short(), "peer down: no session and the handshake gave up");
                }
                // boringtun leaves an expired link dead. An always-on site link (endpoint
                // and keepalive) starts a fresh handshake itself, every few seconds.
                let wants_link = peer.endpoint.is_some() && peer.keepalive.is_some();
                if wants_link && peer.next_reinit.is_none_or(|t| now >= t) {
                    peer.next_reinit = Some(now + REINIT_INTERVAL);
                    tracing::debug!(peer = %peer.name, "re-initiating handshake on expired link");
                    match peer.tunn.format_handshake_initiation(buf, false) {
                        TunnResult::WriteToNetwork(out) => Some(range_of(base, out)),
                        _ => None,
                    }
                } else {
                    None
                }
            }
            _ => None,
        };
        // Persistent keepalive: nothing sent for the interval and we know where to send.
        // Without a session this starts the handshake, which is how an always-on link
        // comes up at start-up without waiting for traffic.
        let out = out.or_else(|| {
            let interval = Duration::from_secs(u64::from(peer.keepalive?));
            peer.endpoint?;
            if peer.last_sent.is_some_and(|t| now < t + interval) {
                return None;
            }
            match peer.tunn.encapsulate(&[], buf) {
                TunnResult::WriteToNetwork(out) => Some(range_of(base, out)),
                _ => None,
            }
        });
        note_handshake(peer, wall);
        let range = out?;
        let endpoint = peer.endpoint?;
        peer.tx_bytes += range.len() as u64;
        peer.last_sent = Some(now);
        Some((endpoint, range))
    }

    fn allocate_index(&mut self) -> u32 {
        loop {
            let index = self.next_index;
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }
}

/// Records a completed handshake's wall-clock time (and the peer coming up) once boringtun
/// reports a session. boringtun gives time since the handshake; a new one shows as a jump.
fn note_handshake(peer: &mut Peer, wall: SystemTime) {
    let Some(since) = peer.tunn.stats().0 else {
        return;
    };
    let at = wall.checked_sub(since).unwrap_or(wall);
    let is_new = match peer.last_handshake {
        None => true,
        Some(prev) => at > prev + Duration::from_secs(1),
    };
    if !is_new {
        return;
    }
    peer.last_handshake = Some(at);
    if !peer.up {
        peer.up = true;
        tracing::info!(peer = %peer.name, key = %peer.public_key.short(), endpoint = ?peer.endpoint, "handshake completed, peer up");
    } else {
        tracing::debug!(peer = %peer.name, "handshake completed (rekey)");
    }
}

/// A packet decision as byte ranges of the caller's buffer, so that borrows of the buffer
/// end before the caller re-slices it.
enum Step {
    Nothing,
    Dropped,
    Tunnel(Range<usize>),
    Network(SocketAddr, Range<usize>),
}

/// The inbound source check: a decrypted packet is accepted only if its source lies in
/// the sending peer's allowed-ips (longest match is that peer).
fn inbound(routes: &AllowedIps<PeerId>, id: PeerId, src: IpAddr, r: Range<usize>) -> Step {
    if routes.lookup(src) == Some(id) {
        Step::Tunnel(r)
    } else {
        Step::Dropped
    }
}

/// Where `part` (a sub-slice boringtun returned) lies within the buffer starting at
/// address `base` (taken before the call, so the buffer's borrow can end first).
fn range_of(base: usize, part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base);
    start..start + part.len()
}

/// A short, stable reason for a refused packet, for logs and status.
pub fn reason(e: &WireGuardError) -> &'static str {
    match e {
        WireGuardError::WrongKey => "wrong key",
        WireGuardError::InvalidMac => "invalid MAC (wrong public key configured for us?)",
        WireGuardError::InvalidCounter | WireGuardError::DuplicateCounter => "replayed packet",
        WireGuardError::WrongTai64nTimestamp => "replayed handshake (old timestamp)",
        WireGuardError::UnderLoad => "under load",
        WireGuardError::ConnectionExpired => "connection expired",
        WireGuardError::NoCurrentSession => "no current session",
        WireGuardError::WrongIndex | WireGuardError::UnexpectedPacket => "unexpected packet",
        WireGuardError::InvalidAeadTag => "decryption failed",
        WireGuardError::InvalidPacket => "malformed packet",
        _ => "other",
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // Index randomness is hygiene, not security (indices are visible on the wire); a
    // failing getrandom leaves zeros, which is still a valid starting index.
    let _ = getrandom::getrandom(&mut b);
    u32::from_le_bytes(b)
}

#[cfg(all(test, feature = "mock-instant"))]
mod tests;
