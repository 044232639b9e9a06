//! sitelink's WireGuard engine, free of I/O.
//!
//! Owns every protocol decision above boringtun's `noise::Tunn`: which peer a packet goes to
//! (cryptokey routing, [`routing`]), which peer a datagram comes from (by public key or 24-bit
//! receiver index, [`peers`]), the inbound source check, endpoint roaming and the sticky local
//! address, peer deadlines ([`timers`]), session state created lazily and the hitless
//! preshared-key hand-over ([`session`]), re-initiation of always-on links, the handshake
//! gate that runs in front of it under floods ([`handshake`]: mac1, cookies under load,
//! per-source limits, the anonymous parse outside the engine's lock), each peer's link state
//! and last error ([`health`]), answering a stale-timestamp initiation with our own, and the
//! counters status reports. Doesn't own: sockets, the TUN
//! device, the clock, DNS, logging sinks; the caller (sitelinkd) does all I/O and passes time
//! in.
//!
//! # Contract
//! Inputs, each taking the current time and caller-owned buffers and returning borrowed
//! results:
//! - [`Engine::handle_tunnel_packet`]: an IP packet read from the TUN device; returns the
//!   datagram to send, if any.
//! - [`Engine::handle_datagram`]: a UDP datagram from the network, with the local address it
//!   arrived at; returns a decrypted packet for the TUN device, a datagram to send back, or
//!   nothing.
//! - [`Engine::handle_timeout`]: call when `now >= poll_timeout()` (and at least every second,
//!   so that wall-clock times stay right).
//!
//! Outputs: after a batch of inputs (and after `handle_timeout`), call
//! [`Engine::poll_transmit`] until it returns `None`: it flushes packets boringtun queued while
//! a handshake was in flight, then runs the timers of the peers that are due (handshake
//! retries, keepalives, rekeys). [`Engine::poll_timeout`] says when the next peer is due, and
//! why; `None` when no peer has anything scheduled (an idle engine does no periodic work). If a
//! send from a [`Transmit::src`] address fails because the address is gone, tell the engine
//! with [`Engine::forget_source`] and send again without it. [`Engine::initiate`] asks for an
//! initiation at the next timer run (a restarted daemon bringing its links back);
//! [`Engine::note_error`] records a problem only the caller sees (DNS, sends) as a peer's
//! last error.
//!
//! Buffers: every `buf` must be at least [`MIN_BUF`] bytes and at least the input length
//! plus [`OVERHEAD`]; a shorter one gets the packet dropped and counted, never a panic.
//!
//! Cost: a lookup is a trie walk (O(address bits)), a datagram a hash lookup; peers without a
//! session hold no boringtun state and have no timers, so an engine with 10,000 configured
//! peers does what one with its active peers does.

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod handshake;
pub mod health;
mod lanes;
pub mod liveness;
mod log_limit;
pub mod peers;
pub mod routing;
mod session;
mod timers;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use sitelink_config::{Cidr, PresharedKey, PrivateKey, PublicKey};

use crate::health::{EndpointSource, Health, LinkState};
pub use crate::lanes::{DataPath, Fast};
use crate::lanes::{Lane, LaneState, Path, Shared, Snapshot};
pub use crate::liveness::Live;
use crate::liveness::{Event, EventKind, Liveness, Verdict};
use crate::log_limit::{LogKind, LogLimiter};
pub use crate::peers::PeerId;
use crate::peers::{Peer, Peers};
pub use crate::routing::RoutingTable;
use crate::session::{Session, Slot, Tunnel};
use crate::timers::Deadlines;

/// The engine's monotonic clock type: std's, or mock_instant's in tests.
#[cfg(feature = "mock-instant")]
pub use mock_instant::Instant;
#[cfg(not(feature = "mock-instant"))]
pub use std::time::Instant;

/// Smallest buffer any engine call accepts (a handshake initiation is 148 bytes).
pub const MIN_BUF: usize = 148;
/// Bytes WireGuard adds to an IP packet (16 header + 16 tag).
pub const OVERHEAD: usize = 32;
/// How often a peer with session state runs its timers. boringtun's clock only advances
/// inside `update_timers`, and its timers assume a call at least every 250 ms.
pub const TICK: Duration = Duration::from_millis(100);
/// Minimum spacing of our own re-initiations of an expired link.
const REINIT_INTERVAL: Duration = Duration::from_secs(5);
/// The load limit of the limiter the sessions share: never reached. The load policy (cookies
/// under load, per-source limits) is the [`handshake::HandshakeGate`]'s, in front of the
/// engine; the shared limiter only checks mac1.
const HANDSHAKE_RATE_LIMIT: u64 = u64::MAX;

/// Packets under one session's keys before a new handshake is started, and before the keys
/// may not be used at all (whitepaper §6.1; boringtun enforces neither).
const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

pub(crate) const TYPE_HANDSHAKE_INIT: u8 = 1;
const TYPE_HANDSHAKE_RESP: u8 = 2;
/// Send errors recorded on peers per second at most (each is a scan of the peers).
const SEND_ERRORS_PER_SECOND: u32 = 10;
const TYPE_COOKIE_REPLY: u8 = 3;
const TYPE_DATA: u8 = 4;
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

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit<'a> {
    pub dst: SocketAddr,
    /// The local address to send from (the one the peer last reached us at); `None` lets the
    /// kernel choose.
    pub src: Option<IpAddr>,
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
    /// Decrypted packets whose source's longest match is not the sending peer.
    pub bad_source: u64,
    /// Handshake initiations from a public key that is not a configured peer.
    pub unknown_key: u64,
    /// Datagrams naming a receiver index no peer has.
    pub unknown_index: u64,
    /// Datagrams that failed to parse, authenticate or decrypt.
    pub invalid: u64,
    /// Cookie replies sent because handshakes arrived faster than the limit.
    pub cookie_replies: u64,
    /// Packets dropped because the interface has no private key.
    pub no_key: u64,
    /// Datagrams for a peer from a source outside its `allowed-endpoints`.
    pub endpoint_not_allowed: u64,
    /// Packets and datagrams dropped because this gateway is the standby of an HA pair.
    pub standby: u64,
}

impl Counters {
    /// `(name, count)` of every counter, in a fixed order: the keys of `show --json`'s
    /// `interface.dropped` and the `reason` labels of the metrics.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        [
            ("no_route", self.no_route),
            ("no_endpoint", self.no_endpoint),
            ("bad_source", self.bad_source),
            ("unknown_key", self.unknown_key),
            ("unknown_index", self.unknown_index),
            ("invalid", self.invalid),
            ("cookie_replies", self.cookie_replies),
            ("no_key", self.no_key),
            ("endpoint_not_allowed", self.endpoint_not_allowed),
            ("standby", self.standby),
        ]
    }
}

/// A peer as status reports it, generic over how its name and prefixes are held: owned
/// ([`PeerStatus`]) or borrowed from the engine ([`PeerView`], for reporting many peers without
/// copying them). Holds no secrets.
#[derive(Debug, Clone)]
pub struct PeerInfo<N, A> {
    pub id: PeerId,
    pub name: N,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    /// The local address packets to this peer leave from (sticky source), once learned.
    pub local: Option<IpAddr>,
    pub allowed_ips: A,
    pub persistent_keepalive: Option<u16>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub bad_source: u64,
    pub up: bool,
    /// Whether boringtun state exists for this peer (idle peers have none).
    pub session: bool,
    /// Its link state and what went wrong last.
    pub health: HealthInfo,
    /// Whether it is up for routing ([`liveness`]).
    pub liveness: LivenessInfo,
}

/// A peer's [`liveness`] as status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessInfo {
    /// Up, holding down or down ([`Live::as_str`] names it).
    pub live: Live,
    pub since: SystemTime,
    /// Its prefixes are out of the routing table (`withdraw-when-down`).
    pub withdrawn: bool,
}

