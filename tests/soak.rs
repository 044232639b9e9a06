//! Soak: sitelinkd on gw_a against wireguard-go on gw_b, a paced TCP stream host_a → host_b
//! for `SITELINK_SOAK_SECONDS` (default 600) through several rekeys (REKEY_AFTER_TIME is
//! 120 s, so 10 minutes see at least 4). Too slow for CI; run it on purpose:
//!
//! ```text
//! cargo build --workspace
//! cargo test -p sitelink-tests --test soak -- --ignored --nocapture
//! ```
//!
//! Asserts: every byte sent arrived intact; the server never waited more than 1 s between
//! reads; both sides' handshake times changed at least once per REKEY_AFTER_TIME; sitelinkd's
//! RSS grew at most 5 MiB from minute 1 to the end; sitelinkd is still running and logged no
//! ERROR or panic. The report (printed; `--nocapture` shows it on success) has a per-second
//! view of the stream around each rekey and each long gap, with load and CPU pressure, so a
//! stall can be told apart from the machine being busy.
//!
//! Two tests, because the initiator is the side whose REKEY_AFTER_TIME timer fires: with
//! sitelink initiating, sitelinkd sends every rekey initiation and switches keys as
//! initiator; with wireguard-go initiating, sitelinkd answers them and switches as responder
//! (waiting for the first data packet on the new keys). Different code paths; they run in
//! parallel, so both cost the same 10 minutes.
//!
//! Owns: the soak topology's wireguard-go side, the instrumented stream and the sampling.
//! Doesn't own: namespaces, processes and cleanup (the harness's guards, dropped on panic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sitelink_tests::{
    ctl, keypair, pattern, pipe_ok, run, site_a_config, unique, wg, wireguard_go, Netns, Process,
    Sites, WgGo,
};

/// How long the stream runs unless `SITELINK_SOAK_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 600;
/// WireGuard's REKEY_AFTER_TIME: the initiator starts a new handshake this long after the last.
const REKEY_AFTER_TIME: u64 = 120;
/// The longest the stream server may wait between two reads.
const MAX_STALL: Duration = Duration::from_secs(1);
/// The most sitelinkd's RSS may grow from minute 1 to the end.
const MAX_RSS_GROWTH_KIB: u64 = 5 * 1024;
/// Process samples (RSS, threads, fds, CPU) every this many seconds.
const PROCESS_SAMPLE_EVERY: u64 = 10;
/// Pacing as in the harness's `tcp_stream_during`: 16 KiB per 3 ms, about 40 Mbit/s, so a
/// stall shows as a gap at the server rather than as a full buffer.
const CHUNK: usize = 16 * 1024;
const PACE: Duration = Duration::from_millis(3);
const PATTERN_LEN: usize = 4 << 20;
const PATTERN_SEED: u64 = 11;
/// The peer's name in sitelinkd's config.
const PEER: &str = "wg-go";

#[test]
#[ignore = "10-minute soak: cargo test -p sitelink-tests --test soak -- --ignored"]
fn soak_sitelink_initiates_to_wireguard_go() {
    soak(Initiator::Sitelink);
}

