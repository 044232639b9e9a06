//! `sitelink-flood`: the attacker of `benches/flood.sh`, a UDP flood aimed at one WireGuard
//! endpoint.
//!
//! - `--kind init`: handshake initiations with a valid mac1 for `--public-key`, so they pass
//!   the cheap check of the target, but from keys the target does not know. `--keys` (1024)
//!   distinct strangers are made up front, one initiation each (boringtun's `Tunn`), and sent
//!   round-robin.
//! - `--kind garbage`: random 148-byte datagrams (the size of an initiation; the first byte is
//!   random too), a pool of `--keys` of them.
//!
//! `--sources` UDP sockets are bound to consecutive IPv4 addresses from `--source-base` (the
//! caller assigns them to the interface) and connected to `--target`; every `sendmmsg(2)` call
//! goes out on the next socket. `--rate` paces the total in small batches (0: as fast as
//! possible). SIGINT/SIGTERM stop it early. At the end one line goes to stdout:
//! `sent=N seconds=S pps=R errors=E ...`; `--print-stats` adds a line per second on stderr.
//!
//! Nothing is ever sent but to `--target`, and only targets in 198.18.0.0/15 (the RFC 2544
//! benchmarking range the bench namespaces use) are accepted.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use clap::{Parser, ValueEnum};
use sitelink_config::{PrivateKey, PublicKey};

/// Datagrams per `sendmmsg` call at most.
const MAX_BATCH: usize = 32;
/// With a rate, at least this many batches per second (so a batch spans at most 0.5 ms).
const MIN_BATCHES_PER_S: u64 = 2000;
/// The size of a handshake initiation, and of every garbage datagram.
const INIT_LEN: usize = 148;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Handshake initiations with a valid mac1, from keys the target does not know.
    Init,
    /// Random 148-byte datagrams.
    Garbage,
}

/// UDP flood generator for benches/flood.sh (targets in 198.18.0.0/15 only).
#[derive(Parser)]
#[command(name = "sitelink-flood")]
struct Args {
    /// Where to send (IPv4 address:port inside 198.18.0.0/15).
    #[arg(long)]
    target: SocketAddr,
    /// What to send.
    #[arg(long, value_enum)]
    kind: Kind,
    /// The target's public key (base64); needed for --kind init.
    #[arg(long)]
    public_key: Option<String>,
    /// Number of source sockets (one per source address).
    #[arg(long, default_value_t = 1)]
    sources: u32,
    /// First source address; socket i binds to base + i. Default: the kernel chooses.
    #[arg(long)]
    source_base: Option<Ipv4Addr>,
    /// Total packets per second over all sources; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Distinct datagrams to cycle through (stranger keys for init).
    #[arg(long, default_value_t = 1024)]
    keys: usize,
    /// Also print a line per second on stderr (packets sent in that second, errors).
    #[arg(long)]
    print_stats: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("sitelink-flood: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let target = match args.target {
        SocketAddr::V4(t) if in_bench_range(*t.ip()) => t,
        t => bail!("--target {t}: only IPv4 targets in 198.18.0.0/15 are accepted"),
    };
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number");
    }
    if args.sources == 0 || args.keys == 0 {
        bail!("--sources and --keys must be at least 1");
    }
    let pool = match args.kind {
        Kind::Init => {
            let text = args
                .public_key
                .as_deref()
                .context("--kind init needs --public-key (the target's)")?;
            let key: PublicKey = text
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
            init_pool(&key, args.keys)?
        }
        Kind::Garbage => garbage_pool(args.keys)?,
    };
    let socks = bind_sources(args.source_base, args.sources, target)?;
    install_stop_handler().context("cannot install the SIGINT/SIGTERM handler")?;
    let stats = flood(
        &socks,
        &pool,
        args.rate,
        Duration::from_secs_f64(args.seconds),
        args.print_stats,
    )?;
    let secs = stats.elapsed.as_secs_f64();
    println!(
        "sent={} seconds={:.3} pps={:.0} errors={} kind={} sources={} target={} rate={}",
        stats.sent,
        secs,
        stats.sent as f64 / secs,
        stats.errors,
        match args.kind {
            Kind::Init => "init",
            Kind::Garbage => "garbage",
        },
        socks.len(),
        target,
        args.rate,
    );
    Ok(())
}

fn in_bench_range(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 198 && (o[1] & 0xfe) == 18
}

/// One initiation (valid mac1 for `target`) from each of `n` fresh stranger keys.
fn init_pool(target: &PublicKey, n: usize) -> Result<Vec<Vec<u8>>> {
    let target = x25519::PublicKey::from(*target.as_bytes());
    let mut buf = [0u8; 256];
    (0..n)
        .map(|i| {
            let stranger = PrivateKey::generate();
            let index = u32::try_from(i + 1).context("--keys too large")? & 0x00ff_ffff;
            let mut tunn = Tunn::new(
                x25519::StaticSecret::from(*stranger.as_bytes()),
                target,
                None,
                None,
                index,
                None,
            );
            match tunn.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(p) if p.len() == INIT_LEN => Ok(p.to_vec()),
                TunnResult::WriteToNetwork(p) => bail!("initiation of {} bytes", p.len()),
                TunnResult::Err(e) => bail!("boringtun: {e:?}"),
                _ => bail!("boringtun made no initiation"),
            }
        })
        .collect()
}

