//! Prometheus metrics (`[interface] metrics-listen`): `GET /metrics` over HTTP/1.1 on a TCP
//! address or a Unix socket, in the text exposition format 0.0.4.
//!
//! Owns: the listener, a minimal HTTP exchange (one request per connection, bounded in size,
//! time and number of clients at once) and the exposition text. Doesn't own: the numbers
//! (the engine's peers and counters, the handshake queue's counters), which are copied out
//! under the engine lock and formatted after it is released, so a scrape of 10,000 peers
//! never holds up the packet threads for the formatting.
//!
//! Never any key material: peers are labelled by name and public key only.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sitelink_config::control::HandshakeCounters;
use sitelink_config::{MetricsListen, PublicKey};
use sitelink_engine::health::{Failures, LinkState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Mutex, Semaphore};

use crate::access::Access;
use crate::state::State;

/// Largest request head read (Prometheus sends a few hundred bytes).
const MAX_REQUEST: usize = 8 * 1024;
/// A client has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 16;
/// The content type of the text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds `at` (a Unix socket like the control socket: mode 0660, the control group's). Errors
/// name the address and what to do.
pub fn bind(at: &MetricsListen, access: &Access) -> Result<Listener> {
    match at {
        MetricsListen::Tcp(addr) => {
            let std = std::net::TcpListener::bind(addr).with_context(|| {
                format!(
                    "metrics-listen {addr}: cannot listen (is another program using the port, \
                     or is the address not on this host?)"
                )
            })?;
            std.set_nonblocking(true)
                .context("metrics-listen: cannot make the socket non-blocking")?;
            Ok(Listener::Tcp(TcpListener::from_std(std).with_context(
                || format!("metrics-listen {addr}: cannot register the socket"),
            )?))
        }
        MetricsListen::Unix(path) => Ok(Listener::Unix(
            crate::control::bind(path, 0o750, access)
                .with_context(|| format!("metrics-listen {}", path.display()))?,
        )),
    }
}

/// Serves scrapes forever.
pub async fn serve(listener: Listener, state: Arc<Mutex<State>>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let accepted: std::io::Result<Box<dyn Stream>> = match &listener {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn Stream>),
            Listener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn Stream>),
        };
        match accepted {
            Ok(stream) => {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    if let Err(e) = exchange(stream, &state).await {
                        tracing::debug!(error = %e, "metrics client");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One request, one response, then the connection is closed.
async fn exchange(mut stream: Box<dyn Stream>, state: &Mutex<State>) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => {
            let body = "request not complete within 5 s\n";
            return respond(&mut stream, "408 Request Timeout", body, false).await;
        }
    };
    let Some(head) = head else {
        let body = format!("request head over {MAX_REQUEST} bytes\n");
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            &body,
            false,
        )
        .await;
    };
    let (method, path) = request_line(&head);
    let head_only = method == "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = {
                let state = state.lock().await;
                render(&Snapshot::take(&state))
            };
            respond(&mut stream, "200 OK", &body, head_only).await
        }
        ("GET" | "HEAD", _) => {
            let body = "sitelinkd serves its metrics at /metrics\n";
            respond(&mut stream, "404 Not Found", body, head_only).await
        }
        _ => {
            let body = "only GET /metrics is served\n";
            respond(&mut stream, "405 Method Not Allowed", body, false).await
        }
    }
}

/// Reads up to the blank line that ends the request head; `None` if it is too long. A client
/// that closes early gets what it sent treated as the head.
async fn read_head(stream: &mut Box<dyn Stream>) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0
            || buf.windows(4).any(|w| w == b"\r\n\r\n")
            || buf.windows(2).any(|w| w == b"\n\n")
        {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

/// The method and the path (without a query string) of the request line.
fn request_line(head: &str) -> (&str, &str) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    (method, target.split('?').next().unwrap_or(""))
}

