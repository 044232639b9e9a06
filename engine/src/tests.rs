//! Engine decisions under a virtual clock: two engines joined by an in-memory network that
//! the test can cut, re-route or inject into. Time only moves when a test advances it, so
//! keepalive, expiry and re-initiation tests run in milliseconds.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use mock_instant::MockClock;
use sitelink_config::{PrivateKey, PublicKey};

use super::*;

const BUF: usize = 65536;
const TYPE_HANDSHAKE_INIT: u8 = 1;

struct Site {
    engine: Engine,
    addr: SocketAddr,
    tun_out: Vec<Vec<u8>>,
}

struct Pair {
    a: Site,
    b: Site,
    /// (from, to, datagram) in flight.
    wire: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Every datagram either side sent, for assertions: (at, from, datagram).
    sent: Vec<(Duration, SocketAddr, Vec<u8>)>,
    link_up: bool,
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
    let mut a = Engine::new(&ka, Instant::now(), wall());
    let mut b = Engine::new(&kb, Instant::now(), wall());
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
        a: Site {
            engine: a,
            addr: a_addr,
            tun_out: vec![],
        },
        b: Site {
            engine: b,
            addr: b_addr,
            tun_out: vec![],
        },
        wire: VecDeque::new(),
        sent: vec![],
        link_up: true,
    }
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
        if addr == self.a.addr {
            Some(&mut self.a)
        } else if addr == self.b.addr {
            Some(&mut self.b)
        } else {
            None
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.sent.push((MockClock::time(), from, data.to_vec()));
        if self.link_up {
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
            let (dst, data) = (t.dst, t.payload.to_vec());
            self.send(which, dst, &data);
        }
    }

    /// A packet enters the TUN device of the site at `at`.
    fn tun_in(&mut self, at: SocketAddr, packet: &[u8]) {
        let mut buf = vec![0u8; BUF];
        let site = self.site(at).expect("site");
        let out = site
            .engine
            .handle_tunnel_packet(packet, &mut buf)
            .map(|t| (t.dst, t.payload.to_vec()));
        if let Some((dst, data)) = out {
            self.send(at, dst, &data);
        }
        self.drain_transmits(at);
    }

    /// Delivers one datagram to the site at `to`, as if sent from `from`.
    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) -> Option<SocketAddr> {
        let mut buf = vec![0u8; BUF];
        let site = self.site(to)?;
        let reply = match site.engine.handle_datagram(from, data, &mut buf) {
            Received::Tunnel(p) => {
                site.tun_out.push(p.to_vec());
                None
            }
            Received::Network(t) => Some((t.dst, t.payload.to_vec())),
            Received::Nothing => None,
        };
        let reply_dst = reply.as_ref().map(|r| r.0);
        if let Some((dst, data)) = reply {
            self.send(to, dst, &data);
        }
        self.drain_transmits(to);
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
            for which in [self.a.addr, self.b.addr] {
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
    // A keepalive is an empty data message: 16-byte header + 16-byte tag.
    let keepalives = p
        .sent
        .iter()
        .filter(|(at, from, d)| *at > start && *from == p.a.addr && d[0] == 4 && d.len() == 32)
        .count();
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
    let t =
        p.a.engine
            .handle_tunnel_packet(&ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"2"), &mut buf);
    let data = t.expect("session is up").payload.to_vec();
    let roamed: SocketAddr = "198.18.7.7:40000".parse().unwrap();
    p.deliver(roamed, p.b.addr, &data);
    assert_eq!(p.status_b().endpoint, Some(roamed));

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

#[test]
fn under_load_a_cookie_reply_goes_to_the_source_and_does_not_roam() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    // Flood B with well-formed initiations (valid mac1) from an unknown key.
    let (stranger, _) = key();
    let b_pub = x25519::PublicKey::from(*p.a.engine.peers().next().unwrap().public_key.as_bytes());
    let mut flood = Tunn::new(
        x25519::StaticSecret::from(*stranger.as_bytes()),
        b_pub,
        None,
        None,
        1,
        None,
    );
    let attacker: SocketAddr = "198.18.6.6:666".parse().unwrap();
    let mut buf = vec![0u8; BUF];
    let mut cookie_to = None;
    for _ in 0..300 {
        let init = match flood.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        };
        if let Some(dst) = p.deliver(attacker, p.b.addr, &init) {
            cookie_to = Some(dst);
        }
    }
    assert_eq!(
        cookie_to,
        Some(attacker),
        "no cookie reply to the flooding source"
    );
    assert!(p.b.engine.counters().cookie_replies > 0);
    assert!(p.b.engine.counters().unknown_key > 0);

    // A genuine re-handshake from A arriving at a new address while B is under load gets a
    // cookie reply, which must not move A's endpoint.
    let moved: SocketAddr = "198.18.7.7:40000".parse().unwrap();
    let init = {
        let mut buf = vec![0u8; BUF];
        let id = p.status_a().id;
        let peer = p.a.engine.peers.get_mut(&id).unwrap();
        match peer.tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        }
    };
    let reply = p.deliver(moved, p.b.addr, &init);
    assert_eq!(reply, Some(moved));
    let (_, _, last) = p.sent.last().unwrap();
    assert_eq!(last[0], TYPE_COOKIE_REPLY);
    assert_eq!(
        p.status_b().endpoint,
        Some(p.a.addr),
        "endpoint moved on a cookie reply"
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
                p.b.engine.handle_datagram(from, &d, &mut buf),
                Received::Nothing
            ));
        }
    }
    let mut small = [0u8; 100];
    assert!(p
        .a
        .engine
        .handle_tunnel_packet(
            &ipv4([198, 19, 1, 5], [198, 19, 2, 5], &[0; 90]),
            &mut small
        )
        .is_none());
    assert!(matches!(
        p.b.engine.handle_datagram(from, &[4u8; 200], &mut small),
        Received::Nothing
    ));
    assert!(p.b.engine.counters().invalid > 0);
}

