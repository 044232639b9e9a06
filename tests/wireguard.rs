//! WireGuard behaviours the stock tools rely on, through `wg` against sitelinkd: `setconf` and
//! `syncconf` with nested prefixes, with 100,000 allowed-ips and without a private key; a
//! request over the size limit answered with an error (not SIGPIPE); a live listen-port
//! change during a TCP transfer; preshared-key rotation on both sides under a 20 ms ping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use sitelink_tests::{keypair, peer, tcp_stream_during, wg, wg_ok, Sites};

/// A wg(8) config for gateway A: its key and port, peer site-b as the harness configures it,
/// and `extra` peers.
fn wg_conf(a_private: Option<&str>, b_pub: &str, extra: &str) -> String {
    let mut t = String::from("[Interface]\n");
    if let Some(key) = a_private {
        t += &format!("PrivateKey = {key}\n");
    }
    t += "ListenPort = 51820\n\n";
    t += &format!(
        "[Peer]\nPublicKey = {b_pub}\nEndpoint = 198.18.0.2:51820\n\
         AllowedIPs = 198.18.100.2/32, 198.19.2.0/24, fd18:100::2/128, fd19:2::/64\n\
         PersistentKeepalive = 25\n\n"
    );
    t + extra
}

/// A `[Peer]` with `count` IPv6 host prefixes under fd7f::/16 (outside every test network).
fn big_peer(key: &str, count: u32, base: u16) -> String {
    let mut t = format!("[Peer]\nPublicKey = {key}\nAllowedIPs = ");
    for i in 0..count {
        if i > 0 {
            t += ", ";
        }
        let _ = write!(t, "fd7f:{base:x}:{:x}:{:x}::/128", i >> 16, i & 0xffff);
    }
    t + "\n\n"
}

fn count_lines(text: &[u8], needle: &str) -> usize {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn wg_setconf_and_syncconf_with_nested_prefixes_100k_allowed_ips_and_no_key() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    let a = pair.a_if.as_str();
    let a_private = std::fs::read_to_string(sites.dir.0.join("a.key")).unwrap();
    let a_private = a_private.trim();
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let handshake = |s: &Sites| peer(&s.show_json(a), "site-b")["latest_handshake"].clone();
    let first = handshake(&sites);
    // B still reached, on the session it had (its logs tell why if not).
    let same_session = |what: &str| {
        assert!(
            sites
                .host_a
                .ping_until("198.19.2.10", Duration::from_secs(5)),
            "B unreachable after {what}"
        );
        assert_eq!(
            handshake(&sites),
            first,
            "{what} replaced site-b's session:\n{}\n---\n{}",
            pair.gw_a.log_text(),
            pair.gw_b.log_text()
        );
    };

    // Nested prefixes: a hub with the whole range beside site-b's /24.
    let (_, hub) = keypair();
    let hub_peer = format!("[Peer]\nPublicKey = {hub}\nAllowedIPs = 198.19.0.0/16, 0.0.0.0/1\n\n");
    let nested = wg_conf(Some(a_private), &pair.b_pub, &hub_peer);
    let file = sites.dir.write("nested.conf", &nested, 0o600);
    wg_ok(&sites.gw_a, &["setconf", a, file.to_str().unwrap()]);
    let routes = sites.routes(&sites.gw_a, a);
    assert!(
        routes.contains("198.19.0.0/16") && routes.contains("198.19.2.0/24"),
        "{routes}"
    );
    let conf = wg_ok(&sites.gw_a, &["showconf", a]);
    assert!(
        conf.contains("198.19.0.0/16") && conf.contains("198.19.2.0/24"),
        "{conf}"
    );
    // site-b's /24 is the longer match: B is still reached directly, on the same session.
    same_session("setconf with nested prefixes");

    // 100,000 allowed-ips on one more peer, through syncconf: several MiB of UAPI text.
    let (_, big) = keypair();
    let large = wg_conf(
        Some(a_private),
        &pair.b_pub,
        &(hub_peer.clone() + &big_peer(&big, 100_000, 1)),
    );
    let file = sites.dir.write("large.conf", &large, 0o600);
    let start = Instant::now();
    wg_ok(&sites.gw_a, &["syncconf", a, file.to_str().unwrap()]);
    eprintln!("syncconf of 100,000 allowed-ips took {:?}", start.elapsed());
    let shown = sites
        .gw_a
        .cmd("wg")
        .args(["show", a, "allowed-ips"])
        .output()
        .unwrap();
    assert_eq!(count_lines(&shown.stdout, &big), 1);
    let listed = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find(|l| l.starts_with(&big))
        .map(|l| l.split_whitespace().count() - 1)
        .unwrap_or(0);
    assert_eq!(listed, 100_000);
    let v6 = sites.gw_a.ip(&["-6", "route", "show", "dev", a]);
    assert!(
        count_lines(&v6.stdout, "fd7f:1:") >= 100_000,
        "routes missing"
    );
    same_session("syncconf with 100,000 allowed-ips");

    // Back to the small config: the big peer and its routes go.
    let file = sites.dir.write("nested.conf", &nested, 0o600);
    wg_ok(&sites.gw_a, &["syncconf", a, file.to_str().unwrap()]);
    let v6 = sites.gw_a.ip(&["-6", "route", "show", "dev", a]);
    assert_eq!(count_lines(&v6.stdout, "fd7f:1:"), 0);
    assert_eq!(sites.show_json(a)["peers"].as_array().unwrap().len(), 2);

    // Over the daemon's bound (32 MiB of UAPI text): refused with an errno that wg prints,
    // read to the end first, so wg exits normally instead of dying of SIGPIPE.
    let huge = wg_conf(Some(a_private), &pair.b_pub, &big_peer(&big, 1_300_000, 2));
    let file = sites.dir.write("huge.conf", &huge, 0o600);
    let out = wg(&sites.gw_a, &["setconf", a, file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "wg was killed or succeeded: {:?} {err}",
        out.status
    );
    assert!(err.contains("Message too long"), "{err}");
    assert_eq!(
        sites.show_json(a)["peers"].as_array().unwrap().len(),
        2,
        "a refused set changed peers"
    );
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(5)));

    // No PrivateKey: wg sends an all-zero key, which means "no key": the interface stays,
    // with its peers, and handshakes nothing.
    let keyless = wg_conf(None, &pair.b_pub, "");
    let file = sites.dir.write("keyless.conf", &keyless, 0o600);
    wg_ok(&sites.gw_a, &["setconf", a, file.to_str().unwrap()]);
    let shown = wg_ok(&sites.gw_a, &["show", a]);
    assert!(!shown.contains("public key:"), "{shown}");
    let status = sites.show_json(a);
    assert!(status["interface"]["public_key"].is_null(), "{status}");
    assert_eq!(status["peers"].as_array().unwrap().len(), 1);
    let human = sites.ctl_ok(a, &["show"]);
    assert!(human.contains("private key: (none"), "{human}");
    assert!(
        !sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(3)),
        "traffic flowed without a private key"
    );
    // A key later brings the peer up again.
    let key_file = sites.dir.0.join("a.key");
    wg_ok(
        &sites.gw_a,
        &["set", a, "private-key", key_file.to_str().unwrap()],
    );
    assert!(
        sites
            .host_a
            .ping_until("198.19.2.10", Duration::from_secs(10)),
        "no traffic after the private key came back"
    );
    assert_eq!(
        sites.show_json(a)["interface"]["public_key"],
        pair.a_pub.as_str()
    );
}

