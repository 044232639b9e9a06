//! The packet loops: N threads moving packets between the TUN device and the UDP sockets
//! through the engine, in batches.
//!
//! Each thread owns one queue of a multi-queue TUN device and one UDP socket of a
//! `SO_REUSEPORT` group (one of each with `threads = 1`). The kernel keeps a peer's
//! datagrams on one socket (the 4-tuple hash), and the TUN device sends a flow's outgoing
//! packets to the queue its incoming ones were written on: one peer's traffic, both ways, is
//! one thread's, in order, and the threads divide the peers; they never share a packet.
//! What they share is the engine: routine transport data goes through its fast path
//! ([`DataPath`]: per-peer locks, no engine lock), the rest through the engine under its lock.
//! Thread 0 also runs the engine's timers and pings the systemd watchdog; another thread that
//! gave a peer a sooner deadline (a new session) wakes it.
//!
//! Owns: the threads, reading batches (TUN offload splitting, UDP GRO), handing each packet
//! to the fast path or the engine, and the timer cadence. Doesn't own: any packet decision
//! (the engine's), the outgoing batches and sends (`batch`), or setup (main's).
//!
//! Each wakeup drains up to a budget of batches from each ready source:
//! - TUN → UDP: with TUN offload the kernel hands us TCP super-packets of up to 64 KiB; tun-rs
//!   splits them into MTU-sized packets; small packets (a read each) are read until the queue
//!   is empty, up to a batch; the engine encrypts each, and runs of equal-sized datagrams to
//!   one endpoint leave in one UDP GSO send.
//! - UDP → TUN: recvmmsg with UDP GRO returns up to `BATCH_SIZE` buffers of coalesced
//!   datagrams; the engine decrypts each, and tun-rs coalesces the TCP segments (GRO) into
//!   few TUN writes.
//!
//! The engine's mutex is taken at most once per batch, and only when the fast path hands a
//! packet back; the control socket takes it briefly for status. One bad packet is counted by
//! the engine and never stops the batch.
//!
//! The control plane talks to the threads through a [`Handle`]: per thread a [`Command`]
//! channel and a wake-up socket that is part of its poll set. A new listen port arrives as a
//! group of bound sockets, one per thread ([`Handle::use_sockets`]); each loop switches to its
//! own between batches and closes the old one, so sessions go on and the peers roam to the new
//! port on our next packet. A thread that ends (a deleted TUN device) stops them all.
//!
//! Sticky source: every datagram records the local address it arrived at (IP_PKTINFO /
//! IPV6_PKTINFO, which quinn-udp enables), the engine keeps it per peer, and sends to that peer
//! leave from it. If the address is gone (EINVAL/EADDRNOTAVAIL), the datagram goes again from
//! the kernel's choice and the engine forgets the address until the peer's next packet.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use sitelink_engine::{handshake, DataPath, Engine, Fast, Instant, Received};
use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::batch::{offset_in, send, Gso, Out, SendNotes, TunBatch, MAX_PACKET};
use crate::handshakes;
use crate::udp::{canonical, canonical_ip, Udp};

/// Batches drained from one source before the loop looks at the other and at timers.
const BUDGET: usize = 16;
/// Free packet buffers a TUN read must have: a 64 KiB TCP super-packet splits into at most
/// this many segments (123 at the smallest MSS the MTU allows). The packet buffers are twice
/// as many, so that small packets (a read each) fill a batch; they are touched only as far as
/// packets reach, so the unused ones cost address space, not memory.
const SPLIT_ROOM: usize = IDEAL_BATCH_SIZE;

/// What the control plane asks of the packet loop.
pub enum Command {
    /// Move to this UDP socket (a new listen port) and close the current one.
    UseSocket(Udp),
}

/// The control plane's end: per packet thread, commands and the wake-up that makes the loop
/// read them.
pub struct Handle {
    workers: Vec<Worker>,
    stop: Arc<AtomicBool>,
    /// The MTU TCP SYNs are clamped to (`mss-clamp`), 0 for off; read by the loops per batch.
    pub mss_clamp: Arc<AtomicU16>,
}

struct Worker {
    commands: Sender<Command>,
    wake: UnixDatagram,
}

/// A packet thread's ends of its command channel and wake-up socket.
pub struct Ends {
    commands: Receiver<Command>,
    wake: UnixDatagram,
}