#[test]
#[ignore = "10-minute soak: cargo test -p sitelink-tests --test soak -- --ignored"]
fn soak_wireguard_go_initiates_to_sitelink() {
    soak(Initiator::WireguardGo);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Initiator {
    Sitelink,
    WireguardGo,
}

fn soak(initiator: Initiator) {
    let seconds = soak_seconds();
    let duration = Duration::from_secs(seconds);
    let wall = Instant::now();
    let sites = Sites::new();
    let mut tunnel = Tunnel::start(&sites, initiator);

    let (first, target) = match initiator {
        Initiator::Sitelink => (&sites.host_a, "198.19.2.10"),
        Initiator::WireguardGo => (&sites.host_b, "198.19.1.10"),
    };
    assert!(
        first.ping_until(target, Duration::from_secs(20)),
        "no ping through the tunnel\n--- sitelinkd:\n{}",
        tunnel.sitelinkd.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tunnel.sitelink_handshake().is_none() || tunnel.wg_handshake().is_none() {
        assert!(
            Instant::now() < deadline,
            "handshake time not set on both sides after a ping"
        );
        thread::sleep(Duration::from_millis(100));
    }

    let pid = tunnel.sitelinkd.child.id();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "sitelinkd",
        "pid {pid} is not sitelinkd itself (did `ip netns exec` fork?)"
    );
    let wg_pid = tunnel.wg.process.child.id();

    let t0 = Instant::now();
    let t0_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let server_addr = SocketAddr::from(([198, 19, 2, 10], 7100));
    let stream = Stream::start(&sites.host_a, &sites.host_b, server_addr, duration, t0);

    // Sample once a second until the stream has ended (or is hopelessly late).
    let mut samples = Samples::new(t0, t0_unix);
    let give_up = duration + Duration::from_secs(120);
    let mut tick = 0u64;
    while !stream.finished() {
        let elapsed = t0.elapsed();
        if elapsed > give_up {
            break;
        }
        samples.second(&tunnel, tick);
        if tick.is_multiple_of(PROCESS_SAMPLE_EVERY) {
            samples.process(pid, wg_pid, tick);
        }
        if let Ok(Some(status)) = tunnel.sitelinkd.child.try_wait() {
            panic!(
                "sitelinkd exited at t={}s ({status}):\n{}",
                elapsed.as_secs(),
                tunnel.sitelinkd.log_text()
            );
        }
        tick += 1;
        let next = t0 + Duration::from_secs(tick);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let stream_finished = stream.finished();
    let report = stream.join(give_up);
    samples.second(&tunnel, tick);
    samples.process(pid, wg_pid, tick);
    let still_running = matches!(tunnel.sitelinkd.child.try_wait(), Ok(None));
    let final_status = ctl(&sites.run_dir, &tunnel.a_if, &["show", "--json"]);
    let retrans = tcp_retransmits(&sites.host_a);
    let log = tunnel.sitelinkd.log_text();

    let text = summary(
        initiator,
        seconds,
        wall.elapsed(),
        &report,
        &samples,
        retrans,
        &log,
        &String::from_utf8_lossy(&final_status.stdout),
    );
    eprintln!("{text}");

    let mut failures = Vec::new();
    if !stream_finished {
        failures.push(format!(
            "stream not finished {}s after it started",
            give_up.as_secs()
        ));
    }
    if let Some(e) = &report.client.error {
        failures.push(format!("client: {e}"));
    }
    if let Some(e) = &report.server.error {
        failures.push(format!("server: {e}"));
    }
    let (sent, received) = (report.client.sent, report.server.received);
    let verified = if report.server.intact { received } else { 0 };
    if verified != sent || report.client.acked != Some(received) {
        failures.push(format!(
            "bytes: sent {sent}, received {received}, verified {verified}, server's verdict \
             {:?}, first mismatch at byte {:?}",
            report.client.acked, report.server.first_bad
        ));
    }
    if report.server.max_gap > MAX_STALL {
        failures.push(format!(
            "stall: {} ({})",
            ms(report.server.max_gap),
            samples.when(
                &report.client,
                report.server.max_gap_end,
                report.server.max_gap
            )
        ));
    }
    let required = seconds.saturating_sub(10) / REKEY_AFTER_TIME;
    for (side, times) in [
        ("sitelinkd", &samples.sitelink_hs),
        ("wireguard-go", &samples.wg_hs),
    ] {
        let changes = times.len().saturating_sub(1);
        if changes < required as usize {
            failures.push(format!(
                "{side}: handshake time changed {changes} times in {seconds}s, expected ≥ \
                 {required}"
            ));
        }
    }
    if let Some((base, last)) = samples.rss_growth() {
        if last.rss_kib > base.rss_kib + MAX_RSS_GROWTH_KIB {
            failures.push(format!(
                "sitelinkd RSS grew {} KiB (t={}s {} KiB → t={}s {} KiB), limit {} KiB",
                last.rss_kib - base.rss_kib,
                base.t,
                base.rss_kib,
                last.t,
                last.rss_kib,
                MAX_RSS_GROWTH_KIB
            ));
        }
    } else {
        failures.push("no RSS samples".into());
    }
    if !still_running {
        failures.push(format!("sitelinkd is not running at the end:\n{log}"));
    }
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .collect();
    if !bad.is_empty() {
        failures.push(format!(
            "sitelinkd logged {} ERROR/panic lines:\n{}",
            bad.len(),
            bad.iter().take(20).copied().collect::<Vec<_>>().join("\n")
        ));
    }
    assert!(
        failures.is_empty(),
        "soak ({initiator:?} initiates) failed:\n- {}\n(report above)",
        failures.join("\n- ")
    );
    tunnel.sitelinkd.terminate();
}

fn soak_seconds() -> u64 {
    match std::env::var("SITELINK_SOAK_SECONDS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("SITELINK_SOAK_SECONDS={s:?}: {e} (want whole seconds)")),
        Err(_) => DEFAULT_SECONDS,
    }
}

/// sitelinkd on gw_a (peer "wg-go") and wireguard-go on gw_b, either side initiating.
struct Tunnel<'a> {
    sites: &'a Sites,
    // Field order is drop order: wireguard-go and its socket go first, then sitelinkd.
    wg: WgGo,
    sitelinkd: Process,
    a_if: String,
    b_if: String,
    a_pub: String,
}

impl<'a> Tunnel<'a> {
    fn start(sites: &'a Sites, initiator: Initiator) -> Self {
        let sitelink_initiates = initiator == Initiator::Sitelink;
        let (a_priv, a_pub) = keypair();
        let b_priv = String::from_utf8(run(Command::new("wg").arg("genkey")).stdout).unwrap();
        let b_pub = pipe_ok(Command::new("wg").arg("pubkey"), &b_priv);
        let a_key = sites.dir.write("a.key", &format!("{a_priv}\n"), 0o600);
        let b_key = sites.dir.write("b.key", &b_priv, 0o600);
        let (a_if, b_if) = (unique("sls"), unique("wgs"));
        let toml = site_a_config(&a_if, &a_key, PEER, &b_pub, sitelink_initiates);
        let a_path = sites.dir.write(&format!("{a_if}.toml"), &toml, 0o600);
        let mut sitelinkd = sites.sitelinkd(&sites.gw_a, &a_path);
        sites.wait_ready(&mut sitelinkd, &a_if);
        let wg = wireguard_go(
            sites,
            &sites.gw_b,
            &b_if,
            &b_key,
            &a_pub,
            None,
            (!sitelink_initiates).then_some("198.18.0.1:51820"),
            "198.18.100.1/32,198.19.1.0/24,fd18:100::1/128,fd19:1::/64",
        );
        Self {
            sites,
            wg,
            sitelinkd,
            a_if,
            b_if,
            a_pub,
        }
    }

    /// sitelinkd's `latest_handshake` for the peer (None if unset or `show` failed).
    fn sitelink_handshake(&self) -> Option<u64> {
        let out = ctl(&self.sites.run_dir, &self.a_if, &["show", "--json"]);
        if !out.status.success() {
            return None;
        }
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == PEER)?["latest_handshake"]
            .as_u64()
    }

    /// wireguard-go's latest handshake with sitelinkd, from `wg show IF latest-handshakes`.
    fn wg_handshake(&self) -> Option<u64> {
        let out = wg(&self.sites.gw_b, &["show", &self.b_if, "latest-handshakes"]);
        let text = String::from_utf8(out.stdout).ok()?;
        let line = text.lines().find(|l| l.starts_with(&self.a_pub))?;
        let t: u64 = line.split('\t').nth(1)?.trim().parse().ok()?;
        (t != 0).then_some(t)
    }
}

