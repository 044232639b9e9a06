//! Two engines (sites A and B, fixed keys, one peer each) joined by an in-memory network, and
//! the operations a fuzz input is decoded into: datagrams built from a message type, a
//! header that is valid for it and a fuzzed body (optionally with a correct mac1, so that it
//! gets past the rate limiter's check to the handshake parser), replays of real datagrams the
//! engines sent (optionally mutated), crafted cookie replies that decrypt, fuzzed IP packets
//! from the TUN side, time advancing, preshared-key changes, and delivery of what the engines
//! sent.
//!
//! The clock is mock_instant's thread-local one (the engine's `mock-instant` feature, which
//! drives boringtun's timers too): every world starts at the same time and it only moves when
//! an input advances it, so an input does the same thing every run and a `Timeout` op really
//! reaches retries, rekeys, keepalives and expiry. (The engines' session indices and
//! boringtun's ephemeral keys are random, but the harness only ever refers to indices it has
//! seen on the wire.) Every engine call gets a 65536-byte buffer.
//!
//! Handshake messages can be sent through the receiver's [`HandshakeGate`] under load, as the
//! daemon's handshake thread does (setup bit 5 for everything B receives, op flag 0x80 for one
//! datagram): then a cookie reply from the gate goes back, and only what it lets through
//! reaches the engine.
//!
//! Checked on every step, beyond "no panic": a decrypted packet handed to the TUN side has a
//! source inside the sending peer's allowed-ips; a reply goes back to the datagram's sender
//! (except the initiation that answers a cookie reply: that goes to the peer's endpoint);
//! every datagram sent is a WireGuard message of a valid size; `poll_transmit` returns `None`
//! within a bounded number of datagrams.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use blake2::digest::consts::U16;
use blake2::digest::{Digest, FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use mock_instant::MockClock;
use sitelink_config::{Cidr, PresharedKey, PrivateKey, PublicKey};
use sitelink_engine::handshake::{is_handshake, HandshakeGate, Verdict};
use sitelink_engine::{Engine, Fast, Instant, PeerSpec, Received, Transmit};

/// Buffer size of every engine call.
pub const BUF: usize = 65536;
/// Ops decoded from one input at most (bounds the time of one run).
pub const MAX_OPS: usize = 64;
/// Datagrams `poll_transmit` may return in a row before the harness calls it a hang.
/// (boringtun queues at most a few hundred packets behind a handshake.)
const MAX_TRANSMITS: usize = 4096;
/// Steps of a stepped `Timeout` op.
pub const TIME_STEPS: u32 = 16;
/// Handshake messages (initiations and responses, sent by an engine or handed to one) an
/// input may cost; when they are spent, the rest of the input is not run. Each is two or three
/// X25519 multiplications, which were ~85% of a run's time: inputs that grew dozens of
/// gated retries and rekeys ran at under 300 a second. The fixture session costs 4; a live
/// link over ten minutes (the `live-link` seed: five rekeys) about 24.
pub const HANDSHAKE_BUDGET: u32 = 32;
/// Datagrams remembered per side for replays.
const HISTORY: usize = 64;
/// Pending (not yet delivered) datagrams per side.
const OUTBOX: usize = 256;

const TYPE_INIT: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const TYPE_COOKIE: u8 = 3;
const TYPE_DATA: u8 = 4;
const INIT_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_LEN: usize = 64;
const DATA_MIN: usize = 32;

/// The private key byte of site A and B (`PrivateKey::from_bytes([n; 32])`).
pub const KEY_A: u8 = 0x0a;
pub const KEY_B: u8 = 0x0b;

// ---------------------------------------------------------------------------------------------
// Input decoding.

/// Reads an input front to back; past its end every read gives zeros.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// `n` bytes, or fewer if the input ends first.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head.to_vec()
    }
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.u8();
        }
        out
    }
}

/// Which side: A (0) or B (1).
pub type Side = usize;

/// How a receiver index is chosen: `mode = sel >> 6`: 0 a known index of the receiving side
/// (one it put in a handshake message it sent), 1 that index with one bit flipped, 2 its
/// 24-bit session part with another low byte, 3 any u32 (the 4 bytes that follow).
#[derive(Debug, Clone, Copy)]
pub struct IndexSel {
    pub sel: u8,
    pub extra: u32,
}