impl Handle {
    /// A handle for `threads` packet threads, and each thread's ends.
    pub fn new(threads: usize) -> io::Result<(Self, Vec<Ends>, Arc<AtomicBool>)> {
        let mut workers = Vec::with_capacity(threads);
        let mut ends = Vec::with_capacity(threads);
        for _ in 0..threads.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let (wake_tx, wake_rx) = UnixDatagram::pair()?;
            wake_tx.set_nonblocking(true)?;
            workers.push(Worker {
                commands: tx,
                wake: wake_tx,
            });
            ends.push(Ends {
                commands: rx,
                wake: wake_rx,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Self {
            workers,
            stop: Arc::clone(&stop),
            mss_clamp: Arc::new(AtomicU16::new(0)),
        };
        Ok((handle, ends, stop))
    }

    /// How many packet threads there are (and sockets a new listen port needs).
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Hands each packet thread its socket of a new group (one per thread, in order, from
    /// [`Udp::bind_group`]). Fails only if the loops have ended.
    pub fn use_sockets(&self, group: Vec<Udp>) -> io::Result<()> {
        if group.len() != self.workers.len() {
            return Err(io::Error::other(format!(
                "{} sockets for {} packet threads",
                group.len(),
                self.workers.len()
            )));
        }
        for (worker, udp) in self.workers.iter().zip(group) {
            worker
                .commands
                .send(Command::UseSocket(udp))
                .map_err(|_| io::Error::other("the packet loop has stopped"))?;
            wake_up(&worker.wake);
        }
        Ok(())
    }

    /// Asks the loops to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in &self.workers {
            wake_up(&worker.wake);
        }
    }

    /// Second handles on the wake-up sockets, for the threads to wake each other.
    pub fn wakers(&self) -> io::Result<Vec<UnixDatagram>> {
        self.workers.iter().map(|w| w.wake.try_clone()).collect()
    }
}

fn wake_up(wake: &UnixDatagram) {
    // A full socket buffer means the loop has wake-ups pending already.
    let _ = wake.send(b"w");
}

/// One packet thread's devices: its TUN queue, its UDP socket and its control ends.
pub struct Queue {
    pub tun: SyncDevice,
    pub udp: Arc<Udp>,
    pub ends: Ends,
}

pub struct DataPlane {
    /// One per packet thread; the first runs the timers.
    pub queues: Vec<Queue>,
    pub engine: Arc<Mutex<Engine>>,
    /// Handshake messages go here, for the handshake thread; transport data never waits
    /// behind them.
    pub handshakes: Arc<handshakes::Queue>,
    /// The socket the handshake thread answers from (the first thread's, kept in step).
    pub socket_slot: Arc<handshakes::SocketSlot>,
    /// The threads' wake-up sockets ([`Handle::wakers`]).
    pub wakers: Vec<UnixDatagram>,
    pub stop: Arc<AtomicBool>,
    /// systemd watchdog ping interval: pinged from the first loop, so a wedged loop (not just
    /// a wedged process) gets the service restarted.
    pub watchdog: Option<Duration>,
    /// The MTU TCP SYNs are clamped to (both ways), 0 for off: set by the control plane.
    pub mss_clamp: Arc<AtomicU16>,
}

/// What the packet threads share besides the engine.
struct Common<'a> {
    engine: &'a Mutex<Engine>,
    handshakes: &'a handshakes::Queue,
    socket_slot: &'a handshakes::SocketSlot,
    wakers: &'a [UnixDatagram],
    stop: &'a AtomicBool,
    mss_clamp: &'a AtomicU16,
    watchdog: Option<Duration>,
    /// When the timer thread (0) wakes next, in nanoseconds since `epoch`: another thread
    /// that gave the engine a sooner deadline wakes it.
    timer_due: AtomicU64,
    epoch: Instant,
}

impl Common<'_> {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Called by a thread other than the timer thread after the engine's lock: wakes the
    /// timer thread if the engine now has a deadline before the one it sleeps until.
    fn wake_timers_for(&self, engine: &Engine) {
        if let Some((at, _)) = engine.poll_timeout() {
            if self.nanos(at) < self.timer_due.load(Ordering::Relaxed) {
                if let Some(w) = self.wakers.first() {
                    wake_up(w);
                }
            }
        }
    }

    /// A thread ended: the others stop too (one dead loop means a dead interface).
    fn stop_all(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.wakers {
            wake_up(w);
        }
    }
}