/// A paced pattern stream with per-second records on both ends, like the harness's
/// `tcp_stream_during` but running in the background and returning a timeline. Errors end
/// the stream and are reported, not panicked, so the timeline survives them.
struct Stream {
    client: thread::JoinHandle<ClientReport>,
    server: thread::JoinHandle<ServerReport>,
}

struct StreamReport {
    client: ClientReport,
    server: ServerReport,
}

/// One second of the stream, counted from `t0`.
#[derive(Clone, Copy, Default)]
struct Second {
    /// Server: bytes read. Client: bytes written.
    bytes: usize,
    /// Server: the longest wait between reads that ended in this second. Client: the longest
    /// `write` (blocked on a full send buffer).
    max_wait: Duration,
    /// Client only: the most a 3 ms sleep overslept (scheduling delay of the test itself).
    max_late: Duration,
}

#[derive(Default)]
struct ServerReport {
    received: usize,
    intact: bool,
    first_bad: Option<usize>,
    max_gap: Duration,
    /// When (since t0) the longest gap ended.
    max_gap_end: Duration,
    seconds: Vec<Second>,
    error: Option<String>,
}

#[derive(Default)]
struct ClientReport {
    sent: usize,
    /// The server's count of bytes received, sent back after our shutdown.
    acked: Option<usize>,
    max_write: Duration,
    max_late: Duration,
    seconds: Vec<Second>,
    error: Option<String>,
}