fn garbage_pool(n: usize) -> Result<Vec<Vec<u8>>> {
    let mut raw = vec![0u8; n * INIT_LEN];
    getrandom::getrandom(&mut raw).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    Ok(raw.chunks(INIT_LEN).map(<[u8]>::to_vec).collect())
}

/// `n` sockets bound to base, base+1, ... (or kernel-chosen addresses), connected to target.
fn bind_sources(base: Option<Ipv4Addr>, n: u32, target: SocketAddrV4) -> Result<Vec<UdpSocket>> {
    let first = base.map_or(0, u32::from);
    if base.is_some() && first.checked_add(n - 1).is_none() {
        bail!("--source-base + --sources runs past 255.255.255.255");
    }
    (0..n)
        .map(|i| {
            let src = match base {
                Some(_) => Ipv4Addr::from(first + i),
                None => Ipv4Addr::UNSPECIFIED,
            };
            let sock = UdpSocket::bind(SocketAddrV4::new(src, 0))
                .with_context(|| format!("bind {src} (is the address on an interface?)"))?;
            sock.connect(target)
                .with_context(|| format!("connect {src} -> {target}"))?;
            Ok(sock)
        })
        .collect()
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_handler() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is a plain C struct for which all zeroes is valid (no flags, no
        // handler); the fields that matter are set below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // No SA_RESTART: a sendmmsg blocked on a full socket buffer returns EINTR at once.
        sa.sa_flags = 0;
        // SAFETY: sa_mask is a valid sigset_t inside the struct we own. The handler only
        // stores to an atomic, which is async-signal-safe; `sa` outlives the call.
        let rc = unsafe {
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

struct Stats {
    sent: u64,
    errors: u64,
    elapsed: Duration,
}

/// Sends `pool` round-robin over `socks` until `duration` is over or a stop signal arrives.
fn flood(
    socks: &[UdpSocket],
    pool: &[Vec<u8>],
    rate: u64,
    duration: Duration,
    progress: bool,
) -> Result<Stats> {
    // One iovec per pool datagram; the mmsghdrs of a batch point at consecutive ones. `pool`
    // and `iovs` are neither moved nor resized while the pointers are in use.
    let mut iovs: Vec<libc::iovec> = pool
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: mmsghdr is a plain C struct; all zeroes is valid (no name, no control data,
    // null iov with length 0), and msg_iov/msg_iovlen are set before every use.
    let mut msgs: Vec<libc::mmsghdr> = (0..MAX_BATCH)
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    let batch = if rate == 0 {
        MAX_BATCH
    } else {
        (rate / MIN_BATCHES_PER_S).clamp(1, MAX_BATCH as u64) as usize
    };

    let start = Instant::now();
    let end = start + duration;
    let (mut sent, mut errors) = (0u64, 0u64);
    let (mut next_pkt, mut next_sock) = (0usize, 0usize);
    let (mut tick, mut tick_sent, mut tick_errors) = (start + Duration::from_secs(1), 0u64, 0u64);
    while !STOP.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if progress && now >= tick {
            eprintln!(
                "sitelink-flood: {:.0}s: {} packets/s, {} errors",
                (now - start).as_secs_f64(),
                sent - tick_sent,
                errors - tick_errors
            );
            (tick, tick_sent, tick_errors) = (tick + Duration::from_secs(1), sent, errors);
        }
        if rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            if due > now {
                std::thread::sleep((due - now).min(end - now));
                continue;
            }
        }
        for (j, m) in msgs[..batch].iter_mut().enumerate() {
            m.msg_hdr.msg_iov = &mut iovs[(next_pkt + j) % pool.len()];
            m.msg_hdr.msg_iovlen = 1;
        }
        let fd = socks[next_sock].as_raw_fd();
        next_sock = (next_sock + 1) % socks.len();
        // SAFETY: fd is an open UDP socket owned by `socks`; msgs holds `batch` initialised
        // mmsghdrs whose single iovec points into `pool`, all alive for the call. The kernel
        // only reads the buffers and writes msg_len.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), batch as libc::c_uint, 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                // transient: full queues, an ICMP error reported on the connected socket
                Some(
                    libc::EAGAIN
                    | libc::ENOBUFS
                    | libc::ECONNREFUSED
                    | libc::EHOSTUNREACH
                    | libc::ENETUNREACH,
                ) => errors += 1,
                _ => return Err(err).context("sendmmsg"),
            }
            continue;
        }
        let n = n as usize;
        sent += n as u64;
        next_pkt = (next_pkt + n) % pool.len();
    }
    Ok(Stats {
        sent,
        errors,
        elapsed: start.elapsed(),
    })
}