impl DataPlane {
    /// Runs every packet thread (the first on this one) until they stop; the first error of
    /// any of them (a deleted TUN device) is the result.
    pub fn run(self) -> io::Result<()> {
        let common = Common {
            engine: &self.engine,
            handshakes: &self.handshakes,
            socket_slot: &self.socket_slot,
            wakers: &self.wakers,
            stop: &self.stop,
            mss_clamp: &self.mss_clamp,
            watchdog: self.watchdog,
            timer_due: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        let common = &common;
        let mut queues = self.queues.into_iter();
        let Some(first) = queues.next() else {
            return Err(io::Error::other("no packet queue"));
        };
        let span = tracing::Span::current();
        std::thread::scope(|scope| {
            let mut others = Vec::new();
            for (n, queue) in queues.enumerate() {
                let span = span.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("sitelink-packets-{}", n + 1))
                    .spawn_scoped(scope, move || {
                        let _span = span.entered();
                        let result = run_queue(queue, common, false);
                        common.stop_all();
                        result
                    });
                match spawned {
                    Ok(handle) => others.push(handle),
                    Err(e) => {
                        common.stop_all();
                        return Err(e);
                    }
                }
            }
            let mut result = run_queue(first, common, true);
            common.stop_all();
            for handle in others {
                let other = handle
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a packet thread panicked")));
                if result.is_ok() {
                    result = other;
                }
            }
            result
        })
    }
}

/// One packet thread's loop. `timers`: this one runs the engine's timers and the watchdog.
fn run_queue(queue: Queue, common: &Common<'_>, timers: bool) -> io::Result<()> {
    let Queue { tun, udp, ends } = queue;
    tun.set_nonblocking(true)?;
    ends.wake.set_nonblocking(true)?;
    let state = UdpSocketState::new((&udp.socket).into())?;
    let gso_segments = state.max_gso_segments();
    let mut io = Io {
        data: lock(common.engine).data_path(),
        gso_segments,
        gso_probed: None,
        tun: &tun,
        udp,
        handshakes: common.handshakes,
        socket_slot: timers.then_some(common.socket_slot),
        state,
        gso: Gso::default(),
        out: TunBatch::default(),
        gro: GROTable::default(),
        stale: SendNotes::default(),
        mss_clamp: common.mss_clamp,
        wake_timers: (!timers).then_some(common),
    };
    let mut bufs = Buffers::new();
    let mut fds = [
        tun.as_raw_fd(),
        io.udp.socket.as_raw_fd(),
        ends.wake.as_raw_fd(),
    ];
    let watchdog = common.watchdog.filter(|_| timers);
    // A thread without timers only wakes for packets and commands.
    let mut next_tick = if timers {
        Instant::now()
    } else {
        Instant::now() + IDLE_WAKE
    };
    let mut next_ping = Instant::now();
    loop {
        if let Some(interval) = watchdog {
            if Instant::now() >= next_ping {
                crate::systemd::watchdog_ping();
                next_ping = Instant::now() + interval;
            }
        }
        let mut wait = next_tick.saturating_duration_since(Instant::now());
        if watchdog.is_some() {
            wait = wait.min(next_ping.saturating_duration_since(Instant::now()));
        }
        if timers {
            common
                .timer_due
                .store(common.nanos(Instant::now() + wait), Ordering::Relaxed);
        }
        let ready = poll_readable(&fds, wait)?;
        if ready[2] {
            drain_wakeups(&ends.wake);
            while let Ok(command) = ends.commands.try_recv() {
                match command {
                    Command::UseSocket(udp) => {
                        io.use_socket(udp)?;
                        fds[1] = io.udp.socket.as_raw_fd();
                    }
                }
            }
            if timers {
                // Woken by another thread: the engine may have a sooner deadline.
                note_deadline(&lock(common.engine), &mut next_tick);
            }
        }
        if common.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + IDLE_WAKE;
            if timers {
                let mut engine = lock(common.engine);
                engine.handle_timeout(now, SystemTime::now());
                // Nothing scheduled: wake once a second anyway, so that the engine's
                // wall-clock reference stays fresh.
                next_tick = engine
                    .poll_timeout()
                    .map_or(now + IDLE_WAKE, |(at, _)| at.min(now + IDLE_WAKE));
                io.drain_engine(&mut engine, &mut bufs.slow_scratch);
            }
        }
        if ready[1] {
            for _ in 0..BUDGET {
                if !io.udp_to_tun(common.engine, &mut bufs, &mut next_tick)? {
                    break;
                }
            }
        }
        if ready[0] {
            for _ in 0..BUDGET {
                if !io.tun_to_udp(common.engine, &mut bufs, &mut next_tick)? {
                    break;
                }
            }
        }
    }
}

