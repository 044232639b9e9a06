//! The packet loop: one thread moving packets between the TUN device and the UDP socket
//! through the engine, in batches.
//!
//! Owns: buffers, batching, offload and GSO/GRO plumbing, send back-pressure, and the
//! timer cadence. Doesn't own: any packet decision (the engine's) or setup (main's).
//!
//! Each wakeup drains up to a budget of batches from each ready source:
//! - TUN → UDP: with TUN offload the kernel hands us TCP super-packets of up to 64 KiB; tun-rs
//!   splits them into MTU-sized packets, the engine encrypts each, and runs of equal-sized
//!   datagrams to one endpoint leave in one UDP GSO send.
//! - UDP → TUN: recvmmsg with UDP GRO returns up to `BATCH_SIZE` buffers of coalesced
//!   datagrams; the engine decrypts each, and tun-rs coalesces the TCP segments (GRO) into
//!   few TUN writes.
//!
//! The engine sits behind a mutex that this thread takes once per batch; the control socket
//! takes it briefly for status. One bad packet is counted by the engine and never stops the
//! batch.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use sitelink_engine::{Engine, Instant, Received};
use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::udp::{canonical, Udp};

/// Largest IP packet or coalesced datagram buffer we ever handle.
const MAX_PACKET: usize = 65536;
/// Batches drained from one source before the loop looks at the other and at timers.
const BUDGET: usize = 16;
/// How long one send may wait for socket buffer space before the datagram is dropped.
const SEND_PATIENCE: Duration = Duration::from_secs(1);

pub struct DataPlane {
    pub tun: SyncDevice,
    pub udp: Udp,
    pub engine: Arc<Mutex<Engine>>,
    /// Readable when the daemon wants the loop to stop.
    pub wake: UnixDatagram,
    pub stop: Arc<AtomicBool>,
    /// systemd watchdog ping interval: pinged from this loop, so a wedged loop (not just a
    /// wedged process) gets the service restarted.
    pub watchdog: Option<Duration>,
}

impl DataPlane {
    pub fn run(self) -> io::Result<()> {
        self.tun.set_nonblocking(true)?;
        self.wake.set_nonblocking(true)?;
        let state = UdpSocketState::new((&self.udp.socket).into())?;
        let mut io = Io {
            tun: &self.tun,
            udp: &self.udp,
            state,
            gso: Gso::default(),
            out: TunBatch::default(),
            gro: GROTable::default(),
        };
        let mut bufs = Buffers::new();
        let fds = [
            self.tun.as_raw_fd(),
            self.udp.socket.as_raw_fd(),
            self.wake.as_raw_fd(),
        ];
        let mut next_tick = Instant::now();
        let mut next_ping = Instant::now();
        loop {
            if let Some(interval) = self.watchdog {
                if Instant::now() >= next_ping {
                    crate::systemd::watchdog_ping();
                    next_ping = Instant::now() + interval;
                }
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            let ready = poll_readable(&fds, wait)?;
            if ready[2] || self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if Instant::now() >= next_tick {
                let mut engine = lock(&self.engine);
                engine.handle_timeout(Instant::now(), SystemTime::now());
                next_tick = engine.poll_timeout().0;
                io.drain_engine(&mut engine, &mut bufs.scratch);
            }
            if ready[1] {
                for _ in 0..BUDGET {
                    if !io.udp_to_tun(&self.engine, &mut bufs)? {
                        break;
                    }
                }
            }
            if ready[0] {
                for _ in 0..BUDGET {
                    if !io.tun_to_udp(&self.engine, &mut bufs)? {
                        break;
                    }
                }
            }
        }
    }
}

/// Locks the engine. Every user of the shared engine goes through here.
pub fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic while holding the lock would be a bug in the engine; its state is still
    // consistent enough to keep forwarding, so we take it rather than wedge the loop.
    engine
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// Engine output scratch.
    scratch: Vec<u8>,
}

impl Buffers {
    fn new() -> Self {
        Self {
            tun_raw: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            tun_pkts: vec![vec![0; MAX_PACKET]; IDEAL_BATCH_SIZE],
            tun_sizes: vec![0; IDEAL_BATCH_SIZE],
            udp_bufs: vec![vec![0; MAX_PACKET]; BATCH_SIZE],
            udp_meta: vec![RecvMeta::default(); BATCH_SIZE],
            scratch: vec![0; MAX_PACKET + 64],
        }
    }
}

struct Io<'a> {
    tun: &'a SyncDevice,
    udp: &'a Udp,
    state: UdpSocketState,
    gso: Gso,
    out: TunBatch,
    gro: GROTable,
}