#[test]
fn wg_set_listen_port_during_a_transfer_keeps_the_connection() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    let a = pair.a_if.clone();
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let server: SocketAddr = "198.19.2.10:5011".parse().unwrap();
    let gw_a = &sites.gw_a;
    let report = tcp_stream_during(
        &sites.host_a,
        &sites.host_b,
        server,
        Duration::from_secs(5),
        || {
            thread::sleep(Duration::from_millis(1500));
            wg_ok(gw_a, &["set", &a, "listen-port", "51900"]);
        },
    );
    eprintln!("listen-port change during a stream: {report:?}");
    assert!(report.sent > 0);
    assert_eq!(
        report.verified, report.sent,
        "bytes lost or corrupted: {report:?}"
    );
    assert_eq!(wg_ok(gw_a, &["show", &a, "listen-port"]).trim(), "51900");
    assert_eq!(sites.show_json(&a)["interface"]["listen_port"], 51900);
    // B saw A's authenticated packets from the new port and moved there.
    let b_view = sites.show_json(&pair.b_if);
    assert_eq!(peer(&b_view, "site-a")["endpoint"], "198.18.0.1:51900");

    // A port that is taken is refused, and nothing changes.
    let blocker = gw_a
        .within(|| UdpSocket::bind("0.0.0.0:51901").expect("bind the blocker"))
        .join()
        .unwrap();
    let out = wg(gw_a, &["set", &a, "listen-port", "51901"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(wg_ok(gw_a, &["show", &a, "listen-port"]).trim(), "51900");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(5)));
    drop(blocker);
}

#[test]
fn preshared_key_rotation_on_both_sides_loses_no_ping() {
    let sites = Sites::new();
    let pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let ping = sites
        .host_a
        .cmd("ping")
        .args(["-q", "-i", "0.02", "-c", "250", "-W", "1", "198.19.2.10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for round in 0..2 {
        thread::sleep(Duration::from_millis(1000));
        let psk = String::from_utf8(
            sitelink_tests::run(
                std::process::Command::new(sitelink_tests::bin("sitelinkctl")).arg("genpsk"),
            )
            .stdout,
        )
        .unwrap();
        let file = sites.dir.write(&format!("rot{round}.psk"), &psk, 0o600);
        let file = file.to_str().unwrap();
        // As Rosenpass does it: each side sets the new key itself, a moment apart.
        wg_ok(
            &sites.gw_a,
            &[
                "set",
                &pair.a_if,
                "peer",
                &pair.b_pub,
                "preshared-key",
                file,
            ],
        );
        thread::sleep(Duration::from_millis(300));
        wg_ok(
            &sites.gw_b,
            &[
                "set",
                &pair.b_if,
                "peer",
                &pair.a_pub,
                "preshared-key",
                file,
            ],
        );
    }
    let out = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!("{summary}");
    assert!(
        summary.contains("250 packets transmitted, 250 received"),
        "{summary}"
    );
    // Both sides hold the new key (wg shows a preshared key as "(hidden)").
    for (ns, iface) in [(&sites.gw_a, &pair.a_if), (&sites.gw_b, &pair.b_if)] {
        let shown = wg_ok(ns, &["show", iface]);
        assert!(shown.contains("preshared key: (hidden)"), "{shown}");
    }
}
