//! Engine decisions under a virtual clock: two engines joined by an in-memory network that
//! the test can cut, re-route or inject into. Time only moves when a test advances it, so
//! keepalive, expiry and re-initiation tests run in milliseconds.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use mock_instant::MockClock;
use sitelink_config::{PrivateKey, PublicKey};

use super::*;

const BUF: usize = 65536;
const TYPE_HANDSHAKE_INIT: u8 = 1;

struct Site {
    engine: Engine,
    addr: SocketAddr,
    /// Further local addresses of this site (a multi-homed gateway).
    aliases: Vec<SocketAddr>,
    tun_out: Vec<Vec<u8>>,
    /// Packets and datagrams the fast path ([`DataPath`]) handled; the rest went to the
    /// engine, as the daemon's packet threads do it.
    fast: usize,
}

impl Site {
    fn new(engine: Engine, addr: SocketAddr) -> Self {
        Self {
            engine,
            addr,
            aliases: vec![],
            tun_out: vec![],
            fast: 0,
        }
    }

    fn has(&self, addr: SocketAddr) -> bool {
        self.addr == addr || self.aliases.contains(&addr)
    }
}

/// Where a datagram the site sends appears to come from: the local address the engine chose
/// (sticky source), else the site's primary address.
fn source(site_addr: SocketAddr, src: Option<IpAddr>) -> SocketAddr {
    src.map_or(site_addr, |ip| SocketAddr::new(ip, site_addr.port()))
}

struct Pair {
    a: Site,
    b: Site,
    /// More sites of a multi-site test (a hub, a third spoke).
    more: Vec<Site>,
    /// (from, to, datagram) in flight.
    wire: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Every datagram either side sent, for assertions: (at, from, datagram).
    sent: Vec<(Duration, SocketAddr, Vec<u8>)>,
    link_up: bool,
    /// Sites whose datagrams (both ways) are lost.
    isolated: Vec<SocketAddr>,
}

fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + MockClock::time()
}

fn key() -> (PrivateKey, PublicKey) {
    let k = PrivateKey::generate();
    let p = k.public_key();
    (k, p)
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("test cidr")
}

/// Site A (198.19.1.0/24 behind it) and site B (198.19.2.0/24), each knowing the other's
/// endpoint. `keepalive` applies to A's view of B.
fn pair(keepalive: Option<u16>) -> Pair {
    MockClock::set_time(Duration::from_secs(1000));
    let (ka, pa) = key();
    let (kb, pb) = key();
    let a_addr: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:51820".parse().unwrap();
    let mut a = Engine::new(Some(&ka), Instant::now(), wall());
    let mut b = Engine::new(Some(&kb), Instant::now(), wall());
    a.add_peer(PeerSpec {
        name: "site-b".into(),
        public_key: pb,
        preshared_key: None,
        endpoint: Some(b_addr),
        allowed_ips: vec![cidr("198.19.2.0/24")],
        persistent_keepalive: keepalive,
    })
    .unwrap();
    b.add_peer(PeerSpec {
        name: "site-a".into(),
        public_key: pa,
        preshared_key: None,
        endpoint: Some(a_addr),
        allowed_ips: vec![cidr("198.19.1.0/24")],
        persistent_keepalive: None,
    })
    .unwrap();
    Pair {
        a: Site::new(a, a_addr),
        b: Site::new(b, b_addr),
        more: vec![],
        wire: VecDeque::new(),
        sent: vec![],
        link_up: true,
        isolated: vec![],
    }
}

/// Whether `engine` sends nothing for `packet` from its TUN device (dropped or queued).
fn dropped(engine: &mut Engine, packet: &[u8]) -> bool {
    let mut buf = vec![0u8; BUF];
    engine
        .handle_tunnel_packet(Instant::now(), packet, &mut buf)
        .is_none()
}

/// A minimal IPv4 packet: boringtun checks version, header length and total length.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    p
}

impl Pair {
    fn site(&mut self, addr: SocketAddr) -> Option<&mut Site> {
        if self.a.has(addr) {
            Some(&mut self.a)
        } else if self.b.has(addr) {
            Some(&mut self.b)
        } else {
            self.more.iter_mut().find(|s| s.has(addr))
        }
    }

    /// The primary address of the site that has `addr`.
    fn site_of(&self, addr: SocketAddr) -> Option<SocketAddr> {
        [&self.a, &self.b]
            .into_iter()
            .chain(&self.more)
            .find(|s| s.has(addr))
            .map(|s| s.addr)
    }

    fn all_sites(&self) -> Vec<SocketAddr> {
        let mut all = vec![self.a.addr, self.b.addr];
        all.extend(self.more.iter().map(|s| s.addr));
        all
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.sent.push((MockClock::time(), from, data.to_vec()));
        let isolated = self
            .isolated
            .iter()
            .any(|s| self.site_of(*s) == self.site_of(from))
            || self
                .isolated
                .iter()
                .any(|s| self.site_of(*s) == self.site_of(to));
        if self.link_up && !isolated {
            self.wire.push_back((from, to, data.to_vec()));
        }
    }

    fn drain_transmits(&mut self, which: SocketAddr) {
        let mut buf = vec![0u8; BUF];
        loop {
            let site = self.site(which).expect("site");
            let Some(t) = site.engine.poll_transmit(&mut buf) else {
                break;
            };
            let (from, dst, data) = (source(which, t.src), t.dst, t.payload.to_vec());
            self.send(from, dst, &data);
        }
    }

    /// A packet enters the TUN device of the site at `at`.
    fn tun_in(&mut self, at: SocketAddr, packet: &[u8]) {
        let mut buf = vec![0u8; BUF];
        let site = self.site(at).expect("site");
        // Whatever the test changed is published, as the daemon does on releasing the lock.
        site.engine.publish();
        let out = match site
            .engine
            .data_path()
            .encrypt(Instant::now(), packet, &mut buf)
        {
            Fast::Network(t) => {
                site.fast += 1;
                Some((source(at, t.src), t.dst, t.payload.to_vec()))
            }
            Fast::Done => {
                site.fast += 1;
                None
            }
            Fast::Tunnel(_) => panic!("encrypt returned a packet for the TUN device"),
            Fast::Slow => site
                .engine
                .handle_tunnel_packet(Instant::now(), packet, &mut buf)
                .map(|t| (source(at, t.src), t.dst, t.payload.to_vec())),
        };
        if let Some((from, dst, data)) = out {
            self.send(from, dst, &data);
        }
        self.drain_transmits(at);
    }

    /// Delivers one datagram to the site at `to`, as if sent from `from`.
    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) -> Option<SocketAddr> {
        let mut buf = vec![0u8; BUF];
        let site = self.site(to)?;
        site.engine.publish();
        let fast =
            site.engine
                .data_path()
                .decrypt(Instant::now(), from, Some(to.ip()), data, &mut buf);
        let slow = match fast {
            Fast::Tunnel(p) => {
                site.tun_out.push(p.to_vec());
                false
            }
            Fast::Done => false,
            Fast::Network(_) => panic!("decrypt returned a datagram to send"),
            Fast::Slow => true,
        };
        site.fast += usize::from(!slow);
        let reply = if !slow {
            None
        } else {
            match site
                .engine
                .handle_datagram(Instant::now(), from, Some(to.ip()), data, &mut buf)
            {
                Received::Tunnel(p) => {
                    site.tun_out.push(p.to_vec());
                    None
                }
                Received::Network(t) => Some((source(to, t.src), t.dst, t.payload.to_vec())),
                Received::Nothing => None,
            }
        };
        let reply_dst = reply.as_ref().map(|r| r.1);
        if let Some((from, dst, data)) = reply {
            self.send(from, dst, &data);
        }
        let primary = self.site(to)?.addr;
        self.drain_transmits(primary);
        reply_dst
    }

    /// Delivers everything in flight until the network is quiet.
    fn settle(&mut self) {
        let mut rounds = 0;
        while let Some((from, to, data)) = self.wire.pop_front() {
            self.deliver(from, to, &data);
            rounds += 1;
            assert!(rounds < 10_000, "network did not settle");
        }
    }

    /// Advances virtual time in 100 ms steps, running both sides' timers.
    fn advance(&mut self, total: Duration) {
        let mut left = total;
        while !left.is_zero() {
            let step = TICK.min(left);
            MockClock::advance(step);
            left -= step;
            for which in self.all_sites() {
                let site = self.site(which).expect("site");
                site.engine.handle_timeout(Instant::now(), wall());
                self.drain_transmits(which);
            }
            self.settle();
        }
    }

    fn status_a(&self) -> PeerStatus {
        self.a.engine.peers().next().expect("A has a peer")
    }

    fn status_b(&self) -> PeerStatus {
        self.b.engine.peers().next().expect("B has a peer")
    }

    fn inits_from_a_after(&self, t: Duration) -> usize {
        self.sent
            .iter()
            .filter(|(at, from, d)| *at > t && *from == self.a.addr && d[0] == TYPE_HANDSHAKE_INIT)
            .count()
    }
}