/// What a fuzz input is decoded into; `encode` writes the bytes `decode` reads back.
#[derive(Debug, Clone)]
pub enum Op {
    /// A datagram of message type `kind` (1-4 give the correct length for that type; any
    /// other value is sent with `body.len() + 8` bytes) with a receiver index chosen by
    /// `index`, and `body` after the header (cut or zero-padded to the type's length).
    /// `flags`: see [`Flags`].
    Raw {
        to: Side,
        flags: u8,
        kind: u8,
        index: IndexSel,
        body: Vec<u8>,
    },
    /// Delivers datagram `pick` (counted from the newest) of the other side's history (of
    /// `to`'s own with flag 0x40), with byte mutations `(position, xor)`.
    Replay {
        to: Side,
        flags: u8,
        pick: u8,
        mutations: Vec<(u16, u8)>,
    },
    /// A fuzzed IP packet read from `from`'s TUN device.
    Tunnel {
        from: Side,
        flags: u8,
        packet: PacketSpec,
    },
    /// Advances the clock by `amount` (unit from `flags & 3`: ms, 100 ms, s, 10 s) and runs
    /// `handle_timeout` on A (`flags & 4`) and/or B (`flags & 8`). With `flags & 0x10` time
    /// passes in [`TIME_STEPS`] equal steps, each followed by the timers and delivery of
    /// everything sent: a live link over minutes (keepalives, rekeys) in one op.
    Timeout { flags: u8, amount: u16 },
    /// Delivers up to `max` pending datagrams, oldest first, both ways.
    Deliver { max: u8 },
    /// A cookie reply to `to` that decrypts (encrypted to the mac1 of `to`'s latest handshake
    /// message) unless `flags & 0x40`.
    Cookie {
        to: Side,
        flags: u8,
        index: IndexSel,
        nonce: [u8; 24],
        cookie: [u8; 16],
    },
    /// Changes the preshared key `side` has for its peer: 0 none, else 32 times `psk`.
    SetPsk { side: Side, psk: u8 },
    /// `bytes` as a datagram to `to`, exactly (a captured real message, or anything).
    Bytes { to: Side, flags: u8, bytes: Vec<u8> },
}

/// Bits of the `flags` byte of a datagram op.
/// - `0x03`: the sender's address: 0 the other site's, 1 its second (IPv6) address, 2 an
///   attacker's IPv4 address, 3 an attacker's IPv6 address.
/// - `0x0c`: the local address reported: 0 none, 1 the receiver's own IPv4, 2 its IPv6, 3 an
///   address it does not have.
/// - `0x10`: compute a correct mac1 for the receiver (handshake initiations and responses).
/// - `0x20`: (Raw) fuzz the three reserved bytes after the type instead of zeroing them;
///   (Replay) cut the datagram at the first mutation's position.
/// - `0x40`: (Replay) take the datagram from the receiver's own history; (Cookie) encrypt
///   it to the wrong mac1, so that it does not decrypt.
/// - `0x80`: a handshake message goes through the receiver's handshake gate, under load.
pub struct Flags;

/// Flag bit: through the receiver's handshake gate (see [`Flags`]).
const GATED: u8 = 0x80;

/// A fuzzed IP packet: `version` 4 or 6 (else `payload` is sent as the whole packet),
/// source and destination chosen by `src`/`dst` (see [`PacketSpec::build`]), a length field
/// that is right unless `bad_len` is set (then it is `len_value`).
#[derive(Debug, Clone)]
pub struct PacketSpec {
    pub version: u8,
    pub src: u8,
    pub dst: u8,
    pub proto: u8,
    pub bad_len: bool,
    pub len_value: u16,
    pub payload: Vec<u8>,
}

impl IndexSel {
    fn decode(c: &mut Cursor<'_>) -> Self {
        let sel = c.u8();
        let extra = if sel >> 6 == 3 { c.u32() } else { 0 };
        Self { sel, extra }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.sel);
        if self.sel >> 6 == 3 {
            out.extend_from_slice(&self.extra.to_le_bytes());
        }
    }
    /// A known index exactly (the `n`-th known one).
    pub fn known(n: u8) -> Self {
        Self {
            sel: n & 0x0f,
            extra: 0,
        }
    }
    pub fn any(value: u32) -> Self {
        Self {
            sel: 0xc0,
            extra: value,
        }
    }
}

