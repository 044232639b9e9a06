//! Two sitelink gateways carry two LANs: `host_a — gw_a ═ gw_b — host_b`, both gateways
//! running sitelinkd from config files. Checks IPv4 and IPv6 reachability between the
//! LANs, a byte-checked TCP transfer each way of family, the tunnel addresses, `show
//! --json`, and a clean exit that removes the interface.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sitelink_tests::{keypair, unique, unix_now, GatewayConfig, Sites};

const MIB: usize = 1 << 20;

#[test]
fn two_sites_reach_each_other_over_ipv4_and_ipv6() {
    let sites = Sites::new();
    let (a_priv, a_pub) = keypair();
    let (b_priv, b_pub) = keypair();
    let a_key = sites.dir.write("a.key", &format!("{a_priv}\n"), 0o600);
    let b_key = sites.dir.write("b.key", &format!("{b_priv}\n"), 0o600);
    let (a_if, b_if) = (unique("sla"), unique("slb"));

    let a_conf = GatewayConfig {
        iface: &a_if,
        key_file: &a_key,
        port: 51820,
        addresses: &["198.18.100.1/24", "fd18:100::1/64"],
        peer_name: "site-b",
        peer_key: &b_pub,
        endpoint: Some("[fd18::2]:51820"),
        allowed_ips: &[
            "198.18.100.2/32",
            "198.19.2.0/24",
            "fd18:100::2/128",
            "fd19:2::/64",
        ],
        keepalive: Some(25),
    };
    // A initiates over the IPv6 outer network; B is configured with A's IPv4 address and
    // must roam to the IPv6 source of A's authenticated packets.
    let b_conf = GatewayConfig {
        iface: &b_if,
        key_file: &b_key,
        port: 51820,
        addresses: &["198.18.100.2/24", "fd18:100::2/64"],
        peer_name: "site-a",
        peer_key: &a_pub,
        endpoint: Some("198.18.0.1:51820"),
        allowed_ips: &[
            "198.18.100.1/32",
            "198.19.1.0/24",
            "fd18:100::1/128",
            "fd19:1::/64",
        ],
        keepalive: None,
    };
    let a_path = sites
        .dir
        .write(&format!("{a_if}.toml"), &a_conf.toml(), 0o600);
    let b_path = sites
        .dir
        .write(&format!("{b_if}.toml"), &b_conf.toml(), 0o600);
    let mut gw_a = sites.sitelinkd(&sites.gw_a, &a_path);
    let mut gw_b = sites.sitelinkd(&sites.gw_b, &b_path);
    sites.wait_ready(&mut gw_a, &a_if);
    sites.wait_ready(&mut gw_b, &b_if);

    // Control socket 0660 in a 0750 directory.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&sites.run_dir), 0o750);
    assert_eq!(mode(&sites.run_dir.join(format!("{a_if}.sock"))), 0o660);

    // Routes and addresses came from the daemons (netlink), not from the test.
    let routes = String::from_utf8(sites.gw_a.ip(&["route", "show", "dev", &a_if]).stdout).unwrap();
    assert!(routes.contains("198.19.2.0/24"), "gw_a routes: {routes}");
    let mtu = String::from_utf8(sites.gw_a.ip(&["link", "show", &a_if]).stdout).unwrap();
    assert!(
        mtu.contains("mtu 1420") && mtu.contains("UP"),
        "gw_a link: {mtu}"
    );

    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(20)),
        "host_a cannot ping host_b over IPv4\n--- gw_a:\n{}\n--- gw_b:\n{}",
        gw_a.log_text(),
        gw_b.log_text()
    );
    sites.assert_lans_connected(7001);
    // The tunnel addresses answer on both ends.
    assert!(sites
        .gw_b
        .ping_until("fd18:100::1", Duration::from_secs(10)));

    // Status: the handshake is recent and bytes were counted on both sides.
    std::thread::sleep(Duration::from_millis(300));
    let a = sites.show_json(&a_if);
    let b = sites.show_json(&b_if);
    assert_eq!(a["interface"]["name"], a_if.as_str());
    assert_eq!(a["interface"]["public_key"], a_pub.as_str());
    assert_eq!(a["interface"]["listen_port"], 51820);
    let pa = &a["peers"][0];
    let pb = &b["peers"][0];
    assert_eq!(pa["name"], "site-b");
    assert_eq!(pa["public_key"], b_pub.as_str());
    assert_eq!(pa["persistent_keepalive"], 25);
    let hs = pa["latest_handshake"]
        .as_u64()
        .expect("A's handshake time is set");
    assert!(
        unix_now().abs_diff(hs) < 120,
        "handshake time {hs} not recent"
    );
    assert!(pb["latest_handshake"].as_u64().is_some());
    assert!(
        pa["tx_bytes"].as_u64().unwrap() > 8 * MIB as u64,
        "A tx {}",
        pa["tx_bytes"]
    );
    assert!(
        pb["rx_bytes"].as_u64().unwrap() > 8 * MIB as u64,
        "B rx {}",
        pb["rx_bytes"]
    );
    assert!(pa["rx_bytes"].as_u64().unwrap() > 4 * MIB as u64);
    // A's endpoint is the configured one; B roamed to where A's authenticated packets
    // came from (the IPv6 outer address, not the configured IPv4 one).
    assert_eq!(pa["endpoint"], "[fd18::2]:51820");
    assert_eq!(pb["endpoint"], "[fd18::1]:51820");
    let text = String::from_utf8(sites.ctl(&a_if, &["show"]).stdout).unwrap();
    assert!(
        text.contains("peer: site-b") && text.contains("latest handshake:"),
        "{text}"
    );
    assert!(!text.contains(&a_priv), "show printed the private key");

    // SIGTERM: exit 0, interface and routes gone, socket removed.
    assert_eq!(gw_a.terminate(), Some(0), "gw_a exit:\n{}", gw_a.log_text());
    let links = String::from_utf8(sites.gw_a.ip(&["link", "show"]).stdout).unwrap();
    assert!(!links.contains(&a_if), "interface left behind: {links}");
    assert!(
        !sites.run_dir.join(format!("{a_if}.sock")).exists(),
        "control socket left behind"
    );
    let log = gw_a.log_text();
    assert!(
        !log.contains("ERROR") && !log.contains("panicked"),
        "gw_a log:\n{log}"
    );
    // A log file gets plain lines: no terminal colour codes.
    assert!(
        log.contains("INFO") && !log.contains('\u{1b}'),
        "gw_a log:\n{log:?}"
    );
}

