//! Faults on the two-site testbed (`host_a — gw_a ═ gw_b — host_b`): a gateway killed and
//! restarted, the WAN down for a minute, a gateway's WAN address changing, a clock an hour
//! behind, the TUN device deleted under the daemon. Each test checks that bytes arrive intact
//! afterwards and prints how long recovery took (the figures in the README come from these
//! lines: `cargo test -p sitelink-tests --test faults -- --nocapture`). Recovery must happen
//! within a bound far above what the protocol needs, so a slow machine cannot fail it, while a
//! daemon that waits for the other side's timers (15 s and more) does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use sitelink_tests::{peer, tcp_transfer, Netns, Sites};

const MIB: usize = 1 << 20;

/// Pings `dst` from `ns` every 100 ms (each waiting 200 ms for its answer) until one is
/// answered; returns how long that took, or `None` after `within`.
fn first_answer(ns: &Netns, dst: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        let ok = ns
            .cmd("ping")
            .args(["-c", "1", "-W", "0.2", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

/// An 4 MiB byte-checked TCP transfer host_a → host_b on `port`.
fn assert_transfer(sites: &Sites, port: u16, what: &str) {
    let to = SocketAddr::from(([198, 19, 2, 10], port));
    let (sent, ok) = tcp_transfer(&sites.host_a, &sites.host_b, to, 4 * MIB);
    assert_eq!(
        (sent, ok),
        (4 * MIB, 4 * MIB),
        "{what}: TCP transfer short or corrupted"
    );
}

/// Waits until `path` exists and holds `needle` (the daemon writes its state every 5 s).
fn wait_for_file(path: &Path, needle: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < within,
            "{} never held {needle:?}: {text:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_gateway_killed_and_restarted_has_its_links_back_at_once() {
    let sites = Sites::new();
    let mut pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    // B learned A's endpoint (B's config has none) and remembers it.
    let state = sites
        .state_dir(&sites.gw_b)
        .join(format!("{}.peers.json", pair.b_if));
    let text = wait_for_file(&state, "\"up\": true", Duration::from_secs(15));
    assert!(text.contains("198.18.0.1:51820"), "{text}");

    // A crash: no clean-up, A still holds a session B has forgotten.
    pair.gw_b.kill();
    let mut b = sites.sitelinkd(&sites.gw_b, &pair.b_conf);
    sites.wait_ready(&mut b, &pair.b_if);
    let recovery = first_answer(&sites.host_a, "198.19.2.10", Duration::from_secs(30))
        .expect("A's traffic never reached the restarted B");
    eprintln!("fault: B killed and restarted: traffic again {recovery:?} after B was ready");
    assert!(
        recovery < Duration::from_secs(5),
        "traffic took {recovery:?} to return after B's restart:\n{}",
        b.log_text()
    );
    assert!(
        b.log_text().contains("restored learned endpoints"),
        "{}",
        b.log_text()
    );
    assert_transfer(&sites, 5301, "after B's restart");
    b.assert_running();
}

#[test]
fn a_wan_outage_of_a_minute_heals_within_seconds_of_the_link_returning() {
    let sites = Sites::new();
    let mut pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));

    // The link goes down while host A keeps trying to reach B (so gateway A keeps sending
    // and handshaking into a dead link, with its sends failing).
    sites.gw_a.ip(&["link", "set", "wan0", "down"]);
    let mut pinger = Guard(
        sites
            .host_a
            .cmd("ping")
            .args(["-i", "0.5", "-w", "60", "198.19.2.10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_secs(30));
    // A says what is going on: its sends fail (its WAN link is down), and its initiations
    // go unanswered; whichever happened last is the last error.
    let during = peer(&sites.show_json(&pair.a_if), "site-b").clone();
    let reason = during["last_error"]["reason"].as_str().unwrap_or("");
    assert!(
        reason == "no-response" || reason == "send: Network is unreachable (os error 101)",
        "{during}"
    );
    assert_eq!(during["state"], "connecting", "{during}");
    assert!(
        during["handshake_attempts"].as_u64().unwrap() >= 2,
        "{during}"
    );
    assert!(
        during["last_error"]["count"].as_u64().unwrap() >= 1,
        "{during}"
    );
    thread::sleep(Duration::from_secs(30));
    sites.gw_a.ip(&["link", "set", "wan0", "up"]);
    let recovery = first_answer(&sites.host_a, "198.19.2.10", Duration::from_secs(60))
        .expect("traffic never returned after the WAN came back");
    let _ = pinger.0.kill();
    eprintln!("fault: WAN down 60 s: traffic again {recovery:?} after the link came up");
    assert!(
        recovery < Duration::from_secs(5),
        "traffic took {recovery:?} after the outage"
    );
    assert_transfer(&sites, 5311, "after the WAN outage");
    let after = peer(&sites.show_json(&pair.a_if), "site-b").clone();
    assert_eq!(after["state"], "up", "{after}");
    assert_eq!(after["endpoint_source"], "config", "{after}");
    pair.gw_a.assert_running();
    pair.gw_b.assert_running();
}

/// Kills the child on drop (a failing test leaves no ping behind).
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn when_b_wan_address_changes_a_follows_its_next_authenticated_packet() {
    let sites = Sites::new();
    let mut pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));
    let a_view = |sites: &Sites| peer(&sites.show_json(&pair.a_if), "site-b")["endpoint"].clone();
    assert_eq!(a_view(&sites), "198.18.0.2:51820");

    // B's WAN address changes from 198.18.0.2 to 198.18.0.6 (as a NAT in front of it would
    // rebind); A is still configured with the old one.
    sites
        .gw_a
        .ip(&["addr", "add", "198.18.0.5/30", "dev", "wan0"]);
    sites
        .gw_b
        .ip(&["addr", "add", "198.18.0.6/30", "dev", "wan0"]);
    sites
        .gw_b
        .ip(&["addr", "del", "198.18.0.2/30", "dev", "wan0"]);
    sites.gw_b.ip(&[
        "route",
        "add",
        "198.18.0.1/32",
        "dev",
        "wan0",
        "src",
        "198.18.0.6",
    ]);

    // B's next packet (host B talks to host A) comes from the new address, authenticated:
    // A moves its endpoint there, and its own traffic follows.
    let Some(moved) = first_answer(&sites.host_b, "198.19.1.10", Duration::from_secs(20)) else {
        panic!(
            "host B never reached host A after B's address changed; B's log:\n{}\nA's log:\n{}",
            pair.gw_b.log_text(),
            pair.gw_a.log_text()
        );
    };
    eprintln!("fault: B's WAN address changed: B→A traffic again after {moved:?}");
    assert_eq!(a_view(&sites), "198.18.0.6:51820", "A did not follow B");
    assert_transfer(&sites, 5321, "after B's address change");
    pair.gw_a.assert_running();
    pair.gw_b.assert_running();
}

#[test]
fn a_gateway_restarted_with_its_clock_an_hour_behind_gets_its_session_back() {
    let faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(faketime).exists(),
        "{faketime} is missing: apt-get install libfaketime (scripts/test.sh does)"
    );
    let sites = Sites::new();
    let mut pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));

    // A restarts with its wall clock an hour behind (monotonic clocks untouched, as in a
    // real clock step): every initiation it sends carries a timestamp older than the last
    // one B accepted from it, which WireGuard refuses as a possible replay.
    pair.gw_a.kill();
    let mut a = sites.sitelinkd_env(
        &sites.gw_a,
        &pair.a_conf,
        &[
            ("LD_PRELOAD", faketime),
            ("FAKETIME", "-3600"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    sites.wait_ready(&mut a, &pair.a_if);
    let recovery = first_answer(&sites.host_a, "198.19.2.10", Duration::from_secs(30))
        .expect("no traffic with A's clock an hour behind");
    eprintln!("fault: A restarted an hour behind: traffic again after {recovery:?}");
    // B refused A's initiations and handshook from its side instead.
    let b_log = pair.gw_b.log_text();
    assert!(b_log.contains("old timestamp"), "B's log: {b_log}");
    assert!(
        recovery < Duration::from_secs(10),
        "recovery took {recovery:?}"
    );
    assert_transfer(&sites, 5331, "with A's clock behind");
    a.assert_running();
}

#[test]
fn the_tun_device_deleted_under_the_daemon_ends_it_with_a_clear_error() {
    let sites = Sites::new();
    let mut pair = sites.start_pair(true, "");
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(10)));

    sites.gw_a.ip(&["link", "del", &pair.a_if]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = pair.gw_a.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sitelinkd still running 10 s after its interface was deleted:\n{}",
            pair.gw_a.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    };
    let log = pair.gw_a.log_text();
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("error:") && last.contains(&pair.a_if) && last.contains("deleted"),
        "the last line should say the interface was deleted: {last:?}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // It cleaned up after itself: a restart (as systemd does) comes up and carries traffic.
    let mut a = sites.sitelinkd(&sites.gw_a, &pair.a_conf);
    sites.wait_ready(&mut a, &pair.a_if);
    assert!(sites
        .host_a
        .ping_until("198.19.2.10", Duration::from_secs(15)));
    assert_transfer(&sites, 5341, "after the restart");
}
