//! Whether a peer is up, for routing: the states a routing daemon, a hook or an operator
//! watching `sitelinkctl events` reacts to, and the events that report them.
//!
//! Owns: the per-peer state ([`Live`]: down, holding down after a handshake, up), the rules
//! that move it, and the [`Event`]s they produce. Doesn't own: what a withdrawn peer's routes
//! are (the engine takes its prefixes out of the cryptokey routing table; the daemon its
//! kernel routes), the clock, or the deadlines heap ([`crate::timers::Deadlines`], a second one
//! the engine keeps for these checks).
//!
//! The rules, as the `[interface]` settings say them:
//! - a peer is **down** at start, and after `down-after` without an authenticated packet from
//!   it (keepalives count: with `persistent-keepalive` on both sides a live link is never
//!   silent that long);
//! - a completed handshake starts a **hold-down** of `up-after`; if the peer's packets still
//!   arrive when it ends, the peer is **up** (a link that flaps every few seconds stays down);
//! - with `withdraw-when-down`, a peer that is not up has its prefixes out of the routing
//!   table, so a covering prefix of another peer (a transit site) or the kernel's next route
//!   takes its traffic.
//!
//! Cost: nothing per packet (the receive time is stored anyway); one heap entry per peer per
//! `down-after`, re-queued lazily when it comes due and the peer was heard from meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use sitelink_config::PublicKey;

use crate::Instant;

/// Silence allowed beyond three keepalive intervals before a peer is down.
const GRACE: Duration = Duration::from_secs(5);
/// `down-after` of a peer without a keepalive: its session keys would have expired
/// (REJECT_AFTER_TIME, 180 s) with no traffic, plus a rekey's retries.
const SILENT_LINK: Duration = Duration::from_secs(195);
/// Events kept for the daemon to collect; older ones are dropped (and counted) beyond it.
pub const MAX_EVENTS: usize = 4096;

/// The `[interface]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `down-after`; `None`: per peer, 3 × its keepalive + 5 s (195 s without one).
    pub down_after: Option<Duration>,
    /// `up-after`: the hold-down after a handshake.
    pub up_after: Duration,
    /// `withdraw-when-down`.
    pub withdraw: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            down_after: None,
            up_after: Duration::from_secs(u64::from(sitelink_config::DEFAULT_UP_AFTER)),
            withdraw: false,
        }
    }
}

impl Policy {
    /// The silence after which a peer with this keepalive is down.
    pub fn down_after(&self, keepalive: Option<u16>) -> Duration {
        self.down_after.unwrap_or_else(|| match keepalive {
            Some(k) => Duration::from_secs(3 * u64::from(k)) + GRACE,
            None => SILENT_LINK,
        })
    }
}

/// A peer's state for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    Down,
    /// A handshake completed; up at `until` if the peer is still heard from then.
    HoldDown {
        until: Instant,
    },
    Up,
}

impl Live {
    /// "up", "hold-down" or "down", as `show` says it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Live::Up => "up",
            Live::HoldDown { .. } => "hold-down",
            Live::Down => "down",
        }
    }
}

/// A peer's liveness record.
#[derive(Debug, Clone)]
pub struct Liveness {
    pub live: Live,
    /// When the state last changed (for `show`).
    pub since: Instant,
    /// Its prefixes are out of the routing table.
    pub withdrawn: bool,
    /// Its entry in the engine's liveness heap (older entries are stale).
    pub check_at: Option<Instant>,
}

impl Liveness {
    pub fn new(now: Instant) -> Self {
        Self {
            live: Live::Down,
            since: now,
            withdrawn: false,
            check_at: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.live == Live::Up
    }
}

/// What a liveness check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changes; check again at the time given, if any.
    Wait(Option<Instant>),
    /// The peer is up now; check again at the time given.
    Up(Instant),
    /// The peer is down now, silent for this long.
    Down(Duration),
    /// The hold-down ended without packets: it stays down, quietly.
    StillDown,
}

/// The rules, at `now`, for a peer last heard from at `last_received` that goes down after
/// `down_after` of silence.
pub fn check(
    live: Live,
    now: Instant,
    last_received: Option<Instant>,
    down_after: Duration,
) -> Verdict {
    let silent = last_received.map(|t| now.saturating_duration_since(t));
    let heard = silent.is_some_and(|s| s < down_after);
    let next = last_received.map(|t| t + down_after);
    match live {
        Live::Down => Verdict::Wait(None),
        Live::HoldDown { until } if now < until => Verdict::Wait(Some(until)),
        Live::HoldDown { .. } if heard => Verdict::Up(next.unwrap_or(now)),
        Live::HoldDown { .. } => Verdict::StillDown,
        Live::Up if heard => Verdict::Wait(next),
        Live::Up => Verdict::Down(silent.unwrap_or(down_after)),
    }
}

/// Something that happened to a peer, for `sitelinkctl events`, hooks and routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: SystemTime,
    pub peer: String,
    pub public_key: PublicKey,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Up for routing: a handshake, then `up-after` with the peer's packets arriving.
    Up,
    /// Down: no authenticated packet for this long.
    Down { silent: Duration },
    /// A handshake completed (the first of a session, or a rekey).
    Handshake,
    /// The peer's endpoint changed (roaming, DNS, an operator).
    Endpoint { endpoint: SocketAddr },
}

impl EventKind {
    /// The event's name on the wire and in hooks.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Up => "peer-up",
            EventKind::Down { .. } => "peer-down",
            EventKind::Handshake => "handshake",
            EventKind::Endpoint { .. } => "endpoint",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_down_after_follows_the_keepalive() {
        let p = Policy::default();
        assert_eq!(p.down_after(Some(5)), Duration::from_secs(20));
        assert_eq!(p.down_after(Some(1)), Duration::from_secs(8));
        assert_eq!(p.down_after(None), Duration::from_secs(195));
        let p = Policy {
            down_after: Some(Duration::from_secs(3)),
            ..p
        };
        assert_eq!(p.down_after(Some(25)), Duration::from_secs(3));
    }

    #[test]
    fn hold_down_then_up_then_down_after_silence() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let after = s(3);
        // Down stays down until a handshake (the engine moves it to hold-down).
        assert_eq!(check(Live::Down, t0, Some(t0), after), Verdict::Wait(None));
        let hold = Live::HoldDown { until: t0 + s(2) };
        assert_eq!(
            check(hold, t0 + s(1), Some(t0), after),
            Verdict::Wait(Some(t0 + s(2)))
        );
        // Heard from 1 s before the hold-down ends: up, checked again 3 s after that packet.
        assert_eq!(
            check(hold, t0 + s(2), Some(t0 + s(1)), after),
            Verdict::Up(t0 + s(4))
        );
        // Silent through the hold-down: stays down without an event.
        assert_eq!(check(hold, t0 + s(5), Some(t0), after), Verdict::StillDown);
        assert_eq!(check(hold, t0 + s(5), None, after), Verdict::StillDown);
        // Up: a packet within down-after keeps it up; none for 3 s takes it down.
        assert_eq!(
            check(Live::Up, t0 + s(3), Some(t0 + s(2)), after),
            Verdict::Wait(Some(t0 + s(5)))
        );
        assert_eq!(
            check(Live::Up, t0 + s(6), Some(t0 + s(2)), after),
            Verdict::Down(s(4))
        );
    }
}