/// `ip netns exec` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts: a host name that
/// resolves only inside the test's gateway namespace. Removed on drop.
struct NetnsHosts(std::path::PathBuf);

impl NetnsHosts {
    fn write(ns: &str, contents: &str) -> Self {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), contents).unwrap();
        Self(dir)
    }
}

impl NetnsHosts {
    fn update(&self, contents: &str) {
        std::fs::write(self.0.join("hosts"), contents).unwrap();
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn host_name_endpoint_is_resolved_and_retried_until_it_resolves() {
    let sites = Sites::new();
    // At start the name does not resolve (an empty hosts file, no DNS in the namespace).
    let hosts = NetnsHosts::write(&sites.gw_a.name, "127.0.0.1 localhost\n");
    let (a_priv, a_pub) = keypair();
    let (b_priv, b_pub) = keypair();
    let a_key = sites.dir.write("a.key", &format!("{a_priv}\n"), 0o600);
    let b_key = sites.dir.write("b.key", &format!("{b_priv}\n"), 0o600);
    let (a_if, b_if) = (unique("sla"), unique("slb"));
    let a = GatewayConfig {
        iface: &a_if,
        key_file: &a_key,
        port: 51820,
        addresses: &["198.18.100.1/24"],
        peer_name: "site-b",
        peer_key: &b_pub,
        endpoint: Some("gw-b.sitelink.test:51820"),
        allowed_ips: &["198.18.100.2/32", "198.19.2.0/24"],
        keepalive: Some(25),
    };
    let b = GatewayConfig {
        iface: &b_if,
        key_file: &b_key,
        port: 51820,
        addresses: &["198.18.100.2/24"],
        peer_name: "site-a",
        peer_key: &a_pub,
        endpoint: None,
        allowed_ips: &["198.18.100.1/32", "198.19.1.0/24"],
        keepalive: None,
    };
    let a_path = sites.dir.write(&format!("{a_if}.toml"), &a.toml(), 0o600);
    let b_path = sites.dir.write(&format!("{b_if}.toml"), &b.toml(), 0o600);
    let mut gw_a = sites.sitelinkd(&sites.gw_a, &a_path);
    let mut gw_b = sites.sitelinkd(&sites.gw_b, &b_path);
    sites.wait_ready(&mut gw_a, &a_if);
    sites.wait_ready(&mut gw_b, &b_if);

    // Not fatal: the daemon runs, says why, and the peer has no endpoint yet.
    std::thread::sleep(Duration::from_millis(1500));
    gw_a.assert_running();
    assert!(
        gw_a.log_text().contains("cannot resolve endpoint"),
        "{}",
        gw_a.log_text()
    );
    assert!(sites.show_json(&a_if)["peers"][0]["endpoint"].is_null());

    // The name starts resolving: the retry picks it up and the always-on link comes up.
    // (Rewritten in place: the daemon's mount namespace holds this inode.)
    hosts.update("127.0.0.1 localhost\n198.18.0.2 gw-b.sitelink.test\n");
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(20)),
        "no tunnel after the name resolved:\n{}",
        gw_a.log_text()
    );
    assert_eq!(
        sites.show_json(&a_if)["peers"][0]["endpoint"],
        "198.18.0.2:51820"
    );
    assert!(gw_a.log_text().contains("resolved endpoint"));
}