#[test]
fn handshake_then_data_both_ways_and_handshake_time_recorded() {
    let mut p = pair(None);
    let out = ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"hello from A");
    p.tun_in(p.a.addr, &out);
    p.settle();
    // The packet was queued behind the handshake and flushed after it.
    assert_eq!(p.b.tun_out, vec![out.clone()]);

    let back = ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"hello from B");
    p.tun_in(p.b.addr, &back);
    p.settle();
    assert_eq!(p.a.tun_out, vec![back]);

    p.advance(Duration::from_millis(200));
    let (a, b) = (p.status_a(), p.status_b());
    let hs = a.last_handshake.expect("A recorded the handshake time");
    let age = wall().duration_since(hs).expect("handshake in the past");
    assert!(age < Duration::from_secs(2), "handshake age {age:?}");
    assert!(b.last_handshake.is_some());
    assert!(a.up && b.up);
    assert!(a.tx_bytes > 0 && a.rx_bytes > 0 && b.tx_bytes > 0 && b.rx_bytes > 0);
    assert_eq!(b.endpoint, Some(p.a.addr));
}

#[test]
fn persistent_keepalive_is_sent_on_an_idle_link() {
    let mut p = pair(Some(25));
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x"));
    p.settle();
    let start = MockClock::time();
    p.advance(Duration::from_secs(26));
    let keepalives = keepalives_from_a_after(&p, start);
    assert!(keepalives >= 1, "no keepalive from A in 26 s idle");
}

#[test]
fn decrypted_packet_with_source_outside_allowed_ips_is_dropped_and_counted() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"ok"));
    p.settle();
    assert_eq!(p.b.tun_out.len(), 1);
    // 198.19.9.9 is not in B's allowed-ips for A, though A encrypts it happily.
    p.tun_in(
        p.a.addr,
        &ipv4([198, 19, 9, 9], [198, 19, 2, 5], b"spoofed"),
    );
    p.settle();
    assert_eq!(p.b.tun_out.len(), 1, "spoofed packet reached B's TUN");
    assert_eq!(p.b.engine.counters().bad_source, 1);
    assert_eq!(p.status_b().bad_source, 1);
}

#[test]
fn endpoint_roams_on_authenticated_packets_only() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    assert_eq!(p.status_b().endpoint, Some(p.a.addr));

    // A's next data packet arrives from a new address (NAT rebinding): B follows it.
    let mut buf = vec![0u8; BUF];
    let t = p.a.engine.handle_tunnel_packet(
        Instant::now(),
        &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"2"),
        &mut buf,
    );
    let data = t.expect("session is up").payload.to_vec();
    let roamed: SocketAddr = "198.18.7.7:40000".parse().unwrap();
    p.deliver(roamed, p.b.addr, &data);
    assert_eq!(p.status_b().endpoint, Some(roamed));
    assert_eq!(
        p.status_b().health.endpoint_source,
        Some(crate::health::EndpointSource::Learned)
    );

    // A replay of it from elsewhere is refused and moves nothing.
    let attacker: SocketAddr = "198.18.6.6:666".parse().unwrap();
    p.deliver(attacker, p.b.addr, &data);
    assert_eq!(p.status_b().endpoint, Some(roamed));

    // A forged cookie reply carrying B's receiver index for A moves nothing either.
    let mut forged = vec![0u8; 64];
    forged[0] = TYPE_COOKIE_REPLY;
    forged[4..8].copy_from_slice(&data[4..8]);
    p.deliver(attacker, p.b.addr, &forged);
    assert_eq!(p.status_b().endpoint, Some(roamed));
    assert_eq!(p.b.tun_out.len(), 2);
}

/// Valid-mac1 initiations from a key B does not know, each from its own Tunn.
fn stranger_initiations(to: PublicKey, n: usize) -> Vec<Vec<u8>> {
    let target = x25519::PublicKey::from(*to.as_bytes());
    let mut buf = vec![0u8; BUF];
    (0..n)
        .map(|i| {
            let (stranger, _) = key();
            let mut t = Tunn::new(
                x25519::StaticSecret::from(*stranger.as_bytes()),
                target,
                None,
                None,
                i as u32 + 1,
                None,
            );
            match t.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(d) => d.to_vec(),
                _ => panic!("no initiation"),
            }
        })
        .collect()
}

/// A's initiation to B (for its session), as A's engine makes it now.
fn initiation_from_a(p: &mut Pair) -> Vec<u8> {
    let mut buf = vec![0u8; BUF];
    let id = p.status_a().id;
    let peer = p.a.engine.peers.get_mut(id).unwrap();
    let mut lane = peer.lane.lock();
    let session = lane.session.as_mut().unwrap();
    match session
        .current
        .tunn
        .format_handshake_initiation(&mut buf, true)
    {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("no initiation"),
    }
}

#[test]
fn the_gate_limits_each_source_and_demands_cookies_under_load() {
    use crate::handshake::{Dropped, Verdict};
    let p = connected(None);
    let b_key = p.b.engine.public_key().unwrap();
    let mut gate = p.b.engine.handshake_gate(Instant::now()).unwrap();
    assert_eq!(gate.key(), b_key);
    let flood = stranger_initiations(b_key, 40);
    let attacker: SocketAddr = "198.18.6.6:666".parse().unwrap();
    let mut reply = vec![0u8; BUF];

    // Not under load: initiations are opened, and the gate names the (unknown) sender, so the
    // caller can drop it without the engine's lock.
    for d in &flood[..3] {
        assert!(matches!(
            gate.check(Instant::now(), attacker, d, false, &mut reply),
            Verdict::Initiation(k) if p.b.engine.peer_by_key(&k).is_none()
        ));
    }

    // Under load: a fresh source without a cookie gets a cookie reply, sent to it.
    let other: SocketAddr = "198.18.6.7:666".parse().unwrap();
    match gate.check(Instant::now(), other, &flood[9], true, &mut reply) {
        Verdict::Cookie(c) => assert_eq!((c.len(), c[0]), (64, TYPE_COOKIE_REPLY)),
        v => panic!("expected a cookie reply, got {v:?}"),
    }
    // Garbage and bad MACs are dropped as invalid.
    let mut forged = flood[10].clone();
    forged[100] ^= 1;
    let third: SocketAddr = "198.18.6.8:1".parse().unwrap();
    assert!(matches!(
        gate.check(Instant::now(), third, &forged, true, &mut reply),
        Verdict::Drop(Dropped::Invalid)
    ));
    assert!(matches!(
        gate.check(Instant::now(), third, &[4u8; 32], false, &mut reply),
        Verdict::Drop(Dropped::Invalid)
    ));
    let c = gate.counters();
    assert_eq!((c.passed, c.cookie_replies, c.invalid), (3, 1, 2));
}

#[test]
fn each_source_gets_a_burst_of_5_then_20_a_second_and_a_full_table_refuses_newcomers() {
    use crate::handshake::SourceLimits;
    MockClock::set_time(Duration::from_secs(1000));
    let mut limits = SourceLimits::default();
    let ip = |n: u32| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n));
    let allowed = |l: &mut SourceLimits, src: IpAddr, n: usize| {
        (0..n).filter(|_| l.allow(src, Instant::now())).count()
    };
    assert_eq!(allowed(&mut limits, ip(1), 8), 5, "burst of 5");
    MockClock::advance(Duration::from_millis(100));
    assert_eq!(
        allowed(&mut limits, ip(1), 8),
        2,
        "20/s refill: 2 in 100 ms"
    );
    // Another address has its own share; an IPv6 /64 is one source.
    assert_eq!(allowed(&mut limits, ip(2), 8), 5);
    let v6 = |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0xfd18, 0, 0, 1, 0, 0, 0, last));
    assert_eq!(
        (0..8)
            .filter(|i| limits.allow(v6(*i), Instant::now()))
            .count(),
        5
    );

    // A table full of sources (a spoofed flood) refuses new ones until old ones idle out,
    // sweeping at most once a second.
    for n in 10..65_546 {
        limits.allow(ip(n), Instant::now());
    }
    assert_eq!(limits.len(), 65_536);
    assert!(
        !limits.allow(ip(99_999_999), Instant::now()),
        "new source in a full table"
    );
    MockClock::advance(Duration::from_secs(2));
    assert!(
        limits.allow(ip(99_999_999), Instant::now()),
        "after the sweep"
    );
    assert_eq!(limits.len(), 1);
}