/// Longest the loop sleeps when no timer is due.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Empties the wake-up socket (its datagrams carry no data; the commands are in the channel).
fn drain_wakeups(wake: &UnixDatagram) {
    let mut buf = [0u8; 64];
    while wake.recv(&mut buf).is_ok() {}
}

/// Locks the engine. Every user of the shared engine goes through here.
pub fn lock(engine: &Mutex<Engine>) -> EngineGuard<'_> {
    // A panic while holding the lock would be a bug in the engine; its state is still
    // consistent enough to keep forwarding, so we take it rather than wedge the loop.
    EngineGuard(
        engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// The engine, locked. Dropping it publishes what changed to the packet threads
/// ([`Engine::publish`]: a new routing snapshot after a configuration change, nothing
/// otherwise), so that every change made under the lock is seen by every packet after it.
pub struct EngineGuard<'a>(MutexGuard<'a, Engine>);

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.0
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.0
    }
}

impl Drop for EngineGuard<'_> {
    fn drop(&mut self) {
        self.0.publish();
    }
}

struct Buffers {
    /// Raw TUN read: virtio header + up to 64 KiB super-packet.
    tun_raw: Vec<u8>,
    /// Packets split out of one TUN read.
    tun_pkts: Vec<Vec<u8>>,
    tun_sizes: Vec<usize>,
    /// UDP receive buffers (each may hold several GRO-coalesced datagrams).
    udp_bufs: Vec<Vec<u8>>,
    udp_meta: Vec<RecvMeta>,
    /// The engine's output (packets the fast path handed back, timers' sends); the fast
    /// path writes into the outgoing batches themselves.
    slow_scratch: Vec<u8>,
}

impl Buffers {
    fn new() -> Self {
        Self {
            tun_raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            // Each zeroed on its own (not cloned): the allocator hands out untouched pages,
            // so a buffer costs memory only as far as packets reach into it.
            tun_pkts: (0..2 * SPLIT_ROOM).map(|_| vec![0; MAX_PACKET]).collect(),
            tun_sizes: vec![0; 2 * SPLIT_ROOM],
            udp_bufs: (0..BATCH_SIZE).map(|_| vec![0; MAX_PACKET]).collect(),
            udp_meta: vec![RecvMeta::default(); BATCH_SIZE],
            slow_scratch: vec![0; MAX_PACKET + 64],
        }
    }
}

struct Io<'a> {
    /// The engine's fast path: routine transport data without the engine's lock.
    data: DataPath,
    tun: &'a SyncDevice,
    udp: Arc<Udp>,
    handshakes: &'a handshakes::Queue,
    /// Where the handshake thread finds the socket to answer from: the timer thread's.
    socket_slot: Option<&'a handshakes::SocketSlot>,
    /// Set on the threads that do not run the timers: whom to wake for a sooner deadline.
    wake_timers: Option<&'a Common<'a>>,
    state: UdpSocketState,
    gso: Gso,
    out: TunBatch,
    gro: GROTable,
    /// What sends found out (gone sticky sources, send errors), for the engine.
    stale: SendNotes,
    mss_clamp: &'a AtomicU16,
    /// The GSO segments the socket supported when probed. quinn-udp turns GSO off for good
    /// after any EINVAL or EIO from sendmsg, which a blackholed route also gives: then the
    /// socket state is probed again (at most every [`GSO_REPROBE`]).
    gso_segments: usize,
    gso_probed: Option<Instant>,
}

/// How often a socket whose GSO was turned off by a failed send is probed again.
const GSO_REPROBE: Duration = Duration::from_secs(5);