impl Io<'_> {
    /// One TUN read (possibly a super-packet) through the engine to the network.
    /// Returns whether there was anything to read.
    fn tun_to_udp(&mut self, engine: &Mutex<Engine>, b: &mut Buffers) -> io::Result<bool> {
        let n = match self
            .tun
            .recv_multiple(&mut b.tun_raw, &mut b.tun_pkts, &mut b.tun_sizes, 0)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => {
                // A malformed super-packet is one bad packet, not a dead loop; a dead TUN fd
                // (EBADFD: interface deleted under us) is fatal.
                if e.raw_os_error() == Some(libc::EBADFD) {
                    return Err(e);
                }
                tracing::debug!(error = %e, "dropped unreadable TUN packet");
                return Ok(true);
            }
        };
        let mut engine = lock(engine);
        for (pkt, &size) in b.tun_pkts.iter().zip(&b.tun_sizes).take(n) {
            if let Some(t) = engine.handle_tunnel_packet(&pkt[..size], &mut b.scratch) {
                let dst = t.dst;
                if !self
                    .gso
                    .fits(dst, t.payload.len(), self.state.max_gso_segments())
                {
                    self.gso.flush(self.udp, &self.state);
                }
                self.gso.push(dst, t.payload);
            }
        }
        self.gso.flush(self.udp, &self.state);
        self.drain_engine(&mut engine, &mut b.scratch);
        Ok(true)
    }

    /// One recvmmsg batch from the network through the engine to the TUN device.
    fn udp_to_tun(&mut self, engine: &Mutex<Engine>, b: &mut Buffers) -> io::Result<bool> {
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
        let mut engine = lock(engine);
        for (buf, meta) in b.udp_bufs.iter().zip(&b.udp_meta).take(n) {
            let from = canonical(meta.addr);
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len].chunks(stride) {
                match engine.handle_datagram(from, datagram, &mut b.scratch) {
                    Received::Tunnel(packet) => {
                        self.out.push(packet);
                        if self.out.is_full() {
                            self.out.flush(self.tun, &mut self.gro);
                        }
                    }
                    Received::Network(t) => send(self.udp, &self.state, t.dst, t.payload, None),
                    Received::Nothing => {}
                }
            }
        }
        self.drain_engine(&mut engine, &mut b.scratch);
        drop(engine);
        self.out.flush(self.tun, &mut self.gro);
        Ok(true)
    }

    /// Sends whatever the engine wants sent beyond direct replies.
    fn drain_engine(&mut self, engine: &mut Engine, scratch: &mut [u8]) {
        while let Some(t) = engine.poll_transmit(scratch) {
            send(self.udp, &self.state, t.dst, t.payload, None);
        }
    }
}

/// Encrypted IP packets waiting for one GRO-coalesced write to the TUN device. Each buffer
/// keeps `VIRTIO_NET_HDR_LEN` bytes of headroom for the virtio header tun-rs writes.
#[derive(Default)]
struct TunBatch {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl TunBatch {
    fn push(&mut self, packet: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs
                .push(Vec::with_capacity(MAX_PACKET + VIRTIO_NET_HDR_LEN));
        }
        let v = &mut self.bufs[self.len];
        v.clear();
        v.resize(VIRTIO_NET_HDR_LEN, 0);
        v.extend_from_slice(packet);
        self.len += 1;
    }

    fn is_full(&self) -> bool {
        self.len >= IDEAL_BATCH_SIZE
    }

    fn flush(&mut self, tun: &SyncDevice, gro: &mut GROTable) {
        if self.len == 0 {
            return;
        }
        if let Err(e) = tun.send_multiple(gro, &mut self.bufs[..self.len], VIRTIO_NET_HDR_LEN) {
            tracing::debug!(error = %e, "TUN write failed for part of a batch");
        }
        self.len = 0;
    }
}

/// A run of equal-sized datagrams to one destination, sent with one UDP GSO send (the last
/// datagram may be shorter; after it the run is closed).
#[derive(Default)]
struct Gso {
    buf: Vec<u8>,
    dst: Option<SocketAddr>,
    segment: usize,
    count: usize,
    closed: bool,
}

impl Gso {
    fn fits(&self, dst: SocketAddr, len: usize, max_segments: usize) -> bool {
        self.count == 0
            || (self.dst == Some(dst)
                && !self.closed
                && len <= self.segment
                && self.count < max_segments.min(64)
                && self.buf.len() + len <= MAX_PACKET - 1024)
    }

    fn push(&mut self, dst: SocketAddr, payload: &[u8]) {
        if self.count == 0 {
            self.dst = Some(dst);
            self.segment = payload.len();
            self.closed = false;
        } else if payload.len() < self.segment {
            self.closed = true;
        }
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    fn flush(&mut self, udp: &Udp, state: &UdpSocketState) {
        if let (Some(dst), true) = (self.dst, self.count > 0) {
            let segment = (self.count > 1).then_some(self.segment);
            send(udp, state, dst, &self.buf, segment);
        }
        self.buf.clear();
        self.count = 0;
        self.dst = None;
    }
}

/// Sends one datagram (or GSO run), waiting for buffer space up to `SEND_PATIENCE`: that is
/// the back-pressure that slows TCP down instead of dropping its packets.
fn send(
    udp: &Udp,
    state: &UdpSocketState,
    dst: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) {
    let transmit = Transmit {
        destination: udp.to_socket(dst),
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    };
    let deadline = std::time::Instant::now() + SEND_PATIENCE;
    loop {
        match state.try_send((&udp.socket).into(), &transmit) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    tracing::debug!(%dst, "UDP send buffer full; dropped datagram");
                    return;
                }
                let _ = poll_fd(
                    udp.socket.as_raw_fd(),
                    libc::POLLOUT,
                    left.min(Duration::from_millis(100)),
                );
            }
            Err(e) => {
                tracing::debug!(%dst, error = %e, "UDP send failed");
                return;
            }
        }
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

fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(1000) as libc::c_int;
    // SAFETY: one initialised pollfd, count 1; poll only writes `revents`.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}
