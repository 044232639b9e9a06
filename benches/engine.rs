//! Engine micro-benchmarks: encrypt and decrypt one MTU-sized packet through a pair of
//! engines with an established session, and longest-prefix lookups. These measure the
//! engine's per-packet cost without any I/O; `side-by-side.sh` measures the whole path.
//!
//! Run: `cargo bench -p sitelink-benches`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sitelink_config::{Cidr, PrivateKey};
use sitelink_engine::allowed_ips::AllowedIps;
use sitelink_engine::{Engine, PeerSpec, Received};

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
    let mut a = Engine::new(&ka, Instant::now(), SystemTime::now());
    let mut b = Engine::new(&kb, Instant::now(), SystemTime::now());
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
        .handle_tunnel_packet(&packet(100), &mut buf)
        .expect("initiation")
        .payload
        .to_vec();
    let response = match b.handle_datagram(a_addr, &init, &mut reply) {
        Received::Network(t) => t.payload.to_vec(),
        other => panic!("expected a handshake response, got {other:?}"),
    };
    let _ = a.handle_datagram(b_addr, &response, &mut buf);
    while let Some(t) = a.poll_transmit(&mut buf) {
        let d = t.payload.to_vec();
        let _ = b.handle_datagram(a_addr, &d, &mut reply);
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
                a.handle_tunnel_packet(black_box(&p), &mut enc)
                    .map(|t| t.payload.len()),
            )
        })
    });
    g.bench_function("encrypt + decrypt 1420 B", |bench| {
        bench.iter(|| {
            let len = a
                .handle_tunnel_packet(&p, &mut enc)
                .map(|t| t.payload.len())
                .unwrap_or(0);
            match b.handle_datagram(a_addr, &enc[..len], &mut dec) {
                Received::Tunnel(out) => black_box(out.len()),
                _ => 0,
            }
        })
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let mut table = AllowedIps::default();
    for i in 0..100u32 {
        let cidr: Cidr = format!("10.{}.{}.0/24", i / 256, i % 256)
            .parse()
            .expect("cidr");
        table.insert(cidr, i);
    }
    let ip = "10.0.99.7".parse().expect("ip");
    c.bench_function("allowed-ips lookup, 100 prefixes", |bench| {
        bench.iter(|| table.lookup(black_box(ip)))
    });
}

criterion_group!(benches, data_path, lookup);
criterion_main!(benches);