/// A host-name endpoint whose address changes: a working session is left alone, and when the
/// peer has moved (its old address unreachable), the name is resolved again and the next
/// handshake goes to the new address.
#[test]
fn host_name_endpoint_follows_the_name_when_the_peer_moves() {
    let sites = Sites::new();
    let hosts = NetnsHosts::write(
        &sites.gw_a.name,
        "127.0.0.1 localhost\n198.18.0.2 gw-b.sitelink.test\n",
    );
    // B's second WAN address, where it "moves" to.
    sites
        .gw_a
        .ip(&["addr", "add", "198.18.0.9/30", "dev", "wan0"]);
    sites
        .gw_b
        .ip(&["addr", "add", "198.18.0.10/30", "dev", "wan0"]);
    // A's peer "site-b" by name, re-resolved every 2 s; B the usual gateway B.
    let b_by_name = |b_pub: &str| {
        sitelink_tests::site_b_peer(b_pub).replace("198.18.0.2:51820", "gw-b.sitelink.test:51820")
    };
    let pair = sites.start_pair_with(false, "resolve-interval = 2\n", "", &[]);
    let text = std::fs::read_to_string(&pair.a_conf).unwrap() + &b_by_name(&pair.b_pub);
    std::fs::write(&pair.a_conf, text).unwrap();
    sites.ctl_ok(&pair.a_if, &["reload"]);
    let (a_if, gw_a) = (pair.a_if.clone(), &pair.gw_a);
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let peer = |field: &str| sites.show_json(&a_if)["peers"][0][field].clone();
    assert_eq!(peer("endpoint"), "198.18.0.2:51820");
    assert_eq!(peer("endpoint_source"), "dns");
    assert_eq!(peer("endpoint_name"), "gw-b.sitelink.test:51820");
    let first = peer("resolved_at").as_u64().expect("resolved_at");

    // The name changes while the link works: re-resolved, but the session keeps its address.
    hosts.update("127.0.0.1 localhost\n198.18.0.10 gw-b.sitelink.test\n");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        peer("resolved_at").as_u64().unwrap() > first,
        "not re-resolved"
    );
    assert_eq!(
        peer("endpoint"),
        "198.18.0.2:51820",
        "DNS moved a working link"
    );
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(2)));

    // The peer moves: its old address becomes unreachable from A. A's handshakes to it fail,
    // the name is used again, and the link comes back at the new address. (First 11 s of
    // quiet, so that A's passive keepalive has answered B's last reply: a B with unanswered
    // data would initiate from its old address, and A would roam back to it, as WireGuard
    // does. A peer that really moved sends from its new address.)
    std::thread::sleep(Duration::from_secs(11));
    sites
        .gw_a
        .ip(&["route", "add", "blackhole", "198.18.0.2/32"]);
    let started = std::time::Instant::now();
    // Sends to the blackholed address fail at once, and the peer's record says so.
    assert!(!sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(2)));
    let error = peer("last_error")["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(error.starts_with("send: "), "last_error: {error}");
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(60)),
        "the link did not follow the name:\n{}",
        gw_a.log_text()
    );
    println!(
        "link back at the new address after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(peer("endpoint"), "198.18.0.10:51820");
    assert!(
        gw_a.log_text()
            .contains("endpoint now resolves to another address"),
        "{}",
        gw_a.log_text()
    );
    // The failed sends made quinn-udp turn UDP GSO off; the packet loop probed it back.
    let log = gw_a.log_text();
    let reprobe = log
        .lines()
        .find(|l| l.contains("UDP GSO was turned off by a failed send"))
        .unwrap_or_else(|| panic!("GSO never probed again:\n{log}"));
    let segments: usize = reprobe
        .split("segments=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no segment count in: {reprobe}"));
    assert!(segments > 1, "GSO not back: {reprobe}");
}

