//! Cryptokey routing as WireGuard does it, on real topologies in network namespaces:
//! a hub and spokes with nested prefixes and a default route through the hub; a change the
//! kernel refuses half-way; the interface moved to another namespace; replies from the address
//! a peer used on a gateway with two addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sitelink_tests::{
    keypair, peer, run, site_b_peer, tcp_transfer, wg, wg_ok, Internet, Netns, Sites,
};

const MIB: usize = 1 << 20;

fn tx_of(status: &serde_json::Value, name: &str) -> u64 {
    peer(status, name)["tx_bytes"].as_u64().unwrap()
}

fn transfer(from: &Netns, to: &Netns, to_ip: &str, port: u16, len: usize) {
    let addr: SocketAddr = format!("{to_ip}:{port}").parse().unwrap();
    let (sent, ok) = tcp_transfer(from, to, addr, len);
    assert_eq!(
        (sent, ok),
        (len, len),
        "transfer to {addr} short or corrupted"
    );
}

/// Hub H (site 4) with spokes A, B, C (sites 1-3). Every spoke routes 198.19.0.0/16 to the hub;
/// A and B are also peered directly, so their /24s nest inside the hub's /16. C sends
/// everything (0.0.0.0/0) to the hub, across a router that is also its way to the hub.
#[test]
fn hub_and_spokes_route_by_longest_prefix_and_a_default_route_does_not_loop() {
    let net = Internet::new(&[1, 2, 3, 4]);
    let (a, b, c, h) = (net.site(1), net.site(2), net.site(3), net.site(4));
    // Behind the hub, outside 198.19.0.0/16: what C reaches only through its default route.
    h.gw.ip(&["addr", "add", "198.18.250.1/32", "dev", "lo"]);

    let spoke_peers = |own: &sitelink_tests::Site| {
        let mut peers = h.as_peer("hub", &["198.19.0.0/16"], true);
        for other in [a, b] {
            if other.n != own.n && own.n != 3 {
                peers += &other.as_peer(&format!("site-{}", other.n), &[&other.lan()], true);
            }
        }
        peers
    };
    let _ha = net.start(1, "", &spoke_peers(a));
    let _hb = net.start(2, "", &spoke_peers(b));
    let c_peers = h.as_peer("hub", &["0.0.0.0/0"], true);
    let mut hc = net.start(3, "", &c_peers);
    let hub_peers = a.as_peer("site-1", &[&a.lan()], false)
        + &b.as_peer("site-2", &[&b.lan()], false)
        + &c.as_peer("site-3", &[&c.lan()], false);
    let _hh = net.start(4, "", &hub_peers);

    for (from, to) in [(a, b), (a, c), (b, a), (c, a)] {
        assert!(
            from.host.ping_until(&to.host_ip(), Duration::from_secs(15)),
            "host {} cannot reach host {}",
            from.n,
            to.n
        );
    }

    // A → B goes direct: the bytes show on A's peer site-2, not on the hub.
    let before = net.show_json(1);
    transfer(&a.host, &b.host, &b.host_ip(), 5001, 2 * MIB);
    let after = net.show_json(1);
    assert!(tx_of(&after, "site-2") - tx_of(&before, "site-2") > 2 * MIB as u64);
    assert!(
        tx_of(&after, "hub") - tx_of(&before, "hub") < 200_000,
        "A→B went via the hub"
    );

    // A → C goes to the hub (only its /16 matches), which forwards it to C.
    let (hub_before, a_before) = (net.show_json(4), net.show_json(1));
    transfer(&a.host, &c.host, &c.host_ip(), 5002, 2 * MIB);
    let (hub_after, a_after) = (net.show_json(4), net.show_json(1));
    assert!(tx_of(&a_after, "hub") - tx_of(&a_before, "hub") > 2 * MIB as u64);
    assert!(tx_of(&hub_after, "site-3") - tx_of(&hub_before, "site-3") > 2 * MIB as u64);

    // B → A direct.
    let before = net.show_json(2);
    transfer(&b.host, &a.host, &a.host_ip(), 5003, MIB);
    let after = net.show_json(2);
    assert!(tx_of(&after, "site-1") - tx_of(&before, "site-1") > MIB as u64);

    // C's default route: everything goes to the hub, its own tunnel packets (marked) leave by
    // the underlay, and its directly connected networks stay direct.
    transfer(&c.host, &h.gw, "198.18.250.1", 5004, MIB);
    assert!(
        c.gw.ping_until("198.18.3.1", Duration::from_secs(5)),
        "router unreachable"
    );
    let rules = String::from_utf8(c.gw.ip(&["rule", "show"]).stdout).unwrap();
    assert!(
        rules.contains("not from all fwmark 0xca6c lookup 51820"),
        "{rules}"
    );
    assert!(
        rules.contains("lookup main suppress_prefixlength 0"),
        "{rules}"
    );
    let table = String::from_utf8(c.gw.ip(&["route", "show", "table", "51820"]).stdout).unwrap();
    assert!(
        table.contains(&format!("default dev {}", c.iface)),
        "{table}"
    );
    let status = net.show_json(3);
    assert_eq!(status["interface"]["fwmark"], 51820);
    assert!(peer(&status, "hub")["latest_handshake"].is_u64());

    // Torn down cleanly: rules and the table go, the main table stays as it was.
    assert_eq!(hc.terminate(), Some(0));
    let rules = String::from_utf8(c.gw.ip(&["rule", "show"]).stdout).unwrap();
    assert!(
        !rules.contains("51820") && !rules.contains("suppress_prefixlength"),
        "{rules}"
    );
    let table = String::from_utf8(c.gw.ip(&["route", "show", "table", "51820"]).stdout).unwrap();
    assert!(table.trim().is_empty(), "{table}");
    let main = String::from_utf8(c.gw.ip(&["route", "show"]).stdout).unwrap();
    assert!(main.contains("default via 198.18.3.1"), "{main}");
}

