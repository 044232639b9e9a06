//! Routes that follow peer liveness, for routing daemons and redundant paths, on real
//! topologies in network namespaces: `withdraw-when-down` taking a silent peer's routes out
//! (kernel and cryptokey routing) so that traffic moves to a transit site, and back; the
//! route protocol number on every route; `sitelinkctl events` and the on-peer-up/down hooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use sitelink_tests::{bin, peer, tcp_stream_during, wait_for, Internet, Netns, Process, Site};

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
    router.nft(&script);
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

/// BIRD 2 in a site's gateway namespace, stopped on drop (with its socket and logs in the
/// test's directory).
struct Bird {
    _process: Process,
    socket: std::path::PathBuf,
    ns_name: String,
}

impl Bird {
    /// The BIRD configuration of site `n` (AS 6500n, router id its tunnel address) with BGP
    /// and BFD to the `neighbors` (site numbers) over the tunnel. It learns sitelink's routes
    /// from the kernel (protocol 52) and prefers them; it announces them to its neighbors;
    /// it installs what it learns by BGP into the kernel behind sitelink's (metric 32 against
    /// sitelink's 0), taking only other sites' /24 LANs.
    fn config(n: u8, neighbors: &[u8]) -> String {
        let mut text = format!(
            "router id 198.18.200.{n};\n\
             protocol device {{ scan time 1; }}\n\
             protocol kernel krt {{\n\
               learn;\n\
               scan time 1;\n\
               ipv4 {{\n\
                 preference 200;\n\
                 import where krt_source = 52;\n\
                 export where source = RTS_BGP;\n\
               }};\n\
             }}\n\
             protocol bfd {{\n\
               interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }};\n\
             }}\n\
             filter other_lans {{\n\
               if net ~ [ 198.19.0.0/16{{24,24}} ] && net != 198.19.{n}.0/24 then accept;\n\
               reject;\n\
             }}\n"
        );
        for m in neighbors {
            text += &format!(
                "protocol bgp site{m} {{\n\
                   local 198.18.200.{n} as 6500{n};\n\
                   neighbor 198.18.200.{m} as 6500{m};\n\
                   bfd on;\n\
                   hold time 6;\n\
                   connect retry time 1;\n\
                   error wait time 1, 5;\n\
                   ipv4 {{\n\
                     import filter other_lans;\n\
                     export where source = RTS_INHERIT;\n\
                   }};\n\
                 }}\n"
            );
        }
        text
    }