/// Hosts on LANs with MTU 1500 and ICMP "fragmentation needed" / "packet too big" filtered (a
/// common firewall default): bulk TCP works through the 1420-byte tunnel only because
/// sitelinkd clamps the MSS of SYNs; with `mss-clamp = false` it stalls.
#[test]
fn mss_clamping_carries_tcp_where_icmp_is_filtered() {
    let sites = Sites::new();
    for host in [&sites.host_a, &sites.host_b] {
        let rules = "table inet sitelink_test {\n  chain input {\n    type filter hook input priority 0;\n    icmp type destination-unreachable drop\n    icmpv6 type packet-too-big drop\n  }\n}\n";
        host.nft(rules);
    }
    let pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    // With clamping (the default): both directions, both families, bytes checked.
    sites.assert_lans_connected(5401);

    // Without it: the first full-sized segment is dropped at gateway A and the ICMP that
    // would say so never reaches host A: the transfer stalls.
    for conf in [&pair.a_conf, &pair.b_conf] {
        let text = std::fs::read_to_string(conf).unwrap();
        std::fs::write(
            conf,
            text.replacen("[interface]\n", "[interface]\nmss-clamp = false\n", 1),
        )
        .unwrap();
    }
    sites.ctl_ok(&pair.a_if, &["reload"]);
    sites.ctl_ok(&pair.b_if, &["reload"]);
    let delivered = partial_transfer(&sites, 5411, 4 << 20);
    assert!(
        delivered < 4 << 20,
        "a 4 MiB transfer completed without MSS clamping: the test does not filter ICMP"
    );
    println!(
        "without mss-clamp: {delivered} of {} bytes before the stall",
        4 << 20
    );
    // The tunnel itself works: small packets pass; only full-sized segments are lost.
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(5)),
        "the tunnel broke, so the stall proves nothing"
    );
}

/// host A sends `len` bytes to host B on `port`; returns how many B received before 5 s of
/// silence.
fn partial_transfer(sites: &Sites, port: u16, len: usize) -> usize {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([198, 19, 2, 10], port));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = sites.host_b.within(move || {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let client = sites.host_a.within(move || {
        let mut conn =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(8)))
            .unwrap();
        let _ = conn.write_all(&sitelink_tests::pattern(len, 3));
    });
    let received = server.join().unwrap();
    client.join().unwrap();
    received
}