impl PacketSpec {
    fn decode(c: &mut Cursor<'_>) -> Self {
        let version = c.u8();
        let src = c.u8();
        let dst = c.u8();
        let proto = c.u8();
        let len_flags = c.u16();
        let bad_len = len_flags & 0x8000 != 0;
        let payload_len = usize::from(len_flags & 0x07ff);
        let len_value = if bad_len { c.u16() } else { 0 };
        let payload = c.bytes(payload_len);
        Self {
            version,
            src,
            dst,
            proto,
            bad_len,
            len_value,
            payload,
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.version, self.src, self.dst, self.proto]);
        let len = (self.payload.len().min(0x07ff)) as u16 | if self.bad_len { 0x8000 } else { 0 };
        out.extend_from_slice(&len.to_le_bytes());
        if self.bad_len {
            out.extend_from_slice(&self.len_value.to_le_bytes());
        }
        out.extend_from_slice(&self.payload[..self.payload.len().min(0x07ff)]);
    }
    /// A UDP-ish IPv4 packet from 198.19.1.1 to 198.19.2.1 (A's side to B's) or back.
    pub fn simple(payload: &[u8]) -> Self {
        Self {
            version: 4,
            src: 1, // .1 of the sender's own subnet
            dst: 1, // .1 of the peer's subnet
            proto: 17,
            bad_len: false,
            len_value: 0,
            payload: payload.to_vec(),
        }
    }

    /// The packet bytes, as sent from `from`'s subnet. `src`/`dst` `>> 5`: 0 an address of
    /// the sender's (for `src`) or the receiver's (for `dst`) subnet, 1 the other subnet, 2 a
    /// covering but foreign prefix, 3 an address nobody routes, 4+ the low bits as the last
    /// octet of 0.0.0.x / 255.255.255.x and so on; the low 5 bits pick the host.
    fn build(&self, from: Side) -> Vec<u8> {
        let v4 = |sel: u8, own: u8| -> [u8; 4] {
            let host = sel & 0x1f;
            match sel >> 5 {
                0 => [198, 19, own, host],
                1 => [198, 19, 3 - own, host],
                2 => [198, 19, 200, host],
                3 => [192, 0, 2, host],
                4 => [0, 0, 0, host],
                5 => [255, 255, 255, 224 | host],
                6 => [127, 0, 0, host],
                _ => [224, 0, 0, host],
            }
        };
        let v6 = |sel: u8, own: u8| -> [u8; 16] {
            let host = sel & 0x1f;
            let mut a = [0u8; 16];
            match sel >> 5 {
                0 => a[..6].copy_from_slice(&[0xfd, 0x19, 0, 0, 0, own]),
                1 => a[..6].copy_from_slice(&[0xfd, 0x19, 0, 0, 0, 3 - own]),
                2 => a[..6].copy_from_slice(&[0xfd, 0x19, 0, 0, 0, 200]),
                3 => a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]),
                4 => {}
                5 => a = [0xff; 16],
                6 => a[10..12].copy_from_slice(&[0xff, 0xff]), // v4-mapped
                _ => a[0] = 0xff,
            }
            a[15] = host;
            a
        };
        // Site A's subnet is 198.19.1.0/24 (fd19:0:1::/48), B's 198.19.2.0/24.
        let own = from as u8 + 1;
        let peer = 2 - from as u8;
        match self.version {
            4 => {
                let total = 20 + self.payload.len();
                let mut p = vec![0u8; 20];
                p[0] = 0x45;
                let len = if self.bad_len {
                    self.len_value
                } else {
                    total as u16
                };
                p[2..4].copy_from_slice(&len.to_be_bytes());
                p[8] = 64;
                p[9] = self.proto;
                p[12..16].copy_from_slice(&v4(self.src, own));
                p[16..20].copy_from_slice(&v4(self.dst, peer));
                p.extend_from_slice(&self.payload);
                p
            }
            6 => {
                let mut p = vec![0u8; 40];
                p[0] = 0x60;
                let len = if self.bad_len {
                    self.len_value
                } else {
                    self.payload.len() as u16
                };
                p[4..6].copy_from_slice(&len.to_be_bytes());
                p[6] = self.proto;
                p[7] = 64;
                p[8..24].copy_from_slice(&v6(self.src, own));
                p[24..40].copy_from_slice(&v6(self.dst, peer));
                p.extend_from_slice(&self.payload);
                p
            }
            _ => self.payload.clone(),
        }
    }
}

/// Length of a body field: u16 prefix, at most 4096.
fn body(c: &mut Cursor<'_>) -> Vec<u8> {
    let n = usize::from(c.u16() & 0x0fff);
    c.bytes(n)
}

