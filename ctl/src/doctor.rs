//! `sitelinkctl doctor [PEER]`: the checks an operator would make by hand when a link does not
//! come up, in order, each with what is wrong and the command that fixes it.
//!
//! Runs in the daemon's network namespace (like `sitelinkctl` itself): reads sysctls, asks the
//! kernel (`ip route get`) where each allowed-ip goes, pings through the tunnel for the MTU.
//! Reads the daemon's status over the control socket and the config file from disk; never
//! prints key material other than our public key.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sitelink_config::control::{PeerStatus, Status};
use sitelink_config::{Cidr, Config};

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    /// `ok`, `problem`, or `skipped` (could not be checked; not counted as a problem).
    pub result: &'static str,
    pub message: String,
    /// The command or change that fixes it, for a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(check: &str, message: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            result: "ok",
            message: message.into(),
            fix: None,
        }
    }
    fn problem(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            result: "problem",
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    fn skipped(check: &str, message: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            result: "skipped",
            message: message.into(),
            fix: None,
        }
    }

    pub fn is_problem(&self) -> bool {
        self.result == "problem"
    }

    /// `✓ message`, `✗ message` + `  fix: ...`, or `- message`.
    pub fn line(&self) -> String {
        match (self.result, &self.fix) {
            ("ok", _) => format!("✓ {}: {}", self.check, self.message),
            ("problem", Some(fix)) => format!("✗ {}: {}\n    fix: {fix}", self.check, self.message),
            _ => format!("- {}: {}", self.check, self.message),
        }
    }
}