fn slot(seconds: &mut Vec<Second>, since_t0: Duration) -> &mut Second {
    let i = since_t0.as_secs() as usize;
    if seconds.len() <= i {
        seconds.resize(i + 1, Second::default());
    }
    &mut seconds[i]
}

impl Stream {
    fn start(
        client_ns: &Netns,
        server_ns: &Netns,
        addr: SocketAddr,
        duration: Duration,
        t0: Instant,
    ) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = server_ns.within(move || {
            let listener = TcpListener::bind(addr).expect("bind stream server");
            ready_tx.send(()).unwrap();
            serve(listener, t0)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stream server ready");
        let client = client_ns.within(move || send(addr, duration, t0));
        Self { client, server }
    }

    fn finished(&self) -> bool {
        self.client.is_finished() && self.server.is_finished()
    }

    /// Waits up to `within` for both ends (a hung end is reported, not waited for forever).
    fn join(self, within: Duration) -> StreamReport {
        let deadline = Instant::now() + within;
        while !self.finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        if !self.finished() {
            let hung = |e: &str| Some(format!("{e} did not finish"));
            return StreamReport {
                client: ClientReport {
                    error: hung("client"),
                    ..Default::default()
                },
                server: ServerReport {
                    error: hung("server"),
                    ..Default::default()
                },
            };
        }
        StreamReport {
            client: self.client.join().expect("stream client panicked"),
            server: self.server.join().expect("stream server panicked"),
        }
    }
}

fn serve(listener: TcpListener, t0: Instant) -> ServerReport {
    let mut r = ServerReport {
        intact: true,
        ..Default::default()
    };
    let (mut conn, _) = match listener.accept() {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(format!("accept: {e}"));
            return r;
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let expected = pattern(PATTERN_LEN, PATTERN_SEED);
    let mut buf = vec![0u8; 1 << 16];
    let mut last = Instant::now();
    loop {
        let n = match conn.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                r.error = Some(format!(
                    "read at t={:.1}s after {} bytes: {e}",
                    t0.elapsed().as_secs_f64(),
                    r.received
                ));
                return r;
            }
        };
        let now = Instant::now();
        let gap = now - last;
        last = now;
        if gap > r.max_gap {
            r.max_gap = gap;
            r.max_gap_end = now - t0;
        }
        let second = slot(&mut r.seconds, now - t0);
        second.max_wait = second.max_wait.max(gap);
        second.bytes += n;
        if n == 0 {
            break;
        }
        if r.intact && !matches_pattern(&expected, r.received, &buf[..n]) {
            r.intact = false;
            r.first_bad = Some(r.received);
        }
        r.received += n;
    }
    if let Err(e) = conn.write_all(&(r.received as u64).to_be_bytes()) {
        r.error = Some(format!("verdict: {e}"));
    }
    r
}