/// A change whose routes the kernel refuses part-way leaves routes, engine and configuration
/// exactly as they were, whichever way it came (sitelinkctl, reload, wg set), and the next
/// change works.
#[test]
fn a_change_refused_half_way_changes_nothing_and_the_next_one_works() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    let a = &pair.a_if;
    // A route of the operator's own that sitelinkd must not replace.
    sites
        .gw_a
        .ip(&["route", "add", "blackhole", "198.19.9.0/24"]);
    let (_, key) = keypair();
    let before_routes = sites.routes(&sites.gw_a, a);
    let before_config = std::fs::read_to_string(&pair.a_conf).unwrap();

    let out = sites.ctl(
        a,
        &[
            "peer",
            "add",
            "site-x",
            "--public-key",
            &key,
            "--allowed-ips",
            "198.19.8.0/24,198.19.9.0/24",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("route 198.19.9.0/24: the kernel refused it: File exists"),
        "{err}"
    );
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(
        sites.routes(&sites.gw_a, a),
        before_routes,
        "a route stayed behind"
    );
    let status = sites.show_json(a);
    assert_eq!(status["peers"].as_array().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_to_string(&pair.a_conf).unwrap(),
        before_config
    );

    // The same through the WireGuard UAPI: refused with an errno, nothing changed...
    let out = wg(
        &sites.gw_a,
        &[
            "set",
            a,
            "peer",
            &key,
            "allowed-ips",
            "198.19.8.0/24,198.19.9.0/24",
        ],
    );
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    assert_eq!(sites.routes(&sites.gw_a, a), before_routes);
    assert_eq!(sites.show_json(a)["peers"].as_array().unwrap().len(), 1);
    // ... and the next set for that peer works (it used to fail: "public key already used").
    wg_ok(
        &sites.gw_a,
        &["set", a, "peer", &key, "allowed-ips", "198.19.8.0/24"],
    );
    assert!(sites.routes(&sites.gw_a, a).contains("198.19.8.0/24"));
    assert_eq!(sites.show_json(a)["peers"].as_array().unwrap().len(), 2);

    // A reload asking for the refused route is refused whole too.
    let extra = format!(
        "\n[[peer]]\nname = \"site-y\"\npublic-key = {:?}\nallowed-ips = [\"198.19.7.0/24\", \"198.19.9.0/24\"]\n",
        keypair().1
    );
    std::fs::write(&pair.a_conf, before_config.clone() + &extra).unwrap();
    let out = sites.ctl(a, &["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let routes = sites.routes(&sites.gw_a, a);
    assert!(!routes.contains("198.19.7.0/24"), "{routes}");
    assert!(
        routes.contains("198.19.8.0/24"),
        "the earlier change was undone: {routes}"
    );
    // Once the operator's route is gone, it applies.
    sites
        .gw_a
        .ip(&["route", "del", "blackhole", "198.19.9.0/24"]);
    sites.ctl_ok(a, &["reload"]);
    let routes = sites.routes(&sites.gw_a, a);
    assert!(
        routes.contains("198.19.7.0/24") && routes.contains("198.19.9.0/24"),
        "{routes}"
    );
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(5)));
}

