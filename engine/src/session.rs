//! One peer's WireGuard session state: the boringtun `Tunn`s that carry it.
//!
//! Owns: which `Tunn` encrypts, which one a datagram belongs to (by receiver index), and the
//! hand-over when the preshared key changes. Doesn't own: the peer's identity, endpoint,
//! counters or timers (the peer store's and the engine's), nor index allocation.
//!
//! Normally a session is one `Tunn`. boringtun has no way to change the preshared key of a
//! `Tunn` in place, and a new `Tunn` starts without keys, so replacing it would stop traffic
//! until a new handshake completes. WireGuard instead mixes a new preshared key into the *next*
//! handshake while the current keys keep working (what Rosenpass relies on when it rotates the
//! key every two minutes). To do the same, a key change while keys are in use creates a `next`
//! `Tunn` with the new key beside the `current` one:
//! - data keeps being encrypted by `current` while it has keys;
//! - handshakes, ours and the peer's, go through `next` (a rekey `current` starts is dropped
//!   and `next` initiates instead), so the new key takes effect at the next handshake;
//! - once `next` has keys it becomes `current`, and the old one stays as `previous` for a short
//!   while, decrypting only, for packets the peer sent before it switched.

use boringtun::noise::Tunn;

use crate::Instant;

/// How long a replaced `Tunn` still decrypts packets sent before the peer switched keys.
pub(crate) const PREVIOUS_KEEP: std::time::Duration = std::time::Duration::from_secs(15);

/// A boringtun `Tunn` and the 24-bit index it was created with (the high 24 bits of the
/// receiver index on every packet sent to it).
pub(crate) struct Tunnel {
    pub tunn: Tunn,
    pub index: u32,
    /// Data packets encrypted under its keys since its latest handshake. boringtun does not
    /// count them against the protocol's limits; the engine does (REKEY_AFTER_MESSAGES,
    /// REJECT_AFTER_MESSAGES).
    pub sent: u64,
    /// The keys have carried REKEY_AFTER_MESSAGES packets: the next timer run starts a
    /// handshake.
    pub rekey_due: bool,
}

impl Tunnel {
    pub fn new(tunn: Tunn, index: u32) -> Self {
        Self {
            tunn,
            index,
            sent: 0,
            rekey_due: false,
        }
    }
}

impl Tunnel {
    /// Whether this `Tunn` has transport keys (a completed handshake) to encrypt with.
    pub fn established(&self) -> bool {
        self.tunn.stats().0.is_some()
    }
}

/// Which of a session's `Tunn`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Current,
    Next,
    Previous,
}

pub(crate) struct Session {
    pub current: Tunnel,
    /// Carries the new preshared key until its first handshake completes.
    pub next: Option<Tunnel>,
    /// The replaced `Tunn` and until when it may decrypt.
    pub previous: Option<(Tunnel, Instant)>,
}

impl Session {
    pub fn new(current: Tunnel) -> Self {
        Self {
            current,
            next: None,
            previous: None,
        }
    }

    /// Every index this session's `Tunn`s answer to.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.current.index)
            .chain(self.next.as_ref().map(|t| t.index))
            .chain(self.previous.as_ref().map(|(t, _)| t.index))
    }

    pub fn tunnel(&mut self, slot: Slot) -> Option<&mut Tunnel> {
        match slot {
            Slot::Current => Some(&mut self.current),
            Slot::Next => self.next.as_mut(),
            Slot::Previous => self.previous.as_mut().map(|(t, _)| t),
        }
    }

    /// The `Tunn` a packet with receiver index `index` (its high 24 bits) belongs to.
    pub fn slot_of(&self, index: u32) -> Option<Slot> {
        if self.current.index == index {
            return Some(Slot::Current);
        }
        if self.next.as_ref().is_some_and(|t| t.index == index) {
            return Some(Slot::Next);
        }
        if self
            .previous
            .as_ref()
            .is_some_and(|(t, _)| t.index == index)
        {
            return Some(Slot::Previous);
        }
        None
    }

    /// Where a handshake initiation from the peer goes: the `Tunn` with the newest key.
    pub fn handshake_slot(&self) -> Slot {
        if self.next.is_some() {
            Slot::Next
        } else {
            Slot::Current
        }
    }

    /// The `Tunn` that encrypts outgoing packets: the current one while it has keys; once it
    /// has none, the one with the new key (which then starts the handshake).
    pub fn send_slot(&self) -> Slot {
        match &self.next {
            Some(_) if !self.current.established() => Slot::Next,
            _ => Slot::Current,
        }
    }

    /// Starts using a new preshared key. Returns the index of a `Tunn` that was dropped.
    ///
    /// `fresh` is a new `Tunn` holding the key. If the current one has keys, `fresh` waits as
    /// `next` (replacing an earlier `next`); otherwise there is nothing to keep and `fresh`
    /// replaces the current one at once.
    pub fn rekey_with(&mut self, fresh: Tunnel) -> Vec<u32> {
        if self.current.established() {
            return self
                .next
                .replace(fresh)
                .map(|t| t.index)
                .into_iter()
                .collect();
        }
        let mut dropped = vec![std::mem::replace(&mut self.current, fresh).index];
        dropped.extend(self.next.take().map(|t| t.index));
        dropped
    }

    /// If `next` has keys now, makes it current and keeps the old one as `previous` (dropping
    /// an older `previous`). Returns whether it switched, and the index dropped, if any.
    pub fn promote(&mut self, now: Instant) -> (bool, Option<u32>) {
        if !self.next.as_ref().is_some_and(Tunnel::established) {
            return (false, None);
        }
        let Some(next) = self.next.take() else {
            return (false, None);
        };
        let old = std::mem::replace(&mut self.current, next);
        let dropped = self
            .previous
            .replace((old, now + PREVIOUS_KEEP))
            .map(|(t, _)| t.index);
        (true, dropped)
    }

    /// Drops `previous` once its time is up. Returns its index.
    pub fn expire_previous(&mut self, now: Instant) -> Option<u32> {
        match &self.previous {
            Some((_, until)) if now >= *until => self.previous.take().map(|(t, _)| t.index),
            _ => None,
        }
    }
}