#[test]
fn under_load_a_genuine_peer_gets_a_cookie_then_completes_and_never_roams_on_it() {
    use crate::handshake::Verdict;
    let mut p = connected(None);
    let mut gate = p.b.engine.handshake_gate(Instant::now()).unwrap();
    let first = p.status_b().last_handshake;
    let mut reply = vec![0u8; BUF];
    let moved: SocketAddr = "198.18.7.7:40000".parse().unwrap();

    // A re-handshakes from a new address while B is under load: a cookie reply, which goes to
    // the source and moves nothing (the engine never sees the initiation).
    let init = initiation_from_a(&mut p);
    let cookie = match gate.check(Instant::now(), moved, &init, true, &mut reply) {
        Verdict::Cookie(c) => c.to_vec(),
        v => panic!("expected a cookie reply, got {v:?}"),
    };
    assert_eq!(
        p.status_b().endpoint,
        Some(p.a.addr),
        "endpoint moved on a cookie round"
    );
    assert_eq!(p.status_b().last_handshake, first);

    // A takes the cookie (never roaming on it either), and its next initiation carries mac2:
    // the gate lets it through under load, and the handshake completes.
    p.deliver(p.b.addr, p.a.addr, &cookie);
    assert_eq!(p.status_a().endpoint, Some(p.b.addr));
    MockClock::advance(Duration::from_secs(2));
    let init = initiation_from_a(&mut p);
    let a_key = p.status_b().public_key;
    assert!(matches!(
        gate.check(Instant::now(), moved, &init, true, &mut reply),
        Verdict::Initiation(k) if k == a_key
    ));
    let before = p.sent.len();
    p.deliver(moved, p.b.addr, &init);
    p.settle();
    assert_eq!(
        p.status_b().endpoint,
        Some(moved),
        "an authenticated handshake roams"
    );
    let response = p.sent[before..]
        .iter()
        .find(|(_, from, d)| *from == p.b.addr && d[0] == 2)
        .map(|(_, _, d)| d.clone())
        .expect("the cookie holder got no response");
    // The response reaches A (its new address is not on the test wire); A's first packet
    // under the new keys completes B's side of the handshake.
    p.deliver(p.b.addr, p.a.addr, &response);
    p.settle();
    p.advance(Duration::from_millis(300));
    assert!(
        p.status_b().last_handshake > first,
        "the cookie holder did not get through"
    );
}

#[test]
fn expired_link_with_keepalive_is_reinitiated_and_recovers() {
    let mut p = pair(Some(25));
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    p.advance(Duration::from_secs(1));
    assert!(p.status_a().up);

    p.link_up = false;
    let mut expired_at = None;
    for _ in 0..800 {
        p.advance(Duration::from_secs(1));
        if !p.status_a().up {
            expired_at = Some(MockClock::time());
            break;
        }
    }
    let expired_at = expired_at.expect("link never expired with the network cut");
    p.advance(Duration::from_secs(30));
    assert!(
        p.inits_from_a_after(expired_at) >= 2,
        "A did not re-initiate after the link expired"
    );

    p.link_up = true;
    let before = p.status_a().last_handshake;
    p.advance(Duration::from_secs(10));
    let a = p.status_a();
    assert!(a.up, "link did not recover once the network returned");
    assert!(a.last_handshake > before);
}

#[test]
fn expired_link_without_keepalive_stays_quiet() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    p.advance(Duration::from_secs(1));
    p.link_up = false;
    // Traffic with no answer: boringtun retries for 90 s, then gives up.
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"2"));
    p.advance(Duration::from_secs(200));
    let quiet_since = MockClock::time();
    p.advance(Duration::from_secs(60));
    assert_eq!(
        p.inits_from_a_after(quiet_since),
        0,
        "on-demand link re-initiated while idle"
    );
}

#[test]
fn handshake_from_unknown_key_is_refused_and_counted() {
    let mut p = pair(None);
    let (stranger, _) = key();
    let b_pub = x25519::PublicKey::from(*p.status_a().public_key.as_bytes());
    let mut t = Tunn::new(
        x25519::StaticSecret::from(*stranger.as_bytes()),
        b_pub,
        None,
        None,
        1,
        None,
    );
    let mut buf = vec![0u8; BUF];
    let init = match t.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("no initiation"),
    };
    let attacker: SocketAddr = "198.18.6.6:666".parse().unwrap();
    assert_eq!(p.deliver(attacker, p.b.addr, &init), None);
    assert_eq!(p.b.engine.counters().unknown_key, 1);
    assert!(p.b.tun_out.is_empty());
}

#[test]
fn garbage_and_short_buffers_never_panic() {
    let mut p = pair(None);
    let from: SocketAddr = (Ipv4Addr::new(198, 18, 6, 6), 1).into();
    let mut buf = vec![0u8; BUF];
    for len in [0usize, 1, 4, 31, 32, 64, 92, 148, 200] {
        for first in [0u8, 1, 2, 3, 4, 5, 255] {
            let mut d = vec![0xa5u8; len];
            if len > 0 {
                d[0] = first;
            }
            assert!(matches!(
                p.b.engine
                    .handle_datagram(Instant::now(), from, None, &d, &mut buf),
                Received::Nothing
            ));
        }
    }
    let mut small = [0u8; 100];
    assert!(p
        .a
        .engine
        .handle_tunnel_packet(
            Instant::now(),
            &ipv4([198, 19, 1, 5], [198, 19, 2, 5], &[0; 90]),
            &mut small
        )
        .is_none());
    assert!(matches!(
        p.b.engine
            .handle_datagram(Instant::now(), from, None, &[4u8; 200], &mut small),
        Received::Nothing
    ));
    assert!(p.b.engine.counters().invalid > 0);
}

#[test]
fn packet_without_route_or_endpoint_is_counted() {
    let mut p = pair(None);
    assert!(dropped(
        &mut p.a.engine,
        &ipv4([198, 19, 1, 5], [203, 0, 113, 9], b"x")
    ));
    assert_eq!(p.a.engine.counters().no_route, 1);
    let (_, pk) = key();
    p.a.engine
        .add_peer(PeerSpec {
            name: "roaming".into(),
            public_key: pk,
            preshared_key: None,
            endpoint: None,
            allowed_ips: vec![cidr("198.19.3.0/24")],
            persistent_keepalive: None,
        })
        .unwrap();
    assert!(dropped(
        &mut p.a.engine,
        &ipv4([198, 19, 1, 5], [198, 19, 3, 1], b"x")
    ));
    assert_eq!(p.a.engine.counters().no_endpoint, 1);
    // The same key twice, or our own key, is refused.
    let dup = p.a.engine.add_peer(PeerSpec {
        name: "dup".into(),
        public_key: pk,
        preshared_key: None,
        endpoint: None,
        allowed_ips: vec![],
        persistent_keepalive: None,
    });
    assert!(matches!(dup, Err(EngineError::DuplicateKey(_))));
}

#[test]
fn always_on_link_comes_up_without_traffic() {
    let mut p = pair(Some(25));
    p.advance(Duration::from_millis(500));
    assert!(
        p.status_a().up && p.status_b().up,
        "keepalive peer did not connect by itself"
    );
    assert!(p.a.tun_out.is_empty() && p.b.tun_out.is_empty());
}

#[test]
fn keepalive_and_allowed_ips_changes_keep_the_session() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    p.advance(Duration::from_millis(200));
    let handshake = p.status_a().last_handshake.expect("session");
    let changed_at = MockClock::time();

    let id = p.status_a().id;
    p.a.engine.set_keepalive(id, Some(5));
    p.a.engine
        .set_allowed_ips(id, vec![cidr("198.19.2.0/24"), cidr("198.19.3.0/24")]);
    p.a.engine.set_name(id, "site-b-renamed".into());
    p.tun_in(
        p.a.addr,
        &ipv4([198, 19, 1, 5], [198, 19, 3, 7], b"to the new subnet"),
    );
    p.settle();
    assert_eq!(
        p.b.tun_out.len(),
        2,
        "packet to the newly allowed subnet did not arrive"
    );
    p.advance(Duration::from_secs(6));

    assert_eq!(
        p.inits_from_a_after(changed_at),
        0,
        "the change caused a new handshake"
    );
    assert_eq!(p.status_a().last_handshake, Some(handshake));
    assert_eq!(p.status_a().name, "site-b-renamed");
    let keepalives = keepalives_from_a_after(&p, changed_at);
    assert!(keepalives >= 1, "no keepalive at the new 5 s interval");

    // Narrowing allowed-ips takes the old subnet away at once.
    p.a.engine.set_allowed_ips(id, vec![cidr("198.19.2.0/24")]);
    assert!(dropped(
        &mut p.a.engine,
        &ipv4([198, 19, 1, 5], [198, 19, 3, 7], b"x")
    ));
}

/// Sends a packet each way every 20 ms for `total` and returns (sent, delivered) per direction
/// (A→B, B→A). Delivery is checked by count and content.
fn ping_both_ways(p: &mut Pair, total: Duration) -> [(usize, usize); 2] {
    let step = Duration::from_millis(20);
    let (a_before, b_before) = (p.a.tun_out.len(), p.b.tun_out.len());
    let mut sent = 0usize;
    let mut elapsed = Duration::ZERO;
    while elapsed < total {
        let n = (sent as u32).to_be_bytes();
        p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], &n));
        p.tun_in(p.b.addr, &ipv4([198, 19, 2, 5], [198, 19, 1, 5], &n));
        p.settle();
        sent += 1;
        p.advance(step);
        elapsed += step;
    }
    [
        (sent, p.b.tun_out.len() - b_before),
        (sent, p.a.tun_out.len() - a_before),
    ]
}