/// A peer's [`health`] as status reports it, in wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthInfo {
    pub state: LinkState,
    /// Initiations sent since the last completed handshake, and since when.
    pub attempts: u32,
    pub trying_since: Option<SystemTime>,
    pub last_error: Option<ErrorInfo>,
    pub endpoint_source: Option<EndpointSource>,
    /// Failures by kind since the peer was added (for metrics).
    pub failures: health::Failures,
}

/// The last error of a peer: the first and latest time of this run of it, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub reason: health::Reason,
    pub since: SystemTime,
    pub at: SystemTime,
    pub count: u64,
}

/// A peer's status, owned.
pub type PeerStatus = PeerInfo<String, Vec<Cidr>>;
/// A peer's status, borrowed from the engine.
pub type PeerView<'a> = PeerInfo<&'a str, &'a [Cidr]>;

impl PeerView<'_> {
    pub fn to_status(&self) -> PeerStatus {
        PeerInfo {
            id: self.id,
            name: self.name.to_owned(),
            public_key: self.public_key,
            endpoint: self.endpoint,
            local: self.local,
            allowed_ips: self.allowed_ips.to_vec(),
            persistent_keepalive: self.persistent_keepalive,
            last_handshake: self.last_handshake,
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            bad_source: self.bad_source,
            up: self.up,
            session: self.session,
            health: self.health.clone(),
            liveness: self.liveness,
        }
    }
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

/// Our private key and what is derived from it. An interface may have none (a WireGuard
/// interface set up with `wg setconf` of a file without `PrivateKey`): then it sends and
/// answers no handshakes.
struct Identity {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    key: PublicKey,
    limiter: Arc<RateLimiter>,
}

impl Identity {
    fn new(private_key: &PrivateKey) -> Self {
        let secret = x25519::StaticSecret::from(*private_key.as_bytes());
        let public = x25519::PublicKey::from(&secret);
        Self {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            key: PublicKey::from_bytes(public.to_bytes()),
            secret,
            public,
        }
    }
}

/// The WireGuard engine for one interface. See the crate docs for the calling contract.
pub struct Engine {
    identity: Option<Identity>,
    peers: Peers,
    /// A snapshot a packet thread could hold while a change builds the next one.
    routes: Arc<RoutingTable<PeerId>>,
    deadlines: Deadlines,
    /// The monotonic and wall-clock time of the latest `handle_timeout`, to tell wall time
    /// for events between calls.
    clock: (Instant, SystemTime),
    next_limiter_reset: Instant,
    next_index: u32,
    pending_flush: Vec<PeerId>,
    timer_queue: Vec<PeerId>,
    counters: Counters,
    log: Arc<LogLimiter>,
    /// What the packet threads read without this engine's lock (see [`lanes`]).
    shared: Arc<Shared>,
    /// The routing table or the set of peers changed since the last [`Engine::publish`].
    unpublished: bool,
    /// Send errors noted in the current second (start, count): at most
    /// [`SEND_ERRORS_PER_SECOND`] scans of the peers a second.
    send_errors: (Option<Instant>, u32),
    /// `down-after`, `up-after`, `withdraw-when-down`.
    policy: liveness::Policy,
    /// When peers' liveness is checked next (see [`liveness`]).
    live_checks: Deadlines,
    /// Events not yet collected by [`Engine::take_events`], and how many were dropped
    /// because nobody collected them.
    events: VecDeque<Event>,
    events_lost: u64,
    /// Called when an event is queued (the daemon wakes its event task).
    waker: Option<Box<dyn Fn() + Send>>,
    /// The standby of an HA pair (`ha = "vrrp"` without the virtual address): it sends and
    /// answers nothing, holds no session, and routes nothing.
    standby: bool,
}

impl Engine {
    /// An engine with our private key (`None`: no key yet, no handshakes).
    pub fn new(private_key: Option<&PrivateKey>, now: Instant, wall: SystemTime) -> Self {
        let peers = Peers::default();
        let log = Arc::new(LogLimiter::default());
        let shared = Arc::new(Shared {
            snapshot: Default::default(),
            index: peers.index_map(),
            standby: AtomicBool::new(false),
            log: Arc::clone(&log),
            bad_source: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
        });
        Self {
            identity: private_key.map(Identity::new),
            peers,
            routes: Arc::new(RoutingTable::default()),
            deadlines: Deadlines::default(),
            clock: (now, wall),
            next_limiter_reset: now,
            next_index: random_u32() & 0x00ff_ffff,
            pending_flush: Vec::new(),
            timer_queue: Vec::new(),
            counters: Counters::default(),
            log,
            shared,
            unpublished: false,
            send_errors: (None, 0),
            policy: liveness::Policy::default(),
            live_checks: Deadlines::default(),
            events: VecDeque::new(),
            events_lost: 0,
            waker: None,
            standby: false,
        }
    }

    /// Makes this engine the standby (`active = false`) or the active member of an HA pair.
    ///
    /// Standby: every session is dropped (the active twin, with the same key, has the peers'
    /// sessions now), no prefix is routed, and nothing is sent or answered; datagrams and
    /// packets are counted (`standby`) and dropped. Active: prefixes come back (as
    /// `withdraw-when-down` says), and every peer with an endpoint gets an initiation at the
    /// next timer run, sent from `source` (the virtual address the peers know, when its family
    /// matches the endpoint's), so that they switch to us within a round trip instead of after
    /// their own timers (5 s to 2 minutes).
    pub fn set_active(&mut self, active: bool, source: Option<IpAddr>) {
        self.standby = !active;
        self.shared.standby.store(!active, Ordering::Relaxed);
        let now = self.clock.0;
        for id in self.peers.ids() {
            if !active {
                self.drop_session(id);
                if let Some(peer) = self.peers.get_mut(id) {
                    peer.liveness.live = Live::Down;
                    peer.liveness.since = now;
                    peer.initiate = false;
                    peer.next_reinit = None;
                }
                self.set_withdrawn(id, true);
                continue;
            }
            self.set_withdrawn(id, self.policy.withdraw);
            if let Some(peer) = self.peers.get_mut(id) {
                if let Some(endpoint) = peer.endpoint {
                    peer.local =
                        source.filter(|s| s.is_ipv4() == endpoint.ip().to_canonical().is_ipv4());
                }
            }
            self.initiate(id);
        }
        for id in self.peers.ids() {
            self.sync_lane(id);
        }
    }

    /// Makes the changes to the routing table and the set of peers since the last call
    /// visible to the packet threads' [`DataPath`] (one new snapshot; nothing when nothing
    /// changed). Call after a batch of changes (the daemon does when it releases the engine's
    /// lock): every change before it is seen by every packet after it. The engine's own
    /// `handle_*` calls always see the current table.
    pub fn publish(&mut self) {
        if !std::mem::take(&mut self.unpublished) {
            return;
        }
        self.shared.snapshot.store(Arc::new(Snapshot {
            routes: Arc::clone(&self.routes),
            lanes: self.peers.lanes(),
        }));
    }