/// Whether `data`, found at stream offset `offset`, is the repeating `expected` pattern.
fn matches_pattern(expected: &[u8], offset: usize, data: &[u8]) -> bool {
    let mut at = offset % expected.len();
    let mut rest = data;
    while !rest.is_empty() {
        let take = rest.len().min(expected.len() - at);
        if rest[..take] != expected[at..at + take] {
            return false;
        }
        rest = &rest[take..];
        at = 0;
    }
    true
}

fn send(addr: SocketAddr, duration: Duration, t0: Instant) -> ClientReport {
    let mut r = ClientReport::default();
    let data = pattern(PATTERN_LEN, PATTERN_SEED);
    let mut conn = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(format!("connect: {e}"));
            return r;
        }
    };
    conn.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < duration {
        let at = r.sent % data.len();
        let end = (at + CHUNK).min(data.len());
        let before = Instant::now();
        if let Err(e) = conn.write_all(&data[at..end]) {
            r.error = Some(format!(
                "write at t={:.1}s after {} bytes: {e}",
                t0.elapsed().as_secs_f64(),
                r.sent
            ));
            return r;
        }
        let after = Instant::now();
        r.sent += end - at;
        thread::sleep(PACE);
        let late = after.elapsed().saturating_sub(PACE);
        let (write, second) = (after - before, slot(&mut r.seconds, after - t0));
        second.bytes += end - at;
        second.max_wait = second.max_wait.max(write);
        second.max_late = second.max_late.max(late);
        r.max_write = r.max_write.max(write);
        r.max_late = r.max_late.max(late);
    }
    let _ = conn.shutdown(Shutdown::Write);
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reply = [0u8; 8];
    match conn.read_exact(&mut reply) {
        Ok(()) => r.acked = Some(u64::from_be_bytes(reply) as usize),
        Err(e) => r.error = Some(format!("server's verdict: {e}")),
    }
    r
}

/// What the main thread saw once a second (load, handshakes) and every
/// [`PROCESS_SAMPLE_EVERY`] seconds (the daemons' memory and CPU).
struct Samples {
    t0: Instant,
    t0_unix: f64,
    /// (load average 1 min, CPU pressure "some" avg10 %) per second since t0.
    load: Vec<Option<(f64, f64)>>,
    /// Distinct handshake times (unix seconds) in the order seen, with when (s since t0).
    sitelink_hs: Vec<(u64, u64)>,
    wg_hs: Vec<(u64, u64)>,
    /// Polls where sitelinkctl show failed, and the slowest show.
    show_failures: u32,
    slowest_show: Duration,
    process: Vec<ProcSample>,
}

#[derive(Clone, Copy)]
struct ProcSample {
    t: u64,
    rss_kib: u64,
    threads: u64,
    fds: usize,
    /// User + system CPU seconds so far.
    cpu: f64,
    wg_rss_kib: u64,
}

impl Samples {
    fn new(t0: Instant, t0_unix: f64) -> Self {
        Self {
            t0,
            t0_unix,
            load: Vec::new(),
            sitelink_hs: Vec::new(),
            wg_hs: Vec::new(),
            show_failures: 0,
            slowest_show: Duration::ZERO,
            process: Vec::new(),
        }
    }

    fn second(&mut self, tunnel: &Tunnel, tick: u64) {
        let i = tick as usize;
        if self.load.len() <= i {
            self.load.resize(i + 1, None);
        }
        self.load[i] = load_and_pressure();
        let asked = Instant::now();
        let ours = tunnel.sitelink_handshake();
        self.slowest_show = self.slowest_show.max(asked.elapsed());
        let seen = self.t0.elapsed().as_secs();
        match ours {
            Some(t) if self.sitelink_hs.last().map(|l| l.0) != Some(t) => {
                self.sitelink_hs.push((t, seen))
            }
            Some(_) => {}
            None => self.show_failures += 1,
        }
        if let Some(t) = tunnel.wg_handshake() {
            if self.wg_hs.last().map(|l| l.0) != Some(t) {
                self.wg_hs.push((t, seen));
            }
        }
    }