/// `ip link set IF netns X`: the TUN device keeps carrying traffic where it is now; route
/// changes sitelinkd can no longer make are reported, and the rest of the change applies.
#[test]
fn interface_moved_to_another_namespace_keeps_working() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    let a = &pair.a_if;
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let isolated = Netns::new("sim");
    run(std::process::Command::new("ip").args([
        "-n",
        &sites.gw_a.name,
        "link",
        "set",
        a,
        "netns",
        &isolated.name,
    ]));
    // Moving drops the addresses and routes; set them up where the interface is now.
    isolated.ip(&["link", "set", a, "up"]);
    isolated.ip(&["addr", "add", "198.18.100.1/24", "dev", a]);
    isolated.ip(&["route", "add", "198.19.2.0/24", "dev", a]);
    assert!(
        isolated.ping_until("198.19.2.10", Duration::from_secs(10)),
        "no traffic after the interface moved"
    );
    transfer(&isolated, &sites.host_b, "198.19.2.10", 5005, 2 * MIB);

    // A change with a new route: reported, not failed; the rest of it applies.
    let out = sites.ctl_ok(
        a,
        &[
            "peer",
            "set",
            "site-b",
            "--allowed-ips",
            "198.18.100.2/32,198.19.2.0/24,fd18:100::2/128,fd19:2::/64,198.19.5.0/24",
            "--persistent-keepalive",
            "9",
        ],
    );
    assert!(out.contains("route 198.19.5.0/24 not installed"), "{out}");
    assert!(
        out.contains("not in sitelinkd's network namespace"),
        "{out}"
    );
    let status = sites.show_json(a);
    assert_eq!(peer(&status, "site-b")["persistent_keepalive"], 9);
    assert!(isolated.ping_until("198.19.2.10", Duration::from_secs(5)));
    let mut gw_a = pair.gw_a;
    assert_eq!(gw_a.terminate(), Some(0), "{}", gw_a.log_text());
}

/// Gateway B has a primary and a secondary address; A knows B by the secondary. B answers
/// from the address A used, so A's endpoint for B never moves. When the address goes away,
/// B falls back to the kernel's choice and A follows the authenticated packets.
#[test]
fn replies_leave_from_the_address_the_peer_used() {
    let sites = Sites::new();
    sites
        .gw_b
        .ip(&["addr", "add", "198.18.0.10/32", "dev", "wan0"]);
    sites
        .gw_a
        .ip(&["route", "add", "198.18.0.10/32", "dev", "wan0"]);
    sites
        .gw_b
        .ip(&["-6", "addr", "add", "fd18::10/128", "dev", "wan0", "nodad"]);
    let b_peer = |b_pub: &str| site_b_peer(b_pub).replace("198.18.0.2:51820", "198.18.0.10:51820");
    // A's peer for B is written after B's key is known: start without it, then add it.
    let pair = sites.start_pair(false, "");
    let text = std::fs::read_to_string(&pair.a_conf).unwrap() + &b_peer(&pair.b_pub);
    std::fs::write(&pair.a_conf, text).unwrap();
    sites.ctl_ok(&pair.a_if, &["reload"]);

    let endpoint = |iface: &str, name: &str| {
        peer(&sites.show_json(iface), name)["endpoint"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    // B sends on its own too (it initiates nothing, but answers and sends data).
    assert!(sites
        .host_b
        .ping_until("198.19.1.10", Duration::from_secs(5)));
    transfer(&sites.host_b, &sites.host_a, "198.19.1.10", 5006, MIB);
    assert_eq!(endpoint(&pair.a_if, "site-b"), "198.18.0.10:51820");

    // IPv6 too: A moves to B's secondary IPv6 address.
    sites.ctl_ok(
        &pair.a_if,
        &["peer", "set", "site-b", "--endpoint", "[fd18::10]:51820"],
    );
    transfer(&sites.host_a, &sites.host_b, "198.19.2.10", 5007, MIB);
    transfer(&sites.host_b, &sites.host_a, "198.19.1.10", 5008, MIB);
    assert_eq!(endpoint(&pair.a_if, "site-b"), "[fd18::10]:51820");

    // The secondary address goes away: B's next packets leave from its primary address and
    // A roams to it.
    sites
        .gw_b
        .ip(&["-6", "addr", "del", "fd18::10/128", "dev", "wan0"]);
    assert!(
        sites
            .host_b
            .ping_until("198.19.1.10", Duration::from_secs(10)),
        "B could not send once its sticky address was gone"
    );
    assert_eq!(endpoint(&pair.a_if, "site-b"), "[fd18::2]:51820");
}