/// A peer reachable over two WAN links, `endpoint = [first, second]`: the first is used; when
/// its link is cut, handshakes to it fail and the second is tried; `show` says which is in use.
#[test]
fn several_endpoints_are_tried_in_order_when_one_link_is_cut() {
    let sites = Sites::new();
    sitelink_tests::veth(&sites.gw_a, "wan1", &sites.gw_b, "wan1");
    sites
        .gw_a
        .ip(&["addr", "add", "198.18.0.5/30", "dev", "wan1"]);
    sites
        .gw_b
        .ip(&["addr", "add", "198.18.0.6/30", "dev", "wan1"]);
    let two = |b_pub: &str| {
        sitelink_tests::site_b_peer(b_pub).replace(
            "endpoint = \"198.18.0.2:51820\"",
            "endpoint = [\"198.18.0.2:51820\", \"198.18.0.6:51820\"]",
        )
    };
    let pair = sites.start_pair_with(false, "", "", &[]);
    let text = std::fs::read_to_string(&pair.a_conf).unwrap() + &two(&pair.b_pub);
    std::fs::write(&pair.a_conf, text).unwrap();
    sites.ctl_ok(&pair.a_if, &["reload"]);
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let peer = |field: &str| sites.show_json(&pair.a_if)["peers"][0][field].clone();
    assert_eq!(peer("endpoint"), "198.18.0.2:51820");
    assert_eq!(peer("endpoint_name"), "198.18.0.2:51820");

    // The first link is cut.
    sites.gw_a.ip(&["link", "set", "wan0", "down"]);
    let started = std::time::Instant::now();
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(90)),
        "the second endpoint was never tried:\n{}",
        pair.gw_a.log_text()
    );
    println!(
        "traffic over the second link {:.1} s after the first was cut",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(peer("endpoint"), "198.18.0.6:51820");
    assert_eq!(peer("endpoint_name"), "198.18.0.6:51820");
    assert_eq!(peer("state"), "up");
    let said = sites.ctl_ok(&pair.a_if, &["show"]);
    assert!(said.contains("198.18.0.6:51820"), "{said}");
}

/// CPU time (utime + stime, clock ticks) of each of a process's threads whose name starts
/// with `prefix`, from `/proc/PID/task/*/stat`.
fn thread_ticks(pid: u32, prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's tasks") {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push((comm, ticks(11) + ticks(12)));
    }
    out.sort();
    out
}

#[test]
fn four_packet_threads_carry_eight_flows_and_every_byte_arrives() {
    let sites = Sites::new();
    let pair = sites.start_pair_with(true, "threads = 4\n", "", &[]);
    assert!(
        pair.gw_a.log_text().contains("threads=4"),
        "gateway A did not start 4 packet threads:\n{}",
        pair.gw_a.log_text()
    );
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(20)));
    // Eight TCP connections at once (8 MiB each, byte-checked) through gateway A's four
    // TUN queues and four sockets.
    const LEN: usize = 8 << 20;
    std::thread::scope(|scope| {
        let transfers: Vec<_> = (0..8u16)
            .map(|i| {
                let (a, b) = (&sites.host_a, &sites.host_b);
                scope.spawn(move || {
                    let addr = std::net::SocketAddr::from(([198, 19, 2, 10], 7100 + i));
                    sitelink_tests::tcp_transfer(a, b, addr, LEN)
                })
            })
            .collect();
        for t in transfers {
            let (received, verified) = t.join().expect("transfer thread");
            assert_eq!(
                (received, verified),
                (LEN, LEN),
                "a flow lost or changed bytes"
            );
        }
    });
    // All four packet threads run, and the work was done by them. (Which of them: the TUN
    // device sends a flow's outgoing packets to the queue its incoming packets were written
    // on, and one peer's datagrams all reach one socket, so one peer's flows, both ways,
    // are one thread's; several peers spread over the threads. Measured, not asserted:
    // benches/threads.sh.)
    let threads = thread_ticks(pair.gw_a.child.id(), "sitelink-packet");
    assert_eq!(threads.len(), 4, "gateway A's packet threads: {threads:?}");
    let busy = threads.iter().filter(|(_, t)| *t > 0).count();
    assert!(busy >= 1, "no packet thread used any CPU time: {threads:?}");
}