    fn process(&mut self, pid: u32, wg_pid: u32, tick: u64) {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |text: &str, key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let wg_status = fs::read_to_string(format!("/proc/{wg_pid}/status")).unwrap_or_default();
        self.process.push(ProcSample {
            t: tick,
            rss_kib: field(&status, "VmRSS:"),
            threads: field(&status, "Threads:"),
            fds: fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0),
            cpu: cpu_seconds(pid),
            wg_rss_kib: field(&wg_status, "VmRSS:"),
        });
    }

    /// The first sample at or after minute 1 (or the first, for short runs) and the last.
    fn rss_growth(&self) -> Option<(ProcSample, ProcSample)> {
        let base = self
            .process
            .iter()
            .find(|s| s.t >= 60)
            .or(self.process.first())?;
        Some((*base, *self.process.last()?))
    }

    /// Handshake times since t0 (seconds; negative: before the stream started).
    fn rekeys(&self, times: &[(u64, u64)]) -> Vec<f64> {
        times
            .iter()
            .map(|&(t, _)| t as f64 - self.t0_unix)
            .collect()
    }

    /// "ended at t=…, nearest handshakes …, load …" for a gap of `gap` ending at `end`.
    /// `client` says whether the sending thread itself was descheduled around then (load),
    /// and the wall-clock time lets parallel runs be compared (a shared cause stalls both).
    fn when(&self, client: &ClientReport, end: Duration, gap: Duration) -> String {
        let (end, start) = (end.as_secs_f64(), end.as_secs_f64() - gap.as_secs_f64());
        let first = (start as usize).saturating_sub(1);
        let overslept = client
            .seconds
            .iter()
            .skip(first)
            .take(end as usize + 1 - first)
            .map(|x| x.max_late)
            .max()
            .unwrap_or_default();
        let nearest = |times: &[(u64, u64)]| {
            self.rekeys(times)
                .into_iter()
                .min_by(|a, b| (a - start).abs().total_cmp(&(b - start).abs()))
                .map(|t| format!("{t:.0}s ({:+.1}s from the gap's start)", start - t))
                .unwrap_or_else(|| "none".into())
        };
        let load = self
            .load
            .get(end as usize)
            .copied()
            .flatten()
            .map(|(l, p)| format!("load {l:.2}, cpu pressure {p:.0}%"))
            .unwrap_or_else(|| "load not sampled".into());
        format!(
            "from t={start:.2}s to t={end:.2}s ({} UTC); nearest handshake: sitelinkd {}, \
             wireguard-go {}; {load}; the sender's 3 ms sleep overslept up to {} around then",
            clock(self.t0_unix + start),
            nearest(&self.sitelink_hs),
            nearest(&self.wg_hs),
            ms(overslept)
        )
    }
}

/// (1-minute load average, CPU pressure "some" avg10) of the machine.
fn load_and_pressure() -> Option<(f64, f64)> {
    let load = fs::read_to_string("/proc/loadavg").ok()?;
    let load = load.split_whitespace().next()?.parse().ok()?;
    let psi = fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    let some = psi
        .lines()
        .find(|l| l.starts_with("some"))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Some((load, some))
}

