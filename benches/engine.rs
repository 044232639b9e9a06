//! Engine micro-benchmarks: encrypt and decrypt one MTU-sized packet through a pair of
//! engines with an established session, and the routing table's longest-prefix lookups at
//! 10, 10,000 and 100,000 prefixes: the routing table (a `prefix-trie` tree bitmap) against the
//! former linear table. These measure the engine's per-packet cost without any I/O;
//! `side-by-side.sh` and `scale.sh` measure the whole path.
//!
//! `data path threads`: a hub with 4 peers, each packet encrypted by the hub's fast path
//! ([`sitelink_engine::DataPath`], shared by the threads) and decrypted by its peer's, on 1
//! thread and on 2 (each taking 2 peers): what the per-peer locks buy on several cores.
//!
//! Run: `cargo bench -p sitelink-benches` (one group: `cargo bench -p sitelink-benches --
//! 'data path threads'`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sitelink_benches::LinearTable;
use sitelink_config::{Cidr, PrivateKey};
use sitelink_engine::{Engine, Fast, PeerSpec, Received, RoutingTable};

fn packet(len: usize) -> Vec<u8> {
    packet_to(len, 2)
}

/// An IPv4 packet from 198.19.1.5 to 198.19.`site`.5.
fn packet_to(len: usize, site: u8) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[198, 19, 1, 5]);
    p[16..20].copy_from_slice(&[198, 19, site, 5]);
    p
}

/// Two engines with a completed handshake (a hub with one spoke), and the first one's address.
fn pair() -> (Engine, Engine, SocketAddr) {
    let (a, mut spokes, a_addr) = hub(1);
    (a, spokes.remove(0), a_addr)
}

fn data_path(c: &mut Criterion) {
    let (mut a, mut b, a_addr) = pair();
    let p = packet(1420);
    let mut enc = vec![0u8; 65536];
    let mut dec = vec![0u8; 65536];
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Bytes(p.len() as u64));
    g.bench_function("encrypt 1420 B", |bench| {
        bench.iter(|| {
            black_box(
                a.handle_tunnel_packet(Instant::now(), black_box(&p), &mut enc)
                    .map(|t| t.payload.len()),
            )
        })
    });
    g.bench_function("encrypt + decrypt 1420 B", |bench| {
        bench.iter(|| {
            let len = a
                .handle_tunnel_packet(Instant::now(), &p, &mut enc)
                .map(|t| t.payload.len())
                .unwrap_or(0);
            match b.handle_datagram(Instant::now(), a_addr, None, &enc[..len], &mut dec) {
                Received::Tunnel(out) => black_box(out.len()),
                _ => 0,
            }
        })
    });
    g.finish();
}

/// `n` prefixes as a site-to-site hub has them: one /32 per peer from 198.18.64.0 up, plus a
/// few covering prefixes (so lookups see nesting), each to its own value.
fn prefixes(n: usize) -> Vec<(Cidr, u32)> {
    let base = u32::from(Ipv4Addr::new(198, 18, 64, 0));
    let mut v: Vec<(Cidr, u32)> = (0..n as u32).map(|i| (cidr(base + i, 32), i)).collect();
    v.push(("198.18.0.0/15".parse().expect("cidr"), u32::MAX - 1));
    v.push(("0.0.0.0/0".parse().expect("cidr"), u32::MAX));
    v
}

fn cidr(addr: u32, len: u8) -> Cidr {
    Cidr::new(IpAddr::V4(Ipv4Addr::from(addr)), len).expect("cidr")
}

/// Addresses to look up: spread over the configured /32s (hits).
fn probes(n: usize) -> Vec<IpAddr> {
    let base = u32::from(Ipv4Addr::new(198, 18, 64, 0));
    (0..64u32)
        .map(|k| IpAddr::V4(Ipv4Addr::from(base + (k * 2_654_435_761u32) % n as u32)))
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing lookup");
    for n in [10usize, 10_000, 100_000] {
        let entries = prefixes(n);
        let probes = probes(n);
        let mut trie = RoutingTable::default();
        for (cidr, v) in &entries {
            trie.insert(*cidr, *v);
        }
        let linear = LinearTable::from_entries(entries.iter().copied());
        for ip in &probes {
            assert_eq!(
                trie.lookup(*ip),
                linear.lookup(*ip),
                "trie disagrees at {ip}"
            );
        }
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("routing table", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                trie.lookup(black_box(probes[i]))
            })
        });
        if n <= 10_000 {
            // A scan of 100,000 prefixes costs ~100 µs per lookup; 10,000 already shows it.
            g.bench_with_input(BenchmarkId::new("linear (before)", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % probes.len();
                    linear.lookup(black_box(probes[i]))
                })
            });
        }
    }
    g.finish();

    // Changing the table: insert and remove one /32 among n.
    let mut g = c.benchmark_group("routing insert+remove");
    for n in [10usize, 10_000, 100_000] {
        let mut trie = RoutingTable::default();
        for (cidr, v) in prefixes(n) {
            trie.insert(cidr, v);
        }
        let extra = cidr(u32::from(Ipv4Addr::new(198, 19, 250, 1)), 32);
        g.bench_with_input(BenchmarkId::new("routing table", n), &n, |b, _| {
            b.iter(|| {
                trie.insert(black_box(extra), 7);
                trie.remove(black_box(extra))
            })
        });
    }
    g.finish();
}