/// A session both ways, 3 s old.
fn connected(keepalive: Option<u16>) -> Pair {
    let mut p = pair(keepalive);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    p.tun_in(p.b.addr, &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"1"));
    p.settle();
    p.advance(Duration::from_secs(3));
    assert!(p.status_a().up && p.status_b().up);
    p
}

/// Keepalives A sent after `t` (empty data messages: 16-byte header + 16-byte tag).
fn keepalives_from_a_after(p: &Pair, t: Duration) -> usize {
    p.sent
        .iter()
        .filter(|(at, from, d)| *at > t && *from == p.a.addr && d[0] == 4 && d.len() == 32)
        .count()
}

fn handshakes_after(p: &Pair, t: Duration) -> usize {
    p.sent
        .iter()
        .filter(|(at, _, d)| *at > t && d[0] == TYPE_HANDSHAKE_INIT)
        .count()
}

#[test]
fn preshared_key_rotation_on_both_sides_loses_nothing() {
    let mut p = connected(None);
    let first = p.status_a().last_handshake.expect("handshake");
    let (ida, idb) = (p.status_a().id, p.status_b().id);
    let changed_at = MockClock::time();
    for _ in 0..2 {
        // What Rosenpass does every two minutes: both sides, a moment apart.
        let psk = PresharedKey::generate();
        p.a.engine.set_preshared_key(ida, Some(psk.clone()));
        let [ab, ba] = ping_both_ways(&mut p, Duration::from_millis(300));
        assert_eq!(
            (ab.0, ba.0),
            (ab.1, ba.1),
            "lost packets between the two changes"
        );
        p.b.engine.set_preshared_key(idb, Some(psk));
        let [ab, ba] = ping_both_ways(&mut p, Duration::from_secs(2));
        assert_eq!(
            (ab.0, ba.0),
            (ab.1, ba.1),
            "lost packets after the rotation"
        );
    }
    assert_eq!(
        handshakes_after(&p, changed_at),
        0,
        "a key change caused a handshake; it must wait for the next one"
    );
    assert_eq!(p.status_a().last_handshake, Some(first));

    // The next handshake (the initiator's rekey after 120 s of traffic) uses the new key on
    // both sides and succeeds, still without losing a packet.
    let [ab, ba] = ping_both_ways(&mut p, Duration::from_secs(130));
    assert_eq!((ab.0, ba.0), (ab.1, ba.1), "lost packets across the rekey");
    assert!(handshakes_after(&p, changed_at) >= 1, "no rekey in 130 s");
    let second = p.status_a().last_handshake.expect("handshake");
    assert!(
        second > first + Duration::from_secs(100),
        "{first:?} -> {second:?}"
    );
    assert!(p.status_a().up && p.status_b().up);
    // The previous Tunn was dropped after its grace period: one index per side again.
    for site in [&p.a, &p.b] {
        let id = site.engine.peers().next().unwrap().id;
        let lane = site.engine.peers.get(id).unwrap().lane.lock();
        let session = lane.session.as_ref().unwrap();
        assert!(session.next.is_none() && session.previous.is_none());
    }
}

#[test]
fn a_preshared_key_changed_on_one_side_only_stops_the_link_at_the_next_handshake() {
    // Proof that the new key is really used: with it on A only, the rekey cannot complete,
    // and once the old keys expire the traffic stops (as WireGuard's would).
    let mut p = connected(None);
    let ida = p.status_a().id;
    p.a.engine
        .set_preshared_key(ida, Some(PresharedKey::generate()));
    let [ab, _] = ping_both_ways(&mut p, Duration::from_secs(5));
    assert_eq!(ab.0, ab.1, "the current session must keep working");
    let [ab, _] = ping_both_ways(&mut p, Duration::from_secs(200));
    assert!(
        ab.1 < ab.0,
        "traffic still flows with mismatched preshared keys"
    );
    let [ab, _] = ping_both_ways(&mut p, Duration::from_secs(2));
    assert_eq!(ab.1, 0, "traffic after the old keys expired");
    assert!(p.b.engine.counters().invalid > 0 || p.a.engine.counters().invalid > 0);
}

#[test]
fn preshared_key_set_before_any_handshake_applies_at_once() {
    let mut p = pair(None);
    let psk = PresharedKey::generate();
    let (ida, idb) = (p.status_a().id, p.status_b().id);
    p.a.engine.set_preshared_key(ida, Some(psk.clone()));
    p.b.engine.set_preshared_key(idb, Some(psk));
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x"));
    p.settle();
    assert_eq!(p.b.tun_out.len(), 1);
    assert!(p.status_a().up);
}

/// A and B as in [`pair`], plus a hub H that A and B also peer with: A routes 198.19.0.0/16
/// to H and 198.19.2.0/24 (nested in it) to B directly.
fn hub_and_spokes() -> (Pair, SocketAddr) {
    let mut p = pair(None);
    let (kh, ph) = key();
    let h_addr: SocketAddr = "198.18.0.10:51820".parse().unwrap();
    let mut h = Engine::new(Some(&kh), Instant::now(), wall());
    let (pa, pb) = (
        p.a.engine.public_key().unwrap(),
        p.b.engine.public_key().unwrap(),
    );
    for (name, key, addr, ips) in [
        ("site-a", pa, p.a.addr, "198.19.1.0/24"),
        ("site-b", pb, p.b.addr, "198.19.2.0/24"),
    ] {
        h.add_peer(PeerSpec {
            name: name.into(),
            public_key: key,
            preshared_key: None,
            endpoint: Some(addr),
            allowed_ips: vec![cidr(ips)],
            persistent_keepalive: None,
        })
        .unwrap();
    }
    for site in [&mut p.a, &mut p.b] {
        site.engine
            .add_peer(PeerSpec {
                name: "hub".into(),
                public_key: ph,
                preshared_key: None,
                endpoint: Some(h_addr),
                allowed_ips: vec![cidr("198.19.0.0/16")],
                persistent_keepalive: None,
            })
            .unwrap();
    }
    p.more.push(Site::new(h, h_addr));
    (p, h_addr)
}

fn peer_named(engine: &Engine, name: &str) -> PeerStatus {
    engine
        .peers()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no peer {name}"))
}

#[test]
fn nested_prefixes_route_to_the_longest_match() {
    let (mut p, h_addr) = hub_and_spokes();
    // 198.19.2.5 matches the hub's /16 and B's /24: B's is longer, so it goes direct.
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"direct"));
    p.settle();
    assert_eq!(p.b.tun_out.len(), 1);
    assert!(peer_named(&p.a.engine, "site-b").tx_bytes > 0);
    assert_eq!(peer_named(&p.a.engine, "hub").tx_bytes, 0);
    // 198.19.7.1 only matches the hub's /16.
    p.tun_in(
        p.a.addr,
        &ipv4([198, 19, 1, 5], [198, 19, 7, 1], b"via hub"),
    );
    p.settle();
    assert_eq!(p.more[0].tun_out.len(), 1);
    assert!(p
        .sent
        .iter()
        .any(|(_, from, d)| *from == p.a.addr && d[0] == 4 && {
            // (a data packet from A went to the hub's address)
            true
        }));
    assert!(peer_named(&p.a.engine, "hub").tx_bytes > 0);
    let _ = h_addr;

    // Removing B's nested prefix falls back to the covering one: the hub gets it.
    let id_b = peer_named(&p.a.engine, "site-b").id;
    p.a.engine.set_allowed_ips(id_b, vec![]);
    let hub_rx = p.more[0].tun_out.len();
    p.tun_in(
        p.a.addr,
        &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"now via hub"),
    );
    p.settle();
    assert_eq!(p.more[0].tun_out.len(), hub_rx + 1);
    assert_eq!(p.b.tun_out.len(), 1);
}

#[test]
fn inbound_check_uses_the_longest_match_across_peers() {
    let (mut p, _) = hub_and_spokes();
    // A session between A and the hub.
    p.tun_in(
        p.a.addr,
        &ipv4([198, 19, 1, 5], [198, 19, 7, 1], b"hello hub"),
    );
    p.settle();
    p.tun_in(
        p.more[0].addr,
        &ipv4([198, 19, 7, 1], [198, 19, 1, 5], b"from behind the hub"),
    );
    p.settle();
    assert_eq!(p.a.tun_out.len(), 1, "the hub may send from its /16");
    // The hub holds 198.19.0.0/16 but 198.19.2.0/24 is B's: the hub cannot send as B.
    p.tun_in(
        p.more[0].addr,
        &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"spoofing B"),
    );
    p.settle();
    assert_eq!(
        p.a.tun_out.len(),
        1,
        "a packet spoofing B's prefix got through the hub"
    );
    assert_eq!(p.a.engine.counters().bad_source, 1);
    assert_eq!(peer_named(&p.a.engine, "hub").bad_source, 1);
}

