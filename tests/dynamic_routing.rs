//! Routes that follow peer liveness, for routing daemons and redundant paths, on real
//! topologies in network namespaces: `withdraw-when-down` taking a silent peer's routes out
//! (kernel and cryptokey routing) so that traffic moves to a transit site, and back; the
//! route protocol number on every route; `sitelinkctl events` and the on-peer-up/down hooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use sitelink_tests::{bin, peer, tcp_stream_during, Internet, Netns, Process, Site};

/// A `[[peer]]` for `site` with keepalives every second (liveness is judged from them).
fn fast_peer(site: &Site, name: &str, allowed_ips: &[&str]) -> String {
    site.as_peer(name, allowed_ips, true)
        .replace("persistent-keepalive = 25", "persistent-keepalive = 1")
}

/// The routes into `iface` in `ns`'s main table, as (destination, protocol) pairs.
fn kernel_routes(ns: &Netns, iface: &str) -> Vec<(String, String)> {
    let out = ns.ip(&["-j", "route", "show", "dev", iface]);
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    routes
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let proto = match &r["protocol"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (r["dst"].as_str().unwrap_or("").to_string(), proto)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has_route(ns: &Netns, iface: &str, dst: &str) -> bool {
    kernel_routes(ns, iface).iter().any(|(d, _)| d == dst)
}

/// Waits up to `within` for `cond`; returns how long it took.
fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Drops (or, with `cut = false`, lets through again) the UDP between two WAN addresses
/// on the router, both ways: the direct tunnel between them goes silent.
fn cut_between(router: &Netns, x: &str, y: &str, cut: bool) {
    let script = if cut {
        format!(
            "table inet sitelink_test_cut {{\n chain forward {{\n  type filter hook forward priority 0;\n  \
             ip saddr {x} ip daddr {y} udp dport 51820 drop\n  ip saddr {y} ip daddr {x} udp dport 51820 drop\n }}\n}}\n"
        )
    } else {
        "delete table inet sitelink_test_cut\n".to_string()
    };
    let out = sitelink_tests::pipe(router.cmd("nft").args(["-f", "-"]), &script);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sites 1 (A), 2 (B) and 3 (C) over one internet. A and B peer directly, and each also
/// routes 198.19.0.0/16 to C, a transit site that peers with both. With `withdraw-when-down`
/// (down after 3 s of silence, up 2 s after it returns), cutting the A-B tunnel moves A↔B
/// traffic through C, and healing it moves it back; a TCP stream across both changes goes on
/// with every byte intact.
#[test]
fn a_silent_peer_is_withdrawn_and_traffic_moves_through_the_transit_site_and_back() {
    let net = Internet::new(&[1, 2, 3]);
    let (a, b, c) = (net.site(1), net.site(2), net.site(3));
    let hooks_log = net.dir.0.join("hooks.log");
    let liveness = format!(
        "withdraw-when-down = true\ndown-after = 3\nup-after = 2\n\
         on-peer-up = \"echo $SITELINK_INTERFACE $1 $2 >> {log}\"\n\
         on-peer-down = \"echo $SITELINK_INTERFACE $1 $2 >> {log}\"\n",
        log = hooks_log.display()
    );
    let transit = [c.lan(), "198.19.0.0/16".to_string()];
    let transit: Vec<&str> = transit.iter().map(String::as_str).collect();
    let _da = net.start(
        1,
        &liveness,
        &(fast_peer(b, "site-2", &[&b.lan()]) + &fast_peer(c, "site-3", &transit)),
    );
    let _db = net.start(
        2,
        &liveness,
        &(fast_peer(a, "site-1", &[&a.lan()]) + &fast_peer(c, "site-3", &transit)),
    );
    let _dc = net.start(
        3,
        "",
        &(fast_peer(a, "site-1", &[&a.lan()]) + &fast_peer(b, "site-2", &[&b.lan()])),
    );

    let up = |n: u8, name: &str| peer(&net.show_json(n), name)["liveness"]["state"] == "up";
    let came_up = wait_for(Duration::from_secs(20), || {
        up(1, "site-2") && up(1, "site-3") && up(2, "site-1") && up(2, "site-3")
    });
    assert!(
        came_up.is_some(),
        "links not up: {}",
        net.show_json(1)["peers"]
    );
    // Every route sitelinkd installed carries its protocol number (52, "sitelink").
    let routes = kernel_routes(&a.gw, &a.iface);
    for dst in ["198.19.2.0/24", "198.19.3.0/24", "198.19.0.0/16"] {
        assert!(
            routes
                .iter()
                .any(|(d, p)| d == dst && (p == "52" || p == "sitelink")),
            "no {dst} with protocol 52 in {routes:?}"
        );
    }
    assert!(a.host.ping_until(&b.host_ip(), Duration::from_secs(10)));

    let events_log = net.dir.0.join("events.jsonl");
    let mut events_cmd = a.gw.cmd(bin("sitelinkctl"));
    events_cmd
        .args(["--interface", &a.iface, "events", "--json"])
        .env("SITELINK_RUN_DIR", &net.run_dir);
    let mut events = Process::spawn("sitelinkctl events", events_cmd, events_log);
    thread::sleep(Duration::from_millis(300));
    events.assert_running();

    let via_c = |s: &serde_json::Value| peer(s, "site-2")["tx_bytes"].as_u64().unwrap();
    let c_before = via_c(&net.show_json(3));
    let server: SocketAddr = format!("{}:5301", b.host_ip()).parse().unwrap();
    let (mut withdrawn_after, mut restored_after) = (None, None);
    let report = tcp_stream_during(&a.host, &b.host, server, Duration::from_secs(22), || {
        thread::sleep(Duration::from_secs(3));
        cut_between(&net.router, &a.wan(), &b.wan(), true);
        withdrawn_after = wait_for(Duration::from_secs(15), || {
            !has_route(&a.gw, &a.iface, "198.19.2.0/24")
        });
        thread::sleep(Duration::from_secs(4));
        cut_between(&net.router, &a.wan(), &b.wan(), false);
        restored_after = wait_for(Duration::from_secs(15), || {
            has_route(&a.gw, &a.iface, "198.19.2.0/24")
        });
    });
    let c_after = via_c(&net.show_json(3));
    eprintln!(
        "withdraw-when-down: A withdrew B's route {withdrawn_after:?} after the cut, restored it \
         {restored_after:?} after the heal; TCP stream: {} bytes sent, {} verified, longest \
         gap {:?}; {} bytes relayed by C to B",
        report.sent,
        report.verified,
        report.max_gap,
        c_after - c_before
    );
    assert!(withdrawn_after.is_some(), "B's route was not withdrawn");
    assert!(restored_after.is_some(), "B's route did not come back");
    assert_eq!(
        report.verified, report.sent,
        "stream lost or corrupted bytes"
    );
    assert!(
        c_after - c_before > 1 << 20,
        "C relayed only {} bytes to B during the cut",
        c_after - c_before
    );
    // Back on the direct path: C carries nothing more of it.
    let c_now = via_c(&net.show_json(3));
    let a_direct = peer(&net.show_json(1), "site-2")["tx_bytes"]
        .as_u64()
        .unwrap();
    assert!(a.host.ping_until(&b.host_ip(), Duration::from_secs(5)));
    let a_direct_after = peer(&net.show_json(1), "site-2")["tx_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        a_direct_after > a_direct,
        "A's ping did not go to B directly"
    );
    assert!(
        via_c(&net.show_json(3)) - c_now < 2000,
        "C still relays A's traffic to B"
    );

    // What the operator saw: events in order, and the hooks run with the peer and state.
    thread::sleep(Duration::from_millis(500));
    let lines: Vec<serde_json::Value> = events
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let seq: Vec<String> = lines
        .iter()
        .filter(|e| e["peer"] == "site-2" || e["event"] == "routes")
        .map(|e| {
            let what = e["event"].as_str().unwrap_or("?").to_string();
            match what.as_str() {
                "routes" => format!(
                    "routes -{} +{}",
                    e["removed"].as_array().map_or(0, Vec::len),
                    e["added"].as_array().map_or(0, Vec::len)
                ),
                _ => what,
            }
        })
        .collect();
    let down = seq.iter().position(|e| e == "peer-down");
    let up_again = seq.iter().rposition(|e| e == "peer-up");
    assert!(
        matches!((down, up_again), (Some(d), Some(u)) if d < u),
        "events: {seq:?}"
    );
    assert!(
        seq.contains(&"routes -1 +0".to_string()) && seq.contains(&"routes -0 +1".to_string()),
        "events: {seq:?}"
    );
    let down_event = lines
        .iter()
        .find(|e| e["event"] == "peer-down")
        .expect("a peer-down line");
    assert!(down_event["silent_s"].as_f64().unwrap() >= 3.0);
    assert_eq!(down_event["interface"], a.iface.as_str());
    let hooks = std::fs::read_to_string(&hooks_log).unwrap_or_default();
    for line in [
        format!("{} site-2 up", a.iface),
        format!("{} site-2 down", a.iface),
        format!("{} site-1 down", b.iface),
    ] {
        assert!(
            hooks.lines().any(|l| l == line),
            "no {line:?} in hooks:\n{hooks}"
        );
    }
}