#[test]
fn packet_without_route_or_endpoint_is_counted() {
    let mut p = pair(None);
    let mut buf = vec![0u8; BUF];
    assert!(p
        .a
        .engine
        .handle_tunnel_packet(&ipv4([198, 19, 1, 5], [203, 0, 113, 9], b"x"), &mut buf)
        .is_none());
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
    assert!(p
        .a
        .engine
        .handle_tunnel_packet(&ipv4([198, 19, 1, 5], [198, 19, 3, 1], b"x"), &mut buf)
        .is_none());
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
    let keepalives = p
        .sent
        .iter()
        .filter(|(at, from, d)| *at > changed_at && *from == p.a.addr && d[0] == 4 && d.len() == 32)
        .count();
    assert!(keepalives >= 1, "no keepalive at the new 5 s interval");

    // Narrowing allowed-ips takes the old subnet away at once.
    p.a.engine.set_allowed_ips(id, vec![cidr("198.19.2.0/24")]);
    let mut buf = vec![0u8; BUF];
    assert!(p
        .a
        .engine
        .handle_tunnel_packet(&ipv4([198, 19, 1, 5], [198, 19, 3, 7], b"x"), &mut buf)
        .is_none());
}

#[test]
fn preshared_key_change_starts_a_new_session() {
    let mut p = pair(None);
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"1"));
    p.settle();
    p.advance(Duration::from_secs(3));
    let first = p.status_a().last_handshake.expect("first handshake");
    let changed_at = MockClock::time();
    MockClock::advance(Duration::from_millis(1));
    let psk = PresharedKey::generate();
    let (ida, idb) = (p.status_a().id, p.status_b().id);
    p.a.engine.set_preshared_key(ida, Some(psk.clone()));
    p.b.engine.set_preshared_key(idb, Some(psk));
    p.tun_in(p.a.addr, &ipv4([198, 19, 1, 5], [198, 19, 2, 5], b"2"));
    p.settle();
    assert_eq!(
        p.inits_from_a_after(changed_at),
        1,
        "no re-handshake after the key change"
    );
    assert_eq!(p.b.tun_out.len(), 2, "data did not flow under the new key");
    p.advance(Duration::from_millis(300));
    let second = p.status_a().last_handshake.expect("second handshake");
    assert!(
        second > first,
        "the new handshake was not recorded: {first:?} -> {second:?}"
    );
    assert!(p.status_a().up);
}