/// A hub (198.19.1.0/24) with `n` spokes (198.19.2.0/24 up), every session established, and
/// the hub's address as the spokes know it.
fn hub(n: u8) -> (Engine, Vec<Engine>, SocketAddr) {
    let kh = PrivateKey::generate();
    let hub_addr: SocketAddr = "198.18.0.1:51820".parse().expect("addr");
    let mut hub = Engine::new(Some(&kh), Instant::now(), SystemTime::now());
    let mut spokes = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut reply = vec![0u8; 65536];
    for i in 0..n {
        let ks = PrivateKey::generate();
        let addr = SocketAddr::from(([198, 18, 0, 2 + i], 51820));
        let mut spoke = Engine::new(Some(&ks), Instant::now(), SystemTime::now());
        let lan = format!("198.19.{}.0/24", 2 + i);
        hub.add_peer(PeerSpec {
            name: format!("spoke{i}"),
            public_key: ks.public_key(),
            preshared_key: None,
            endpoint: Some(addr),
            allowed_ips: vec![lan.parse().expect("cidr")],
            persistent_keepalive: None,
        })
        .expect("peer");
        spoke
            .add_peer(PeerSpec {
                name: "hub".into(),
                public_key: kh.public_key(),
                preshared_key: None,
                endpoint: Some(hub_addr),
                allowed_ips: vec!["198.19.1.0/24".parse().expect("cidr")],
                persistent_keepalive: None,
            })
            .expect("peer");
        let init = hub
            .handle_tunnel_packet(Instant::now(), &packet_to(100, 2 + i), &mut buf)
            .expect("initiation")
            .payload
            .to_vec();
        let response =
            match spoke.handle_datagram(Instant::now(), hub_addr, None, &init, &mut reply) {
                Received::Network(t) => t.payload.to_vec(),
                other => panic!("expected a handshake response, got {other:?}"),
            };
        let _ = hub.handle_datagram(Instant::now(), addr, None, &response, &mut buf);
        while let Some(t) = hub.poll_transmit(&mut buf) {
            let d = t.payload.to_vec();
            let _ = spoke.handle_datagram(Instant::now(), hub_addr, None, &d, &mut reply);
        }
        spoke.publish();
        spokes.push(spoke);
    }
    hub.publish();
    (hub, spokes, hub_addr)
}

fn threads(c: &mut Criterion) {
    const PEERS: u8 = 4;
    // Packets per peer per iteration. Each iteration spawns and joins its threads (and the
    // second thread first wakes an idle vCPU): at 500 packets (2.8 MB, a few milliseconds
    // an iteration) that fixed cost weighed on the 2-thread time; at 4000 (23 MB, tens of
    // milliseconds) it is amortised.
    const PER_PEER: usize = 4000;
    let (hub, spokes, hub_addr) = hub(PEERS);
    let hub_path = hub.data_path();
    let spoke_paths: Vec<_> = spokes.iter().map(Engine::data_path).collect();
    let packets: Vec<Vec<u8>> = (0..PEERS).map(|i| packet_to(1420, 2 + i)).collect();
    // One peer's packets through both fast paths, in order.
    let run = |peer: usize, enc: &mut [u8], dec: &mut [u8]| {
        for _ in 0..PER_PEER {
            let len = match hub_path.encrypt(Instant::now(), &packets[peer], enc) {
                Fast::Network(t) => t.payload.len(),
                _ => panic!("the hub's session with spoke {peer} is not on the fast path"),
            };
            match spoke_paths[peer].decrypt(Instant::now(), hub_addr, None, &enc[..len], dec) {
                Fast::Tunnel(out) => black_box(out.len()),
                _ => panic!("spoke {peer} did not decrypt on the fast path"),
            };
        }
    };
    let mut g = c.benchmark_group("data path threads");
    // 10 samples of 1..10 iterations (scaled to the measurement time) instead of 100: an
    // iteration is tens of milliseconds.
    g.sample_size(10);
    g.throughput(Throughput::Bytes(u64::from(PEERS) * PER_PEER as u64 * 1420));
    for n in [1usize, 2] {
        g.bench_function(
            format!("encrypt + decrypt 1420 B, {PEERS} peers, {n} threads"),
            |bench| {
                bench.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        std::thread::scope(|scope| {
                            for t in 0..n {
                                let run = &run;
                                scope.spawn(move || {
                                    let (mut enc, mut dec) = (vec![0u8; 2048], vec![0u8; 2048]);
                                    for peer in (t..usize::from(PEERS)).step_by(n) {
                                        run(peer, &mut enc, &mut dec);
                                    }
                                });
                            }
                        });
                    }
                    start.elapsed()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, data_path, lookup, threads);
criterion_main!(benches);