#[test]
fn an_identical_prefix_moves_between_peers() {
    let (mut p, _) = hub_and_spokes();
    let hub = peer_named(&p.a.engine, "hub").id;
    let b = peer_named(&p.a.engine, "site-b").id;
    p.a.engine
        .set_allowed_ips(hub, vec![cidr("198.19.0.0/16"), cidr("198.19.2.0/24")]);
    assert_eq!(
        peer_named(&p.a.engine, "site-b").allowed_ips,
        vec![],
        "moved away from B"
    );
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x"));
    p.settle();
    assert_eq!(p.more[0].tun_out.len(), 1);
    // B losing a prefix it no longer owns does not take it from the hub.
    p.a.engine.set_allowed_ips(b, vec![]);
    assert_eq!(
        p.a.engine.routes().lookup("198.19.2.5".parse().unwrap()),
        Some(hub)
    );
}

#[test]
fn without_a_private_key_nothing_handshakes_until_one_is_set() {
    MockClock::set_time(Duration::from_secs(1000));
    let (kb, pb) = key();
    let (ka, pa) = key();
    let a_addr: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:51820".parse().unwrap();
    let mut p = pair(Some(25));
    // Replace B by an engine with no key that knows A.
    let mut b = Engine::new(None, Instant::now(), wall());
    assert_eq!(b.public_key(), None);
    b.add_peer(PeerSpec {
        name: "site-a".into(),
        public_key: pa,
        preshared_key: None,
        endpoint: Some(a_addr),
        allowed_ips: vec![cidr("198.19.1.0/24")],
        persistent_keepalive: Some(25),
    })
    .unwrap();
    let mut a = Engine::new(Some(&ka), Instant::now(), wall());
    a.add_peer(PeerSpec {
        name: "site-b".into(),
        public_key: pb,
        preshared_key: None,
        endpoint: Some(b_addr),
        allowed_ips: vec![cidr("198.19.2.0/24")],
        persistent_keepalive: None,
    })
    .unwrap();
    p.a = Site::new(a, a_addr);
    p.b = Site::new(b, b_addr);
    p.sent.clear();

    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x"));
    p.advance(Duration::from_secs(3));
    assert!(p.b.engine.counters().no_key > 0, "B answered without a key");
    assert!(
        !p.sent.iter().any(|(_, from, _)| *from == b_addr),
        "B sent something without a private key"
    );
    assert!(dropped(
        &mut p.b.engine,
        &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"y")
    ));
    assert!(!p.status_b().up);

    // A key arrives (wg set ... private-key): B's always-on link comes up by itself.
    p.b.engine.set_private_key(Some(&kb));
    assert_eq!(p.b.engine.public_key(), Some(pb));
    p.advance(Duration::from_secs(1));
    assert!(p.status_b().up && p.status_a().up);
    p.tun_in(p.b.addr, &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"y"));
    p.settle();
    assert!(p.a.tun_out.iter().any(|pkt| pkt.ends_with(b"y")));

    // Taking the key away again ends the session.
    p.b.engine.set_private_key(None);
    assert!(!p.status_b().up && !p.status_b().session);
}

#[test]
fn replies_leave_from_the_address_the_peer_used() {
    let mut p = pair(Some(25));
    // B has a second address; A knows B by it.
    let secondary: SocketAddr = "198.18.0.3:51820".parse().unwrap();
    p.b.aliases.push(secondary);
    let id = p.status_a().id;
    p.a.engine
        .set_endpoint(id, secondary, EndpointSource::Config);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    p.tun_in(p.b.addr, &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"2"));
    p.settle();
    p.advance(Duration::from_secs(30));
    assert_eq!(p.a.tun_out.len(), 1);
    assert_eq!(p.status_b().local, Some(secondary.ip()));
    // Everything B sent (response, data, keepalives) came from the secondary address, so A
    // never roamed away from it.
    assert!(p
        .sent
        .iter()
        .filter(|(_, from, _)| p.b.has(*from))
        .all(|(_, from, _)| *from == secondary));
    assert_eq!(p.status_a().endpoint, Some(secondary));

    // The address goes away: B falls back to the kernel's choice (its primary address) until
    // A's next packet tells it the address in use.
    p.b.engine.forget_source(p.a.addr, secondary.ip());
    assert_eq!(p.status_b().local, None);
    p.tun_in(p.b.addr, &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"3"));
    let (_, from, _) = p.sent.last().unwrap().clone();
    assert_eq!(from, p.b.addr);
}

#[test]
fn ten_thousand_idle_peers_cost_nothing() {
    let mut p = pair(Some(25));
    let start = std::time::Instant::now();
    for i in 0..10_000u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i);
        let mut raw = [9u8; 32];
        raw[..4].copy_from_slice(&i.to_be_bytes());
        p.a.engine
            .add_peer(PeerSpec {
                name: format!("idle-{i}"),
                public_key: PublicKey::from_bytes(raw),
                preshared_key: None,
                endpoint: None,
                allowed_ips: vec![Cidr::new(IpAddr::V4(ip), 32).unwrap()],
                persistent_keepalive: None,
            })
            .unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "adding peers took {:?}",
        start.elapsed()
    );
    assert_eq!(p.a.engine.peer_count(), 10_001);
    // The real peer behaves as with no others: connects by itself, carries data, keepalives.
    p.advance(Duration::from_secs(1));
    assert!(p.status_a().up && p.status_b().up);
    let [ab, ba] = ping_both_ways(&mut p, Duration::from_secs(2));
    assert_eq!((ab.0, ba.0), (ab.1, ba.1));
    let since = MockClock::time();
    p.advance(Duration::from_secs(30));
    let keepalives = keepalives_from_a_after(&p, since);
    assert!(keepalives >= 1);
    // Only the peer with a session has timers; none of the idle peers got session state.
    assert!(
        p.a.engine.scheduled() <= 2,
        "{} deadlines",
        p.a.engine.scheduled()
    );
    assert_eq!(p.a.engine.peers().filter(|s| s.session).count(), 1);
    // A packet to an idle peer finds it (longest match in a trie) and is dropped for want of
    // an endpoint, without creating state.
    assert!(dropped(
        &mut p.a.engine,
        &ipv4([198, 19, 1, 5], [198, 18, 100, 7], b"x")
    ));
    assert_eq!(p.a.engine.counters().no_endpoint, 1);
    assert_eq!(p.a.engine.peers().filter(|s| s.session).count(), 1);
}

#[test]
fn a_dead_on_demand_link_frees_its_session_state() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    assert!(p.status_a().session);
    p.link_up = false;
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"2"));
    // boringtun gives up after 90 s of retries (or 540 s without keys): the state goes.
    p.advance(Duration::from_secs(600));
    assert!(!p.status_a().session, "expired session state was kept");
    assert_eq!(p.a.engine.scheduled(), 0, "a dead link still has timers");
    assert_eq!(p.a.engine.poll_timeout(), None);
    // New traffic brings it back.
    p.link_up = true;
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"3"));
    p.settle();
    assert!(p.b.tun_out.iter().any(|pkt| pkt.ends_with(b"3")));
}

#[test]
fn keys_are_renewed_after_rekey_after_messages_and_never_used_past_reject() {
    let mut p = connected(None);
    let id = p.status_a().id;
    let set_sent = |p: &mut Pair, n: u64| {
        let peer = p.a.engine.peers.get_mut(id).unwrap();
        peer.lane.lock().session.as_mut().unwrap().current.sent = n;
    };
    let first = p.status_a().last_handshake.unwrap();

    // One packet short of REKEY_AFTER_MESSAGES: it goes, and the next timer run re-handshakes.
    set_sent(&mut p, REKEY_AFTER_MESSAGES - 1);
    let since = MockClock::time();
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"last"));
    p.settle();
    assert!(p.b.tun_out.iter().any(|pkt| pkt.ends_with(b"last")));
    p.advance(Duration::from_millis(300));
    assert!(
        p.inits_from_a_after(since) >= 1,
        "no rekey after REKEY_AFTER_MESSAGES"
    );
    MockClock::advance(Duration::from_secs(2));
    p.advance(Duration::from_millis(200));
    assert!(p.status_a().last_handshake.unwrap() > first);

    // At REJECT_AFTER_MESSAGES nothing more is encrypted under those keys: a handshake
    // goes out instead, and traffic resumes under the new keys.
    set_sent(&mut p, REJECT_AFTER_MESSAGES);
    let delivered = p.b.tun_out.len();
    let mut buf = vec![0u8; BUF];
    let out =
        p.a.engine
            .handle_tunnel_packet(
                Instant::now(),
                &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x"),
                &mut buf,
            )
            .map(|t| t.payload[0]);
    assert_eq!(
        out,
        Some(TYPE_HANDSHAKE_INIT),
        "encrypted past REJECT_AFTER_MESSAGES"
    );
    let init = buf[..148].to_vec();
    p.deliver(p.a.addr, p.b.addr, &init);
    p.settle();
    assert_eq!(
        p.b.tun_out.len(),
        delivered,
        "a packet went out under the used-up keys"
    );
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"after"));
    p.settle();
    assert!(
        p.b.tun_out.iter().any(|pkt| pkt.ends_with(b"after")),
        "no traffic under new keys"
    );
}

