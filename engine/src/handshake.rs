//! The handshake gate: what becomes of a handshake message before the engine spends a
//! Diffie-Hellman on it.
//!
//! Owns: the cheap checks (message shape, mac1), the load policy (cookies demanded under load,
//! as WireGuard's kernel module does), per-source rate limits and the budget of cookie replies.
//! Doesn't own: the queue the messages wait in or the thread that serves it (the daemon's),
//! nor the handshake itself (the engine's, once the gate says [`Verdict::Process`]).
//!
//! Anyone may send initiations with a valid mac1: our public key is no secret. So the data path
//! never handles handshake messages; they wait in a bounded queue served by their own thread,
//! which asks the gate first, without the engine's lock:
//! - every source address (an IPv4 address, an IPv6 /64) may pass about 20 handshake messages a
//!   second, bursts of 5 (the kernel module's numbers); more is dropped and counted. This check
//!   ([`SourceLimits`]) runs first, where the caller queues the message, so a flood from a few
//!   addresses never fills the queue that many distinct peers need;
//! - under load (the caller says when: its queue filling; or more than [`OPEN_BUDGET`]
//!   initiations a second to open), an initiation must carry a valid
//!   mac2, i.e. a cookie we gave its source: without one it gets a cookie reply instead of a
//!   handshake, from a budget of [`COOKIE_BUDGET`] replies a second, so a flood costs a MAC and
//!   at most a bounded number of replies, never a Diffie-Hellman;
//! - handshake responses answer our own initiations and cookie replies carry no MAC: both pass
//!   the per-source limit only;
//! - an initiation that passed is opened here (the anonymous parse: one Diffie-Hellman with our
//!   static key, which reveals the sender's public key), still without the engine's lock: the
//!   caller hands it to the engine only if that key is one of our peers. Strangers with a valid
//!   mac1, the bulk of any flood, never hold the lock the packet loop needs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use sitelink_config::PublicKey;

use crate::Instant;

/// Handshake messages a second one source may send, and the burst it may save up.
pub const PER_SOURCE_RATE: f64 = 20.0;
pub const PER_SOURCE_BURST: f64 = 5.0;
/// Cookie replies a second, in all.
pub const COOKIE_BUDGET: f64 = 10_000.0;
/// Initiations opened (one Diffie-Hellman each, ~50 µs) a second before the gate counts as
/// under load by itself: about a tenth of a core. Legitimate peers past it get a cookie and
/// come back one round trip later; 100,000 peers rekeying every two minutes need 830.
pub const OPEN_BUDGET: f64 = 2_000.0;
/// Sources tracked at once; beyond that, new sources are refused until old ones age out.
const MAX_SOURCES: usize = 65_536;
/// A source idle this long is forgotten (its bucket is full again anyway).
const SOURCE_IDLE: Duration = Duration::from_secs(1);

const TYPE_HANDSHAKE_INIT: u8 = 1;
const TYPE_HANDSHAKE_RESPONSE: u8 = 2;
const TYPE_COOKIE_REPLY: u8 = 3;
const INIT_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_REPLY_LEN: usize = 64;

/// Whether a datagram is a handshake message (initiation, response or cookie reply), by its
/// type and length: what the data path hands to the handshake queue.
pub fn is_handshake(datagram: &[u8]) -> bool {
    datagram.get(1..4) == Some(&[0, 0, 0])
        && matches!(
            (datagram.first(), datagram.len()),
            (Some(&TYPE_HANDSHAKE_INIT), INIT_LEN)
                | (Some(&TYPE_HANDSHAKE_RESPONSE), RESPONSE_LEN)
                | (Some(&TYPE_COOKIE_REPLY), COOKIE_REPLY_LEN)
        )
}

/// What to do with a handshake message.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Give it to the engine (a response or a cookie reply: the engine finds its session).
    Process,
    /// An initiation from this key: give it to the engine if the key is one of its peers.
    Initiation(PublicKey),
    /// Send this cookie reply to the source instead.
    Cookie(&'a [u8]),
    /// Drop it (counted under the reason).
    Drop(Dropped),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not a handshake message, a bad mac1, or an initiation that does not open with our key.
    Invalid,
    /// Under load, without a cookie, and the cookie budget was spent.
    CookieBudget,
}

/// What the gate did, for status and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GateCounters {
    pub passed: u64,
    pub cookie_replies: u64,
    pub invalid: u64,
    pub cookie_budget_spent: u64,
}

/// See the module docs. One per handshake thread; built from the engine's identity (and built
/// again when it changes: [`HandshakeGate::key`]).
pub struct HandshakeGate {
    key: PublicKey,
    /// Our static key pair, for the anonymous parse of initiations. A copy of the engine's
    /// (zeroed on drop by x25519-dalek); it never leaves this struct and is never printed.
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    /// Checks mac1 only (never "under load"): the limiter the engine's sessions share.
    normal: Arc<RateLimiter>,
    /// Always "under load": checks mac2 and makes cookie replies. Its cookie secret is its own,
    /// so the cookies it hands out are the ones it accepts.
    loaded: RateLimiter,
    cookies: Bucket,
    opens: Bucket,
    counters: GateCounters,
}

