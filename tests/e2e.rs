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