fn put_body(out: &mut Vec<u8>, b: &[u8]) {
    let b = &b[..b.len().min(0x0fff)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

impl Op {
    /// The ops of an input, at most [`MAX_OPS`].
    pub fn decode_all(data: &[u8]) -> Vec<Op> {
        let mut c = Cursor::new(data);
        let mut ops = Vec::new();
        while !c.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::decode(&mut c));
        }
        ops
    }

    pub fn encode_all(ops: &[Op]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            op.encode(&mut out);
        }
        out
    }

    fn decode(c: &mut Cursor<'_>) -> Op {
        let code = c.u8();
        let side = usize::from(code >> 7);
        match code & 0x07 {
            0 => Op::Raw {
                to: side,
                flags: c.u8(),
                kind: c.u8(),
                index: IndexSel::decode(c),
                body: body(c),
            },
            1 => {
                let flags = c.u8();
                let pick = c.u8();
                let n = usize::from(c.u8() & 0x07);
                let mutations = (0..n).map(|_| (c.u16(), c.u8())).collect();
                Op::Replay {
                    to: side,
                    flags,
                    pick,
                    mutations,
                }
            }
            2 => Op::Tunnel {
                from: side,
                flags: c.u8(),
                packet: PacketSpec::decode(c),
            },
            3 => Op::Timeout {
                flags: c.u8(),
                amount: c.u16(),
            },
            4 => Op::Deliver { max: c.u8() },
            5 => Op::Cookie {
                to: side,
                flags: c.u8(),
                index: IndexSel::decode(c),
                nonce: c.array(),
                cookie: c.array(),
            },
            6 => Op::SetPsk { side, psk: c.u8() },
            _ => Op::Bytes {
                to: side,
                flags: c.u8(),
                bytes: body(c),
            },
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let code = |op: u8, side: Side| op | ((side as u8) << 7);
        match self {
            Op::Raw {
                to,
                flags,
                kind,
                index,
                body,
            } => {
                out.extend_from_slice(&[code(0, *to), *flags, *kind]);
                index.encode(out);
                put_body(out, body);
            }
            Op::Replay {
                to,
                flags,
                pick,
                mutations,
            } => {
                let n = mutations.len().min(7);
                out.extend_from_slice(&[code(1, *to), *flags, *pick, n as u8]);
                for (pos, x) in &mutations[..n] {
                    out.extend_from_slice(&pos.to_le_bytes());
                    out.push(*x);
                }
            }
            Op::Tunnel {
                from,
                flags,
                packet,
            } => {
                out.extend_from_slice(&[code(2, *from), *flags]);
                packet.encode(out);
            }
            Op::Timeout { flags, amount } => {
                out.extend_from_slice(&[3, *flags]);
                out.extend_from_slice(&amount.to_le_bytes());
            }
            Op::Deliver { max } => out.extend_from_slice(&[4, *max]),
            Op::Cookie {
                to,
                flags,
                index,
                nonce,
                cookie,
            } => {
                out.extend_from_slice(&[code(5, *to), *flags]);
                index.encode(out);
                out.extend_from_slice(nonce);
                out.extend_from_slice(cookie);
            }
            Op::SetPsk { side, psk } => out.extend_from_slice(&[code(6, *side), *psk]),
            Op::Bytes { to, flags, bytes } => {
                out.extend_from_slice(&[code(7, *to), *flags]);
                put_body(out, bytes);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world.

/// How the two sites are configured, from the input's first byte.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Both sides use preshared key 32 times 0x5a (bit 0); only A does (bit 1, which is
    /// ignored when a handshake must complete first).
    pub psk: u8,
    /// A keeps B's link always on: persistent keepalive 25 s (bit 2).
    pub keepalive: bool,
    /// B knows A's endpoint (bit 3); else B learns it from A's first handshake.
    pub b_knows_a: bool,
    /// A routes everything (0.0.0.0/0, ::/0) to B instead of B's subnets only (bit 4).
    pub default_route: bool,
    /// B is under load: every handshake message to B goes through its gate first (bit 5), so
    /// A's initiations get cookie replies and must come back with mac2.
    pub b_loaded: bool,
}

impl Setup {
    pub fn from_byte(b: u8, session: bool) -> Self {
        let psk = if session { b & 1 } else { b & 3 };
        Self {
            psk,
            keepalive: b & 4 != 0,
            b_knows_a: b & 8 != 0,
            default_route: b & 16 != 0,
            b_loaded: b & 32 != 0,
        }
    }
    pub fn to_byte(self) -> u8 {
        self.psk
            | u8::from(self.keepalive) << 2
            | u8::from(self.b_knows_a) << 3
            | u8::from(self.default_route) << 4
            | u8::from(self.b_loaded) << 5
    }
}

struct Site {
    engine: Engine,
    public: PublicKey,
    /// The daemon's handshake gate in front of the engine, built on first use (it costs a
    /// scalar multiplication, and most inputs never send a datagram through it).
    gate: Option<HandshakeGate>,
    /// Every handshake message to this site goes through `gate` (setup `b_loaded`).
    loaded: bool,
    /// The site's two addresses (IPv4 first).
    addrs: [SocketAddr; 2],
    /// What its peer may send from (the inbound source check).
    peer_ips: Vec<Cidr>,
    /// Datagrams it sent, newest last.
    history: VecDeque<Vec<u8>>,
    /// Datagrams it sent not yet delivered, with their destination.
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Sender indices it put in handshake messages (what the other side addresses it by).
    indices: Vec<u32>,
    /// The mac1 of its latest handshake message (what a cookie reply to it is bound to).
    last_mac1: Option<[u8; 16]>,
}

pub struct World {
    sites: [Site; 2],
    start: Instant,
    now: Instant,
    wall0: SystemTime,
    buf: Vec<u8>,
    /// Decrypted packets handed to the TUN sides (for seeds and assertions).
    pub tunnel_out: usize,
    /// Handshake messages made or consumed so far (see [`HANDSHAKE_BUDGET`]).
    handshakes: u32,
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("fixture cidr")
}

fn psk_of(byte: u8) -> Option<PresharedKey> {
    (byte != 0).then(|| PresharedKey::from_bytes([byte; 32]))
}

/// The fixed keys of sites A and B, public keys computed once (a scalar multiplication each:
/// a fair part of a run's time).
fn keys() -> &'static [(PrivateKey, PublicKey); 2] {
    static KEYS: OnceLock<[(PrivateKey, PublicKey); 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [KEY_A, KEY_B].map(|b| {
            let k = crate::private_key(b);
            let p = k.public_key();
            (k, p)
        })
    })
}

/// mac1 of a handshake message to the holder of `receiver`: keyed BLAKE2s-128 over the
/// message up to mac1, with key BLAKE2s-256("mac1----" || receiver).
pub fn fix_mac1(msg: &mut [u8], receiver: &PublicKey) {
    let n = msg.len();
    if n < 32 {
        return;
    }
    let key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(receiver.as_bytes())
        .finalize();
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&key).expect("32-byte key");
    Update::update(&mut mac, &msg[..n - 32]);
    let out = mac.finalize_fixed();
    msg[n - 32..n - 16].copy_from_slice(&out);
}