impl HandshakeGate {
    /// A gate for the interface key `key`, sharing `normal` (see
    /// [`crate::Engine::handshake_gate`]).
    pub(crate) fn new(
        secret: &x25519::StaticSecret,
        normal: Arc<RateLimiter>,
        now: Instant,
    ) -> Self {
        let public = x25519::PublicKey::from(secret);
        Self {
            key: PublicKey::from_bytes(public.to_bytes()),
            secret: secret.clone(),
            public,
            normal,
            loaded: RateLimiter::new(&public, 0),
            cookies: Bucket::full(COOKIE_BUDGET, now),
            opens: Bucket::full(OPEN_BUDGET, now),
            counters: GateCounters::default(),
        }
    }

    /// The interface key this gate checks MACs for.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    pub fn counters(&self) -> GateCounters {
        self.counters
    }

    /// Decides about `datagram` from `from`. `under_load`: the queue is filling, so cookies
    /// are demanded. `reply` receives a cookie reply (64 bytes or more).
    pub fn check<'b>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        under_load: bool,
        reply: &'b mut [u8],
    ) -> Verdict<'b> {
        if !is_handshake(datagram) {
            return self.drop(Dropped::Invalid);
        }
        if datagram[0] == TYPE_COOKIE_REPLY {
            return self.pass();
        }
        if self
            .normal
            .verify_packet(Some(from.ip()), datagram, reply)
            .is_err()
        {
            return self.drop(Dropped::Invalid);
        }
        if datagram[0] == TYPE_HANDSHAKE_RESPONSE {
            return self.pass();
        }
        // Under load when the caller says so (its queue filling), or when initiations come
        // faster than we want to spend Diffie-Hellmans on: a flood from many addresses, each
        // within its own share, still costs at most OPEN_BUDGET of them a second.
        if !under_load && self.opens.take(now, OPEN_BUDGET, OPEN_BUDGET) {
            return self.open(datagram);
        }
        let base = reply.as_ptr() as usize;
        match self.loaded.verify_packet(Some(from.ip()), datagram, reply) {
            Ok(_) => self.open(datagram),
            Err(TunnResult::WriteToNetwork(cookie)) => {
                let range = {
                    let start = (cookie.as_ptr() as usize).saturating_sub(base);
                    start..start + cookie.len()
                };
                if !self.cookies.take(now, COOKIE_BUDGET, COOKIE_BUDGET) {
                    return self.drop(Dropped::CookieBudget);
                }
                self.counters.cookie_replies += 1;
                Verdict::Cookie(&reply[range])
            }
            Err(_) => self.drop(Dropped::Invalid),
        }
    }

    /// The anonymous parse of an initiation: who sent it, if it opens with our key.
    fn open(&mut self, datagram: &[u8]) -> Verdict<'static> {
        let sender = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(init)) => {
                parse_handshake_anon(&self.secret, &self.public, &init)
                    .map(|half| PublicKey::from_bytes(half.peer_static_public))
            }
            _ => return self.drop(Dropped::Invalid),
        };
        match sender {
            Ok(key) => {
                self.counters.passed += 1;
                Verdict::Initiation(key)
            }
            Err(_) => self.drop(Dropped::Invalid),
        }
    }

    fn pass(&mut self) -> Verdict<'static> {
        self.counters.passed += 1;
        Verdict::Process
    }

    fn drop(&mut self, why: Dropped) -> Verdict<'static> {
        match why {
            Dropped::Invalid => self.counters.invalid += 1,
            Dropped::CookieBudget => self.counters.cookie_budget_spent += 1,
        }
        Verdict::Drop(why)
    }
}

/// The per-source share of handshake messages: a token bucket per source address (IPv4, or
/// IPv6 /64), for at most 65,536 sources at once (`MAX_SOURCES`). Cheap enough (one hash lookup) for
/// the packet loop to ask before it queues a message.
#[derive(Default)]
pub struct SourceLimits {
    sources: HashMap<SourceKey, Bucket>,
    /// When idle sources were last swept out (at most once per [`SOURCE_IDLE`], so a flood of
    /// new addresses against a full table costs a lookup each, not a sweep each).
    swept: Option<Instant>,
}

impl SourceLimits {
    /// Takes a token from `ip`'s bucket: whether its message may go on.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = SourceKey::of(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            if self
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= SOURCE_IDLE)
            {
                self.swept = Some(now);
                self.sources
                    .retain(|_, b| now.saturating_duration_since(b.at) < SOURCE_IDLE);
            }
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        self.sources
            .entry(key)
            .or_insert_with(|| Bucket::full(PER_SOURCE_BURST, now))
            .take(now, PER_SOURCE_RATE, PER_SOURCE_BURST)
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// What a per-source limit keys on: an IPv4 address, or an IPv6 /64 (one host's share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => SourceKey::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.into()),
                // The top 64 bits of the address: its /64.
                None => SourceKey::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    /// Refills at `rate` a second up to `burst`, then takes one token if there is one.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
