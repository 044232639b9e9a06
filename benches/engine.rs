//! Engine micro-benchmarks: encrypt and decrypt one MTU-sized packet through a pair of
//! engines with an established session, and the routing table's longest-prefix lookups at
//! 10, 10,000 and 100,000 prefixes: the routing table (a `prefix-trie` tree bitmap) against the
//! former linear table. These measure the engine's per-packet cost without any I/O;
//! `side-by-side.sh` and `scale.sh` measure the whole path.
//!
//! Run: `cargo bench -p sitelink-benches`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sitelink_benches::LinearTable;
use sitelink_config::{Cidr, PrivateKey};
use sitelink_engine::{Engine, PeerSpec, Received, RoutingTable};

fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[198, 19, 1, 5]);
    p[16..20].copy_from_slice(&[198, 19, 2, 5]);
    p
}

/// Two engines with a completed handshake.
fn pair() -> (Engine, Engine, SocketAddr, SocketAddr) {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let a_addr: SocketAddr = "198.18.0.1:51820".parse().expect("addr");
    let b_addr: SocketAddr = "198.18.0.2:51820".parse().expect("addr");
    let mut a = Engine::new(Some(&ka), Instant::now(), SystemTime::now());
    let mut b = Engine::new(Some(&kb), Instant::now(), SystemTime::now());
    let spec = |name: &str, key: &PrivateKey, ep, ips: &str| PeerSpec {
        name: name.into(),
        public_key: key.public_key(),
        preshared_key: None,
        endpoint: Some(ep),
        allowed_ips: vec![ips.parse().expect("cidr")],
        persistent_keepalive: None,
    };
    a.add_peer(spec("b", &kb, b_addr, "198.19.2.0/24"))
        .expect("peer");
    b.add_peer(spec("a", &ka, a_addr, "198.19.1.0/24"))
        .expect("peer");
    let mut buf = vec![0u8; 65536];
    let mut reply = vec![0u8; 65536];
    let init = a
        .handle_tunnel_packet(Instant::now(), &packet(100), &mut buf)
        .expect("initiation")
        .payload
        .to_vec();
    let response = match b.handle_datagram(Instant::now(), a_addr, None, &init, &mut reply) {
        Received::Network(t) => t.payload.to_vec(),
        other => panic!("expected a handshake response, got {other:?}"),
    };
    let _ = a.handle_datagram(Instant::now(), b_addr, None, &response, &mut buf);
    while let Some(t) = a.poll_transmit(&mut buf) {
        let d = t.payload.to_vec();
        let _ = b.handle_datagram(Instant::now(), a_addr, None, &d, &mut reply);
    }
    (a, b, a_addr, b_addr)
}

fn data_path(c: &mut Criterion) {
    let (mut a, mut b, a_addr, _) = pair();
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

criterion_group!(benches, data_path, lookup);
criterion_main!(benches);