/// Every check after "the daemon runs" (the caller made that one: it has the status).
pub fn run(status: &Status, only: Option<&str>) -> Vec<Check> {
    let mut checks = vec![Check::ok(
        "daemon",
        format!(
            "sitelinkd runs interface {} (port {})",
            status.interface.name, status.interface.listen_port
        ),
    )];
    checks.push(config_matches(status));
    checks.extend(forwarding(status));
    if status.interface.table == "off" {
        checks.push(Check::skipped(
            "routes",
            "table = \"off\": sitelinkd installs no routes; yours must send the allowed-ips into the interface",
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for peer in status
        .peers
        .iter()
        .filter(|p| only.is_none_or(|o| o == p.name || o == p.public_key))
    {
        if status.interface.table != "off" {
            checks.extend(routes(&status.interface.name, peer));
        }
        checks.push(link(status, peer, now));
        if peer.state == "up" {
            checks.push(mtu(status, peer));
        }
    }
    checks
}

/// The config the daemon runs is the file on disk, or what differs.
fn config_matches(status: &Status) -> Check {
    const WHAT: &str = "config";
    let Some(path) = &status.interface.config_path else {
        return Check::skipped(WHAT, "the daemon reports no config file");
    };
    let file = match Config::load(Path::new(path)) {
        Ok(c) => c,
        Err(e) => {
            let text = e.to_string();
            if text.contains("ermission denied") {
                return Check::skipped(
                    WHAT,
                    format!("cannot read {path} or its key files as this user; run doctor as root to compare"),
                );
            }
            return Check::problem(
                WHAT,
                format!("{path} is not valid, so a reload would be refused: {text}"),
                format!("correct {path}, then `sitelinkctl reload`"),
            );
        }
    };
    let mut differences = Vec::new();
    let running: Vec<&PeerStatus> = status.peers.iter().collect();
    for p in &file.peers {
        match running.iter().find(|r| r.name == p.name) {
            None => differences.push(format!("peer {:?} is in the file but not running", p.name)),
            Some(r) => {
                if r.public_key != p.public_key.to_string() {
                    differences.push(format!(
                        "peer {:?} has another public key in the file",
                        p.name
                    ));
                }
                let file_ips: BTreeSet<String> =
                    p.allowed_ips.iter().map(Cidr::to_string).collect();
                let run_ips: BTreeSet<String> = r.allowed_ips.iter().cloned().collect();
                if file_ips != run_ips {
                    differences.push(format!(
                        "peer {:?} has other allowed-ips in the file",
                        p.name
                    ));
                }
                if r.persistent_keepalive != p.persistent_keepalive {
                    differences.push(format!(
                        "peer {:?} has another persistent-keepalive in the file",
                        p.name
                    ));
                }
            }
        }
    }
    for r in &running {
        if !file.peers.iter().any(|p| p.name == r.name) {
            differences.push(format!("peer {:?} runs but is not in the file", r.name));
        }
    }
    let addrs: BTreeSet<String> = file
        .interface
        .addresses
        .iter()
        .map(Cidr::to_string)
        .collect();
    if addrs != status.interface.addresses.iter().cloned().collect() {
        differences.push("the interface addresses differ".into());
    }
    if file.interface.mtu != status.interface.mtu {
        differences.push(format!(
            "mtu is {} in the file, {} running",
            file.interface.mtu, status.interface.mtu
        ));
    }
    if file
        .interface
        .listen_port
        .is_some_and(|p| p != status.interface.listen_port)
    {
        differences.push("listen-port differs".into());
    }
    if differences.is_empty() {
        Check::ok(WHAT, format!("the running config is {path}"))
    } else {
        Check::problem(
            WHAT,
            format!("the running config differs from {path}: {}", differences.join("; ")),
            "`sitelinkctl reload` to apply the file, or `sitelinkctl save` to write the running peers to it",
        )
    }
}

/// IP forwarding for each family that peers' allowed-ips use (a gateway must forward).
fn forwarding(status: &Status) -> Vec<Check> {
    let families = |v4: bool| {
        status
            .peers
            .iter()
            .flat_map(|p| &p.allowed_ips)
            .any(|c| c.contains(':') != v4)
    };
    let mut out = Vec::new();
    for (v4, key, path) in [
        (true, "net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        (
            false,
            "net.ipv6.conf.all.forwarding",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ),
    ] {
        if !families(v4) {
            continue;
        }
        let family = if v4 { "IPv4" } else { "IPv6" };
        match std::fs::read_to_string(path) {
            Ok(v) if v.trim() == "1" => out.push(Check::ok("forwarding", format!("{family} forwarding is on"))),
            Ok(_) => out.push(Check::problem(
                "forwarding",
                format!("{family} forwarding is off: this host will not pass traffic between its LAN and the tunnel"),
                format!("sysctl -w {key}=1, and to keep it: echo {key}=1 > /etc/sysctl.d/90-sitelink.conf"),
            )),
            Err(e) => out.push(Check::skipped("forwarding", format!("cannot read {path}: {e}"))),
        }
    }
    out
}

/// An address inside `cidr` to ask the kernel about (the first host; a documentation address
/// for a default route, which is only looked up, never contacted).
fn probe_address(cidr: &Cidr) -> String {
    match (cidr.prefix_len(), cidr.addr()) {
        (0, std::net::IpAddr::V4(_)) => "192.0.2.1".into(),
        (0, std::net::IpAddr::V6(_)) => "2001:db8::1".into(),
        (32, a) | (128, a) => a.to_string(),
        (_, std::net::IpAddr::V4(a)) => std::net::Ipv4Addr::from(u32::from(a) | 1).to_string(),
        (_, std::net::IpAddr::V6(a)) => std::net::Ipv6Addr::from(u128::from(a) | 1).to_string(),
    }
}

/// Each allowed-ip of `peer` goes into the interface, or the route that takes it instead.
fn routes(iface: &str, peer: &PeerStatus) -> Vec<Check> {
    let what = format!("routes {}", peer.name);
    let mut wrong = Vec::new();
    for text in &peer.allowed_ips {
        let Ok(cidr) = text.parse::<Cidr>() else {
            continue;
        };
        let addr = probe_address(&cidr);
        let out = Command::new("ip")
            .args(["-j", "route", "get", &addr])
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                return vec![Check::skipped(
                    &what,
                    format!("cannot run `ip route get`: {e}"),
                )]
            }
        };
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let dev = json[0]["dev"].as_str().unwrap_or("").to_string();
        if dev != iface {
            let via = if dev.is_empty() {
                "no route".to_string()
            } else {
                format!("dev {dev}")
            };
            wrong.push(format!("{text} (probed {addr}: {via})"));
        }
    }
    if wrong.is_empty() {
        vec![Check::ok(
            &what,
            format!(
                "all {} allowed-ips are routed into {iface}",
                peer.allowed_ips.len()
            ),
        )]
    } else {
        vec![Check::problem(
            &what,
            format!(
                "not routed into {iface}: {} — another route shadows them (`ip route show match ADDR` shows it)",
                wrong.join(", ")
            ),
            "remove or narrow the other route (e.g. an old LAN route), or give the peer a more specific prefix",
        )]
    }
}

/// Whether the peer answers, and if not, what the other side must have.
fn link(status: &Status, peer: &PeerStatus, now: u64) -> Check {
    let what = format!("peer {}", peer.name);
    let ours = status
        .interface
        .public_key
        .clone()
        .unwrap_or_else(|| "(none: the interface has no private key)".into());
    let port = status.interface.listen_port;
    let ago = |t: u64| human(now.saturating_sub(t));
    let last = peer.last_error.as_ref();
    if let Some(e) =
        last.filter(|e| e.reason.contains("old timestamp") && now.saturating_sub(e.at) < 300)
    {
        return Check::problem(
            &what,
            format!(
                "we refused its handshakes {} times (last {} ago) because their timestamp was not newer than one seen before: the peer's clock is behind, or these are replays",
                e.count,
                ago(e.at)
            ),
            "check the clock on the peer (timedatectl; enable NTP). It recovers once its clock passes the old timestamp",
        );
    }
    if let Some(e) = last.filter(|e| e.reason.contains("bad mac") && now.saturating_sub(e.at) < 300)
    {
        return Check::problem(
            &what,
            format!(
                "its messages do not authenticate ({} times, last {} ago)",
                e.count,
                ago(e.at)
            ),
            "check that both sides have the same preshared key (or both none)",
        );
    }
    match peer.state.as_str() {
        "up" => Check::ok(
            &what,
            format!(
                "up: latest handshake {} ago, endpoint {}",
                peer.latest_handshake.map_or("?".into(), ago),
                peer.endpoint.as_deref().unwrap_or("?")
            ),
        ),
        "connecting" if peer.handshake_attempts < 2 => Check::skipped(
            &what,
            format!(
                "handshake in progress: the first initiation went to {} {} ago; an answer takes up to 5 s, run doctor again",
                peer.endpoint.as_deref().unwrap_or("?"),
                peer.trying_since.map_or("?".into(), ago)
            ),
        ),
        "connecting" => {
            let since = peer.trying_since.map_or("?".into(), ago);
            let endpoint = peer.endpoint.as_deref().unwrap_or("?");
            Check::problem(
                &what,
                format!(
                    "no answer from {endpoint}: {} handshake initiations sent in the last {since}",
                    peer.handshake_attempts
                ),
                format!(
                    "on the peer, check that it has our public key {ours} for this link and that its endpoint for us reaches our UDP port {port}; check firewalls on both paths (UDP {port} open to us, the peer's port open to it) and that {endpoint} is its address"
                ),
            )
        }
        "resolving" => Check::problem(
            &what,
            format!(
                "its endpoint's host name does not resolve yet{}",
                last.map_or(String::new(), |e| format!(": {}", e.reason))
            ),
            "check the name (getent hosts NAME) and this host's resolver",
        ),
        "no-endpoint" => Check::skipped(
            &what,
            format!(
                "no endpoint: waiting for it to connect to us; it needs our public key {ours} and our address with port {port}"
            ),
        ),
        _ => Check::skipped(
            &what,
            "down: nothing tried (no traffic for it and no persistent-keepalive); traffic to its allowed-ips starts a handshake",
        ),
    }
}

/// The largest packet that passes through the tunnel to the peer, found with don't-fragment
/// pings to its first host address (a /32 or /128 in its allowed-ips).
fn mtu(status: &Status, peer: &PeerStatus) -> Check {
    let what = format!("mtu {}", peer.name);
    let target = peer.allowed_ips.iter().find_map(|c| {
        let cidr: Cidr = c.parse().ok()?;
        (cidr.prefix_len() == 32 || cidr.prefix_len() == 128).then(|| cidr.addr())
    });
    let Some(target) = target else {
        return Check::skipped(
            &what,
            "no single address (/32 or /128) in its allowed-ips to probe; ping -M do -s SIZE a host behind it to check by hand",
        );
    };
    let header = if target.is_ipv4() { 28 } else { 48 };
    let mtu = u32::from(status.interface.mtu);
    let passes = |size: u32| {
        Command::new("ping")
            .args(["-c", "1", "-W", "1", "-M", "do", "-s"])
            .arg((size - header).to_string())
            .arg(target.to_string())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if passes(mtu) {
        return Check::ok(
            &what,
            format!("packets of the interface MTU ({mtu} bytes) reach {target} unfragmented"),
        );
    }
    let floor = if target.is_ipv4() { 576 } else { 1280 };
    if !passes(floor) {
        return Check::skipped(
            &what,
            format!(
                "{target} does not answer ping even at {floor} bytes; cannot probe the path MTU"
            ),
        );
    }
    let (mut lo, mut hi) = (floor, mtu);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if passes(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Check::problem(
        &what,
        format!(
            "the largest packet that reaches {target} through the tunnel is {lo} bytes, below the interface MTU {mtu}: larger ones are lost (an MTU black hole on the path)"
        ),
        format!("set mtu = {lo} in [interface] on both gateways and reload, or raise the MTU of the path between the sites"),
    )
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}