#[test]
fn a_replayed_initiation_makes_the_responder_initiate_to_the_known_endpoint_at_most_every_5_s() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    let first_init = p
        .sent
        .iter()
        .find(|(_, from, d)| *from == p.a.addr && d[0] == TYPE_HANDSHAKE_INIT)
        .map(|(_, _, d)| d.clone())
        .expect("A's initiation");

    // Its timestamp is the last B accepted: a replay (or A restarted with its clock behind).
    // B answers with its own initiation, to A's endpoint, not to the sender.
    let attacker: SocketAddr = "198.18.6.6:666".parse().unwrap();
    let sent_before = p.sent.len();
    let reply = p.deliver(attacker, p.b.addr, &first_init);
    assert_eq!(reply, Some(p.a.addr), "B did not initiate to A's endpoint");
    let b_inits = |p: &Pair, since: usize| {
        p.sent[since..]
            .iter()
            .filter(|(_, from, d)| *from == p.b.addr && d[0] == TYPE_HANDSHAKE_INIT)
            .count()
    };
    assert_eq!(b_inits(&p, sent_before), 1);
    p.settle();
    // A accepted B's initiation: a new session, data flows.
    p.advance(Duration::from_millis(200));
    assert_ne!(p.status_a().last_handshake, None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"2"));
    p.settle();
    assert_eq!(p.b.tun_out.len(), 2, "data after B's handshake");

    // More replays within 5 s: no more initiations from B.
    let sent_before = p.sent.len();
    for _ in 0..10 {
        p.deliver(attacker, p.b.addr, &first_init);
    }
    assert_eq!(b_inits(&p, sent_before), 0, "B handshook again within 5 s");
    // After 5 s, one more.
    p.advance(Duration::from_secs(5));
    let sent_before = p.sent.len();
    p.deliver(attacker, p.b.addr, &first_init);
    p.deliver(attacker, p.b.addr, &first_init);
    assert_eq!(b_inits(&p, sent_before), 1);
    // The attacker never moved B's idea of A's endpoint.
    assert_eq!(p.status_b().endpoint, Some(p.a.addr));
}

#[test]
fn initiate_sends_a_handshake_to_a_peer_with_an_endpoint_and_nothing_without_one() {
    let mut p = pair(None);
    let id = p.a.engine.peer_by_key(&p.status_a().public_key).unwrap();
    p.a.engine.initiate(id);
    let before = MockClock::time();
    p.advance(Duration::from_millis(100));
    assert_eq!(p.inits_from_a_after(before - Duration::from_millis(1)), 1);
    assert!(p.status_a().up && p.status_b().up, "handshake completed");

    // B's peer without an endpoint: nothing to send, nothing scheduled.
    let (k, _) = key();
    let mut lone = Engine::new(Some(&k), Instant::now(), wall());
    let id = lone
        .add_peer(PeerSpec {
            name: "roaming".into(),
            public_key: key().1,
            preshared_key: None,
            endpoint: None,
            allowed_ips: vec![cidr("198.19.9.0/24")],
            persistent_keepalive: None,
        })
        .unwrap();
    lone.initiate(id);
    MockClock::advance(Duration::from_millis(100));
    lone.handle_timeout(Instant::now(), wall());
    let mut buf = vec![0u8; BUF];
    assert!(lone.poll_transmit(&mut buf).is_none());
}

#[test]
fn link_state_and_last_error_follow_what_happens() {
    use crate::health::{LinkState, Reason};
    let mut p = pair(None);
    let health = |p: &Pair| p.status_a().health;
    // Configured endpoint, nothing sent yet: down, and the endpoint is from the config.
    let h = health(&p);
    assert_eq!(h.state, LinkState::Down);
    assert_eq!(h.endpoint_source, Some(EndpointSource::Config));
    assert_eq!((h.attempts, h.last_error.clone()), (0, None));
    // B's view: no endpoint until A connects.
    let (k, _) = key();
    let mut lone = Engine::new(Some(&k), Instant::now(), wall());
    lone.add_peer(PeerSpec {
        name: "roaming".into(),
        public_key: key().1,
        preshared_key: None,
        endpoint: None,
        allowed_ips: vec![cidr("198.19.9.0/24")],
        persistent_keepalive: None,
    })
    .unwrap();
    assert_eq!(
        lone.peers().next().unwrap().health.state,
        LinkState::NoEndpoint
    );

    // The link is cut: A's initiations go unanswered. Connecting, counting attempts, and a
    // no-response error counting the unanswered ones since the first.
    p.link_up = false;
    let start = wall();
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    let h = health(&p);
    assert_eq!((h.state, h.attempts), (LinkState::Connecting, 1));
    assert_eq!(h.trying_since, Some(start));
    assert_eq!(
        h.last_error, None,
        "one unanswered initiation is not an error yet"
    );
    p.advance(Duration::from_secs(12));
    let h = health(&p);
    assert_eq!(h.state, LinkState::Connecting);
    assert!(h.attempts >= 3, "retries every 5 s: {}", h.attempts);
    let e = h.last_error.expect("no-response recorded");
    assert_eq!(e.reason, Reason::NoResponse);
    assert_eq!(e.since, start);
    assert_eq!(e.count, u64::from(h.attempts - 1));

    // The link returns: up, attempts reset, the error kept as history.
    p.link_up = true;
    p.advance(Duration::from_secs(6));
    let h = health(&p);
    assert_eq!(
        (h.state, h.attempts, h.trying_since),
        (LinkState::Up, 0, None)
    );
    assert_eq!(h.last_error.map(|e| e.reason), Some(Reason::NoResponse));
    assert_eq!(
        p.status_b().health.endpoint_source,
        Some(EndpointSource::Config)
    );

    // A replay of A's initiation at B: B's record for A says so, twice counted.
    let init = p
        .sent
        .iter()
        .rev()
        .find(|(_, from, d)| *from == p.a.addr && d[0] == TYPE_HANDSHAKE_INIT)
        .map(|(_, _, d)| d.clone())
        .unwrap();
    let attacker: SocketAddr = "198.18.6.6:666".parse().unwrap();
    p.deliver(attacker, p.b.addr, &init);
    p.deliver(attacker, p.b.addr, &init);
    let e = p
        .status_b()
        .health
        .last_error
        .expect("B recorded the refusal");
    assert_eq!((e.reason, e.count), (Reason::OldTimestamp, 2));
    let failures = |h: crate::HealthInfo| h.failures.iter().collect::<Vec<_>>();
    assert_eq!(
        failures(p.status_b().health),
        [
            ("no_response", 0),
            ("old_timestamp", 2),
            ("bad_mac", 0),
            ("source_not_allowed", 0),
            ("dns", 0),
            ("send", 0),
            ("other", 0)
        ]
    );
    let unanswered = failures(health(&p))[0].1;
    assert!(unanswered >= 2, "A's unanswered initiations: {unanswered}");

    // Daemon-side errors (DNS) are recorded as given.
    let id = p.status_a().id;
    p.a.engine.note_error(id, "dns: no such host".into());
    assert_eq!(
        health(&p).last_error.map(|e| e.reason),
        Some(Reason::Other("dns: no such host".into()))
    );
    assert_eq!(failures(health(&p))[4], ("dns", 1));

    // No traffic for longer than a session lives: down again (on demand, nothing tried).
    p.advance(Duration::from_secs(200));
    assert_eq!(health(&p).state, LinkState::Down);
}

#[test]
fn past_its_budget_of_diffie_hellmans_a_second_the_gate_demands_cookies() {
    use crate::handshake::{Verdict, OPEN_BUDGET};
    let p = connected(None);
    let b_key = p.b.engine.public_key().unwrap();
    let mut gate = p.b.engine.handshake_gate(Instant::now()).unwrap();
    let flood = stranger_initiations(b_key, 8);
    let mut reply = vec![0u8; BUF];
    // Many sources, each within its share, all in one instant.
    let (mut opened, mut cookies) = (0, 0);
    for i in 0..(OPEN_BUDGET as u32 + 100) {
        let from = SocketAddr::from((Ipv4Addr::from(0xc612_0000 + i), 1000));
        match gate.check(
            Instant::now(),
            from,
            &flood[i as usize % 8],
            false,
            &mut reply,
        ) {
            Verdict::Initiation(_) => opened += 1,
            Verdict::Cookie(_) => cookies += 1,
            v => panic!("{v:?}"),
        }
    }
    assert_eq!((opened, cookies), (OPEN_BUDGET as u32, 100));
    // A second later the budget is back.
    MockClock::advance(Duration::from_secs(1));
    let from = SocketAddr::from(([198, 18, 9, 9], 1));
    assert!(matches!(
        gate.check(Instant::now(), from, &flood[0], false, &mut reply),
        Verdict::Initiation(_)
    ));
}