impl World {
    /// Sites A (198.18.0.1, 198.19.1.0/24 behind it) and B (198.18.0.2, 198.19.2.0/24), keys
    /// `[KEY_A; 32]` and `[KEY_B; 32]`, each with the other as its one peer. Resets the mock
    /// clock: every world starts at the same time.
    pub fn new(setup: Setup) -> Self {
        // Not zero: boringtun subtracts durations from the time it was created at.
        MockClock::set_time(Duration::from_secs(1000));
        let start = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let [(key_a, pub_a), (key_b, pub_b)] = keys();
        let a_addrs: [SocketAddr; 2] = [
            "198.18.0.1:51820".parse().expect("addr"),
            "[2001:db8:18::1]:51820".parse().expect("addr"),
        ];
        let b_addrs: [SocketAddr; 2] = [
            "198.18.0.2:51820".parse().expect("addr"),
            "[2001:db8:18::2]:51820".parse().expect("addr"),
        ];
        let a_ips = if setup.default_route {
            vec![cidr("0.0.0.0/0"), cidr("::/0")]
        } else {
            vec![cidr("198.19.2.0/24"), cidr("fd19:0:2::/48")]
        };
        let b_ips = vec![cidr("198.19.1.0/24"), cidr("fd19:0:1::/48")];
        let psk_a = if setup.psk != 0 { psk_of(0x5a) } else { None };
        let psk_b = if setup.psk & 1 != 0 {
            psk_of(0x5a)
        } else {
            None
        };

        let mut a = Engine::new(Some(key_a), start, wall0);
        a.add_peer(PeerSpec {
            name: "site-b".into(),
            public_key: *pub_b,
            preshared_key: psk_a,
            endpoint: Some(b_addrs[0]),
            allowed_ips: a_ips.clone(),
            persistent_keepalive: setup.keepalive.then_some(25),
        })
        .expect("add peer B to A");
        let mut b = Engine::new(Some(key_b), start, wall0);
        b.add_peer(PeerSpec {
            name: "site-a".into(),
            public_key: *pub_a,
            preshared_key: psk_b,
            endpoint: setup.b_knows_a.then_some(a_addrs[0]),
            allowed_ips: b_ips.clone(),
            persistent_keepalive: None,
        })
        .expect("add peer A to B");
        let site = |engine, public, loaded, addrs, peer_ips| Site {
            gate: None,
            engine,
            public,
            loaded,
            addrs,
            peer_ips,
            history: VecDeque::new(),
            outbox: VecDeque::new(),
            indices: Vec::new(),
            last_mac1: None,
        };
        let mut world = World {
            sites: [
                site(a, *pub_a, false, a_addrs, a_ips),
                site(b, *pub_b, setup.b_loaded, b_addrs, b_ips),
            ],
            start,
            now: start,
            wall0,
            buf: vec![0u8; BUF],
            tunnel_out: 0,
            handshakes: 0,
        };
        world.drain();
        world
    }

    /// A world whose sites completed a handshake and exchanged a data packet each way.
    /// Panics if they cannot: the fixture is broken.
    pub fn with_session(setup: Setup) -> Self {
        let mut w = Self::new(setup);
        let packet = PacketSpec::simple(b"hello from A").build(0);
        w.tunnel_packet(0, &packet); // queued; A sends an initiation
        for _ in 0..4 {
            w.deliver(64);
        }
        let reply = PacketSpec::simple(b"hello from B").build(1);
        w.tunnel_packet(1, &reply);
        w.deliver(64);
        assert!(w.tunnel_out >= 2, "the fixture handshake did not complete");
        w
    }

    /// Handshake messages this world has made or consumed (see [`HANDSHAKE_BUDGET`]).
    pub fn handshakes(&self) -> u32 {
        self.handshakes
    }

    /// Whether the input has spent its [`HANDSHAKE_BUDGET`].
    pub fn spent(&self) -> bool {
        self.handshakes >= HANDSHAKE_BUDGET
    }

    fn wall(&self) -> SystemTime {
        self.wall0 + self.now.duration_since(self.start)
    }

    /// Moves the clock (the engines' and boringtun's) forward by `by`.
    fn advance(&mut self, by: Duration) {
        MockClock::advance(by);
        self.now = Instant::now();
    }

    /// Records a datagram `side` sent to `dst`.
    fn sent(&mut self, side: Side, dst: SocketAddr, payload: &[u8]) {
        let site = &mut self.sites[side];
        if let Some(&kind) = payload.first() {
            let len = payload.len();
            if (kind == TYPE_INIT && len == INIT_LEN)
                || (kind == TYPE_RESPONSE && len == RESPONSE_LEN)
            {
                self.handshakes += 1;
                let idx = u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
                if !site.indices.contains(&idx) {
                    if site.indices.len() == 16 {
                        site.indices.remove(0);
                    }
                    site.indices.push(idx);
                }
                let mut mac1 = [0u8; 16];
                mac1.copy_from_slice(&payload[len - 32..len - 16]);
                site.last_mac1 = Some(mac1);
            }
        }
        if site.history.len() == HISTORY {
            site.history.pop_front();
        }
        site.history.push_back(payload.to_vec());
        if site.outbox.len() == OUTBOX {
            site.outbox.pop_front();
        }
        site.outbox.push_back((dst, payload.to_vec()));
    }

    /// Calls `poll_transmit` on both sides until `None`.
    fn drain(&mut self) {
        for side in 0..2 {
            let mut n = 0;
            loop {
                let mut buf = std::mem::take(&mut self.buf);
                let out = self.sites[side].engine.poll_transmit(&mut buf).map(|t| {
                    check_transmit(&t);
                    (t.dst, t.payload.to_vec())
                });
                self.buf = buf;
                let Some((dst, payload)) = out else { break };
                self.sent(side, dst, &payload);
                n += 1;
                assert!(
                    n <= MAX_TRANSMITS,
                    "poll_transmit returned {MAX_TRANSMITS} datagrams without returning None"
                );
            }
        }
    }