/// utime + stime of `pid` in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name, which may contain spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// TcpRetransSegs in `ns` (the sender's retransmissions).
fn tcp_retransmits(ns: &Netns) -> Option<u64> {
    let out = ns.cmd("cat").arg("/proc/net/snmp").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// One line per minute: the longest gap and when, seconds with gaps over 200 ms, the
/// sender's worst oversleep, handshakes, mean load — the stream's gaps over time at a glance.
fn minutes(o: &mut String, r: &StreamReport, s: &Samples) {
    let _ = writeln!(
        o,
        "\nper minute (longest gap between server reads; seconds with a gap > 200 ms; sender \
         oversleep; handshakes; load):"
    );
    let hs: Vec<f64> = s.rekeys(&s.sitelink_hs);
    for (m, rx) in r.server.seconds.chunks(60).enumerate() {
        let (worst_at, worst) = rx
            .iter()
            .enumerate()
            .map(|(i, x)| (m * 60 + i, x.max_wait))
            .max_by_key(|w| w.1)
            .unwrap_or_default();
        let over = rx
            .iter()
            .filter(|x| x.max_wait > Duration::from_millis(200))
            .count();
        let late = r
            .client
            .seconds
            .iter()
            .skip(m * 60)
            .take(60)
            .map(|x| x.max_late)
            .max()
            .unwrap_or_default();
        let range = (m * 60) as f64..((m + 1) * 60) as f64;
        let rekeys: Vec<String> = hs
            .iter()
            .filter(|t| range.contains(t))
            .map(|t| format!("{t:.0}s"))
            .collect();
        let loads: Vec<(f64, f64)> = s
            .load
            .iter()
            .skip(m * 60)
            .take(60)
            .filter_map(|x| *x)
            .collect();
        let n = loads.len().max(1) as f64;
        let _ = writeln!(
            o,
            "  {:3}-{:3}s  max gap {:>7} at {worst_at:3}s  >200ms: {over:2}s  oversleep {:>6}  \
             handshake {:5}  load {:5.2} psi {:3.0}%",
            m * 60,
            m * 60 + 59,
            ms(worst),
            ms(late),
            rekeys.join(","),
            loads.iter().map(|l| l.0).sum::<f64>() / n,
            loads.iter().map(|l| l.1).sum::<f64>() / n
        );
    }
}

/// HH:MM:SS.mmm of a unix time, UTC.
fn clock(unix: f64) -> String {
    let ms = (unix * 1000.0) as u64;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn mb(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[allow(clippy::too_many_arguments)]
fn summary(
    initiator: Initiator,
    seconds: u64,
    wall: Duration,
    r: &StreamReport,
    s: &Samples,
    retransmits: Option<u64>,
    log: &str,
    final_status: &str,
) -> String {
    let mut o = String::new();
    let (c, sv) = (&r.client, &r.server);
    let _ = writeln!(
        o,
        "==== soak, {initiator:?} initiates: {seconds}s stream from {} UTC, {:.0}s wall",
        clock(s.t0_unix),
        wall.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "bytes: sent {} ({}), received {}, intact {}, server's verdict {:?}; TCP retransmits \
         (host_a) {retransmits:?}",
        c.sent,
        mb(c.sent),
        sv.received,
        sv.intact,
        c.acked
    );
    let _ = writeln!(
        o,
        "max gap between server reads: {} — {}",
        ms(sv.max_gap),
        s.when(c, sv.max_gap_end, sv.max_gap)
    );
    let _ = writeln!(
        o,
        "client: longest write {} (full send buffer), longest oversleep {} (test thread not \
         scheduled)",
        ms(c.max_write),
        ms(c.max_late)
    );
    for (side, times) in [("sitelinkd", &s.sitelink_hs), ("wireguard-go", &s.wg_hs)] {
        let rel = s.rekeys(times);
        let intervals: Vec<String> = rel
            .windows(2)
            .map(|w| format!("{:.0}", w[1] - w[0]))
            .collect();
        let _ = writeln!(
            o,
            "{side}: {} handshake-time changes; handshakes at t = [{}] s (intervals [{}] s)",
            times.len().saturating_sub(1),
            rel.iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            intervals.join(", ")
        );
    }
    let _ = writeln!(
        o,
        "sitelinkctl show: {} failed polls, slowest {}",
        s.show_failures,
        ms(s.slowest_show)
    );

    let _ = writeln!(
        o,
        "\nprocess samples (sitelinkd RSS/threads/fds/CPU%, wireguard-go RSS; load, cpu pressure):"
    );
    let mut prev: Option<&ProcSample> = None;
    for p in &s.process {
        let cpu = prev
            .map(|q| {
                let dt = (p.t - q.t).max(1) as f64;
                format!("{:5.1}%", 100.0 * (p.cpu - q.cpu) / dt)
            })
            .unwrap_or_else(|| "    - ".into());
        let load = s
            .load
            .get(p.t as usize)
            .copied()
            .flatten()
            .map(|(l, ps)| format!("load {l:5.2} psi {ps:4.0}%"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  t={:4}s rss {:6} KiB thr {:2} fds {:3} cpu {cpu} | wg-go rss {:6} KiB | {load}",
            p.t, p.rss_kib, p.threads, p.fds, p.wg_rss_kib
        );
        prev = Some(p);
    }
    if let Some((base, last)) = s.rss_growth() {
        let _ = writeln!(
            o,
            "sitelinkd RSS t={}s → t={}s: {} → {} KiB ({:+} KiB; limit +{} KiB)",
            base.t,
            last.t,
            base.rss_kib,
            last.rss_kib,
            last.rss_kib as i64 - base.rss_kib as i64,
            MAX_RSS_GROWTH_KIB
        );
    }

    minutes(&mut o, r, s);

    // Per-second rows around every rekey and the 5 worst gaps.
    let wg_rekeys = s.rekeys(&s.wg_hs);
    let mut focus: Vec<(i64, String)> = Vec::new();
    for t in s.rekeys(&s.sitelink_hs).into_iter().skip(1) {
        let theirs = wg_rekeys
            .iter()
            .skip(1)
            .min_by(|a, b| (*a - t).abs().total_cmp(&(*b - t).abs()))
            .map(|w| format!("{w:.0}s"))
            .unwrap_or_else(|| "-".into());
        focus.push((
            t as i64,
            format!("rekey: handshake at {t:.0}s (sitelinkd), {theirs} (wireguard-go)"),
        ));
    }
    let mut worst: Vec<(usize, Duration)> = sv
        .seconds
        .iter()
        .enumerate()
        .map(|(i, x)| (i, x.max_wait))
        .collect();
    worst.sort_by_key(|w| std::cmp::Reverse(w.1));
    let mut chosen: Vec<usize> = Vec::new();
    for (sec, gap) in worst {
        if chosen.len() == 5 {
            break;
        }
        if chosen.iter().any(|c| c.abs_diff(sec) <= 2) {
            continue;
        }
        chosen.push(sec);
        focus.push((
            sec as i64,
            format!("gap of {} ending in second {sec}", ms(gap)),
        ));
    }
    focus.sort();
    let _ = writeln!(
        o,
        "\nper second (rx: server bytes, longest gap; tx: client bytes, longest write, oversleep):"
    );
    let mut printed = std::collections::BTreeSet::new();
    for (at, why) in &focus {
        let _ = writeln!(o, "  -- {why}");
        for sec in (at - 2).max(0)..=at + 2 {
            let sec = sec as usize;
            let (Some(rx), tx) = (sv.seconds.get(sec), c.seconds.get(sec).copied()) else {
                continue;
            };
            let tx = tx.unwrap_or_default();
            let load = s
                .load
                .get(sec)
                .copied()
                .flatten()
                .map(|(l, p)| format!("load {l:5.2} psi {p:4.0}%"))
                .unwrap_or_default();
            let mark = if printed.insert(sec) { " " } else { "·" };
            let _ = writeln!(
                o,
                " {mark}t={sec:4}s rx {:>8} gap {:>7} | tx {:>8} write {:>7} late {:>6} | {load}",
                mb(rx.bytes),
                ms(rx.max_wait),
                mb(tx.bytes),
                ms(tx.max_wait),
                ms(tx.max_late)
            );
        }
    }

    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    let _ = writeln!(
        o,
        "\nsitelinkd log: {} lines, {} WARN{}",
        log.lines().count(),
        warns.len(),
        if warns.is_empty() { "" } else { ", first:" }
    );
    for w in warns.iter().take(5) {
        let _ = writeln!(o, "  {w}");
    }
    let compact = serde_json::from_str::<serde_json::Value>(final_status)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| final_status.trim().to_string());
    let _ = writeln!(o, "final show --json: {compact}");
    o
}