/// Found by fuzzing (engine_datagram_no_session): boringtun hands back a decrypted IPv4 packet
/// cut to its length field, even when that field is smaller than the header.
#[test]
fn a_decrypted_packet_shorter_than_its_ip_header_never_reaches_the_tun_side() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"hello"));
    p.settle();
    assert_eq!(p.b.tun_out.len(), 1);
    let invalid = p.b.engine.counters().invalid;
    for length in [0u16, 19] {
        let mut bad = ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x");
        bad[2..4].copy_from_slice(&length.to_be_bytes());
        p.tun_in(p.a.addr, &bad);
        p.settle();
    }
    assert_eq!(
        p.b.tun_out.len(),
        1,
        "a truncated packet reached the TUN side: {:?}",
        p.b.tun_out
    );
    assert_eq!(p.b.engine.counters().invalid, invalid + 2);
    // The session is fine.
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"again"));
    p.settle();
    assert_eq!(p.b.tun_out.len(), 2);
}

#[test]
fn allowed_endpoints_refuse_other_sources_even_with_the_right_key() {
    use crate::health::Reason;
    let mut p = pair(None);
    let a_at_b = p.status_b().id;
    p.b.engine
        .set_allowed_endpoints(a_at_b, vec![cidr("203.0.113.0/24")]);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.advance(Duration::from_secs(1));
    assert_eq!(
        p.status_a().last_handshake,
        None,
        "B answered a refused source"
    );
    assert!(p.b.engine.counters().endpoint_not_allowed >= 1);
    let b = p.status_b().health;
    assert_eq!(
        b.last_error.map(|e| e.reason),
        Some(Reason::SourceNotAllowed)
    );
    assert_eq!(
        b.failures
            .iter()
            .find(|(l, _)| *l == "source_not_allowed")
            .map(|(_, n)| n > 0),
        Some(true)
    );
    // A's address allowed (as a /32 network): A's next retry completes the handshake.
    let a_net = Cidr::new(p.a.addr.ip(), 32).unwrap();
    p.b.engine.set_allowed_endpoints(a_at_b, vec![a_net]);
    p.advance(Duration::from_secs(6));
    assert!(
        p.status_a().last_handshake.is_some(),
        "no handshake once allowed"
    );
}

/// Regression: boringtun resets all its timers when it starts a handshake after an expired
/// one, which made `stats()` report a fresh session on every retry over a dead link (status
/// said "up", a new latest handshake every 5 s, handshake attempts never counted up).
#[test]
fn retries_over_a_dead_link_are_not_handshakes() {
    use crate::health::LinkState;
    let mut p = connected(Some(25));
    let handshake = p.status_a().last_handshake.expect("handshake");
    p.link_up = false;
    // Traffic A→B that B never gets: boringtun initiates after 15 s, retries every 5 s.
    for _ in 0..12 {
        p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x"));
        p.advance(Duration::from_secs(5));
    }
    let a = p.status_a();
    assert_eq!(
        a.last_handshake,
        Some(handshake),
        "a retry counted as a handshake"
    );
    assert!(a.health.attempts >= 3, "attempts: {}", a.health.attempts);
    assert_eq!(a.health.state, LinkState::Connecting);
    // The link returns: the next retry completes a real handshake.
    p.link_up = true;
    p.advance(Duration::from_secs(6));
    let a = p.status_a();
    assert!(a.last_handshake > Some(handshake), "no new handshake");
    assert_eq!((a.health.state, a.health.attempts), (LinkState::Up, 0));
}

#[test]
fn send_errors_are_the_last_error_of_the_peer_at_that_endpoint() {
    let mut p = pair(None);
    let b_addr = p.b.addr;
    p.a.engine
        .note_send_error(b_addr, "Network is unreachable (os error 101)");
    let e = p.status_a().health.last_error.expect("recorded");
    assert_eq!(
        e.reason.text(),
        "send: Network is unreachable (os error 101)"
    );
    assert_eq!(e.reason.label(), "send");
    // Another destination: nobody's error.
    p.b.engine
        .note_send_error("198.18.9.9:1".parse().unwrap(), "whatever");
    assert_eq!(p.status_b().health.last_error, None);
}

/// Preshared keys that differ: B answers A's initiation, A's check of the response fails,
/// and A's record says bad mac (with the hint about preshared keys).
#[test]
fn a_preshared_key_mismatch_shows_as_bad_mac() {
    use crate::health::{LinkState, Reason};
    let mut p = pair(None);
    let b_at_a = p.status_a().id;
    p.a.engine
        .set_preshared_key(b_at_a, Some(PresharedKey::from_bytes([7; 32])));
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    let a = p.status_a().health;
    assert_eq!(
        a.last_error.as_ref().map(|e| e.reason.clone()),
        Some(Reason::BadMac)
    );
    assert!(Reason::BadMac.hint().contains("preshared key"));
    assert_ne!(a.state, LinkState::Up);
    assert_eq!(p.status_a().last_handshake, None);
}