    /// Feeds `datagram` from `from` (arriving at `local`) to site `to`, through its handshake
    /// gate first if `gated` (or the site is loaded) and it is a handshake message; checks the
    /// result.
    pub fn datagram(
        &mut self,
        to: Side,
        from: SocketAddr,
        local: Option<IpAddr>,
        datagram: &[u8],
        gated: bool,
    ) {
        if is_handshake_size(datagram) {
            if self.spent() {
                return;
            }
            self.handshakes += 1;
        }
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        let site = &mut self.sites[to];
        if (gated || site.loaded) && is_handshake(datagram) {
            let engine = &site.engine;
            let gate = site
                .gate
                .get_or_insert_with(|| engine.handshake_gate(now).expect("the engine has a key"));
            let cookie = match gate.check(now, from, datagram, true, &mut buf) {
                Verdict::Process => None,
                // An initiation from a key that opened with ours: to the engine if it is our
                // peer's (the daemon drops strangers here, before taking the engine's lock).
                Verdict::Initiation(key) if site.engine.peer_by_key(&key).is_some() => None,
                Verdict::Initiation(_) => Some(None),
                Verdict::Cookie(c) => {
                    assert!(
                        c.len() == COOKIE_LEN && c[0] == TYPE_COOKIE,
                        "the gate made a malformed cookie reply: {c:02x?}"
                    );
                    Some(Some(c.to_vec()))
                }
                Verdict::Drop(_) => Some(None),
            };
            if let Some(cookie) = cookie {
                self.buf = buf;
                if let Some(c) = cookie {
                    self.sent(to, from, &c);
                }
                return;
            }
        }
        // As the daemon's packet threads: the fast path first, the engine for what it hands
        // back (whatever the input changed is published first, as the daemon's lock does).
        site.engine.publish();
        match site
            .engine
            .data_path()
            .decrypt(now, from, local, datagram, &mut buf)
        {
            Fast::Tunnel(packet) => {
                check_inbound(packet, &site.peer_ips);
                self.buf = buf;
                self.tunnel_out += 1;
                return;
            }
            Fast::Done => {
                self.buf = buf;
                return;
            }
            Fast::Network(_) => panic!("the fast path's decrypt returned a datagram to send"),
            Fast::Slow => {}
        }
        let result = match site
            .engine
            .handle_datagram(now, from, local, datagram, &mut buf)
        {
            Received::Tunnel(packet) => {
                check_inbound(packet, &site.peer_ips);
                Some(None)
            }
            Received::Network(t) => {
                check_transmit(&t);
                if t.dst != from || t.src != local {
                    // Only an initiation goes elsewhere, and only to the peer's endpoint from its
                    // sticky local address: the answer to a cookie reply (which never moves
                    // either), or to an initiation with an old timestamp.
                    let peer = site.engine.peers().next().expect("the site has a peer");
                    assert!(
                        t.payload[0] == TYPE_INIT
                            && Some(t.dst) == peer.endpoint
                            && t.src == peer.local,
                        "a reply must go back to the datagram's sender {from} (from {local:?}), \
                         or be an initiation to the peer's endpoint {:?} (from {:?}); \
                         got type {} to {} (from {:?})",
                        peer.endpoint,
                        peer.local,
                        t.payload[0],
                        t.dst,
                        t.src
                    );
                }
                Some(Some((t.dst, t.payload.to_vec())))
            }
            Received::Nothing => None,
        };
        self.buf = buf;
        match result {
            Some(Some((dst, reply))) => self.sent(to, dst, &reply),
            Some(None) => self.tunnel_out += 1,
            None => {}
        }
    }

