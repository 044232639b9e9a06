//! The handshake thread and its queue: handshake messages never wait in front of transport
//! data, and a flood of them cannot take the packet loop.
//!
//! Owns: a bounded queue the packet loop puts handshake messages into (dropping, counted, what
//! does not fit and what exceeds its source's share), the thread that serves it, the judgment of "under load" (the queue filling,
//! as WireGuard's kernel module judges it), sending cookie replies and handshake answers, and
//! the counters `show` reports. Doesn't own: what a message deserves (the engine's
//! [`HandshakeGate`], asked without the engine's lock) or the handshake itself (the engine,
//! locked only for messages the gate lets through).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use quinn_udp::UdpSocketState;
use sitelink_config::control::HandshakeCounters;
use sitelink_engine::handshake::{HandshakeGate, SourceLimits, Verdict};
use sitelink_engine::{Engine, Instant, Received};

use crate::batch;
use crate::dataplane::lock;
use crate::udp::Udp;

/// Messages the queue holds (the kernel module's MAX_QUEUED_INCOMING_HANDSHAKES).
pub const QUEUE_CAPACITY: usize = 4096;
/// Queue depth from which the interface is under load: cookies are demanded.
const LOAD_DEPTH: usize = QUEUE_CAPACITY / 8;
/// How long "under load" lasts after the queue was last that deep.
const LOAD_HOLD: Duration = Duration::from_secs(1);
/// Messages taken from the queue at a time.
const BATCH: usize = 64;
/// The longest handshake message (an initiation).
const MAX_MESSAGE: usize = 148;

/// A handshake message waiting for the thread.
struct Message {
    from: SocketAddr,
    local: Option<IpAddr>,
    len: usize,
    bytes: [u8; MAX_MESSAGE],
}

/// What the handshake path did, for `show --json` (`interface.handshakes`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages put in the queue.
    pub queued: AtomicU64,
    /// Messages dropped because the queue was full.
    pub queue_full: AtomicU64,
    /// Messages the gate let through to the engine.
    pub processed: AtomicU64,
    /// Messages dropped because their source sent more than its share.
    pub rate_limited: AtomicU64,
    /// Cookie replies sent (under load, to initiations without a cookie).
    pub cookie_replies: AtomicU64,
    /// Initiations dropped under load because the cookie-reply budget was spent.
    pub cookie_budget_spent: AtomicU64,
    /// Messages with a bad mac1 or shape.
    pub invalid: AtomicU64,
    /// Initiations that opened with our key but came from a key that is not a peer.
    pub unknown_key: AtomicU64,
}

impl Stats {
    /// The counters as `show` reports them.
    pub fn snapshot(&self) -> HandshakeCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandshakeCounters {
            queued: get(&self.queued),
            queue_full: get(&self.queue_full),
            processed: get(&self.processed),
            rate_limited: get(&self.rate_limited),
            cookie_replies: get(&self.cookie_replies),
            cookie_budget_spent: get(&self.cookie_budget_spent),
            invalid: get(&self.invalid),
            unknown_key: get(&self.unknown_key),
        }
    }
}

/// The bounded queue between the packet loop and the handshake thread.
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    pub stats: Stats,
}

/// What the queue's lock guards: the messages, and each source's share of the queue (checked
/// before a message goes in, so a few busy addresses cannot fill it).
struct Inner {
    messages: VecDeque<Message>,
    limits: SourceLimits,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                messages: VecDeque::with_capacity(QUEUE_CAPACITY),
                limits: SourceLimits::default(),
            }),
            ready: Condvar::new(),
            stats: Stats::default(),
        }
    }
}

impl Queue {
    /// Hands handshake messages over (the packet loop calls this once per receive batch,
    /// never waiting): each is dropped, and counted, if its source has used its share or the
    /// queue is full. One lock and one wake-up for the whole batch.
    pub fn push_batch(&self, now: Instant, batch: &[(SocketAddr, Option<IpAddr>, &[u8])]) {
        let (mut queued, mut limited, mut full) = (0u64, 0u64, 0u64);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &(from, local, datagram) in batch {
            if datagram.len() > MAX_MESSAGE {
                continue;
            }
            if !inner.limits.allow(from.ip(), now) {
                limited += 1;
                continue;
            }
            if inner.messages.len() >= QUEUE_CAPACITY {
                full += 1;
                continue;
            }
            let mut bytes = [0u8; MAX_MESSAGE];
            bytes[..datagram.len()].copy_from_slice(datagram);
            inner.messages.push_back(Message {
                from,
                local,
                len: datagram.len(),
                bytes,
            });
            queued += 1;
        }
        drop(inner);
        let stats = &self.stats;
        stats.rate_limited.fetch_add(limited, Ordering::Relaxed);
        stats.queue_full.fetch_add(full, Ordering::Relaxed);
        if queued > 0 {
            stats.queued.fetch_add(queued, Ordering::Relaxed);
            self.ready.notify_one();
        }
    }