impl Io<'_> {
    /// Probes GSO again if a failed send turned it off (see `gso_segments`).
    fn restore_gso(&mut self) {
        if self.state.max_gso_segments() >= self.gso_segments
            || self.gso_probed.is_some_and(|t| t.elapsed() < GSO_REPROBE)
        {
            return;
        }
        self.gso_probed = Some(Instant::now());
        match UdpSocketState::new((&self.udp.socket).into()) {
            Ok(state) => {
                tracing::debug!(
                    segments = state.max_gso_segments(),
                    "UDP GSO was turned off by a failed send; probed the socket again"
                );
                self.state = state;
            }
            Err(e) => tracing::debug!(error = %e, "cannot probe the UDP socket again"),
        }
    }

    /// Switches to a new UDP socket; the old one closes when dropped here.
    fn use_socket(&mut self, udp: Udp) -> io::Result<()> {
        let udp = Arc::new(udp);
        self.state = UdpSocketState::new((&udp.socket).into())?;
        self.gso_segments = self.state.max_gso_segments();
        if let Some(slot) = self.socket_slot {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&udp);
        }
        let old = std::mem::replace(&mut self.udp, udp);
        tracing::info!(
            old_port = old.local_port().unwrap_or(0),
            new_port = self.udp.local_port().unwrap_or(0),
            "moved to the new listen port"
        );
        Ok(())
    }

    /// Sends one datagram the engine produced.
    fn send_one(&mut self, t: &sitelink_engine::Transmit<'_>) {
        send(
            &self.udp,
            &self.state,
            (t.dst, t.src),
            t.payload,
            None,
            &mut self.stale,
        );
    }

    /// Tells the engine what sends found out (gone sticky sources, send errors).
    fn report_stale(&mut self, engine: &mut Engine) {
        self.stale.report(engine);
    }
    /// One TUN read (possibly a super-packet) through the engine to the network.
    /// Returns whether there was anything to read.
    fn tun_to_udp(
        &mut self,
        engine: &Mutex<Engine>,
        b: &mut Buffers,
        next_tick: &mut Instant,
    ) -> io::Result<bool> {
        // Reads until the queue is empty or the buffers could not take another super-packet:
        // small packets (each its own read) are then encrypted and sent as one run (one UDP
        // GSO send for equal sizes) instead of a send each.
        let mut n = 0;
        let mut more = true;
        while n + SPLIT_ROOM <= b.tun_pkts.len() {
            match self.tun.recv_multiple(
                &mut b.tun_raw,
                &mut b.tun_pkts[n..],
                &mut b.tun_sizes[n..],
                0,
            ) {
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                Err(e) => {
                    // A malformed super-packet is one bad packet, not a dead loop; a dead TUN
                    // fd (EBADFD: interface deleted under us) is fatal.
                    if e.raw_os_error() == Some(libc::EBADFD) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "dropped unreadable TUN packet");
                    break;
                }
            }
        }
        if n == 0 {
            return Ok(more);
        }
        let clamp_to = self.mss_clamp.load(Ordering::Relaxed);
        // Taken at the first packet the fast path hands back, and kept for the rest of the
        // batch: packets stay in order, and a batch costs at most one lock.
        let mut slow: Option<EngineGuard<'_>> = None;
        let now = Instant::now();
        let mut out = Out {
            udp: &self.udp,
            state: &self.state,
            notes: &mut self.stale,
        };
        for (pkt, &size) in b.tun_pkts.iter_mut().zip(&b.tun_sizes).take(n) {
            if clamp_to != 0 {
                crate::mss::clamp(&mut pkt[..size], clamp_to);
            }
            let packet = &pkt[..size];
            // Encrypted onto the end of the GSO run; the engine's slow path writes into its
            // own buffer, copied from there.
            let room = self.gso.room();
            let base = room.as_ptr();
            match self.data.encrypt(now, packet, room) {
                Fast::Network(t) => {
                    let (placed, to) = (
                        (offset_in(base, t.payload), t.payload.len()),
                        (t.dst, t.src),
                    );
                    self.gso.commit(placed, to, &mut out);
                }
                Fast::Done | Fast::Tunnel(_) => {}
                Fast::Slow => {
                    if let Some(t) = slow
                        .get_or_insert_with(|| lock(engine))
                        .handle_tunnel_packet(now, packet, &mut b.slow_scratch)
                    {
                        self.gso.push((t.dst, t.src), t.payload, &mut out);
                    }
                }
            }
        }
        self.gso.flush(&mut out);
        if slow.is_some() || !self.stale.is_empty() {
            let mut engine = slow.unwrap_or_else(|| lock(engine));
            self.drain_engine(&mut engine, &mut b.slow_scratch);
            self.note_deadline(&engine, next_tick);
        }
        self.restore_gso();
        Ok(more)
    }

    /// One recvmmsg batch from the network through the engine to the TUN device.
    fn udp_to_tun(
        &mut self,
        engine: &Mutex<Engine>,
        b: &mut Buffers,
        next_tick: &mut Instant,
    ) -> io::Result<bool> {
        let mut slices: Vec<IoSliceMut<'_>> =
            b.udp_bufs.iter_mut().map(|v| IoSliceMut::new(v)).collect();
        let n = match self
            .state
            .recv((&self.udp.socket).into(), &mut slices, &mut b.udp_meta)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => {
                // ICMP errors surface here (ECONNREFUSED from a peer that is down); they
                // concern one datagram, not the socket.
                tracing::debug!(error = %e, "UDP receive error");
                return Ok(true);
            }
        };
        drop(slices);
        let mut slow: Option<EngineGuard<'_>> = None;
        let now = Instant::now();
        // Handshake messages of this batch, for the handshake thread: handed over at the end,
        // under one lock of its queue (a flood is mostly these).
        let mut handshakes = Vec::new();
        for (buf, meta) in b.udp_bufs.iter().zip(&b.udp_meta).take(n) {
            let from = canonical(meta.addr);
            let local = meta.dst_ip.map(canonical_ip);
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len].chunks(stride) {
                if handshake::is_handshake(datagram) {
                    handshakes.push((from, local, datagram));
                    continue;
                }
                let clamp_to = self.mss_clamp.load(Ordering::Relaxed);
                // Decrypted straight into the TUN batch's next buffer.
                let room = self.out.room();
                let base = room.as_ptr();
                let packet = match self.data.decrypt(now, from, local, datagram, room) {
                    Fast::Tunnel(packet) => {
                        let placed = (offset_in(base, packet), packet.len());
                        self.out.commit(placed.0, placed.1, clamp_to);
                        None
                    }
                    Fast::Done | Fast::Network(_) => None,
                    Fast::Slow => {
                        let engine = slow.get_or_insert_with(|| lock(engine));
                        match engine.handle_datagram(
                            now,
                            from,
                            local,
                            datagram,
                            &mut b.slow_scratch,
                        ) {
                            Received::Tunnel(packet) => Some(packet),
                            Received::Network(t) => {
                                self.send_one(&t);
                                None
                            }
                            Received::Nothing => None,
                        }
                    }
                };
                if let Some(packet) = packet {
                    self.out.push(packet, clamp_to);
                }
                if self.out.is_full() {
                    self.out.flush(self.tun, &mut self.gro);
                }
            }
        }
        if slow.is_some() || !self.stale.is_empty() {
            let mut engine = slow.unwrap_or_else(|| lock(engine));
            self.drain_engine(&mut engine, &mut b.slow_scratch);
            self.note_deadline(&engine, next_tick);
        }
        if !handshakes.is_empty() {
            // Served behind the gate; dropped (and counted) over their source's share or
            // when the queue is full.
            self.handshakes.push_batch(now, &handshakes);
        }
        self.out.flush(self.tun, &mut self.gro);
        Ok(true)
    }

    /// Sends whatever the engine wants sent beyond direct replies.
    fn drain_engine(&mut self, engine: &mut Engine, scratch: &mut [u8]) {
        while let Some(t) = engine.poll_transmit(scratch) {
            self.send_one(&t);
        }
        self.report_stale(engine);
    }
}

impl Io<'_> {
    /// Packets can give a peer session state, and with it a deadline sooner than the timer
    /// thread's: this thread's own, or the timer thread woken.
    fn note_deadline(&self, engine: &Engine, next_tick: &mut Instant) {
        match self.wake_timers {
            Some(common) => common.wake_timers_for(engine),
            None => note_deadline(engine, next_tick),
        }
    }
}

/// The engine's next deadline, if sooner than `next_tick`.
fn note_deadline(engine: &Engine, next_tick: &mut Instant) {
    if let Some((at, _)) = engine.poll_timeout() {
        *next_tick = (*next_tick).min(at);
    }
}

/// poll(2) for readability on up to three fds. Returns which are readable (or in error, so
/// the read reports it).
fn poll_readable(fds: &[RawFd; 3], timeout: Duration) -> io::Result<[bool; 3]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = timeout.as_millis().min(1000) as libc::c_int;
    // SAFETY: `pfds` is a live array of initialised pollfd structs and we pass its exact
    // length; poll only writes their `revents` fields.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; 3]);
        }
        return Err(e);
    }
    Ok(pfds.map(|p| p.revents != 0))
}