    fn start(net: &Internet, n: u8, neighbors: &[u8]) -> Self {
        let site = net.site(n);
        let conf = net
            .dir
            .write(&format!("bird{n}.conf"), &Self::config(n, neighbors), 0o644);
        let socket = net.dir.0.join(format!("bird{n}.ctl"));
        let mut cmd = site.gw.cmd("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(net.dir.0.join(format!("bird{n}.pid")));
        let mut process = Process::spawn("bird", cmd, net.dir.0.join(format!("bird{n}.log")));
        let ns_name = site.gw.name.clone();
        let ready = wait_for(Duration::from_secs(10), || {
            birdc(&ns_name, &socket, &["show", "status"]).contains("Daemon is up")
        });
        process.assert_running();
        assert!(
            ready.is_some(),
            "bird {n} did not start:\n{}",
            process.log_text()
        );
        Self {
            _process: process,
            socket,
            ns_name,
        }
    }

    fn birdc(&self, args: &[&str]) -> String {
        birdc(&self.ns_name, &self.socket, args)
    }
}

/// `birdc -s SOCKET ARGS` in namespace `ns`: its output.
fn birdc(ns: &str, socket: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "birdc", "-s"])
        .arg(socket)
        .args(args)
        .output()
        .expect("birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kernel's routes for exactly `prefix` in `ns` (main table), as "PROTOCOL via GATEWAY"
/// or "PROTOCOL" for a route straight into an interface.
fn routes_for(ns: &Netns, prefix: &str) -> Vec<String> {
    let out = ns.ip(&["-j", "route", "show", "exact", prefix]);
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    routes
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| match r["gateway"].as_str() {
                    Some(gw) => format!("{} via {gw}", text(&r["protocol"])),
                    None => text(&r["protocol"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Three sites, each with sitelinkd (tunnel addresses 198.18.200.N/24, keepalives every
/// second, `withdraw-when-down` with down-after 2 s) and BIRD peering over the tunnel by BGP
/// with BFD (AS 6500N). BIRD learns sitelink's routes from the kernel by their protocol number
/// and announces them; the direct A-B tunnel cut, sitelink withdraws B's LAN on A and BIRD
/// replaces it with the route C announces; healed, sitelink's route is back and BIRD's goes.
#[test]
fn bird_moves_a_lan_through_a_third_site_when_the_direct_tunnel_fails_and_back() {
    let net = Internet::new(&[1, 2, 3]);
    let (a, b, c) = (net.site(1), net.site(2), net.site(3));
    let interface = |n: u8| {
        format!(
            "address = [\"198.18.200.{n}/24\"]\nwithdraw-when-down = true\ndown-after = 2\n\
             up-after = 2\n"
        )
    };
    let tunnel = |s: &Site| format!("198.18.200.{}/32", s.n);
    let direct = |s: &Site, name: &str| fast_peer(s, name, &[&tunnel(s), &s.lan()]);
    let via_c = fast_peer(c, "site-3", &[&tunnel(c), &c.lan(), "198.19.0.0/16"]);
    let _da = net.start(1, &interface(1), &(direct(b, "site-2") + &via_c));
    let _db = net.start(2, &interface(2), &(direct(a, "site-1") + &via_c));
    let _dc = net.start(
        3,
        &interface(3),
        &(direct(a, "site-1") + &direct(b, "site-2")),
    );
    let birds = [
        Bird::start(&net, 1, &[2, 3]),
        Bird::start(&net, 2, &[1, 3]),
        Bird::start(&net, 3, &[1, 2]),
    ];
    let established = wait_for(Duration::from_secs(60), || {
        birds.iter().all(|bird| {
            bird.birdc(&["show", "protocols"])
                .lines()
                .filter(|l| l.contains("BGP") && l.contains("Established"))
                .count()
                == 2
        })
    });
    assert!(
        established.is_some(),
        "BGP sessions not established:\n{}\n{}",
        birds[0].birdc(&["show", "protocols", "all"]),
        std::fs::read_to_string(net.dir.0.join("bird1.log")).unwrap_or_default()
    );
    // A's BIRD knows two ways to B's LAN: sitelink's (from the kernel, preferred) and C's.
    let lan_b = b.lan();
    let known = wait_for(Duration::from_secs(20), || {
        let r = birds[0].birdc(&["show", "route", &lan_b]);
        r.contains("[krt") && r.contains("[site3")
    });
    assert!(
        known.is_some(),
        "A's BIRD does not have both routes:\n{}",
        birds[0].birdc(&["show", "route", "all"])
    );
    assert_eq!(routes_for(&a.gw, &lan_b), ["52"], "before the cut");

    let relayed = |s: &serde_json::Value| peer(s, "site-2")["tx_bytes"].as_u64().unwrap();
    let c_before = relayed(&net.show_json(3));
    let server: SocketAddr = format!("{}:5302", b.host_ip()).parse().unwrap();
    let (mut moved, mut back, mut bird_view) = (None, None, String::new());
    let report = tcp_stream_during(&a.host, &b.host, server, Duration::from_secs(20), || {
        thread::sleep(Duration::from_secs(3));
        cut_between(&net.router, &a.wan(), &b.wan(), true);
        moved = wait_for(Duration::from_secs(15), || {
            routes_for(&a.gw, &lan_b) == ["bird via 198.18.200.3"]
        });
        bird_view = birds[0].birdc(&["show", "route", &lan_b]);
        thread::sleep(Duration::from_secs(4));
        cut_between(&net.router, &a.wan(), &b.wan(), false);
        back = wait_for(Duration::from_secs(20), || {
            routes_for(&a.gw, &lan_b) == ["52"]
        });
    });
    let c_after = relayed(&net.show_json(3));
    eprintln!(
        "BIRD: A's route to B's LAN moved via C {moved:?} after the cut, back to the direct \
         tunnel {back:?} after the heal; TCP stream: {} bytes sent, {} verified, longest gap \
         {:?}; C relayed {} bytes to B. A's BIRD during the cut:\n{bird_view}",
        report.sent,
        report.verified,
        report.max_gap,
        c_after - c_before
    );
    assert!(
        moved.is_some(),
        "A's kernel route did not move via C: {:?}\n{bird_view}",
        routes_for(&a.gw, &lan_b)
    );
    assert!(
        bird_view.contains("via 198.18.200.3") && !bird_view.contains("[krt"),
        "{bird_view}"
    );
    assert!(
        back.is_some(),
        "sitelink's route did not come back alone: {:?}",
        routes_for(&a.gw, &lan_b)
    );
    assert_eq!(
        report.verified, report.sent,
        "stream lost or corrupted bytes"
    );
    assert!(c_after - c_before > 1 << 20, "C relayed too little");
}