    /// Feeds `packet` to site `from`'s TUN side.
    pub fn tunnel_packet(&mut self, from: Side, packet: &[u8]) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        let engine = &mut self.sites[from].engine;
        engine.publish();
        let out = match engine.data_path().encrypt(now, packet, &mut buf) {
            Fast::Network(t) => {
                check_transmit(&t);
                Some((t.dst, t.payload.to_vec()))
            }
            Fast::Done => None,
            Fast::Tunnel(_) => panic!("the fast path's encrypt returned a packet for the TUN"),
            Fast::Slow => engine.handle_tunnel_packet(now, packet, &mut buf).map(|t| {
                check_transmit(&t);
                (t.dst, t.payload.to_vec())
            }),
        };
        self.buf = buf;
        if let Some((dst, payload)) = out {
            self.sent(from, dst, &payload);
        }
    }

    /// Delivers up to `max` pending datagrams, alternating sides, oldest first; a datagram
    /// to an address the other site does not have is lost.
    pub fn deliver(&mut self, max: usize) {
        let mut left = max;
        while left > 0 && !self.spent() {
            let mut moved = false;
            for from in 0..2 {
                let to = 1 - from;
                let Some((dst, payload)) = self.sites[from].outbox.pop_front() else {
                    continue;
                };
                moved = true;
                left -= 1;
                let Some(src) = self.sites[from]
                    .addrs
                    .iter()
                    .find(|a| a.is_ipv4() == dst.is_ipv4())
                    .copied()
                else {
                    continue;
                };
                if self.sites[to].addrs.contains(&dst) {
                    self.datagram(to, src, Some(dst.ip()), &payload, false);
                }
                if left == 0 {
                    break;
                }
            }
            self.drain();
            if !moved {
                break;
            }
        }
    }

    /// The sender address a datagram op's flags choose, for a datagram to `to`.
    fn from_addr(&self, to: Side, flags: u8) -> SocketAddr {
        let other = &self.sites[1 - to];
        match flags & 3 {
            0 => other.addrs[0],
            1 => other.addrs[1],
            2 => "203.0.113.66:4444".parse().expect("addr"),
            _ => "[2001:db8:66::66]:4444".parse().expect("addr"),
        }
    }

    fn local_addr(&self, to: Side, flags: u8) -> Option<IpAddr> {
        match (flags >> 2) & 3 {
            0 => None,
            1 => Some(self.sites[to].addrs[0].ip()),
            2 => Some(self.sites[to].addrs[1].ip()),
            _ => Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))),
        }
    }

    fn index(&self, to: Side, sel: IndexSel) -> u32 {
        let known = &self.sites[to].indices;
        if known.is_empty() || sel.sel >> 6 == 3 {
            return sel.extra;
        }
        let base = known[usize::from(sel.sel & 0x0f) % known.len()];
        match sel.sel >> 6 {
            0 => base,
            1 => base ^ (1 << (sel.sel & 0x1f)),
            _ => (base & !0xff) | u32::from(sel.sel & 0x3f),
        }
    }

    /// Runs one op, then flushes both sides.
    pub fn run(&mut self, op: &Op) {
        match op {
            Op::Raw {
                to,
                flags,
                kind,
                index,
                body,
            } => {
                let to = *to;
                let len = match *kind {
                    TYPE_INIT => INIT_LEN,
                    TYPE_RESPONSE => RESPONSE_LEN,
                    TYPE_COOKIE => COOKIE_LEN,
                    TYPE_DATA => DATA_MIN.max(16 + body.len()),
                    _ => 8 + body.len(),
                };
                let mut msg = vec![0u8; len];
                msg[0] = *kind;
                if flags & 0x20 != 0 {
                    for (i, b) in body.iter().take(3).enumerate() {
                        msg[1 + i] = *b;
                    }
                }
                // Where the receiver index sits: after the sender index in a response.
                let at = if *kind == TYPE_RESPONSE { 8 } else { 4 };
                let idx = self.index(to, *index);
                if *kind == TYPE_INIT {
                    msg[4..8].copy_from_slice(&idx.to_le_bytes()); // a sender index
                } else if len >= at + 4 {
                    msg[at..at + 4].copy_from_slice(&idx.to_le_bytes());
                }
                let start = if *kind == TYPE_RESPONSE { 12 } else { 8 };
                for (dst, src) in msg.iter_mut().skip(start).zip(body.iter()) {
                    *dst = *src;
                }
                if flags & 0x10 != 0 && (*kind == TYPE_INIT || *kind == TYPE_RESPONSE) {
                    let public = self.sites[to].public;
                    fix_mac1(&mut msg, &public);
                }
                let from = self.from_addr(to, *flags);
                let local = self.local_addr(to, *flags);
                self.datagram(to, from, local, &msg, flags & GATED != 0);
            }
            Op::Replay {
                to,
                flags,
                pick,
                mutations,
            } => {
                let to = *to;
                let source = if flags & 0x40 != 0 { to } else { 1 - to };
                let history = &self.sites[source].history;
                if history.is_empty() {
                    return;
                }
                let mut msg =
                    history[history.len() - 1 - usize::from(*pick) % history.len()].clone();
                for &(pos, x) in mutations {
                    if msg.is_empty() {
                        break;
                    }
                    let at = usize::from(pos) % msg.len();
                    msg[at] ^= x;
                }
                if flags & 0x20 != 0 {
                    if let Some(&(pos, _)) = mutations.first() {
                        msg.truncate(usize::from(pos) % (msg.len() + 1));
                    }
                }
                if flags & 0x10 != 0 {
                    let public = self.sites[to].public;
                    fix_mac1(&mut msg, &public);
                }
                let from = self.from_addr(to, *flags);
                let local = self.local_addr(to, *flags);
                self.datagram(to, from, local, &msg, flags & GATED != 0);
            }
            Op::Tunnel {
                from,
                flags,
                packet,
            } => {
                let bytes = packet.build(*from);
                self.tunnel_packet(*from, &bytes);
                if flags & 1 != 0 {
                    self.drain();
                    self.deliver(8);
                }
            }
            Op::Timeout { flags, amount } => {
                let unit = [1u64, 100, 1000, 10_000][usize::from(flags & 3)];
                let total = Duration::from_millis(u64::from(*amount) * unit);
                let stepped = flags & 0x10 != 0;
                let steps = if stepped { TIME_STEPS } else { 1 };
                for _ in 0..steps {
                    if self.spent() {
                        break;
                    }
                    self.advance(total / steps);
                    let (now, wall) = (self.now, self.wall());
                    if flags & 4 != 0 {
                        self.sites[0].engine.handle_timeout(now, wall);
                    }
                    if flags & 8 != 0 {
                        self.sites[1].engine.handle_timeout(now, wall);
                    }
                    if stepped {
                        self.drain();
                        self.deliver(usize::from(u8::MAX));
                    }
                }
            }
            Op::Deliver { max } => self.deliver(usize::from(*max % 64) + 1),
            Op::Cookie {
                to,
                flags,
                index,
                nonce,
                cookie,
            } => {
                let to = *to;
                // Encrypted by the other side, to the mac1 of `to`'s latest handshake message.
                let sender = self.sites[1 - to].public;
                let key = Blake2s256::new()
                    .chain_update(b"cookie--")
                    .chain_update(sender.as_bytes())
                    .finalize();
                let aad = match (self.sites[to].last_mac1, flags & 0x40 != 0) {
                    (Some(mac1), false) => mac1,
                    _ => [0u8; 16],
                };
                let cipher = <XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new_from_slice(&key)
                    .expect("32-byte key");
                let sealed = cipher
                    .encrypt(
                        nonce.into(),
                        Payload {
                            msg: cookie,
                            aad: &aad,
                        },
                    )
                    .expect("encrypt");
                let mut msg = Vec::with_capacity(COOKIE_LEN);
                msg.extend_from_slice(&[TYPE_COOKIE, 0, 0, 0]);
                msg.extend_from_slice(&self.index(to, *index).to_le_bytes());
                msg.extend_from_slice(nonce);
                msg.extend_from_slice(&sealed);
                let from = self.from_addr(to, *flags);
                let local = self.local_addr(to, *flags);
                self.datagram(to, from, local, &msg, flags & GATED != 0);
            }
            Op::SetPsk { side, psk } => {
                let site = &mut self.sites[*side];
                let peer = site.engine.peers().next().map(|p| p.id);
                if let Some(id) = peer {
                    site.engine.set_preshared_key(id, psk_of(*psk));
                }
            }
            Op::Bytes { to, flags, bytes } => {
                let mut msg = bytes.clone();
                if flags & 0x10 != 0 {
                    let public = self.sites[*to].public;
                    fix_mac1(&mut msg, &public);
                }
                let from = self.from_addr(*to, *flags);
                let local = self.local_addr(*to, *flags);
                self.datagram(*to, from, local, &msg, flags & GATED != 0);
            }
        }
        self.drain();
    }

    /// Site `side`'s drop counters (for checking the harness itself).
    pub fn counters(&self, side: Side) -> sitelink_engine::Counters {
        self.sites[side].engine.counters()
    }

    /// What site `side`'s handshake gate did (for checking the harness itself).
    pub fn gate_counters(&self, side: Side) -> sitelink_engine::handshake::GateCounters {
        self.sites[side]
            .gate
            .as_ref()
            .map(HandshakeGate::counters)
            .unwrap_or_default()
    }

    /// Datagrams site `side` has sent, oldest first (for writing seeds).
    pub fn history(&self, side: Side) -> impl Iterator<Item = &[u8]> {
        self.sites[side].history.iter().map(Vec::as_slice)
    }
}

