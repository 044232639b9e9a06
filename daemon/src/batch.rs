//! Packets on their way out of a packet thread, in batches: decrypted packets for one
//! GRO-coalesced write to the TUN device ([`TunBatch`]), encrypted datagrams for one UDP GSO
//! send ([`Gso`]), and the send itself with its back-pressure ([`send`]).
//!
//! Owns: the buffers packets are decrypted and encrypted straight into, and what a send
//! found out for the engine ([`SendNotes`]). Doesn't own: reading, the engine, or threads
//! (`dataplane`).
//!
//! The fast path writes each packet where it leaves from: a decrypted packet into the next
//! buffer of the TUN batch (after the virtio header's room), an encrypted datagram onto the end
//! of the GSO run. So a packet is copied by the kernel on the way in and out and by the cipher,
//! and by nothing else. The buffers have a fixed capacity and a length ([`PacketBuf`]), so
//! giving a buffer its packet's length costs nothing (a `Vec` would zero the bytes first).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use quinn_udp::{Transmit, UdpSocketState};
use sitelink_engine::Engine;
use tun_rs::{ExpandBuffer, GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::udp::Udp;

/// Largest IP packet or coalesced datagram buffer we ever handle.
pub const MAX_PACKET: usize = 65536;
/// How long one send may wait for socket buffer space before the datagram is dropped.
const SEND_PATIENCE: Duration = Duration::from_secs(1);
/// Most datagrams in one GSO run (the kernel's UDP_MAX_SEGMENTS is 64 or 128).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO run: the whole run is one UDP datagram to the kernel (at most
/// 64 KiB), less room for the headers.
const GSO_MAX_BYTES: usize = MAX_PACKET - 1024;

/// A buffer of fixed capacity holding `len` bytes. The capacity is zeroed once (by the
/// allocator's fresh pages, touched only as far as packets reach); setting the length after
/// writing into [`PacketBuf::spare`] copies and zeroes nothing.
pub struct PacketBuf {
    data: Box<[u8]>,
    len: usize,
}

impl PacketBuf {
    pub fn new(capacity: usize) -> Self {
        Self {
            data: vec![0; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// Everything after the first `from` bytes, whatever the length: where a packet is
    /// written before [`PacketBuf::set_len`] says how long it is.
    fn spare(&mut self, from: usize) -> &mut [u8] {
        &mut self.data[from..]
    }

    /// Makes the first `len` bytes the contents, growing the capacity if `len` exceeds it
    /// (zero-filled: never hit by the callers here, whose writes fit).
    fn set_len(&mut self, len: usize) {
        if len > self.data.len() {
            let mut grown = vec![0; len].into_boxed_slice();
            grown[..self.len].copy_from_slice(&self.data[..self.len]);
            self.data = grown;
        }
        self.len = len;
    }
}

impl AsRef<[u8]> for PacketBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for PacketBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

/// What tun-rs's GRO needs to coalesce packets into one buffer: it checks the capacity before
/// it extends a buffer, so these never grow in practice.
impl ExpandBuffer for PacketBuf {
    fn buf_capacity(&self) -> usize {
        self.data.len()
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        let old = self.len;
        self.set_len(new_len);
        if new_len > old {
            self.data[old..new_len].fill(value);
        }
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let start = self.len;
        self.set_len(start + src.len());
        self.data[start..start + src.len()].copy_from_slice(src);
    }
}

/// Where in `within` the slice `part` starts; `part` must lie inside it (a packet the cipher
/// wrote into a buffer we gave it).
pub fn offset_in(within: *const u8, part: &[u8]) -> usize {
    part.as_ptr() as usize - within as usize
}

/// Decrypted IP packets waiting for one GRO-coalesced write to the TUN device. Each buffer
/// keeps `VIRTIO_NET_HDR_LEN` bytes of headroom for the virtio header tun-rs writes.
#[derive(Default)]
pub struct TunBatch {
    bufs: Vec<PacketBuf>,
    len: usize,
}

impl TunBatch {
    /// The next packet's buffer, past the header's room: decrypt into it, then
    /// [`TunBatch::commit`] what was written.
    pub fn room(&mut self) -> &mut [u8] {
        if self.len == self.bufs.len() {
            self.bufs
                .push(PacketBuf::new(VIRTIO_NET_HDR_LEN + MAX_PACKET));
        }
        self.bufs[self.len].spare(VIRTIO_NET_HDR_LEN)
    }

    /// Queues the packet written at `start..start + len` of [`TunBatch::room`], its TCP SYN's
    /// MSS clamped to `clamp_to` (0: off).
    pub fn commit(&mut self, start: usize, len: usize, clamp_to: u16) {
        let buf = &mut self.bufs[self.len];
        if start != 0 {
            let from = VIRTIO_NET_HDR_LEN + start;
            buf.data.copy_within(from..from + len, VIRTIO_NET_HDR_LEN);
        }
        buf.set_len(VIRTIO_NET_HDR_LEN + len);
        if clamp_to != 0 {
            crate::mss::clamp(&mut buf.data[VIRTIO_NET_HDR_LEN..buf.len], clamp_to);
        }
        self.len += 1;
    }

    /// Queues a copy of `packet` (one the engine decrypted into its own buffer).
    pub fn push(&mut self, packet: &[u8], clamp_to: u16) {
        self.room()[..packet.len()].copy_from_slice(packet);
        self.commit(0, packet.len(), clamp_to);
    }

    pub fn is_full(&self) -> bool {
        self.len >= IDEAL_BATCH_SIZE
    }

    pub fn flush(&mut self, tun: &SyncDevice, gro: &mut GROTable) {
        if self.len == 0 {
            return;
        }
        if let Err(e) = tun.send_multiple(gro, &mut self.bufs[..self.len], VIRTIO_NET_HDR_LEN) {
            tracing::debug!(error = %e, "TUN write failed for part of a batch");
        }
        self.len = 0;
    }
}

/// A run of equal-sized datagrams to one destination from one source, sent with one UDP GSO
/// send (the last datagram may be shorter; after it the run is closed).
pub struct Gso {
    /// The run, then the room the next datagram is encrypted into: a whole run and one more
    /// datagram of the largest size always fit.
    buf: PacketBuf,
    dst: Option<SocketAddr>,
    src: Option<IpAddr>,
    segment: usize,
    count: usize,
    closed: bool,
}

impl Default for Gso {
    fn default() -> Self {
        Self {
            buf: PacketBuf::new(GSO_MAX_BYTES + MAX_PACKET + 64),
            dst: None,
            src: None,
            segment: 0,
            count: 0,
            closed: false,
        }
    }
}

impl Gso {
    fn fits(&self, dst: SocketAddr, src: Option<IpAddr>, len: usize, max_segments: usize) -> bool {
        self.count == 0
            || (self.dst == Some(dst)
                && self.src == src
                && !self.closed
                && len <= self.segment
                && self.count < max_segments.min(GSO_MAX_SEGMENTS)
                && self.buf.len + len <= GSO_MAX_BYTES)
    }

    /// Where the next datagram is encrypted to: the space after the run.
    pub fn room(&mut self) -> &mut [u8] {
        let end = self.buf.len;
        self.buf.spare(end)
    }

    /// Adds the datagram written at `start..start + len` of [`Gso::room`], to `dst` from
    /// `src`; the run so far is sent first if the datagram cannot join it.
    pub fn commit(
        &mut self,
        placed: (usize, usize),
        to: (SocketAddr, Option<IpAddr>),
        out: &mut Out<'_>,
    ) {
        let (start, len) = placed;
        // Where it was written, counted from the run's start (the room moves with a flush).
        let at = self.buf.len + start;
        if !self.fits(to.0, to.1, len, out.state.max_gso_segments()) {
            self.flush(out);
        }
        self.append(at, len, to);
    }

    /// Makes the datagram at `at..at + len` of the buffer the run's next (after `fits`).
    fn append(&mut self, mut at: usize, len: usize, to: (SocketAddr, Option<IpAddr>)) {
        let (dst, src) = to;
        let end = self.buf.len;
        if at != end {
            self.buf.data.copy_within(at..at + len, end);
            at = end;
        }
        if self.count == 0 {
            self.dst = Some(dst);
            self.src = src;
            self.segment = len;
            self.closed = false;
        } else if len < self.segment {
            self.closed = true;
        }
        self.buf.set_len(at + len);
        self.count += 1;
    }

    /// Adds a copy of `payload` (a datagram the engine encrypted into its own buffer).
    pub fn push(&mut self, to: (SocketAddr, Option<IpAddr>), payload: &[u8], out: &mut Out<'_>) {
        self.room()[..payload.len()].copy_from_slice(payload);
        self.commit((0, payload.len()), to, out);
    }

    pub fn flush(&mut self, out: &mut Out<'_>) {
        if let (Some(dst), true) = (self.dst, self.count > 0) {
            let segment = (self.count > 1).then_some(self.segment);
            send(
                out.udp,
                out.state,
                (dst, self.src),
                self.buf.as_ref(),
                segment,
                out.notes,
            );
        }
        self.buf.set_len(0);
        self.count = 0;
        self.dst = None;
    }
}

/// Where a run is sent: when a datagram cannot join it, and at the end of a batch.
pub struct Out<'a> {
    pub udp: &'a Udp,
    pub state: &'a UdpSocketState,
    pub notes: &'a mut SendNotes,
}

/// What sends found out, for the engine: sticky sources that had gone, and destinations a
/// send failed to (with the error), at most one entry per destination.
#[derive(Default)]
pub(crate) struct SendNotes {
    pub stale: Vec<(SocketAddr, IpAddr)>,
    pub failed: Vec<(SocketAddr, String)>,
}

impl SendNotes {
    pub fn is_empty(&self) -> bool {
        self.stale.is_empty() && self.failed.is_empty()
    }

    /// Hands the notes to the engine: sticky sources forgotten, send errors on the peers'
    /// records (`last_error` "send: ...").
    pub fn report(&mut self, engine: &mut Engine) {
        for (dst, src) in self.stale.drain(..) {
            tracing::info!(%dst, %src, "local address gone; replies go from the kernel's choice until the peer's next packet");
            engine.forget_source(dst, src);
        }
        for (dst, error) in self.failed.drain(..) {
            engine.note_send_error(dst, &error);
        }
    }

    fn send_failed(&mut self, dst: SocketAddr, error: &io::Error) {
        // Bounded: a batch of failing sends to many peers notes the first 64.
        if self.failed.len() < 64 && !self.failed.iter().any(|(d, _)| *d == dst) {
            self.failed.push((dst, error.to_string()));
        }
    }
}

/// Sends one datagram (or GSO run) to `to.0` from local address `to.1` (or the kernel's
/// choice), waiting for buffer space up to `SEND_PATIENCE`: that is the back-pressure that
/// slows TCP down instead of dropping its packets. A source address the kernel refuses (gone
/// from the host) is dropped for this send and recorded in `stale`.
pub(crate) fn send(
    udp: &Udp,
    state: &UdpSocketState,
    to: (SocketAddr, Option<IpAddr>),
    contents: &[u8],
    segment_size: Option<usize>,
    notes: &mut SendNotes,
) {
    let (dst, mut src) = to;
    // A source the kernel found no route from, retried without it: stale if that works.
    let mut unroutable = None;
    let deadline = std::time::Instant::now() + SEND_PATIENCE;
    loop {
        let transmit = Transmit {
            destination: udp.to_socket(dst),
            ecn: None,
            contents,
            segment_size,
            src_ip: src,
        };
        match state.try_send((&udp.socket).into(), &transmit) {
            Ok(()) => {
                notes.stale.extend(unroutable.map(|gone| (dst, gone)));
                return;
            }
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
            Err(e)
                if src.is_some()
                    && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EADDRNOTAVAIL)) =>
            {
                if let Some(gone) = src.take() {
                    notes.stale.push((dst, gone));
                }
            }
            // Our address left together with its subnet's route (a WAN renumbered): the
            // kernel finds no route from it. The kernel's own choice may still have one.
            Err(e)
                if src.is_some()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                    ) =>
            {
                unroutable = src.take();
            }
            Err(e) => {
                tracing::debug!(%dst, error = %e, "UDP send failed");
                notes.send_failed(dst, &e);
                return;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_buffer_takes_a_length_without_touching_its_bytes_and_grows_only_past_capacity() {
        let mut b = PacketBuf::new(8);
        b.spare(0)[..5].copy_from_slice(b"hello");
        b.set_len(5);
        assert_eq!(b.as_ref(), b"hello");
        // What tun-rs's GRO does to the first packet of a coalesced run.
        b.buf_extend_from_slice(b"!!");
        assert_eq!(b.as_ref(), b"hello!!");
        b.buf_resize(3, 0xff);
        assert_eq!(b.as_ref(), b"hel");
        b.buf_resize(5, 0xaa);
        assert_eq!(b.as_ref(), b"hel\xaa\xaa");
        assert_eq!(b.buf_capacity(), 8);
        // Past the capacity: grown, contents kept (never a panic).
        b.buf_extend_from_slice(b"0123456789");
        assert_eq!(b.as_ref(), b"hel\xaa\xaa0123456789");
        assert!(b.buf_capacity() >= 15);
    }

    #[test]
    fn the_tun_batch_queues_packets_written_in_place_or_copied_behind_the_header_room() {
        let mut batch = TunBatch::default();
        // Written at the start of the room (what the cipher does).
        batch.room()[..4].copy_from_slice(b"abcd");
        batch.commit(0, 4, 0);
        // Written further in: moved to the start.
        batch.room()[10..13].copy_from_slice(b"xyz");
        batch.commit(10, 3, 0);
        batch.push(b"copied", 0);
        let packets: Vec<&[u8]> = batch.bufs[..batch.len]
            .iter()
            .map(|b| &b.as_ref()[VIRTIO_NET_HDR_LEN..])
            .collect();
        assert_eq!(packets, [&b"abcd"[..], b"xyz", b"copied"]);
        assert!(batch.bufs[..3]
            .iter()
            .all(|b| b.as_ref().len() > VIRTIO_NET_HDR_LEN));
        assert!(!batch.is_full());
    }

    #[test]
    fn datagrams_encrypted_onto_the_run_join_it_and_a_shorter_one_closes_it() {
        let mut gso = Gso::default();
        let dst: SocketAddr = "198.18.0.2:51820".parse().unwrap();
        let to = (dst, None);
        for (i, len) in [100, 100, 60].into_iter().enumerate() {
            let room = gso.room();
            room[..len].fill(i as u8);
            let at = gso.buf.len;
            gso.append(at, len, to);
        }
        assert_eq!(gso.count, 3);
        assert_eq!(gso.segment, 100);
        assert!(gso.closed, "a shorter datagram must end the run");
        let run = gso.buf.as_ref();
        assert_eq!(run.len(), 260);
        assert!(run[..100].iter().all(|&b| b == 0));
        assert!(run[100..200].iter().all(|&b| b == 1));
        assert!(run[200..].iter().all(|&b| b == 2));
        // Nothing more may join a closed run, nor a datagram to elsewhere or larger.
        assert!(!gso.fits(dst, None, 60, 64));
        let mut open = Gso::default();
        open.room()[..100].fill(7);
        open.append(0, 100, to);
        assert!(open.fits(dst, None, 100, 64));
        assert!(!open.fits(dst, None, 101, 64), "larger than the segment");
        assert!(!open.fits("198.18.0.3:51820".parse().unwrap(), None, 100, 64));
        assert!(!open.fits(dst, Some("198.18.0.1".parse().unwrap()), 100, 64));
        assert!(!open.fits(dst, None, 100, 1), "the socket's segment limit");
    }
}