    /// A handle for packet threads: encryption and decryption of routine transport data
    /// without this engine's lock ([`DataPath::encrypt`], [`DataPath::decrypt`]); what it
    /// hands back goes to [`Engine::handle_tunnel_packet`] / [`Engine::handle_datagram`].
    pub fn data_path(&self) -> DataPath {
        DataPath {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Publishes what the fast path may do for a peer: the engine's record is the truth, the
    /// lane's [`Path`] a copy of the part that decides whether a packet is routine. Called
    /// after every change of the peer's endpoint, local address, allowed-endpoints, key
    /// confirmation or liveness.
    fn sync_lane(&self, id: PeerId) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        let accept = peer.endpoint.filter(|e| {
            let ip = e.ip().to_canonical();
            peer.allowed_endpoints.is_empty()
                || peer.allowed_endpoints.iter().any(|c| c.contains(ip))
        });
        let path = Path {
            send_to: peer.endpoint,
            local: peer.local,
            accept_from: accept,
            awaiting_confirm: peer.awaiting_confirm,
            heard_ok: peer.liveness.live != Live::Down,
        };
        peer.lane.lock().path = path;
    }

    /// The wall-clock time of the latest initiation we sent to any peer: the timestamp in it,
    /// which peers require to grow. Linear in the number of peers (the daemon asks every few
    /// seconds).
    pub fn last_initiation(&self) -> Option<SystemTime> {
        self.peers
            .ids()
            .into_iter()
            .filter_map(|id| self.peers.get(id)?.health.last_initiation)
            .max()
            .map(|t| self.wall_at(t))
    }

    /// Whether this engine is an HA pair's standby ([`Engine::set_active`]).
    pub fn is_standby(&self) -> bool {
        self.standby
    }

    /// Sets `down-after`, `up-after` and `withdraw-when-down`. Turning withdrawal on takes the
    /// prefixes of every peer that is not up out of the routing table; turning it off puts
    /// them back. Peers that are up stay up; the new down-after applies from their next check.
    pub fn set_liveness(&mut self, policy: liveness::Policy) {
        self.policy = policy;
        for id in self.peers.ids() {
            let up = self.peers.get(id).is_some_and(|p| p.liveness.is_up());
            self.set_withdrawn(id, self.standby || (policy.withdraw && !up));
        }
    }

    /// Events since the last call, oldest first, and how many were lost before this call
    /// because more than [`liveness::MAX_EVENTS`] waited.
    pub fn take_events(&mut self) -> (Vec<Event>, u64) {
        let lost = std::mem::take(&mut self.events_lost);
        (self.events.drain(..).collect(), lost)
    }

    /// `wake` is called (under the engine's lock: it must not block) whenever an event is
    /// queued.
    pub fn set_event_waker(&mut self, wake: Box<dyn Fn() + Send>) {
        self.waker = Some(wake);
    }

    fn push_event(&mut self, id: PeerId, now: Instant, kind: EventKind) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        let event = Event {
            at: self.wall_at(now),
            peer: peer.name.clone(),
            public_key: peer.public_key,
            kind,
        };
        if self.events.len() == liveness::MAX_EVENTS {
            self.events.pop_front();
            self.events_lost += 1;
        }
        self.events.push_back(event);
        if let Some(wake) = &self.waker {
            wake();
        }
    }