/// An initiation or a response by type and size: what costs X25519 work to make or consume.
fn is_handshake_size(d: &[u8]) -> bool {
    matches!(
        (d.first(), d.len()),
        (Some(&TYPE_INIT), INIT_LEN) | (Some(&TYPE_RESPONSE), RESPONSE_LEN)
    )
}

/// A datagram the engine wants sent is a WireGuard message of a valid size.
fn check_transmit(t: &Transmit<'_>) {
    let p = t.payload;
    let ok = match p.first() {
        Some(&TYPE_INIT) => p.len() == INIT_LEN,
        Some(&TYPE_RESPONSE) => p.len() == RESPONSE_LEN,
        Some(&TYPE_COOKIE) => p.len() == COOKIE_LEN,
        // boringtun does not pad data to 16 bytes (session.rs: "spec requires padding to 16
        // bytes, but actually works fine without it"), so any length from 32 up.
        Some(&TYPE_DATA) => p.len() >= DATA_MIN,
        _ => false,
    };
    assert!(
        ok,
        "engine sent a malformed datagram: {:02x?}",
        &p[..p.len().min(64)]
    );
}

/// A decrypted packet's source is inside the allowed-ips of the peer that sent it.
fn check_inbound(packet: &[u8], peer_ips: &[Cidr]) {
    let src = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&packet[12..16]).expect("4"),
        )),
        Some(6) if packet.len() >= 40 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&packet[8..24]).expect("16"),
        )),
        _ => panic!(
            "engine passed a non-IP packet to the TUN side: {:02x?}",
            &packet[..packet.len().min(64)]
        ),
    };
    assert!(
        peer_ips.iter().any(|c| c.contains(src)),
        "engine passed a packet from {src}, outside the peer's allowed-ips {peer_ips:?}"
    );
}

/// One fuzz run: the first byte configures the sites, the rest are ops.
pub fn run_input(data: &[u8], session: bool) -> World {
    let Some((&setup, ops)) = data.split_first() else {
        return World::new(Setup::from_byte(0, session));
    };
    let setup = Setup::from_byte(setup, session);
    let mut world = if session {
        World::with_session(setup)
    } else {
        World::new(setup)
    };
    for op in Op::decode_all(ops) {
        if world.spent() {
            break;
        }
        world.run(&op);
    }
    world
}