async fn respond(
    stream: &mut Box<dyn Stream>,
    status: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// What one scrape reports, copied out of the engine.
pub struct Snapshot {
    pub interface: String,
    pub peers: Vec<PeerMetrics>,
    pub dropped: [(&'static str, u64); 10],
    pub handshakes: HandshakeCounters,
}

pub struct PeerMetrics {
    pub name: String,
    pub public_key: PublicKey,
    pub up: bool,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub failures: Failures,
}

impl Snapshot {
    /// Copies the numbers under the engine lock (one name per peer; no formatting).
    pub fn take(state: &State) -> Self {
        let engine = state.lock_engine();
        let peers = engine
            .peer_views()
            .map(|p| PeerMetrics {
                name: p.name.to_string(),
                public_key: p.public_key,
                up: p.health.state == LinkState::Up,
                last_handshake: p.last_handshake,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                failures: p.health.failures,
            })
            .collect();
        Self {
            interface: state.config.interface.name.to_string(),
            peers,
            dropped: engine.counters().by_reason(),
            handshakes: state.handshakes.stats.snapshot(),
        }
    }
}

/// The exposition text. Every metric has HELP and TYPE; label values are escaped.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(512 + s.peers.len() * 1200);
    let iface = escape(&s.interface);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    family(
        &mut out,
        "sitelink_build_info",
        "gauge",
        "The sitelinkd version; always 1.",
    );
    let _ = writeln!(
        out,
        "sitelink_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "sitelink_peers",
        "gauge",
        "Peers configured on the interface.",
    );
    let _ = writeln!(
        out,
        "sitelink_peers{{interface=\"{iface}\"}} {}",
        s.peers.len()
    );

    let labels: Vec<String> = s
        .peers
        .iter()
        .map(|p| {
            format!(
                "interface=\"{iface}\",peer=\"{}\",public_key=\"{}\"",
                escape(&p.name),
                p.public_key
            )
        })
        .collect();
    let per_peer = |out: &mut String, name: &str, value: &dyn Fn(&PeerMetrics) -> String| {
        for (p, l) in s.peers.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{l}}} {}", value(p));
        }
    };
    family(
        &mut out,
        "sitelink_peer_up",
        "gauge",
        "1 if the peer has a session from a handshake within the last 180 s, else 0.",
    );
    per_peer(&mut out, "sitelink_peer_up", &|p| {
        u8::from(p.up).to_string()
    });
    family(
        &mut out,
        "sitelink_peer_last_handshake_seconds",
        "gauge",
        "Unix time of the peer's latest completed handshake; 0 if none yet.",
    );
    per_peer(&mut out, "sitelink_peer_last_handshake_seconds", &|p| {
        p.last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
            .to_string()
    });
    family(
        &mut out,
        "sitelink_peer_rx_bytes_total",
        "counter",
        "Bytes of WireGuard datagrams received from the peer.",
    );
    per_peer(&mut out, "sitelink_peer_rx_bytes_total", &|p| {
        p.rx_bytes.to_string()
    });
    family(
        &mut out,
        "sitelink_peer_tx_bytes_total",
        "counter",
        "Bytes of WireGuard datagrams sent to the peer.",
    );
    per_peer(&mut out, "sitelink_peer_tx_bytes_total", &|p| {
        p.tx_bytes.to_string()
    });
    family(
        &mut out,
        "sitelink_peer_handshake_failures_total",
        "counter",
        "Failed handshakes with the peer, by reason (no_response counts unanswered initiations).",
    );
    for (p, l) in s.peers.iter().zip(&labels) {
        for (reason, n) in p.failures.iter() {
            let _ = writeln!(
                out,
                "sitelink_peer_handshake_failures_total{{{l},reason=\"{reason}\"}} {n}"
            );
        }
    }

    family(
        &mut out,
        "sitelink_dropped_packets_total",
        "counter",
        "Packets and datagrams dropped, by reason (handshake_* are handshake messages).",
    );
    let h = &s.handshakes;
    let handshake_drops = [
        ("handshake_queue_full", h.queue_full),
        ("handshake_rate_limited", h.rate_limited),
        ("handshake_invalid", h.invalid),
        ("handshake_unknown_key", h.unknown_key),
        ("handshake_cookie_budget_spent", h.cookie_budget_spent),
    ];
    for (reason, n) in s
        .dropped
        .iter()
        .copied()
        .filter(|(r, _)| *r != "cookie_replies")
        .chain(handshake_drops)
    {
        let _ = writeln!(
            out,
            "sitelink_dropped_packets_total{{interface=\"{iface}\",reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "sitelink_cookie_replies_total",
        "counter",
        "Cookie replies sent to handshakes that arrived under load.",
    );
    let cookies = s
        .dropped
        .iter()
        .find(|(r, _)| *r == "cookie_replies")
        .map_or(0, |(_, n)| *n)
        + h.cookie_replies;
    let _ = writeln!(
        out,
        "sitelink_cookie_replies_total{{interface=\"{iface}\"}} {cookies}"
    );
    family(
        &mut out,
        "sitelink_handshake_messages_total",
        "counter",
        "Handshake messages queued for the handshake thread, and of those, processed.",
    );
    for (stage, n) in [("queued", h.queued), ("processed", h.processed)] {
        let _ = writeln!(
            out,
            "sitelink_handshake_messages_total{{interface=\"{iface}\",stage=\"{stage}\"}} {n}"
        );
    }
    out
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitelink_config::PrivateKey;

    fn snapshot() -> Snapshot {
        let key = PrivateKey::from_bytes([7; 32]).public_key();
        Snapshot {
            interface: "sl0".into(),
            peers: vec![
                PeerMetrics {
                    name: "site-b".into(),
                    public_key: key,
                    up: true,
                    last_handshake: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
                    rx_bytes: 1234,
                    tx_bytes: 5678,
                    failures: Failures::default(),
                },
                PeerMetrics {
                    name: "we\"ird\\".into(),
                    public_key: key,
                    up: false,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    failures: Failures::default(),
                },
            ],
            dropped: sitelink_engine::Counters {
                no_route: 3,
                cookie_replies: 2,
                ..Default::default()
            }
            .by_reason(),
            handshakes: HandshakeCounters {
                rate_limited: 9,
                cookie_replies: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn exposition_has_every_family_and_the_values() {
        let text = render(&snapshot());
        let key = PrivateKey::from_bytes([7; 32]).public_key();
        for line in [
            "# TYPE sitelink_peer_up gauge".to_string(),
            format!("sitelink_peer_up{{interface=\"sl0\",peer=\"site-b\",public_key=\"{key}\"}} 1"),
            format!("sitelink_peer_rx_bytes_total{{interface=\"sl0\",peer=\"site-b\",public_key=\"{key}\"}} 1234"),
            format!("sitelink_peer_tx_bytes_total{{interface=\"sl0\",peer=\"site-b\",public_key=\"{key}\"}} 5678"),
            format!("sitelink_peer_last_handshake_seconds{{interface=\"sl0\",peer=\"site-b\",public_key=\"{key}\"}} 1700000000"),
            format!("sitelink_peer_up{{interface=\"sl0\",peer=\"we\\\"ird\\\\\",public_key=\"{key}\"}} 0"),
            format!("sitelink_peer_handshake_failures_total{{interface=\"sl0\",peer=\"site-b\",public_key=\"{key}\",reason=\"no_response\"}} 0"),
            "sitelink_peers{interface=\"sl0\"} 2".to_string(),
            "sitelink_dropped_packets_total{interface=\"sl0\",reason=\"no_route\"} 3".to_string(),
            "sitelink_dropped_packets_total{interface=\"sl0\",reason=\"handshake_rate_limited\"} 9".to_string(),
            "sitelink_cookie_replies_total{interface=\"sl0\"} 3".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("reason=\"cookie_replies\""), "{text}");
        // Every sample's family was declared before it.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} has no TYPE line");
            }
        }
    }

    /// promtool (Debian's `prometheus` package) lints the text as Prometheus itself would;
    /// skipped with a note where it is not installed (scripts/test.sh installs it).
    #[test]
    fn promtool_accepts_the_exposition() {
        let text = render(&snapshot());
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var_os("SITELINK_REQUIRE_PROMTOOL").is_none(),
                    "promtool is required (SITELINK_REQUIRE_PROMTOOL) but not installed"
                );
                eprintln!("promtool not installed; skipped (apt-get install prometheus)");
                return;
            }
            Err(e) => panic!("cannot run promtool: {e}"),
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool: {said}\n{text}");
        assert!(said.trim().is_empty(), "promtool lint findings: {said}");
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("GET", "/metrics")
        );
        assert_eq!(
            request_line("GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            ("GET", "/metrics")
        );
        assert_eq!(request_line(""), ("", ""));
    }
}