    /// Takes a peer's prefixes out of the routing table (`true`) or puts them back.
    fn set_withdrawn(&mut self, id: PeerId, withdrawn: bool) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if peer.liveness.withdrawn == withdrawn {
            return;
        }
        peer.liveness.withdrawn = withdrawn;
        self.unpublished = true;
        let routes = Arc::make_mut(&mut self.routes);
        for cidr in &peer.allowed_ips {
            if withdrawn {
                routes.remove_if(cidr.network(), id);
            } else {
                routes.insert(cidr.network(), id);
            }
        }
    }

    /// Puts a peer's liveness check in the heap for `at`.
    fn schedule_check(&mut self, id: PeerId, at: Instant) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.liveness.check_at = Some(at);
            self.live_checks.schedule(id, at);
        }
    }

    /// An authenticated packet from `id` arrived at `now` (completing a `handshake` or not): a
    /// down peer starts its hold-down (a handshake, or packets of a session that outlived a
    /// short outage), and a handshake is an event. Per packet: one comparison.
    fn liveness_heard(&mut self, id: PeerId, now: Instant, handshake: bool) {
        let until = now + self.policy.up_after;
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let start = peer.liveness.live == Live::Down;
        if start {
            peer.liveness.live = Live::HoldDown { until };
            peer.liveness.since = now;
        }
        if handshake {
            self.push_event(id, now, EventKind::Handshake);
        }
        if start {
            self.schedule_check(id, until);
            self.sync_lane(id);
        }
    }

    /// Runs the liveness checks that are due.
    fn check_liveness(&mut self, now: Instant) {
        while let Some((at, id)) = self.live_checks.pop(now) {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            if peer.liveness.check_at != Some(at) {
                continue;
            }
            peer.liveness.check_at = None;
            let down_after = self.policy.down_after(peer.keepalive);
            let last_received = peer.lane.lock().traffic.last_received;
            let was_down = peer.liveness.live == Live::Down;
            match liveness::check(peer.liveness.live, now, last_received, down_after) {
                Verdict::Wait(None) => {}
                Verdict::Wait(Some(next)) => self.schedule_check(id, next),
                Verdict::Up(next) => {
                    peer.liveness.live = Live::Up;
                    peer.liveness.since = now;
                    tracing::info!(peer = %peer.name, key = %peer.public_key.short(), "peer up (routes in place)");
                    self.set_withdrawn(id, false);
                    self.push_event(id, now, EventKind::Up);
                    self.schedule_check(id, next);
                }
                Verdict::StillDown => {
                    peer.liveness.live = Live::Down;
                    peer.liveness.since = now;
                }
                Verdict::Down(silent) => {
                    peer.liveness.live = Live::Down;
                    peer.liveness.since = now;
                    tracing::warn!(peer = %peer.name, key = %peer.public_key.short(),
                        silent_s = silent.as_secs(), withdraw = self.policy.withdraw,
                        "peer down: no authenticated packet within down-after");
                    if self.policy.withdraw {
                        self.set_withdrawn(id, true);
                    }
                    self.push_event(id, now, EventKind::Down { silent });
                }
            }
            let is_down = self
                .peers
                .get(id)
                .is_some_and(|p| p.liveness.live == Live::Down);
            if was_down != is_down {
                self.sync_lane(id);
            }
        }
    }

    /// Our public key; `None` while the interface has no private key.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|i| i.key)
    }

    pub fn counters(&self) -> Counters {
        let mut counters = self.counters;
        counters.bad_source += self.shared.bad_source.load(Ordering::Relaxed);
        counters.invalid += self.shared.invalid.load(Ordering::Relaxed);
        counters
    }

    /// The routing table as it is now (a cheap snapshot).
    pub fn routes(&self) -> Arc<RoutingTable<PeerId>> {
        Arc::clone(&self.routes)
    }

    /// A handshake gate for our current key (`None` without one), to run in front of the
    /// engine on the thread that serves handshake messages. Build a new one when
    /// [`Engine::public_key`] changes.
    pub fn handshake_gate(&self, now: Instant) -> Option<handshake::HandshakeGate> {
        let identity = self.identity.as_ref()?;
        Some(handshake::HandshakeGate::new(
            &identity.secret,
            Arc::clone(&identity.limiter),
            now,
        ))
    }

    /// Peers with a deadline pending (stale entries included): what timer work costs.
    pub fn scheduled(&self) -> usize {
        self.deadlines.len()
    }

    /// Adds a peer and its routes. It starts with no session state; the first packet to it,
    /// its first handshake, or (for an always-on link) the next timer run creates it.
    pub fn add_peer(&mut self, spec: PeerSpec) -> Result<PeerId, EngineError> {
        if self.public_key() == Some(spec.public_key) {
            return Err(EngineError::OwnKey(spec.name));
        }
        if self.peers.by_key(&spec.public_key).is_some() {
            return Err(EngineError::DuplicateKey(spec.name));
        }
        let id = self.peers.insert(Peer {
            name: spec.name,
            public_key: spec.public_key,
            preshared_key: spec.preshared_key,
            endpoint: spec.endpoint,
            local: None,
            allowed_ips: Vec::new(),
            allowed_endpoints: Vec::new(),
            keepalive: spec.persistent_keepalive,
            last_handshake: None,
            bad_source: 0,
            up: false,
            next_reinit: None,
            health: Health::new(spec.endpoint.map(|_| EndpointSource::Config)),
            initiate: false,
            stale_answered: None,
            awaiting_confirm: None,
            lane: Arc::new(Lane::new(PeerId::UNSET)),
            due: None,
            created: 0,
            liveness: Liveness::new(self.clock.0),
        });
        if let Some(peer) = self.peers.get_mut(id) {
            // Down until its first handshake: with withdrawal on, no routes until then.
            peer.liveness.withdrawn = self.policy.withdraw || self.standby;
        }
        self.unpublished = true;
        self.set_allowed_ips(id, spec.allowed_ips);
        self.sync_lane(id);
        self.wake_always_on(id);
        Ok(id)
    }

    /// Renames a peer (names are labels; the public key is its identity).
    pub fn set_name(&mut self, id: PeerId, name: String) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.name = name;
        }
    }

    /// Replaces a peer's allowed-ips (routing and the inbound source check). The session
    /// is untouched. A prefix another peer has moves to this one, as in WireGuard.
    pub fn set_allowed_ips(&mut self, id: PeerId, allowed_ips: Vec<Cidr>) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let old = std::mem::take(&mut peer.allowed_ips);
        let withdrawn = peer.liveness.withdrawn;
        self.unpublished = true;
        let routes = Arc::make_mut(&mut self.routes);
        for cidr in old {
            routes.remove_if(cidr.network(), id);
        }
        let mut moved_from = Vec::new();
        for cidr in &allowed_ips {
            if let Some(other) = routes.insert(cidr.network(), id).filter(|o| *o != id) {
                moved_from.push((other, cidr.network()));
            }
            // A withdrawn peer takes a prefix from another (it moves, as in WireGuard) but
            // does not route it until it is up.
            if withdrawn {
                routes.remove(cidr.network());
            }
        }
        for (other, cidr) in moved_from {
            if let Some(other) = self.peers.get_mut(other) {
                other.allowed_ips.retain(|c| c.network() != cidr);
            }
        }
        if let Some(peer) = self.peers.get_mut(id) {
            peer.allowed_ips = allowed_ips;
        }
    }

    /// A send to `dst` failed with `error` (reported by the daemon): recorded as the
    /// `last_error` ("send: ...") of the peers whose endpoint it is. Linear in the number of
    /// peers; the daemon reports at most one failure per destination and batch, and at most
    /// [`SEND_ERRORS_PER_SECOND`] are recorded a second.
    pub fn note_send_error(&mut self, dst: SocketAddr, error: &str) {
        let now = self.clock.0;
        match &mut self.send_errors {
            (Some(start), n) if now < *start + Duration::from_secs(1) => {
                if *n >= SEND_ERRORS_PER_SECOND {
                    return;
                }
                *n += 1;
            }
            window => *window = (Some(now), 1),
        }
        for id in self.peers.ids() {
            if let Some(peer) = self.peers.get_mut(id).filter(|p| p.endpoint == Some(dst)) {
                peer.health
                    .error(health::Reason::Other(format!("send: {error}")), now);
            }
        }
    }

    /// Limits where a peer's datagrams may come from (`allowed-endpoints`; empty: anywhere).
    /// Datagrams from elsewhere are refused before any cryptography, with its key or not: no
    /// handshake, no roaming, no data. The session is untouched.
    pub fn set_allowed_endpoints(&mut self, id: PeerId, allowed: Vec<Cidr>) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.allowed_endpoints = allowed;
        }
        self.sync_lane(id);
    }

    /// Changes the persistent keepalive interval. The session is untouched.
    pub fn set_keepalive(&mut self, id: PeerId, keepalive: Option<u16>) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.keepalive = keepalive;
        }
        self.wake_always_on(id);
    }

    /// Changes a peer's preshared key. It takes effect at the next handshake: the current
    /// session keeps carrying traffic meanwhile (see [`session`]), so a key rotated on both
    /// sides a moment apart loses nothing.
    pub fn set_preshared_key(&mut self, id: PeerId, psk: Option<PresharedKey>) {
        let Some(identity) = &self.identity else {
            if let Some(peer) = self.peers.get_mut(id) {
                peer.preshared_key = psk;
            }
            return;
        };
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        peer.preshared_key = psk;
        if peer.lane.lock().session.is_none() {
            return;
        }
        let index = allocate_index(&mut self.next_index, &self.peers);
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let tunn = new_tunn(
            identity,
            &peer.public_key,
            peer.preshared_key.as_ref(),
            index,
        );
        let fresh = Tunnel::new(tunn, index);
        let dropped = match &mut peer.lane.lock().session {
            Some(session) => session.rekey_with(fresh),
            None => return,
        };
        self.peers.register_index(index, id);
        for index in dropped {
            self.peers.release_index(index);
        }
    }

    /// Changes our private key (`None`: no key). Every session ends; always-on links
    /// handshake again with the new key.
    pub fn set_private_key(&mut self, private_key: Option<&PrivateKey>) {
        self.identity = private_key.map(Identity::new);
        for id in self.peers.ids() {
            self.drop_session(id);
            if let Some(peer) = self.peers.get_mut(id) {
                peer.next_reinit = None;
            }
            self.wake_always_on(id);
        }
    }

    /// Removes a peer, its routes and its session.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        let Some(peer) = self.peers.remove(id) else {
            return false;
        };
        self.unpublished = true;
        let routes = Arc::make_mut(&mut self.routes);
        for cidr in &peer.allowed_ips {
            routes.remove_if(cidr.network(), id);
        }
        self.pending_flush.retain(|p| *p != id);
        self.timer_queue.retain(|p| *p != id);
        true
    }

    /// Sets a peer's endpoint (a resolved host name, an operator's change, one remembered
    /// from a previous run), saying where it came from. The sticky local address belonged to
    /// the old endpoint and is forgotten.
    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr, source: EndpointSource) {
        let mut changed = false;
        if let Some(peer) = self.peers.get_mut(id) {
            changed = peer.endpoint != Some(endpoint);
            peer.endpoint = Some(endpoint);
            peer.local = None;
            peer.health.endpoint_source = Some(source);
        }
        self.sync_lane(id);
        if changed {
            let now = self.clock.0;
            self.push_event(id, now, EventKind::Endpoint { endpoint });
        }
        self.wake_always_on(id);
    }

    /// Records a problem with a peer's link that only the caller sees (a DNS failure, a send
    /// error), as its `last_error`: `reason` is shown as is.
    pub fn note_error(&mut self, id: PeerId, reason: String) {
        let now = self.clock.0;
        if let Some(peer) = self.peers.get_mut(id) {
            peer.health.error(health::Reason::Other(reason), now);
        }
    }

    /// Sends a handshake initiation to the peer at the next timer run, if it has an endpoint
    /// (and we a key): how a restarted gateway brings back the links it had, at once, instead
    /// of waiting for the other side's timers (15 s or more).
    pub fn initiate(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if peer.endpoint.is_none() || self.identity.is_none() || self.standby {
            return;
        }
        peer.initiate = true;
        let now = self.clock.0;
        self.schedule(id, now);
    }

    /// A send to `dst` from `src` failed because `src` is not ours any more: the peers that
    /// stuck to it go back to the kernel's choice until their next packet tells the new one.
    pub fn forget_source(&mut self, dst: SocketAddr, src: IpAddr) {
        for id in self.peers.ids() {
            if let Some(peer) = self.peers.get_mut(id) {
                if peer.endpoint == Some(dst) && peer.local == Some(src) {
                    peer.local = None;
                    self.sync_lane(id);
                }
            }
        }
    }

    pub fn peer_by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.peers.by_key(key)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Every peer, in the order they were added.
    pub fn peers(&self) -> impl Iterator<Item = PeerStatus> + '_ {
        self.peer_views().map(|v| v.to_status())
    }

    /// Every peer, borrowed, in the order they were added.
    pub fn peer_views(&self) -> impl Iterator<Item = PeerView<'_>> + '_ {
        self.peers
            .ids()
            .into_iter()
            .filter_map(|id| self.peer_view(id))
    }

    pub fn peer_status(&self, id: PeerId) -> Option<PeerStatus> {
        self.peer_view(id).map(|v| v.to_status())
    }

    /// A peer's health record in wall-clock time, with its state as of the last tick.
    fn health_info(&self, p: &Peer) -> HealthInfo {
        let h = &p.health;
        let wall_now = self.clock.1;
        let age = p
            .last_handshake
            .map(|t| wall_now.duration_since(t).unwrap_or(Duration::ZERO));
        let lane = p.lane.lock();
        let has_session = lane.session.is_some();
        let last_received = lane.traffic.last_received;
        drop(lane);
        HealthInfo {
            state: h.state(
                self.clock.0,
                p.endpoint.is_some(),
                age,
                has_session,
                last_received,
            ),
            attempts: h.attempts,
            trying_since: h.trying_since.map(|t| self.wall_at(t)),
            last_error: h.last_error.as_ref().map(|e| ErrorInfo {
                reason: e.reason.clone(),
                since: self.wall_at(e.since),
                at: self.wall_at(e.at),
                count: e.count,
            }),
            endpoint_source: h.endpoint_source,
            failures: h.failures,
        }
    }

    pub fn peer_view(&self, id: PeerId) -> Option<PeerView<'_>> {
        let p = self.peers.get(id)?;
        let (traffic, session, lane_bad_source) = {
            let lane = p.lane.lock();
            (lane.traffic, lane.session.is_some(), lane.bad_source)
        };
        Some(PeerView {
            id,
            name: &p.name,
            public_key: p.public_key,
            endpoint: p.endpoint,
            local: p.local,
            allowed_ips: &p.allowed_ips,
            persistent_keepalive: p.keepalive,
            last_handshake: p.last_handshake,
            rx_bytes: traffic.rx_bytes,
            tx_bytes: traffic.tx_bytes,
            bad_source: p.bad_source + lane_bad_source,
            up: p.up,
            session,
            health: self.health_info(p),
            liveness: LivenessInfo {
                live: p.liveness.live,
                since: self.wall_at(p.liveness.since),
                withdrawn: p.liveness.withdrawn,
            },
        })
    }

    /// Encrypts an IP packet read from the TUN device for the peer whose allowed-ips hold
    /// the longest prefix of its destination. Returns the datagram to send, or `None` when the
    /// packet was queued behind a handshake or dropped (counted).
    pub fn handle_tunnel_packet<'b>(
        &mut self,
        now: Instant,
        packet: &[u8],
        buf: &'b mut [u8],
    ) -> Option<Transmit<'b>> {
        if self.standby {
            self.counters.standby += 1;
            return None;
        }
        let Some(dst) = Tunn::dst_address(packet) else {
            self.counters.invalid += 1;
            return None;
        };
        let Some(id) = self.routes.lookup(dst) else {
            self.counters.no_route += 1;
            return None;
        };
        let peer = self.peers.get(id)?;
        let Some(endpoint) = peer.endpoint else {
            self.counters.no_endpoint += 1;
            if let Some(n) = self.log.allow(LogKind::NoEndpoint, now) {
                tracing::warn!(peer = %peer.name, %dst, suppressed = n,
                    "dropping packet: peer has no endpoint yet (set `endpoint`, or wait for it to connect to us)");
            }
            return None;
        };
        if buf.len() < MIN_BUF.max(packet.len() + OVERHEAD) {
            self.counters.invalid += 1;
            return None;
        }
        if !self.ensure_session(id, now) {
            self.counters.no_key += 1;
            return None;
        }
        let peer = self.peers.get_mut(id)?;
        let lane = Arc::clone(&peer.lane);
        let mut lane = lane.lock();
        let LaneState {
            session, traffic, ..
        } = &mut *lane;
        let session = session.as_mut()?;
        let tunnel = session.tunnel(session.send_slot())?;
        if tunnel.sent >= REJECT_AFTER_MESSAGES {
            // The keys have carried all the packets the protocol allows: none more under
            // them, and a handshake for new ones (if one is not under way already).
            if let Some(n) = self.log.allow(LogKind::Encapsulate, now) {
                tracing::warn!(peer = %peer.name, suppressed = n, "session keys used up (REJECT_AFTER_MESSAGES); re-handshaking");
            }
            return match tunnel.tunn.format_handshake_initiation(buf, false) {
                TunnResult::WriteToNetwork(payload) => {
                    peer.sent(now, payload);
                    traffic.sent(now, payload.len());
                    Some(Transmit {
                        dst: endpoint,
                        src: peer.local,
                        payload,
                    })
                }
                _ => None,
            };
        }
        match tunnel.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(payload) => {
                if payload[0] == TYPE_DATA {
                    tunnel.sent += 1;
                    tunnel.rekey_due |= tunnel.sent == REKEY_AFTER_MESSAGES;
                }
                peer.sent(now, payload);
                traffic.sent(now, payload.len());
                Some(Transmit {
                    dst: endpoint,
                    src: peer.local,
                    payload,
                })
            }
            TunnResult::Err(e) => {
                if let Some(n) = self.log.allow(LogKind::Encapsulate, now) {
                    tracing::warn!(peer = %peer.name, error = ?e, suppressed = n, "cannot encrypt packet");
                }
                None
            }
            _ => None,
        }
    }

    /// Handles a datagram from `from` that arrived at our address `local` (if the socket
    /// reports it). Handshake initiations pass the rate limiter's mac1 check before the
    /// (expensive) anonymous parse that finds their peer; other messages find their peer by
    /// receiver index. A peer's endpoint moves to `from`, and its sticky local address to
    /// `local`, only after its packet authenticated: never on cookie replies, in either
    /// direction.
    pub fn handle_datagram<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        buf: &'b mut [u8],
    ) -> Received<'b> {
        if buf.len() < MIN_BUF.max(datagram.len()) {
            self.counters.invalid += 1;
            return Received::Nothing;
        }
        if self.standby {
            self.counters.standby += 1;
            return Received::Nothing;
        }
        match self.datagram_step(now, from, local, datagram, buf) {
            Step::Nothing | Step::Dropped | Step::Malformed => Received::Nothing,
            Step::Tunnel(r) => Received::Tunnel(&buf[r]),
            Step::Network(r) => Received::Network(Transmit {
                dst: from,
                src: local,
                payload: &buf[r],
            }),
            Step::NetworkTo(dst, src, r) => Received::Network(Transmit {
                dst,
                src,
                payload: &buf[r],
            }),
        }
    }

    fn datagram_step(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        buf: &mut [u8],
    ) -> Step {
        let (id, target) = match self.find_peer(now, from, datagram, buf) {
            Ok(found) => found,
            Err(step) => return step,
        };
        if let Some(peer) = self
            .peers
            .get_mut(id)
            .filter(|p| !p.allowed_endpoints.is_empty())
        {
            let ip = from.ip().to_canonical();
            if !peer.allowed_endpoints.iter().any(|c| c.contains(ip)) {
                self.counters.endpoint_not_allowed += 1;
                peer.health.error(health::Reason::SourceNotAllowed, now);
                if let Some(n) = self.log.allow(LogKind::Refused, now) {
                    tracing::warn!(peer = %peer.name, key = %peer.public_key.short(), %from,
                        suppressed = n, "refused a datagram from outside the peer's allowed-endpoints");
                }
                return Step::Nothing;
            }
        }
        if target == Target::Initiation && !self.ensure_session(id, now) {
            self.counters.no_key += 1;
            return Step::Nothing;
        }
        let wall = self.wall_at(now);
        let Some(peer) = self.peers.get_mut(id) else {
            return Step::Nothing;
        };
        let lane = Arc::clone(&peer.lane);
        let mut lane = lane.lock();
        let LaneState {
            session, traffic, ..
        } = &mut *lane;
        let Some(session) = session.as_mut() else {
            self.counters.unknown_index += 1;
            return Step::Nothing;
        };
        let slot = match target {
            Target::Initiation => Some(session.handshake_slot()),
            Target::Index(index) => session.slot_of(index),
        };
        let Some(tunnel) = slot.and_then(|s| session.tunnel(s)) else {
            self.counters.unknown_index += 1;
            return Step::Nothing;
        };
        let kind = datagram[0];
        let base = buf.as_ptr() as usize;
        let (step, authenticated) = match tunnel.tunn.decapsulate(Some(from.ip()), datagram, buf) {
            TunnResult::Done if kind == TYPE_COOKIE_REPLY => {
                // The responder is under load and gave us a cookie: initiate again now, with
                // it, rather than at the next retry five seconds on (a peer connecting during
                // a flood at the responder gets through in a round trip). Sent to the peer's
                // endpoint: a cookie reply never moves it.
                let retry = match (
                    peer.endpoint,
                    tunnel.tunn.format_handshake_initiation(buf, true),
                ) {
                    (Some(endpoint), TunnResult::WriteToNetwork(out)) => {
                        traffic.sent(now, out.len());
                        peer.health.initiation_sent(now);
                        Step::NetworkTo(endpoint, peer.local, range_of(base, out))
                    }
                    _ => Step::Nothing,
                };
                (retry, false)
            }
            TunnResult::Done => (Step::Nothing, true),
            TunnResult::Err(WireGuardError::WrongTai64nTimestamp)
                if kind == TYPE_HANDSHAKE_INIT =>
            {
                // The peer's key signed this initiation, but its timestamp is not newer than
                // the last one we accepted: the peer's clock went back (and it restarted), or
                // this is a replay. Either way its initiations will keep failing until its
                // clock passes ours, so initiate from our side, to the endpoint we know (never
                // to the sender of this datagram): our timestamps are fine. At most once per
                // REKEY_TIMEOUT, so replays cannot make us handshake more often than that.
                self.counters.invalid += 1;
                let due = peer
                    .stale_answered
                    .is_none_or(|t| now >= t + REINIT_INTERVAL);
                let answer = match (peer.endpoint, due) {
                    (Some(endpoint), true) => {
                        match tunnel.tunn.format_handshake_initiation(buf, false) {
                            TunnResult::WriteToNetwork(out) => {
                                peer.stale_answered = Some(now);
                                traffic.sent(now, out.len());
                                peer.health.initiation_sent(now);
                                Step::NetworkTo(endpoint, peer.local, range_of(base, out))
                            }
                            _ => Step::Nothing,
                        }
                    }
                    _ => Step::Nothing,
                };
                peer.health.error(health::Reason::OldTimestamp, now);
                if let Some(n) = self.log.allow(LogKind::Refused, now) {
                    tracing::warn!(peer = %peer.name, key = %peer.public_key.short(), %from,
                        suppressed = n, answered = matches!(answer, Step::NetworkTo(..)),
                        "refused handshake with an old timestamp (the peer's clock went back, or a replay); initiating from our side");
                }
                (answer, false)
            }
            TunnResult::Err(e) => {
                self.counters.invalid += 1;
                // A handshake message of this peer's session that does not authenticate is
                // worth telling the operator (a response that does not open: the preshared
                // keys differ); data that does not is just noise someone sent.
                if kind != TYPE_DATA
                    && matches!(
                        e,
                        WireGuardError::InvalidMac | WireGuardError::InvalidAeadTag
                    )
                {
                    peer.health.error(health::Reason::BadMac, now);
                }
                if let Some(n) = self.log.allow(LogKind::Refused, now) {
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
                    // A response to an initiation (never an initiation itself).
                    traffic.sent(now, out.len());
                }
                (Step::Network(range_of(base, out)), authenticated)
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
        let mut released = None;
        if slot == Some(Slot::Next) {
            let (promoted, dropped) = session.promote(now);
            released = dropped;
            if promoted {
                tracing::info!(peer = %peer.name, "handshake with the new preshared key completed; switched to it");
            }
        }
        let (mut handshake, mut roamed) = (false, None);
        if authenticated {
            // A handshake completes, as in WireGuard, for the initiator when it accepts the
            // response, and for the responder when the first data arrives under the new
            // keys (key confirmation): answering an initiation proves nothing yet, and a peer
            // whose responses are lost would look connected on every retry.
            let index = u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
            match kind {
                TYPE_HANDSHAKE_RESP => {
                    note_handshake(peer, session, wall);
                    handshake = true;
                }
                TYPE_HANDSHAKE_INIT => {
                    // Our response's sender index: the receiver index its data will carry.
                    let out = &buf[step_range(&step)];
                    if out.len() >= 8 && out[0] == TYPE_HANDSHAKE_RESP {
                        peer.awaiting_confirm =
                            Some(u32::from_le_bytes([out[4], out[5], out[6], out[7]]));
                    }
                }
                TYPE_DATA if peer.awaiting_confirm == Some(index) => {
                    peer.awaiting_confirm = None;
                    note_handshake(peer, session, wall);
                    handshake = true;
                }
                _ => {}
            }
            traffic.received(now, datagram.len());
            if peer.endpoint != Some(from) {
                if peer.endpoint.is_some() {
                    tracing::info!(peer = %peer.name, key = %peer.public_key.short(), endpoint = %from, "peer roamed to a new endpoint");
                }
                peer.endpoint = Some(from);
                peer.health.endpoint_source = Some(EndpointSource::Learned);
                roamed = Some(from);
            }
            if local.is_some() {
                peer.local = local;
            }
        }
        if matches!(step, Step::Malformed) {
            self.counters.invalid += 1;
        }
        if matches!(step, Step::Dropped) {
            self.counters.bad_source += 1;
            peer.bad_source += 1;
            if let Some(n) = self.log.allow(LogKind::BadSource, now) {
                tracing::warn!(peer = %peer.name, suppressed = n,
                    "dropped decrypted packet whose source is routed to another peer (or to none)");
            }
        }
        drop(lane);
        if let Some(index) = released {
            self.peers.release_index(index);
        }
        if authenticated {
            self.liveness_heard(id, now, handshake);
            // Roaming, a new local address, key confirmation: the fast path follows.
            self.sync_lane(id);
        }
        if let Some(endpoint) = roamed {
            self.push_event(id, now, EventKind::Endpoint { endpoint });
        }
        match step {
            Step::Dropped | Step::Malformed => Step::Nothing,
            other => other,
        }
    }

    /// Finds the peer a datagram belongs to, or what to do instead.
    fn find_peer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
    ) -> Result<(PeerId, Target), Step> {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.counters.invalid += 1;
                return Err(Step::Nothing);
            }
        };
        let index = match packet {
            Packet::HandshakeInit(ref init) => {
                let Some(identity) = &self.identity else {
                    self.counters.no_key += 1;
                    return Err(Step::Nothing);
                };
                // The shared limiter counts handshakes per second; reset it lazily, so an idle
                // engine needs no timer for it.
                if now >= self.next_limiter_reset {
                    identity.limiter.reset_count();
                    self.next_limiter_reset = now + Duration::from_secs(1);
                }
                let mut cookie = [0u8; COOKIE_REPLY_LEN];
                let verified =
                    identity
                        .limiter
                        .verify_packet(Some(from.ip()), datagram, &mut cookie);
                match verified {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(reply)) => {
                        self.counters.cookie_replies += 1;
                        let n = reply.len();
                        buf[..n].copy_from_slice(reply);
                        return Err(Step::Network(0..n));
                    }
                    Err(result) => {
                        self.counters.invalid += 1;
                        if let (TunnResult::Err(e), Some(n)) =
                            (result, self.log.allow(LogKind::Refused, now))
                        {
                            tracing::info!(%from, reason = reason(&e), suppressed = n, "refused handshake");
                        }
                        return Err(Step::Nothing);
                    }
                }
                let half = match parse_handshake_anon(&identity.secret, &identity.public, init) {
                    Ok(half) => half,
                    Err(e) => {
                        self.counters.invalid += 1;
                        if let Some(n) = self.log.allow(LogKind::Refused, now) {
                            tracing::info!(%from, reason = reason(&e), suppressed = n, "refused handshake");
                        }
                        return Err(Step::Nothing);
                    }
                };
                let key = PublicKey::from_bytes(half.peer_static_public);
                return match self.peers.by_key(&key) {
                    Some(id) => Ok((id, Target::Initiation)),
                    None => {
                        self.counters.unknown_key += 1;
                        if let Some(n) = self.log.allow(LogKind::UnknownKey, now) {
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
        match self.peers.by_index(index >> 8) {
            Some(id) => Ok((id, Target::Index(index >> 8))),
            None => {
                self.counters.unknown_index += 1;
                Err(Step::Nothing)
            }
        }
    }

    /// Records the time and queues the peers whose deadline has come; [`Engine::poll_transmit`]
    /// then runs their timers.
    pub fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        self.clock = (now, wall);
        self.check_liveness(now);
        while let Some((at, id)) = self.deadlines.pop(now) {
            match self.peers.get_mut(id) {
                Some(peer) if peer.due == Some(at) => {
                    peer.due = None;
                    self.timer_queue.push(id);
                }
                _ => {}
            }
        }
    }

    /// When `handle_timeout` is due next, and why; `None` if no peer has anything scheduled.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let timers = self.deadlines.next().map(|at| (at, "peer timers"));
        let checks = self.live_checks.next().map(|at| (at, "liveness checks"));
        match (timers, checks) {
            (Some(t), Some(c)) => Some(if c.0 < t.0 { c } else { t }),
            (t, c) => t.or(c),
        }
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
                let out = self.timer_step(id, buf);
                self.reschedule(id);
                out
            };
            if let Some((dst, src, r)) = out {
                return Some(Transmit {
                    dst,
                    src,
                    payload: &buf[r],
                });
            }
        }
    }

    fn flush_step(&mut self, id: PeerId, buf: &mut [u8]) -> Option<Flushed> {
        let now = self.clock.0;
        let peer = self.peers.get_mut(id)?;
        let endpoint = peer.endpoint?;
        let lane = Arc::clone(&peer.lane);
        let mut lane = lane.lock();
        let LaneState {
            session, traffic, ..
        } = &mut *lane;
        let session = session.as_mut()?;
        let base = buf.as_ptr() as usize;
        for slot in [Slot::Current, Slot::Next] {
            let Some(tunnel) = session.tunnel(slot) else {
                continue;
            };
            if let TunnResult::WriteToNetwork(out) = tunnel.tunn.decapsulate(None, &[], buf) {
                let range = range_of(base, out);
                peer.sent(now, &buf[range.clone()]);
                traffic.sent(now, range.len());
                return Some((endpoint, peer.local, range));
            }
        }
        None
    }

    /// One run of a due peer's timers: boringtun's (retries, keepalives, rekeys, expiry), the
    /// preshared-key hand-over, our re-initiation of an always-on link and persistent
    /// keepalives. At most one datagram.
    fn timer_step(&mut self, id: PeerId, buf: &mut [u8]) -> Option<Flushed> {
        let now = self.clock.0;
        // Without a key there is nothing to send, and no session state to tick; a standby
        // sends nothing.
        self.identity.as_ref()?;
        if self.standby {
            return None;
        }
        let (always_on, initiate) = {
            let peer = self.peers.get_mut(id)?;
            (peer.always_on(), std::mem::take(&mut peer.initiate))
        };
        if (always_on || initiate) && !self.ensure_session(id, now) {
            return None;
        }
        let peer = self.peers.get_mut(id)?;
        let lane = Arc::clone(&peer.lane);
        let mut lane = lane.lock();
        // What the fast path did since the last run, for the peer record.
        if let Some(at) = lane.initiated.take() {
            peer.health.initiation_sent(at);
        }
        peer.bad_source += std::mem::take(&mut lane.bad_source);
        let LaneState {
            session: session_slot,
            traffic,
            ..
        } = &mut *lane;
        let session = session_slot.as_mut()?;
        let base = buf.as_ptr() as usize;
        let mut released: Vec<u32> = Vec::new();
        let mut expired = false;

        // The replaced Tunn only decrypts; its timers run (its clock must advance) but
        // whatever it wants to send is superseded by the current one.
        if let Some((previous, _)) = session.previous.as_mut() {
            let _ = previous.tunn.update_timers(buf);
        }
        released.extend(session.expire_previous(now));

        let rekey = std::mem::take(&mut session.current.rekey_due);
        let mut out = match session.current.tunn.update_timers(buf) {
            TunnResult::WriteToNetwork(o)
                if o[0] == TYPE_HANDSHAKE_INIT && session.next.is_some() =>
            {
                // A rekey must carry the new preshared key: the next Tunn initiates instead.
                match session
                    .next
                    .as_mut()
                    .map(|n| n.tunn.format_handshake_initiation(buf, false))
                {
                    Some(TunnResult::WriteToNetwork(o)) => Some(range_of(base, o)),
                    _ => None,
                }
            }
            TunnResult::WriteToNetwork(o) => Some(range_of(base, o)),
            TunnResult::Err(WireGuardError::ConnectionExpired) => {
                if let Some(next) = session.next.take() {
                    // The old keys are gone; the Tunn with the new key carries on alone.
                    released.push(std::mem::replace(&mut session.current, next).index);
                    None
                } else {
                    expired = true;
                    None
                }
            }
            _ => None,
        };
        if out.is_none() && (rekey || initiate) {
            if let TunnResult::WriteToNetwork(o) =
                session.current.tunn.format_handshake_initiation(buf, false)
            {
                out = Some(range_of(base, o));
            }
        }
        if out.is_none() {
            if let Some(next) = session.next.as_mut() {
                match next.tunn.update_timers(buf) {
                    TunnResult::WriteToNetwork(o) => out = Some(range_of(base, o)),
                    TunnResult::Err(WireGuardError::ConnectionExpired) => {
                        // The new key never got a handshake through; it is tried again at the
                        // current session's next rekey.
                        released.extend(session.next.take().map(|t| t.index));
                    }
                    _ => {}
                }
            }
        }
        let (_, dropped) = session.promote(now);
        released.extend(dropped);

        if expired {
            if peer.up {
                peer.up = false;
                tracing::warn!(peer = %peer.name, key = %peer.public_key.short(), "peer down: no session and the handshake gave up");
            }
            if !always_on {
                // Nothing will use this state again until new traffic or a handshake: free it.
                if let Some(session) = session_slot.take() {
                    released.extend(session.indices());
                }
                drop(lane);
                for index in released {
                    self.peers.release_index(index);
                }
                return None;
            }
            // boringtun leaves an expired link dead. An always-on site link (endpoint and
            // keepalive) starts a fresh handshake itself, every few seconds.
            if peer.next_reinit.is_none_or(|t| now >= t) {
                peer.next_reinit = Some(now + REINIT_INTERVAL);
                tracing::debug!(peer = %peer.name, "re-initiating handshake on expired link");
                if let TunnResult::WriteToNetwork(o) =
                    session.current.tunn.format_handshake_initiation(buf, false)
                {
                    out = Some(range_of(base, o));
                }
            }
        }
        // Persistent keepalive: nothing sent for the interval and we know where to send.
        // Without a session this starts the handshake, which is how an always-on link
        // comes up at start-up without waiting for traffic.
        let out = out.or_else(|| {
            let interval = Duration::from_secs(u64::from(peer.keepalive?));
            peer.endpoint?;
            if traffic.last_sent.is_some_and(|t| now < t + interval) {
                return None;
            }
            let tunnel = session.tunnel(session.send_slot())?;
            match tunnel.tunn.encapsulate(&[], buf) {
                TunnResult::WriteToNetwork(o) => Some(range_of(base, o)),
                _ => None,
            }
        });
        let result = match (out, peer.endpoint) {
            (Some(range), Some(endpoint)) => {
                peer.sent(now, &buf[range.clone()]);
                traffic.sent(now, range.len());
                Some((endpoint, peer.local, range))
            }
            _ => None,
        };
        drop(lane);
        for index in released {
            self.peers.release_index(index);
        }
        result
    }

    /// Gives a peer its next deadline after a timer run: a tick while it has session state,
    /// nothing otherwise (new traffic or a configuration change wakes it again).
    fn reschedule(&mut self, id: PeerId) {
        let now = self.clock.0;
        let has_session = self
            .peers
            .get(id)
            .is_some_and(|p| p.lane.lock().session.is_some());
        if has_session {
            self.schedule(id, now + TICK);
        }
    }

    /// Makes `id` due at `at` unless it is due earlier already.
    fn schedule(&mut self, id: PeerId, at: Instant) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if peer.due.is_some_and(|due| due <= at) {
            return;
        }
        peer.due = Some(at);
        self.deadlines.schedule(id, at);
    }

    /// An always-on link without session state gets a timer run now, which starts its
    /// handshake.
    fn wake_always_on(&mut self, id: PeerId) {
        let wants = self.identity.is_some()
            && !self.standby
            && self
                .peers
                .get(id)
                .is_some_and(|p| p.always_on() && p.lane.lock().session.is_none());
        if wants {
            let now = self.clock.0;
            self.schedule(id, now);
        }
    }

    /// Creates a peer's boringtun state if it has none. `false` without a private key.
    fn ensure_session(&mut self, id: PeerId, now: Instant) -> bool {
        let Some(identity) = &self.identity else {
            return false;
        };
        match self.peers.get(id) {
            None => return false,
            Some(peer) if peer.lane.lock().session.is_some() => return true,
            Some(_) => {}
        }
        let index = allocate_index(&mut self.next_index, &self.peers);
        let Some(peer) = self.peers.get_mut(id) else {
            return false;
        };
        let tunn = new_tunn(
            identity,
            &peer.public_key,
            peer.preshared_key.as_ref(),
            index,
        );
        peer.lane.lock().session = Some(Box::new(Session::new(Tunnel::new(tunn, index))));
        self.peers.register_index(index, id);
        self.schedule(id, now + TICK);
        true
    }

    fn drop_session(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        peer.up = false;
        let Some(session) = peer.lane.lock().session.take() else {
            return;
        };
        for index in session.indices() {
            self.peers.release_index(index);
        }
        self.pending_flush.retain(|p| *p != id);
    }

    /// Wall-clock time at `now`, from the latest `handle_timeout`'s pair.
    fn wall_at(&self, now: Instant) -> SystemTime {
        let (mono, wall) = self.clock;
        if now >= mono {
            wall + now.duration_since(mono)
        } else {
            wall.checked_sub(mono.duration_since(now)).unwrap_or(wall)
        }
    }
}

