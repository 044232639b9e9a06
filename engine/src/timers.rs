//! Peer deadlines: which peers have timer work due, and when.
//!
//! Owns: a min-heap of `(deadline, peer)` entries. Doesn't own: what a peer does when its
//! deadline comes, or when the next one is (the engine decides both).
//!
//! Only peers with something to do are in the heap: a peer with session state (boringtun's
//! timers need a tick every [`crate::TICK`]) or an always-on link waiting for its next
//! handshake. An idle configured peer costs nothing, so 10,000 peers of which a few are
//! connected cost what a few peers do. Entries are never removed in place: a peer's current
//! deadline is stored with the peer, and a popped entry that no longer matches it is stale and
//! skipped (lazy deletion), which keeps rescheduling O(log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{Instant, PeerId};

#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, PeerId)>>,
}

impl Deadlines {
    /// Records that `peer` is due at `at`. The caller stores `at` as the peer's deadline, so
    /// that older entries for the same peer read as stale.
    pub fn schedule(&mut self, peer: PeerId, at: Instant) {
        self.heap.push(Reverse((at, peer)));
    }

    /// The earliest entry's time (possibly stale: an early wake-up, never a late one).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the earliest entry if it is due at `now`. The caller skips it if it is stale (not
    /// the peer's current deadline any more).
    pub fn pop(&mut self, now: Instant) -> Option<(Instant, PeerId)> {
        let Reverse((at, peer)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((at, peer))
    }

    /// Entries in the heap, stale ones included (for tests and status).
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}