    /// Takes up to `max` messages into `out`, waiting up to `wait` for the first. Returns the
    /// depth the queue had (for the load judgment).
    fn pop_batch(&self, out: &mut Vec<Message>, max: usize, wait: Duration) -> usize {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (mut inner, _) = self
            .ready
            .wait_timeout_while(inner, wait, |i| i.messages.is_empty())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let depth = inner.messages.len();
        let n = depth.min(max);
        out.extend(inner.messages.drain(..n));
        depth
    }

    /// Wakes the thread (to see `stop`).
    pub fn wake(&self) {
        self.ready.notify_all();
    }
}

/// The socket the thread answers from: the packet loop's, replaced when the listen port moves.
pub type SocketSlot = Mutex<Arc<Udp>>;

/// Serves the queue until `stop`.
pub fn run(
    queue: Arc<Queue>,
    engine: Arc<Mutex<Engine>>,
    socket: Arc<SocketSlot>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let mut gate: Option<HandshakeGate> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut reply = vec![0u8; 65536];
    let mut out = Outbox::default();
    let mut loaded_until: Option<Instant> = None;
    let mut sender: Option<(Arc<Udp>, UdpSocketState)> = None;
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        let depth = queue.pop_batch(&mut batch, BATCH, Duration::from_millis(200));
        if batch.is_empty() {
            continue;
        }
        let now = Instant::now();
        if depth >= LOAD_DEPTH {
            loaded_until = Some(now + LOAD_HOLD);
        }
        let under_load = loaded_until.is_some_and(|until| now < until);

        // The gate must check MACs against our current key.
        let key = lock(&engine).public_key();
        if gate.as_ref().map(HandshakeGate::key) != key {
            gate = lock(&engine).handshake_gate(now);
        }
        let Some(gate) = gate.as_mut() else {
            continue;
        };
        let before = gate.counters();
        // (message, the initiation's sender): what the gate let through, to check against
        // the peers under one short lock.
        let mut passed = Vec::new();
        for (i, m) in batch.iter().enumerate() {
            match gate.check(now, m.from, &m.bytes[..m.len], under_load, &mut reply) {
                Verdict::Process => passed.push((i, None)),
                Verdict::Initiation(key) => passed.push((i, Some(key))),
                Verdict::Cookie(cookie) => out.push(m.from, m.local, cookie),
                Verdict::Drop(_) => {}
            }
        }
        let after = gate.counters();
        let stats = &queue.stats;
        let add = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        add(
            &stats.cookie_replies,
            after.cookie_replies - before.cookie_replies,
        );
        add(
            &stats.cookie_budget_spent,
            after.cookie_budget_spent - before.cookie_budget_spent,
        );
        add(&stats.invalid, after.invalid - before.invalid);

        if !passed.is_empty() {
            let mut engine = lock(&engine);
            let (mut processed, mut unknown) = (0, 0);
            for &(i, sender) in &passed {
                if sender.is_some_and(|key| engine.peer_by_key(&key).is_none()) {
                    // A stranger: dropped without a second Diffie-Hellman under the lock.
                    unknown += 1;
                    continue;
                }
                processed += 1;
                let m = &batch[i];
                if let Received::Network(t) =
                    engine.handle_datagram(now, m.from, m.local, &m.bytes[..m.len], &mut reply)
                {
                    out.push(t.dst, t.src, t.payload);
                }
            }
            // Packets queued behind a completed handshake, and anything else now due.
            while let Some(t) = engine.poll_transmit(&mut reply) {
                out.push(t.dst, t.src, t.payload);
            }
            drop(engine);
            add(&stats.processed, processed);
            add(&stats.unknown_key, unknown);
        }

        // Answer from the packet loop's current socket (it moves with the listen port).
        let current = Arc::clone(&socket.lock().unwrap_or_else(|p| p.into_inner()));
        if sender
            .as_ref()
            .is_none_or(|(s, _)| !Arc::ptr_eq(s, &current))
        {
            let state = UdpSocketState::new((&current.socket).into())?;
            sender = Some((current, state));
        }
        if let Some((udp, state)) = &sender {
            let mut notes = out.send(udp, state);
            if !notes.is_empty() {
                notes.report(&mut lock(&engine));
            }
        }
    }
    Ok(())
}

/// Datagrams to send at the end of a batch.
#[derive(Default)]
struct Outbox {
    items: Vec<(SocketAddr, Option<IpAddr>, Vec<u8>)>,
}

impl Outbox {
    fn push(&mut self, dst: SocketAddr, src: Option<IpAddr>, payload: &[u8]) {
        self.items.push((dst, src, payload.to_vec()));
    }

    /// Sends everything; returns what the sends found out (gone sources, errors).
    fn send(&mut self, udp: &Udp, state: &UdpSocketState) -> batch::SendNotes {
        let mut notes = batch::SendNotes::default();
        for (dst, src, payload) in self.items.drain(..) {
            batch::send(udp, state, (dst, src), &payload, None, &mut notes);
        }
        notes
    }
}