/// The kinds of `events`, as their wire names.
fn kinds(events: &[liveness::Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

#[test]
fn liveness_holds_down_withdraws_when_silent_and_comes_back() {
    // The hub's covering prefix (198.19.0.0/16) takes B's traffic while B is withdrawn.
    let (mut p, h_addr) = hub_and_spokes();
    let hub = peer_named(&p.a.engine, "hub").id;
    let b = peer_named(&p.a.engine, "site-b").id;
    p.a.engine.set_keepalive(hub, Some(1));
    p.a.engine.set_keepalive(b, Some(1));
    p.a.engine.set_liveness(liveness::Policy {
        down_after: Some(Duration::from_secs(3)),
        up_after: Duration::from_secs(2),
        withdraw: true,
    });
    let route = |p: &Pair| p.a.engine.routes().lookup("198.19.2.5".parse().unwrap());
    assert_eq!(route(&p), None, "every peer is down at start: withdrawn");
    assert!(peer_named(&p.a.engine, "site-b").liveness.withdrawn);

    // The keepalives bring the links up; the hold-down keeps them withdrawn for 2 s.
    p.advance(Duration::from_millis(500));
    // Keepalives back to A once the sessions exist. (Initiations crossing in the same
    // virtual instant carry equal timestamps, and the second pair is refused as a replay.)
    let a_at_b = p.status_b().id;
    p.b.engine.set_keepalive(a_at_b, Some(1));
    let h = p.site(h_addr).unwrap();
    let a_at_hub = peer_named(&h.engine, "site-a").id;
    h.engine.set_keepalive(a_at_hub, Some(1));
    let (mut events, lost) = p.a.engine.take_events();
    events.sort_by(|x, y| x.peer.cmp(&y.peer));
    assert_eq!((kinds(&events), lost), (vec!["handshake"; 2], 0));
    assert_eq!((&*events[0].peer, &*events[1].peer), ("hub", "site-b"));
    assert_eq!(
        peer_named(&p.a.engine, "site-b").liveness.live.as_str(),
        "hold-down"
    );
    assert_eq!(route(&p), None);
    p.advance(Duration::from_secs(2));
    assert_eq!(kinds(&p.a.engine.take_events().0), ["peer-up"; 2]);
    assert_eq!(route(&p), Some(b), "B is up: its prefix is back");
    assert!(!peer_named(&p.a.engine, "site-b").liveness.withdrawn);

    // B cut off: 3 s without a packet from it (keepalives every second) takes it down, and
    // its traffic goes to the hub.
    p.isolated.push(p.b.addr);
    let cut = MockClock::time();
    p.advance(Duration::from_secs(5));
    let events = p.a.engine.take_events().0;
    assert_eq!(kinds(&events), ["peer-down"]);
    assert_eq!(events[0].peer, "site-b");
    let liveness::EventKind::Down { silent } = events[0].kind else {
        unreachable!()
    };
    assert!(silent >= Duration::from_secs(3), "{silent:?}");
    assert_eq!(
        route(&p),
        Some(hub),
        "B is down: withdrawn, the hub's /16 serves"
    );
    let down_at = peer_named(&p.a.engine, "site-b").liveness.since;
    let after_cut = down_at
        .duration_since(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + cut)
        .unwrap();
    assert!(
        after_cut <= Duration::from_millis(4100),
        "down {after_cut:?} after the cut (down-after 3 s, last packet up to 1 s before)"
    );

    // Back: the session outlived the outage; B's keepalives start the hold-down, and 2 s
    // later B is up again.
    p.isolated.clear();
    p.advance(Duration::from_millis(1500));
    assert_eq!(
        peer_named(&p.a.engine, "site-b").liveness.live.as_str(),
        "hold-down"
    );
    assert_eq!(route(&p), Some(hub));
    p.advance(Duration::from_secs(2));
    assert_eq!(kinds(&p.a.engine.take_events().0), ["peer-up"]);
    assert_eq!(route(&p), Some(b));

    // Withdrawal turned off: every prefix is routed whatever the state.
    p.isolated.push(p.b.addr);
    p.advance(Duration::from_secs(5));
    assert_eq!(route(&p), Some(hub));
    p.a.engine.set_liveness(liveness::Policy::default());
    assert_eq!(route(&p), Some(b));
}

#[test]
fn roaming_and_flapping_are_events_and_a_flap_stays_down() {
    let mut p = pair(Some(1));
    p.a.engine.set_liveness(liveness::Policy {
        down_after: Some(Duration::from_secs(3)),
        up_after: Duration::from_secs(2),
        withdraw: false,
    });
    p.advance(Duration::from_millis(500));
    let b_id = p.status_b().id;
    p.b.engine.set_keepalive(b_id, Some(1));
    p.advance(Duration::from_millis(2500));
    let events = p.a.engine.take_events().0;
    assert_eq!(kinds(&events), ["handshake", "peer-up"]);
    // Without withdrawal, a peer's prefixes stay routed even while down.
    assert!(!p.status_a().liveness.withdrawn);

    // B's next packet arrives from a new address (NAT rebinding): A follows it, and says so.
    let new_b: SocketAddr = "198.18.7.7:40000".parse().unwrap();
    let mut buf = vec![0u8; BUF];
    let t = p.b.engine.handle_tunnel_packet(
        Instant::now(),
        &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"moved"),
        &mut buf,
    );
    let data = t.expect("session is up").payload.to_vec();
    p.deliver(new_b, p.a.addr, &data);
    let events = p.a.engine.take_events().0;
    assert_eq!(kinds(&events), ["endpoint"], "{events:?}");
    assert_eq!(
        events[0].kind,
        liveness::EventKind::Endpoint { endpoint: new_b }
    );

    // B's keepalives still come from its own address: A goes back to it.
    p.advance(Duration::from_millis(1500));
    let events = p.a.engine.take_events().0;
    assert_eq!(
        events.iter().map(|e| &e.kind).collect::<Vec<_>>(),
        [&liveness::EventKind::Endpoint { endpoint: p.b.addr }]
    );

    // A flap: down, then one burst of packets shorter than the hold-down, then silence
    // again: no up event. (A hold-down longer than down-after is what catches it.)
    p.link_up = false;
    p.advance(Duration::from_secs(5));
    assert_eq!(kinds(&p.a.engine.take_events().0), ["peer-down"]);
    p.a.engine.set_liveness(liveness::Policy {
        down_after: Some(Duration::from_secs(3)),
        up_after: Duration::from_secs(5),
        withdraw: false,
    });
    p.link_up = true;
    p.advance(Duration::from_millis(1100));
    p.link_up = false;
    p.advance(Duration::from_secs(6));
    assert_eq!(
        p.a.engine.take_events().0,
        vec![],
        "a flap shorter than up-after"
    );
    assert_eq!(p.status_a().liveness.live.as_str(), "down");
}

#[test]
fn a_standby_sends_and_answers_nothing_and_becomes_active_in_one_round_trip() {
    let mut p = pair(Some(1));
    p.a.engine.set_active(false, None);
    let before = p.sent.len();
    p.advance(Duration::from_secs(3));
    assert_eq!(
        p.sent
            .iter()
            .skip(before)
            .filter(|(_, from, _)| *from == p.a.addr)
            .count(),
        0,
        "a standby sent something"
    );
    assert_eq!(
        p.a.engine.routes().lookup("198.19.2.5".parse().unwrap()),
        None
    );
    assert!(p.a.engine.is_standby());
    // B's initiations (it has A's endpoint and data to send) are not answered.
    p.tun_in(
        p.b.addr,
        &ipv4([198, 19, 2, 5], [198, 19, 1, 5], b"to the standby"),
    );
    p.settle();
    assert!(p.a.engine.counters().standby >= 1);
    assert!(p.status_b().last_handshake.is_none());

    // Active, from a virtual address: the initiation goes at the next timer run, from it.
    let vip: IpAddr = "198.18.0.100".parse().unwrap();
    p.a.aliases.push(SocketAddr::new(vip, 51820));
    let at = MockClock::time();
    p.a.engine.set_active(true, Some(vip));
    p.advance(Duration::from_millis(100));
    let first = p
        .sent
        .iter()
        .find(|(t, from, d)| {
            *t >= at && *from != p.b.addr && d.first() == Some(&TYPE_HANDSHAKE_INIT)
        })
        .expect("an initiation after going active");
    assert_eq!(
        first.1,
        SocketAddr::new(vip, 51820),
        "sent from the virtual address"
    );
    assert!(first.0 - at <= Duration::from_millis(100));
    assert!(
        p.status_a().last_handshake.is_some(),
        "no handshake within one round trip"
    );
    assert_eq!(
        p.a.engine.routes().lookup("198.19.2.5".parse().unwrap()),
        Some(p.status_a().id)
    );
    assert_eq!(p.status_b().endpoint, Some(SocketAddr::new(vip, 51820)));
}

#[test]
fn routine_data_takes_the_fast_path_and_the_engine_sees_the_rest() {
    let mut p = connected(None);
    // Established both ways: data is the fast path's at both ends, and status counts it.
    let (a_fast, b_fast) = (p.a.fast, p.b.fast);
    let (a_tx, b_rx) = (p.status_a().tx_bytes, p.status_b().rx_bytes);
    for i in 0..10u8 {
        p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], &[i; 100]));
    }
    p.settle();
    assert_eq!(p.a.fast - a_fast, 10, "A encrypted on the fast path");
    assert_eq!(p.b.fast - b_fast, 10, "B decrypted on the fast path");
    assert_eq!(
        p.b.tun_out.last(),
        Some(&ipv4([198, 19, 1, 5], [198, 19, 2, 5], &[9; 100]))
    );
    // (boringtun does not pad: 120 bytes of packet, 32 of WireGuard.)
    assert_eq!(p.status_a().tx_bytes - a_tx, 10 * (120 + 32));
    assert_eq!(p.status_b().rx_bytes - b_rx, 10 * (120 + 32));

    // A datagram from a new address is the engine's (it roams), and the next one from there
    // is routine again.
    let mut buf = vec![0u8; BUF];
    let data = |p: &mut Pair, buf: &mut Vec<u8>| {
        let packet = ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"roam");
        match p.a.engine.data_path().encrypt(Instant::now(), &packet, buf) {
            Fast::Network(t) => t.payload.to_vec(),
            _ => panic!("A's session is up"),
        }
    };
    let roamed: SocketAddr = "198.18.7.7:40000".parse().unwrap();
    let (b_fast, delivered) = (p.b.fast, p.b.tun_out.len());
    let first = data(&mut p, &mut buf);
    p.deliver(roamed, p.b.addr, &first);
    assert_eq!(
        p.b.fast, b_fast,
        "a datagram from a new endpoint went the fast path"
    );
    assert_eq!(p.status_b().endpoint, Some(roamed));
    let second = data(&mut p, &mut buf);
    p.deliver(roamed, p.b.addr, &second);
    assert_eq!(p.b.fast, b_fast + 1);
    assert_eq!(p.b.tun_out.len(), delivered + 2);

    // A replay is handed back untouched, and the engine refuses and counts it.
    let invalid = p.b.engine.counters().invalid;
    p.deliver(roamed, p.b.addr, &second);
    assert_eq!(p.b.fast, b_fast + 1);
    assert_eq!(
        p.b.tun_out.len(),
        delivered + 2,
        "a replayed datagram reached the TUN device"
    );
    assert_eq!(p.b.engine.counters().invalid, invalid + 1);

    // A standby sends nothing, fast or not.
    p.a.engine.set_active(false, None);
    let packet = ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"standby");
    assert!(!encrypts_fast(&p.a.engine, &packet));
    assert!(dropped(&mut p.a.engine, &packet));
    assert_eq!(p.a.engine.counters().standby, 1);
}

/// Whether the fast path encrypts `packet` (rather than handing it back to the engine).
fn encrypts_fast(engine: &Engine, packet: &[u8]) -> bool {
    let mut buf = vec![0u8; BUF];
    matches!(
        engine.data_path().encrypt(Instant::now(), packet, &mut buf),
        Fast::Network(_)
    )
}

#[test]
fn the_fast_path_follows_published_routes_only() {
    let mut p = connected(None);
    let id = p.status_a().id;
    let packet = ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"x");
    p.a.engine.set_allowed_ips(id, vec![cidr("198.19.3.0/24")]);
    // Not published yet: packet threads still route by the old table...
    assert!(encrypts_fast(&p.a.engine, &packet));
    // ...and after publishing, by the new one (the engine then refuses: no route).
    p.a.engine.publish();
    assert!(!encrypts_fast(&p.a.engine, &packet));
    assert!(dropped(&mut p.a.engine, &packet));
    assert_eq!(p.a.engine.counters().no_route, 1);
}