/// A fresh boringtun session state for a peer. Persistent keepalive is not handed to
/// boringtun (it has no setter for it): the engine sends keepalives itself, so an operator
/// can change the interval without breaking the session.
fn new_tunn(identity: &Identity, key: &PublicKey, psk: Option<&PresharedKey>, index: u32) -> Tunn {
    Tunn::new(
        identity.secret.clone(),
        x25519::PublicKey::from(*key.as_bytes()),
        psk.map(|k| *k.as_bytes()),
        None,
        index,
        Some(Arc::clone(&identity.limiter)),
    )
}

/// A 24-bit session index no `Tunn` uses.
fn allocate_index(next: &mut u32, peers: &Peers) -> u32 {
    loop {
        let index = *next;
        *next = (*next + 1) & 0x00ff_ffff;
        if !peers.index_in_use(index) {
            return index;
        }
    }
}

/// Records a completed handshake (and the peer coming up): called for the events that
/// complete one (an initiation answered, a response accepted). Not derived from boringtun's
/// `stats()` time since the handshake: boringtun resets all its timers (that one included)
/// when it starts a handshake after an expired one, which would look like a new session every
/// retry on a dead link.
fn note_handshake(peer: &mut Peer, session: &mut Session, wall: SystemTime) {
    peer.last_handshake = Some(wall);
    peer.health.handshake_completed();
    // New keys: the message limits count from here.
    session.current.sent = 0;
    session.current.rekey_due = false;
    if !peer.up {
        peer.up = true;
        tracing::info!(peer = %peer.name, key = %peer.public_key.short(), endpoint = ?peer.endpoint, "handshake completed, peer up");
    } else {
        tracing::debug!(peer = %peer.name, "handshake completed (rekey)");
    }
}

/// The part of the caller's buffer a step refers to (empty for steps without one).
fn step_range(step: &Step) -> Range<usize> {
    match step {
        Step::Tunnel(r) | Step::Network(r) | Step::NetworkTo(_, _, r) => r.clone(),
        _ => 0..0,
    }
}

/// What timer and flush steps produce: where to, from which local address, and the bytes.
type Flushed = (SocketAddr, Option<IpAddr>, Range<usize>);

/// Which of a peer's `Tunn`s a datagram is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A handshake initiation, found by the sender's public key.
    Initiation,
    /// Anything else, found by the 24-bit receiver index.
    Index(u32),
}

/// A packet decision as byte ranges of the caller's buffer, so that borrows of the buffer
/// end before the caller re-slices it.
enum Step {
    Nothing,
    /// A decrypted packet whose source is not the sender's (the inbound check).
    Dropped,
    /// A decrypted packet that is not a whole IP header.
    Malformed,
    Tunnel(Range<usize>),
    /// A reply to the datagram's source.
    Network(Range<usize>),
    /// A datagram to a peer's endpoint, from its sticky local address.
    NetworkTo(SocketAddr, Option<IpAddr>, Range<usize>),
}

/// The inbound source check: a decrypted packet is accepted only if the longest prefix
/// matching its source belongs to the peer that sent it. A peer with `198.19.0.0/16` cannot
/// send as `198.19.2.5` when `198.19.2.0/24` belongs to another peer.
/// boringtun cuts a decrypted packet to its IP length field without checking that field
/// against the header's size (found by fuzzing: a length of 0 gave an empty "packet"), so
/// the header's size is checked here.
fn inbound(routes: &RoutingTable<PeerId>, id: PeerId, src: IpAddr, r: Range<usize>) -> Step {
    let header = if src.is_ipv4() { 20 } else { 40 };
    if r.len() < header {
        return Step::Malformed;
    }
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
        WireGuardError::InvalidAeadTag => "decryption failed (wrong preshared key?)",
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
